"""`gated recognize [--region R …] IMAGE…`: read the plates in pictures, one JSON line each.

For installers tuning a camera and for evaluating the recogniser on any set of
photos. stderr says first which backend and models run and where they were
found; stdout then holds one JSON object per image, in the order given:

    {"file", "plate" (best, normalised, or null), "confidence", "region", "box",
     "candidates": [{"plate", "confidence", "region", "box", "chars"}…], "ms"}

A file that is not a readable picture gets the same object with plate null and
an "error" saying why, and the other files are still read. Exit status: 0 when
every file was read (with or without a plate), 1 when any file could not be,
69 when no recogniser can be loaded (missing package or model files), 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EX_OK, EX_SOME_FAILED, EX_UNAVAILABLE = 0, 1, 69
MAX_FILE_BYTES = 64 * 1024 * 1024  # a camera still is a few MB; more is not a picture to read
MAX_PIXELS = 4096 * 4096  # checked from the header, before anything is decoded


class ImageError(ValueError):
    """A file that is not a picture the recogniser can read."""


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """Register `gated recognize` on the `gated` command's subparsers."""
    from gated.config import RecognizerConfig

    default = RecognizerConfig()
    p = sub.add_parser(
        "recognize",
        help="read the plates in pictures (one JSON line per image)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    p.add_argument(
        "--region",
        action="append",
        default=[],
        help="accept this region's plate format (repeatable; default: every known format)",
    )
    p.add_argument("--backend", default=default.backend, help="recogniser backend")
    p.add_argument("--model-dir", help="folder of model files (default: the installed package's)")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=default.min_confidence,
        help=f"report plates at least this confident, 0..1 (default {default.min_confidence})",
    )
    p.add_argument("--threads", type=int, default=default.threads, help="CPU threads")
    p.set_defaults(func=func)


def _config(args: argparse.Namespace) -> Any:
    """The RecognizerConfig the arguments describe, validated like the config file's section."""
    import msgspec

    from gated.config import RecognizerConfig

    raw = {
        "backend": args.backend,
        "model_dir": args.model_dir,
        "regions": [r.lower() for r in args.region],
        "min_confidence": args.min_confidence,
        "threads": args.threads,
    }
    try:
        return msgspec.convert(raw, RecognizerConfig)
    except msgspec.ValidationError as err:
        raise SystemExit(f"gated recognize: {err} (see --help)") from err


def run(args: argparse.Namespace) -> int:
    """Read every image given and print one JSON object per image."""
    from gated.hardware.recognizer import RecognizerError, load_recognizer

    cfg = _config(args)
    try:
        recognizer = load_recognizer(cfg)
    except RecognizerError as err:
        print(f"gated recognize: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    d = recognizer.describe()
    print(
        f"gated recognize: backend {d['backend']}, model {d['model']}, "
        f"from {d['path']} ({'installed package' if d['source'] == 'package' else 'model_dir'}), "
        f"regions {', '.join(cfg.regions) or 'all'}, min confidence {cfg.min_confidence}",
        file=sys.stderr,
    )
    status = EX_OK
    for name in args.images:
        result = read_file(recognizer, Path(name))
        if "error" in result:
            status = EX_SOME_FAILED
        print(json.dumps(result), flush=True)
    return status


def read_file(recognizer: Any, path: Path) -> dict[str, Any]:
    """The JSON object of one image: its plates, or an error when it cannot be read."""
    started = time.perf_counter()
    out: dict[str, Any] = {"file": str(path), "plate": None, "confidence": None,
                           "region": None, "box": None, "candidates": []}  # fmt: skip
    try:
        frame = load_image(path)
        reads = recognizer.read(frame)
    except (ImageError, OSError, ValueError) as err:
        out["error"] = str(err) if not isinstance(err, OSError) else f"cannot read: {err.strerror}"
        out["ms"] = round((time.perf_counter() - started) * 1000, 1)
        return out
    out["candidates"] = [
        {
            "plate": r.text,
            "confidence": round(r.confidence, 4),
            "region": r.region,
            "box": list(r.box),
            "chars": [[[c, round(p, 4)] for c, p in pos if p >= 1e-4] for pos in r.chars],
        }
        for r in reads
    ]
    if reads:
        best = reads[0]
        out.update(plate=best.text, confidence=round(best.confidence, 4), region=best.region,
                   box=list(best.box))  # fmt: skip
    out["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


def load_image(path: Path) -> Any:
    """A BGR frame from a JPEG or PNG file; ImageError naming what is wrong with it."""
    import cv2
    import numpy as np

    size = path.stat().st_size
    if size == 0:
        raise ImageError("empty file")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"file of {size} bytes is too large (limit {MAX_FILE_BYTES})")
    data = path.read_bytes()
    width, height = image_size(data)
    if width * height > MAX_PIXELS:
        raise ImageError(f"picture of {width}x{height} is too large (limit {MAX_PIXELS} pixels)")
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ImageError("not a decodable picture")
    return frame


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header; ImageError for other or broken files.

    Read before decoding so a small file claiming a huge picture (a decompression
    bomb) is refused without allocating it; a JPEG without its end marker is cut off.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        if not data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
            raise ImageError("truncated JPEG (no end-of-image marker)")
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                raise ImageError("broken JPEG header")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            # SOF0-SOF15 carry the size, except DHT (C4), JPG (C8) and DAC (CC)
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height = int.from_bytes(data[i + 5 : i + 7], "big")
                width = int.from_bytes(data[i + 7 : i + 9], "big")
                return width, height
            i += 2 + length
        raise ImageError("JPEG without a frame header")
    raise ImageError("not a JPEG or PNG picture")
