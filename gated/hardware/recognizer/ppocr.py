"""PP-OCR text recognition (an ONNX CTC model) on plate crops, with per-character candidates.

Runs only the recognition network of PP-OCR through onnxruntime: the plate
locator has already cut out the lines worth reading, so the detection network
(most of whole-frame OCR's time) never runs. The CTC output is decoded here
rather than by rapidocr so each character keeps its runners-up (O vs 0 …) for
the plate-format matcher.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from gated.hardware.recognizer import RecognizerError

REC_HEIGHT = 48  # the model's input height
MAX_WIDTH = 480  # a plate line never needs more; bounds the work per crop
TOP_K = 3  # candidates kept per character
# what separates the groups of a plate: a space, a hyphen, a dot in the middle
SOFT_SEPARATORS = frozenset(" -\u2010\u2011\u2012\u2013\u2014\u00b7\u2022\u30fb")


class TextRecognizer:
    """A PP-OCR recognition model: BGR line crops in, per-character candidates out."""

    def __init__(self, model: Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise RecognizerError(
                "onnxruntime is not installed (pip install 'gated[recognize]')"
            ) from err
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise RecognizerError(f"cannot load recognition model {model}: {err}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if "character" not in meta:
            raise RecognizerError(f"{model}: no character list in the model's metadata")
        # PaddleOCR's CTC layout: 0 is the blank, then the dictionary, then a space
        self.charset = ["", *meta["character"].splitlines(), " "]
        self.input_name = self.session.get_inputs()[0].name
        # class → plate character (upper case A-Z0-9), or "" for everything else
        self._plate_char = np.array(
            [c.upper() if len(c) == 1 and c.isascii() and c.isalnum() else "" for c in self.charset]
        )
        self._alnum = np.flatnonzero(self._plate_char != "")

    def _prepare(self, crops: list[np.ndarray]) -> np.ndarray:
        """A float batch (N, 3, 48, W) of crops resized to the model's height, right-padded."""
        widths = [
            min(MAX_WIDTH, max(16, round(c.shape[1] * REC_HEIGHT / max(1, c.shape[0]))))
            for c in crops
        ]
        batch = np.zeros((len(crops), 3, REC_HEIGHT, max(widths)), np.float32)
        for i, (crop, w) in enumerate(zip(crops, widths, strict=True)):
            img = cv2.resize(crop, (w, REC_HEIGHT), interpolation=cv2.INTER_LINEAR)
            batch[i, :, :, :w] = (img.astype(np.float32).transpose(2, 0, 1) / 127.5) - 1.0
        return batch

    def read(self, crops: list[np.ndarray]) -> list[list[list[tuple[str, float]]]]:
        """Per crop, per character read: up to TOP_K (char, prob) over A-Z0-9, best first.

        A separator the model read (a hyphen, a space) is an empty position; any
        other mark ("/", ":") is a position holding only that mark.
        """
        if not crops:
            return []
        probs = self.session.run(None, {self.input_name: self._prepare(crops)})[0]
        return [self._decode(p) for p in probs]

    def _decode(self, probs: np.ndarray) -> list[list[tuple[str, float]]]:
        """Greedy CTC decode of one (T, C) probability matrix, keeping plate-alphabet candidates."""
        best = probs.argmax(axis=1)
        out: list[list[tuple[str, float]]] = []
        prev = 0
        for t, cls in enumerate(best):
            if cls == 0 or cls == prev:
                prev = cls
                continue
            prev = cls
            row = probs[t, self._alnum]
            # separators ("-", " ", "·") and other scripts are not characters of a plate,
            # unless the plate alphabet holds most of this step's mass anyway: they are
            # handed on as an empty position, a gap between groups of the plate
            # ("/", ":", "." … are no plate's separators: they are handed on as themselves,
            # and the format matcher never reads a plate across them)
            if self._plate_char[cls] == "" and row.sum() < 0.5:
                mark = self.charset[cls]
                if mark in SOFT_SEPARATORS:
                    if out and out[-1]:
                        out.append([])
                else:
                    out.append([(mark, float(probs[t, cls]))])
                continue
            merged: dict[str, float] = {}
            for k in np.argsort(row)[::-1][: TOP_K * 2]:
                ch = str(self._plate_char[self._alnum[k]])
                merged[ch] = merged.get(ch, 0.0) + float(row[k])  # 'o' and 'O' are one O
            ranked = sorted(merged.items(), key=lambda kv: -kv[1])[:TOP_K]
            out.append([(c, min(1.0, p)) for c, p in ranked])
        return out
