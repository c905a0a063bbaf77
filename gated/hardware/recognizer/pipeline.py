"""The rapidocr backend: PP-OCR detection (reduced) → line crops → PP-OCR recognition → formats.

Models come from the installed `rapidocr` package (its wheel carries the
PP-OCR ONNX files) or from RecognizerConfig.model_dir; nothing is downloaded.
Only onnxruntime runs them: rapidocr itself is never imported (it pulls in
its own config system and a downloader the gate has no use for).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gated.config import RecognizerConfig
from gated.hardware.recognizer import PlateRead, RecognizerError
from gated.hardware.recognizer.formats import Candidates, match_plate
from gated.hardware.recognizer.locate import Line, LineDetector
from gated.hardware.recognizer.ppocr import TextRecognizer

MAX_PIXELS = 4096 * 4096  # a larger frame is refused, not resized: no camera sends one
STRETCH_BELOW = 60  # grey levels (1st to 99th percentile): a flatter frame is stretched


def package_model_dir() -> Path | None:
    """The models folder of the installed rapidocr package (found without importing it)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if folder.is_dir() else None


def _pick(folder: Path, kind: str) -> Path:
    """The one ONNX model of a kind ("det" or "rec") in folder; RecognizerError otherwise."""
    found = sorted(p for p in folder.glob("*.onnx") if f"_{kind}" in p.name or p.stem == kind)
    if not found:
        raise RecognizerError(f"no PP-OCR {kind} model (*_{kind}*.onnx or {kind}.onnx) in {folder}")
    return found[-1]  # sorted by name: the newest PP-OCR version of the folder


class PpocrPlateRecognizer:
    """Plate recogniser: PP-OCR det + rec through onnxruntime, plate formats after."""

    name = "rapidocr"

    def __init__(self, cfg: RecognizerConfig) -> None:
        if cfg.model_dir:
            folder, self.source = Path(cfg.model_dir), "path"
            if not folder.is_dir():
                raise RecognizerError(f"model_dir {folder} is not a folder")
        else:
            found = package_model_dir()
            if found is None:
                raise RecognizerError(
                    "no models: the rapidocr package is not installed "
                    "(pip install 'gated[recognize]') and no model_dir is set"
                )
            folder, self.source = found, "package"
        self.det_path, self.rec_path = _pick(folder, "det"), _pick(folder, "rec")
        self.recognizer = TextRecognizer(self.rec_path, cfg.threads)
        self.detector = LineDetector(self.det_path, cfg.threads)
        self.regions = tuple(cfg.regions)
        self.min_confidence = cfg.min_confidence

    def describe(self) -> dict[str, str]:
        """Which backend and models run, and where they were found."""
        return {
            "backend": self.name,
            "model": f"{self.det_path.stem} + {self.rec_path.stem}",
            "path": str(self.rec_path.parent),
            "source": self.source,
        }

    def read(self, frame: np.ndarray) -> list[PlateRead]:
        """Plates in a BGR uint8 frame, best first; [] when none fits a format well enough."""
        frame = _stretched(_as_bgr(frame))
        lines = self.detector.lines(frame)
        texts = self.recognizer.read([ln.crop for ln in lines])
        return plates_of(lines, texts, self.regions, self.min_confidence)


def plates_of(
    lines: Sequence[Line], texts: Sequence[Candidates], regions: tuple[str, ...], floor: float
) -> list[PlateRead]:
    """The plates that the read lines spell, best first; [] when none fits a format well enough."""
    reads: dict[str, PlateRead] = {}
    for line, chars in zip(lines, texts, strict=True):
        found = match_plate(chars, regions)
        if found is None or found.confidence < floor:
            continue
        if found.text in reads and reads[found.text].confidence >= found.confidence:
            continue
        reads[found.text] = PlateRead(
            found.text, round(found.confidence, 4), line.box, found.chars, found.region
        )
    return _distinct(sorted(reads.values(), key=lambda r: -r.confidence))


def _stretched(frame: np.ndarray) -> np.ndarray:
    """A very flat frame (a dark night) stretched to the full range; others untouched.

    Stretching every frame under 160 grey levels cost as many plates as it won on the
    generated scenes (noise and JPEG blocks grow with it); under 60 it only helps.
    """
    import cv2

    small = frame[::8, ::8]
    low, high = np.percentile(small, (1, 99))
    if high - low >= STRETCH_BELOW or high <= low:
        return frame
    lut = np.clip((np.arange(256, dtype=np.float32) - low) * 255.0 / (high - low), 0, 255)
    return cv2.LUT(frame, lut.astype(np.uint8))


def _distinct(reads: list[PlateRead]) -> list[PlateRead]:
    """Reads of different places in the frame: of reads on one spot, the longest text.

    A line and the same line joined to its neighbour can both spell a plate; the
    shorter is the part ("240MA" of "QE 240 MA"), never a second car.
    """
    kept: list[PlateRead] = []
    for read in sorted(reads, key=lambda r: (-len(r.text), -r.confidence)):
        if not any(_overlap(read.box, other.box) > 0.6 for other in kept):
            kept.append(read)
    return sorted(kept, key=lambda r: -r.confidence)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection of two x, y, w, h boxes over the smaller one's area."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / max(1, min(a[2] * a[3], b[2] * b[3]))


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    """The frame as a BGR uint8 array; ValueError for anything that is not a picture."""
    import cv2

    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError("a frame must be a uint8 numpy array")
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be BGR (h, w, 3), got shape {frame.shape}")
    if min(frame.shape[:2]) < 16:
        raise ValueError(f"a frame of {frame.shape[1]}x{frame.shape[0]} is too small")
    if frame.shape[0] * frame.shape[1] > MAX_PIXELS:
        raise ValueError(f"a frame of {frame.shape[1]}x{frame.shape[0]} is too large")
    return frame


def build_rapidocr(cfg: RecognizerConfig) -> PpocrPlateRecognizer:
    """The rapidocr backend of load_recognizer."""
    return PpocrPlateRecognizer(cfg)
