"""OpenCvCamera over real files written by the test: snapshots, looping, drops, staleness."""

from __future__ import annotations

import asyncio
import logging
import socket
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from gated.config import CameraConfig
from gated.errors import HardwareError
from gated.hardware.base import FrameSource
from gated.hardware.cameras import OpenCvCamera

W, H = 160, 120


def write_video(path: Path, frames: int = 8, size: tuple[int, int] = (W, H)) -> Path:
    """An MJPG .avi whose frames differ, so the camera visibly moves through it."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((size[1], size[0], 3), (i * 30) % 256, dtype=np.uint8)
        cv2.putText(img, str(i), (10, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
        writer.write(img)
    writer.release()
    return path


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(pred: Callable[[], bool]) -> None:
    """Wait until pred() holds (state set by the capture thread); fail when it never does."""
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never became true")


def camera(url: str | Path, **cfg: object) -> OpenCvCamera:
    options: dict[str, object] = {"fps_limit": 60.0, **cfg}
    return OpenCvCamera(
        "cam-1",
        CameraConfig(url=str(url), **options),  # type: ignore[arg-type]
        reconnect_initial_s=0.01,
        reconnect_max_s=0.05,
        open_timeout_ms=1000,
        read_timeout_ms=1000,
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_snapshot_is_a_jpeg_of_the_stream_size(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "gate.avi"))
    assert isinstance(cam, FrameSource)
    assert cam.snapshot_jpeg() is None  # nothing captured yet
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.frames > 0)
    jpeg = await cam.snapshot()
    await stop(task)
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (H, W, 3)
    assert cam.status.connected is False  # stopped


async def test_file_is_looped_without_counting_reconnects(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "short.avi", frames=3))
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.frames > 9)  # three passes over a 3-frame file
    status = cam.status
    await stop(task)
    assert status.connected
    assert status.reconnects == 0


async def test_still_image_works_as_a_camera(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), np.zeros((90, 200, 3), np.uint8))
    cam = camera(path)
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.snapshot_jpeg() is not None)
    jpeg = cam.snapshot_jpeg()
    await stop(task)
    assert jpeg is not None
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (90, 200, 3)


async def test_vanished_file_is_a_drop_and_its_return_a_reconnect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gated.hardware.cameras")
    path = write_video(tmp_path / "gate.avi", frames=3)
    cam = camera(path)
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.connected)
    path.unlink()
    await until(lambda: not cam.status.connected)
    # A read cut short as the file went may say "gave no frames" first; then it cannot open.
    await until(lambda: cam.status.last_error == "cannot open video file")
    await asyncio.sleep(0.2)  # several failed reopen attempts
    write_video(path, frames=3)
    await until(lambda: cam.status.connected)
    status = cam.status
    await stop(task)
    assert status.reconnects == 1
    assert status.last_error is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot open" in m for m in messages) == 1  # logged on state change only
    assert sum("recovered" in m for m in messages) == 1


async def test_unreachable_url_gives_no_snapshot_and_stops_promptly() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cam = camera(f"rtsp://user:secret@127.0.0.1:{port}/stream")
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.last_error is not None)
    assert cam.snapshot_jpeg() is None
    assert not cam.status.connected
    await stop(task)


async def test_missing_file_never_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cam = camera(tmp_path / "nope.avi")
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.last_error is not None)
    await asyncio.sleep(0.1)
    await stop(task)
    assert cam.status.frames == 0
    assert cam.status.last_frame_age_s is None
    assert "secret" not in caplog.text


async def test_stale_frame_gives_no_snapshot(tmp_path: Path) -> None:
    clock = FakeClock()
    cam = OpenCvCamera(
        "cam-1",
        CameraConfig(url=str(write_video(tmp_path / "g.avi")), fps_limit=60, stale_after_s=2.0),
        clock=clock,
    )
    task = asyncio.create_task(cam.run())
    await until(lambda: cam.status.frames > 0)
    await stop(task)  # the stream stops; the last frame stays behind
    assert cam.snapshot_jpeg() is not None
    clock.now += 1.9
    assert cam.snapshot_jpeg() is not None
    clock.now += 0.2
    assert cam.snapshot_jpeg() is None
    assert cam.latest_frame() is None
    assert cam.status.last_frame_age_s == pytest.approx(2.1)


async def test_jpeg_quality_is_applied(tmp_path: Path) -> None:
    noisy = tmp_path / "noisy.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(noisy), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    sizes = []
    for quality in (20, 95):
        cam = camera(noisy, jpeg_quality=quality)
        task = asyncio.create_task(cam.run())
        await until(lambda cam=cam: cam.snapshot_jpeg() is not None)
        sizes.append(len(cam.snapshot_jpeg() or b""))
        await stop(task)
    assert sizes[0] < sizes[1]


async def test_memory_stays_at_one_frame(tmp_path: Path) -> None:
    size = (640, 480)
    frame_bytes = size[0] * size[1] * 3
    cam = camera(write_video(tmp_path / "big.avi", frames=5, size=size))
    tracemalloc.start()
    try:
        task = asyncio.create_task(cam.run())
        await until(lambda: cam.status.frames >= 10)
        early, _ = tracemalloc.get_traced_memory()
        await until(lambda: cam.status.frames >= 60)
        late, _ = tracemalloc.get_traced_memory()
        await stop(task)
    finally:
        tracemalloc.stop()
    assert late - early < 2 * frame_bytes  # 50 more frames, yet at most one frame more


async def test_crashing_capture_thread_surfaces_as_hardware_error(tmp_path: Path) -> None:
    class Broken(OpenCvCamera):
        def _capture_forever(self) -> None:
            raise RuntimeError("decoder bug")

    cam = Broken("cam-x", CameraConfig(url=str(tmp_path / "x.avi")))
    with pytest.raises(HardwareError, match="cam-x"):
        await asyncio.wait_for(cam.run(), 5)
