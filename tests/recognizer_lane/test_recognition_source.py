"""The recognising camera's CPU discipline on its own: triggers, tail, bounded queue, failures.

The recogniser here is a small double that records the frames it was asked to read
(the end-to-end tests in this folder use the real one); the camera is real OpenCV
reading video files written by the tests.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from gated.config import CameraSourceConfig
from gated.errors import HardwareError
from gated.hardware.recognition_source import QUEUE_FRAMES, MotionDetector, RecognisingCamera
from gated.hardware.recognizer import PlateRead as Found
from gated.model import PlateRead
from tests.recognizer_lane.video import car_passage, empty_street


class RecordingRecognizer:
    """Reads one fixed plate from every frame, slowly if asked; counts its calls."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0, text: str = "AB123CD") -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.text = text
        self.lock = threading.Lock()

    def describe(self) -> dict[str, str]:
        return {"backend": "recording"}

    def read(self, frame: np.ndarray[Any, Any]) -> list[Found]:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return [Found(self.text, 0.9, (1, 2, 3, 4), region="uk")]


def source(url: Path, **options: Any) -> CameraSourceConfig:
    doc = {"kind": "camera", "name": "cam", "url": str(url), "fps_limit": 30, "at_end": "stop",
           **options}
    return msgspec.convert(doc, CameraSourceConfig)


async def play(cam: RecognisingCamera, seconds: float) -> list[PlateRead]:
    """Run the camera for `seconds`; the reads it emitted."""
    reads: list[PlateRead] = []

    def emit(read: PlateRead) -> asyncio.Future[int | None]:
        reads.append(read)
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    task = asyncio.create_task(cam.run(emit))
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return reads


async def test_motion_starts_recognition_and_a_still_street_never_does(tmp_path: Path) -> None:
    engine = RecordingRecognizer()
    still = RecognisingCamera(source(empty_street(tmp_path / "e.avi", 1.0)), "in",
                              recognizer=engine)
    assert await play(still, 1.5) == []
    assert still.stats.frames >= 9 and engine.calls == 0 and still.stats.triggered == 0

    video, _ = car_passage(tmp_path / "car.avi", 1, empty_s=0.5, drive_s=0.5, stand_s=0.5)
    cam = RecognisingCamera(source(video, tail_s=0.0), "in", recognizer=engine)
    reads = await play(cam, 1.5)
    # Only the frames in which the car moved were read: not the empty street before it,
    # and (no tail) not the car standing still after it.
    assert 0 < engine.calls <= 6 and cam.stats.triggered <= 6
    read = reads[0]
    assert (read.access_point, read.source, read.text, read.vendor) == ("in", "cam", "AB123CD",
                                                                        "gated")
    assert read.snapshot is not None and read.snapshot[:2] == b"\xff\xd8"
    assert read.extra == {"region": "uk", "box": [1, 2, 3, 4]}


async def test_the_tail_keeps_reading_a_car_that_stopped(tmp_path: Path) -> None:
    video, _ = car_passage(tmp_path / "car.avi", 1, empty_s=0.5, drive_s=0.5, stand_s=1.5)
    engine = RecordingRecognizer()
    cam = RecognisingCamera(source(video, tail_s=10.0), "in", recognizer=engine)
    await play(cam, 2.0)
    assert engine.calls >= 15  # the standing frames too


async def test_a_slow_recogniser_drops_the_oldest_frames_not_the_capture(tmp_path: Path) -> None:
    engine = RecordingRecognizer(delay_s=0.2)
    cam = RecognisingCamera(source(empty_street(tmp_path / "e.avi", 2.0), trigger="always"),
                            "in", recognizer=engine)
    started = time.monotonic()
    await play(cam, 1.5)
    assert time.monotonic() - started < 3.0  # cancelled promptly despite the slow reads
    # All 20 frames were captured in 0.7 s, though reading them all would take 4 s.
    assert cam.stats.frames == 20 and engine.calls <= 9
    assert cam.stats.dropped >= cam.stats.frames - engine.calls - QUEUE_FRAMES > 0


async def test_presence_triggers_and_its_end_leaves_a_tail(tmp_path: Path) -> None:
    engine = RecordingRecognizer()
    cam = RecognisingCamera(source(empty_street(tmp_path / "e.avi", 3.0), trigger="presence",
                                   tail_s=0.3), "in", recognizer=engine)
    task = asyncio.create_task(play(cam, 2.5))
    await asyncio.sleep(0.5)
    assert engine.calls == 0
    cam.on_presence(True, time.monotonic())
    await asyncio.sleep(0.5)
    assert engine.calls > 5
    cam.on_presence(False, time.monotonic())
    await asyncio.sleep(0.5)
    after_tail = engine.calls
    await asyncio.sleep(0.5)
    await task
    assert engine.calls == after_tail


async def test_a_recogniser_that_cannot_load_leaves_the_camera_streaming(tmp_path: Path) -> None:
    states: list[tuple[bool, str]] = []
    cfg = source(empty_street(tmp_path / "e.avi", 2.0), trigger="always",
                 recognizer={"model_dir": str(tmp_path / "no-models")})
    cam = RecognisingCamera(cfg, "in", on_state=lambda up, d: states.append((up, d)))
    assert await play(cam, 1.0) == []
    assert cam.failure is not None and "recogniser not loaded" in cam.failure
    assert (False, cam.failure) in states
    assert states[-1] == (False, cam.failure)  # the stream coming up does not hide it
    assert cam.snapshot_jpeg() is not None  # still the lane's picture source


@pytest.mark.parametrize(("roi", "moved"), [((0.0, 0.0, 0.5, 1.0), True),
                                            ((0.5, 0.0, 1.0, 1.0), False)])
def test_motion_counts_only_inside_the_region_of_interest(
    roi: tuple[float, float, float, float], moved: bool
) -> None:
    detector = MotionDetector(roi, 0.02)
    frame = np.full((240, 320, 3), 90, np.uint8)
    assert not detector.moved(frame)
    changed = frame.copy()
    changed[60:180, 20:140] = 250  # something appears in the left half
    assert detector.moved(changed) is moved


async def test_a_worker_that_dies_ends_the_source_for_its_owner_to_restart(
    tmp_path: Path,
) -> None:
    cam = RecognisingCamera(source(empty_street(tmp_path / "e.avi", 2.0), trigger="always"),
                            "in", recognizer=RecordingRecognizer(text="AB123CD"))

    def broken(*_: object) -> None:
        raise RuntimeError("encoder gone")

    cam._recognise = broken  # type: ignore[method-assign]
    with pytest.raises(HardwareError, match="recognition failed"):
        await asyncio.wait_for(cam.run(lambda read: asyncio.get_running_loop().create_future()),
                               5.0)
    assert not cam.camera.status.connected  # the capture thread was stopped too
