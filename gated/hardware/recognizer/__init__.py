"""On-device licence-plate recognition: a frame in, plate reads out.

`load_recognizer(cfg)` builds a backend from a RecognizerConfig. Importing this
package is cheap: the OCR runtime (onnxruntime, the models) is imported and
loaded only when a recogniser is built, so a daemon without a recognising
camera never pays its memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gated.errors import HardwareError

if TYPE_CHECKING:
    import numpy

    from gated.config import RecognizerConfig

__all__ = ["BACKENDS", "PlateRead", "Recognizer", "RecognizerError", "load_recognizer"]


class RecognizerError(HardwareError):
    """A recogniser cannot be built (missing runtime, missing or broken model files)."""


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One plate found in a frame."""

    text: str  # normalised plate text (gated.plates normalisation)
    confidence: float  # 0..1, the whole plate
    box: tuple[int, int, int, int]  # x, y, w, h in the frame's pixels
    chars: tuple[tuple[tuple[str, float], ...], ...] = ()  # per position: (char, prob), best first
    region: str | None = None  # the plate format matched, e.g. "uk", "eu", "us"


@runtime_checkable
class Recognizer(Protocol):
    """A plate recogniser: blocking CPU work, to be called from a worker thread."""

    name: str

    def describe(self) -> dict[str, str]:
        """{"backend", "model", "path", "source": "package" | "path"}: what runs and from where."""
        ...

    def read(self, frame: numpy.ndarray) -> list[PlateRead]:
        """Plates in a BGR uint8 frame, best first; [] when there is none."""
        ...


# backend name → "module:factory"; the module is imported only when that backend is loaded
BACKENDS: dict[str, str] = {
    "rapidocr": "gated.hardware.recognizer.pipeline:build_rapidocr",
}


def load_recognizer(cfg: RecognizerConfig) -> Recognizer:
    """Build the configured backend (imports its runtime now); RecognizerError when it cannot."""
    import importlib

    target = BACKENDS.get(cfg.backend)
    if target is None:
        known = ", ".join(sorted(BACKENDS))
        raise RecognizerError(f"unknown recogniser backend {cfg.backend!r} (known: {known})")
    module_name, factory = target.split(":")
    module = importlib.import_module(module_name)
    recognizer: Recognizer = getattr(module, factory)(cfg)
    return recognizer
