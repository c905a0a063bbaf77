"""Where the text lines of a frame are: PP-OCR's detection network at a reduced size.

The detector runs on the frame shrunk to DET_SIDE pixels on its long side
(a plate a camera can read stays 10+ pixels tall there), not on the 736-pixel
short side whole-frame OCR uses: a tenth of the pixels, a fifth of the time.
Its probability map is cut into lines the DB way (threshold, contours, rotated
rectangles grown by the unclip ratio) and each line is cut out of the full-size
frame, deskewed, for the recognition network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gated.hardware.recognizer import RecognizerError

DET_SIDE = 480  # long side the detector sees
THRESH = 0.3  # DB probability threshold for a text pixel
BOX_THRESH = 0.5  # a line's mean probability below this is noise
UNCLIP = 1.6  # DB's unclip ratio: how far a shrunk text kernel is grown back
MIN_HEIGHT = 6  # pixels (in the detector's image): smaller lines cannot be read
MAX_LINES = 8  # lines read per frame, the most plate-like first: bounds the work
PAD = 0.3  # line height added to a line's width before it is cut out


@dataclass(frozen=True, slots=True)
class Line:
    """A text line: its upright crop, its box in the frame and the detector's score."""

    crop: np.ndarray
    box: tuple[int, int, int, int]  # x, y, w, h in frame pixels
    score: float


class LineDetector:
    """PP-OCR's DB text detector on a reduced frame."""

    def __init__(self, model: Path, threads: int = 1, side: int = DET_SIDE) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise RecognizerError(f"cannot load detection model {model}: {err}") from err
        self.input_name = self.session.get_inputs()[0].name
        self.side = side

    def lines(self, frame: np.ndarray) -> list[Line]:
        """Text lines of a BGR frame, the most plate-like first, at most MAX_LINES."""
        h, w = frame.shape[:2]
        ratio = self.side / max(h, w)
        # the network wants multiples of 32
        dh, dw = (max(32, round(d * ratio / 32) * 32) for d in (h, w))
        small = cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_AREA)
        x = (small.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
        prob = self.session.run(None, {self.input_name: x})[0][0, 0]
        rects = _rects(prob)
        rects += _joined(rects)
        sx, sy = w / dw, h / dh
        found: list[tuple[float, Line]] = []
        for ((cx, cy), (rw, rh), angle), score in rects:
            # a little more room at both ends: the DB box tends to clip the outer characters
            rect = ((cx * sx, cy * sy), ((rw + rh * PAD) * sx, rh * sy), angle)
            crop = _cut(frame, rect)
            if crop is None:
                continue
            pts = cv2.boxPoints(rect)
            x0, y0 = np.floor(pts.min(axis=0)).astype(int)
            x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            aspect = rw / rh
            # plate lines are 2-9 times wider than tall; rank those first, then by size
            plateness = score * (1.0 if 1.8 <= aspect <= 9 else 0.5) * min(1.0, rh * sy / 40)
            box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
            found.append((plateness, Line(crop, box, score)))
        found.sort(key=lambda item: -item[0])
        return [line for _, line in found[:MAX_LINES]]


Rect = tuple[tuple[float, float], tuple[float, float], float]  # cv2.minAreaRect's shape


def _rects(prob: np.ndarray) -> list[tuple[Rect, float]]:
    """Text lines of a DB probability map as (rotated rectangle, score), width the long side."""
    mask = (prob > THRESH).astype(np.uint8)
    mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        if len(contour) < 4:
            continue
        (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
        if min(rw, rh) < MIN_HEIGHT * 0.5:
            continue
        bx, by, bw, bh = cv2.boundingRect(contour)
        region = mask[by : by + bh, bx : bx + bw]
        score = float(cv2.mean(prob[by : by + bh, bx : bx + bw], region)[0])
        if score < BOX_THRESH:
            continue
        # DB unclip: grow by area * ratio / perimeter on every side
        grow = rw * rh * UNCLIP / max(1e-6, 2 * (rw + rh))
        rw, rh = rw + 2 * grow, rh + 2 * grow
        if rw < rh:  # OpenCV's angle convention: make width the long side
            rw, rh, angle = rh, rw, angle - 90
        if rh < MIN_HEIGHT:
            continue
        out.append((((cx, cy), (rw, rh), angle), score))
    return out


def _joined(rects: list[tuple[Rect, float]]) -> list[tuple[Rect, float]]:
    """Neighbouring lines of one height on one baseline, joined: the detector splits a
    plate at its wide gaps ("QE" | "240 MA"), and a split plate reads as no plate."""
    out = []
    for i, (a, sa) in enumerate(rects):
        (ax, ay), (aw, ah), _ = a
        for b, sb in rects[i + 1 :]:
            (bx, by), (bw, bh), _ = b
            if max(ah, bh) > 1.4 * min(ah, bh) or abs(ay - by) > 0.35 * max(ah, bh):
                continue
            gap = abs(ax - bx) - (aw + bw) / 2
            if gap > 1.2 * max(ah, bh):
                continue
            points = np.concatenate([cv2.boxPoints(a), cv2.boxPoints(b)])
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(points)
            if rw < rh:
                rw, rh, angle = rh, rw, angle - 90
            out.append((((cx, cy), (rw, rh), angle), min(sa, sb)))
    return out


def _cut(frame: np.ndarray, rect: tuple) -> np.ndarray | None:
    """The rotated rectangle of frame, warped upright (width along the text)."""
    (_cx, _cy), (rw, rh), _angle = rect
    w, h = round(rw), round(rh)
    if w < 4 or h < 4:
        return None
    box = cv2.boxPoints(rect).astype(np.float32)
    # order the corners: top-left, top-right, bottom-right, bottom-left
    s, d = box.sum(axis=1), np.diff(box, axis=1).ravel()
    ordered = np.float32([box[s.argmin()], box[d.argmin()], box[s.argmax()], box[d.argmax()]])
    target = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    m = cv2.getPerspectiveTransform(ordered, target)
    return cv2.warpPerspective(
        frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
