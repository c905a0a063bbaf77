"""Benchmark: the on-device plate recogniser on generated labelled scenes, against a baseline.

    python -m bench.recognize [--images 300] [--seed 0] [--negatives 0.1]
                              [--baseline-images 60] [--threads 1] [--region R …]
                              [--det-side PX …] [--tricky N]

Scenes come from bench.plate_scenes (the tests' generator): seven regions'
plates among signs and dealer text, with perspective, blur, glare, night and
occlusion, and some scenes without a plate. Measured, one image at a time on
one thread (a Pi core):

* the recogniser (gated.hardware.recognizer, default config): exact match of
  its best read (null on a plate-less scene counts as right), character
  accuracy (1 - edit distance / plate length, over scenes with a plate), time
  per frame, and false_plates: every read it returned that is not the plate in
  the picture (on plate-less scenes, every read);
* the recogniser on --tricky scenes of each bench.plate_scenes.TRICKY_KINDS kind
  (half-hidden speed signs, plate-shaped sign text, stickers, dealer frames, a
  hidden band): false plates there, and how many of their plates it read;
* the baseline, off-the-shelf rapidocr over the whole frame (its own detection
  at its default size, classification and recognition of every line), on the
  first --baseline-images scenes: how often the true plate is among its lines,
  and how often the first of its lines that fits a plate format is the plate.

Prints progress, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from rapidfuzz.distance import Levenshtein

from bench.plate_scenes import TRICKY_KINDS, Scene, scenes, tricky_scene
from gated.config import RecognizerConfig
from gated.hardware.recognizer import load_recognizer
from gated.hardware.recognizer.formats import fits_format
from gated.plates import normalise


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def measure(cfg: RecognizerConfig, sample: list[Scene], det_side: int = 0) -> dict[str, Any]:
    """Exact match, character accuracy, false plates and time per frame of the recogniser."""
    recognizer: Any = load_recognizer(cfg)
    if det_side:  # a variant: the detector at another size than its default
        recognizer.detector.side = det_side
    recognizer.read(sample[0].image)  # first run allocates the runtime's buffers
    exact = 0
    false_plates = false_on_empty = 0
    char_scores: list[float] = []
    times: list[float] = []
    for scene in sample:
        started = time.perf_counter()
        reads = recognizer.read(scene.image)
        times.append((time.perf_counter() - started) * 1000)
        best = reads[0].text if reads else None
        exact += best == scene.plate
        wrong = sum(r.text != scene.plate for r in reads)
        false_plates += wrong
        if scene.plate is None:
            false_on_empty += wrong
        else:
            d = Levenshtein.distance(best or "", scene.plate)
            char_scores.append(max(0.0, 1 - d / len(scene.plate)))
    return {
        "images": len(sample),
        "exact_match": round(exact / len(sample), 4),
        "char_accuracy": round(statistics.fmean(char_scores), 4) if char_scores else None,
        "ms_p50": _percentile(times, 0.5),
        "ms_p99": _percentile(times, 0.99),
        "false_plates": false_plates,
        "false_plates_plateless": false_on_empty,
        "backend": recognizer.describe(),
    }


def tricky(cfg: RecognizerConfig, per_kind: int) -> dict[str, Any]:
    """False plates and plates read on per_kind scenes of each kind made to be misread."""
    recognizer: Any = load_recognizer(cfg)
    false_plates = read = plates = 0
    wrong: list[str] = []
    for kind in TRICKY_KINDS:
        for i in range(per_kind):
            scene = tricky_scene(5000 + i, kind)
            reads = recognizer.read(scene.image)
            false = [r.text for r in reads if r.text != scene.plate]
            false_plates += len(false)
            wrong += [f"{kind} {i}: {t}" for t in false]
            plates += scene.plate is not None
            if scene.plate is not None and reads and reads[0].text == scene.plate:
                read += 1
    return {"images": per_kind * len(TRICKY_KINDS), "plates": plates, "read": read,
            "false_plates": false_plates, "false": wrong}  # fmt: skip


def baseline(sample: list[Scene], threads: int) -> dict[str, Any]:
    """Whole-frame rapidocr: true plate among its lines, first format-fitting line, time."""
    from rapidocr import RapidOCR

    engine = RapidOCR(
        params={
            "Global.log_level": "error",
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
    )
    engine(sample[0].image)
    found = exact = 0
    times: list[float] = []
    with_plate = [s for s in sample if s.plate is not None]
    for scene in with_plate:
        started = time.perf_counter()
        result = engine(scene.image)
        times.append((time.perf_counter() - started) * 1000)
        lines = [normalise(t) for t in (result.txts or ())]
        found += scene.plate in lines
        exact += next((t for t in lines if fits_format(t)), None) == scene.plate
    return {
        "backend": "rapidocr whole frame (det + cls + rec, defaults)",
        "images": len(with_plate),
        "plate_among_lines": round(found / len(with_plate), 4),
        "exact_match": round(exact / len(with_plate), 4),
        "ms_p50": _percentile(times, 0.5),
        "ms_p99": _percentile(times, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON line."""
    ap = argparse.ArgumentParser(prog="python -m bench.recognize", description=__doc__)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negatives", type=float, default=0.1)
    ap.add_argument("--baseline-images", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--region", action="append", default=[])
    ap.add_argument(
        "--det-side", type=int, action="append", default=[],
        help="also measure the recogniser with its detector at this long side (repeatable)",
    )  # fmt: skip
    ap.add_argument("--tricky", type=int, default=10, help="scenes of each tricky kind")
    args = ap.parse_args(argv)
    if args.images < 1:
        ap.error("--images must be at least 1")
    print(f"generating {args.images} scenes (seed {args.seed})", file=sys.stderr)
    sample = scenes(args.images, args.seed, args.negatives)
    cfg = RecognizerConfig(regions=tuple(args.region), threads=args.threads)
    print("measuring the recogniser", file=sys.stderr)
    figures = measure(cfg, sample)
    figures["plates"] = sum(s.plate is not None for s in sample)
    for side in args.det_side:
        print(f"measuring the recogniser, detector at {side} px", file=sys.stderr)
        variant = measure(cfg, sample, side)
        figures[f"det_{side}"] = {k: v for k, v in variant.items() if k != "backend"}
    if args.tricky > 0:
        print(f"measuring the recogniser on {args.tricky} tricky scenes a kind", file=sys.stderr)
        figures["tricky"] = tricky(cfg, args.tricky)
    if args.baseline_images > 0:
        print(f"measuring the baseline on {args.baseline_images} scenes", file=sys.stderr)
        figures["baseline"] = baseline(sample[: args.baseline_images], args.threads)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
