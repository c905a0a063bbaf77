"""Video files of a car with a known plate driving into view, from bench.plate_scenes."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from bench.plate_scenes import make_scene

FPS = 10.0


def _street(shape: tuple[int, ...]) -> np.ndarray:
    """An empty scene: a still grey road with a kerb line, the same in every frame."""
    img = np.full(shape, 90, np.uint8)
    cv2.rectangle(img, (0, shape[0] * 2 // 3), (shape[1], shape[0]), (70, 70, 70), -1)
    cv2.line(img, (0, shape[0] * 2 // 3), (shape[1], shape[0] * 2 // 3), (200, 200, 200), 3)
    return img


def _write(path: Path, frames: list[np.ndarray]) -> Path:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    os.replace(tmp, path)
    return path


def car_passage(path: Path, seed: int, *, empty_s: float = 1.0, drive_s: float = 1.0,
                stand_s: float = 2.0) -> tuple[Path, str]:
    """An empty street, then a car (the scene of `seed`) sliding in and standing; its plate."""
    scene = make_scene(seed)
    assert scene.plate is not None
    street = _street(scene.image.shape)
    frames = [street.copy() for _ in range(int(empty_s * FPS))]
    steps = max(1, int(drive_s * FPS))
    w = scene.image.shape[1]
    for i in range(1, steps + 1):  # slides in from the left
        shift = int(w * (steps - i) / steps * 0.5)
        frame = street.copy()
        frame[:, shift:] = scene.image[:, : w - shift]
        frames.append(frame)
    frames += [scene.image.copy() for _ in range(int(stand_s * FPS))]
    return _write(path, frames), scene.plate


def empty_street(path: Path, seconds: float = 3.0) -> Path:
    """The street with nothing happening in it."""
    street = _street((480, 640, 3))
    return _write(path, [street.copy() for _ in range(int(seconds * FPS))])
