"""OpenCV video capture kept at its latest frame, for event snapshots.

One capture thread per camera reads frames (cv2.VideoCapture on an RTSP/HTTP
URL, a USB device index or /dev/videoN path, or a video file that is looped for
demos) and keeps only the newest frame: memory stays at one frame however slow
the consumer is. `snapshot_jpeg()` encodes that frame if it is fresh.

Live streams are drained continuously with `grab()` and only every 1/fps_limit
seconds is a frame `retrieve()`d, so the decoder's buffer never lags behind
the gate; files are paced to fps_limit instead. A dropped stream, an ended or
vanished file, or a camera that will not open is retried with capped,
jittered backoff; the log records "lost" and "recovered" once each.

A consumer that must see every kept frame (gated.hardware.recognition_source: motion
and plate recognition) passes `on_frame`; it runs on the capture thread, so it must
be quick and never block (hand heavy work to a worker). `on_state(up, detail)` is
told when the stream is lost and recovered, for the health report. A file may also
be played once (`loop_file=False`): at its end the thread idles until stopped.

Exercised here only with video and image files written by the tests and with
unreachable URLs: no real RTSP camera or USB webcam was attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from gated.backoff import Backoff
from gated.config import CameraConfig
from gated.errors import HardwareError
from gated.hardware.threads import run_in_thread

__all__ = ["CameraStatus", "OpenCvCamera"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
FrameHook = Callable[["np.ndarray[Any, Any]", float], None]  # (frame, monotonic time)
StateHook = Callable[[bool, str], None]  # (up, detail)


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """What the status page shows about a camera."""

    connected: bool
    last_frame_age_s: float | None  # None: no frame yet
    reconnects: int  # successful reopenings after a loss
    frames: int  # frames kept since start
    last_error: str | None


def _open_capture(url: str, open_timeout_ms: int, read_timeout_ms: int) -> cv2.VideoCapture:
    """Open the stream named by `url` with the backend and timeouts that suit it."""
    if url.isdigit():
        cap = cv2.VideoCapture(int(url))
    elif url.startswith("/dev/video"):
        cap = cv2.VideoCapture(url, cv2.CAP_V4L2)
    elif "://" in url:
        # Without timeouts FFmpeg can block for ~30 s on a dead camera; the thread
        # must notice stop requests and report the loss promptly.
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            open_timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            read_timeout_ms,
        ]
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    else:
        cap = cv2.VideoCapture(url)
    if cap.isOpened() and (url.isdigit() or url.startswith("/dev/video")):
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # USB: keep the driver from queueing old frames
    return cap


class OpenCvCamera:
    """A video stream (RTSP URL, USB index/device, or looped file) held at its latest frame."""

    def __init__(
        self,
        name: str,
        cfg: CameraConfig,
        *,
        clock: Clock = time.monotonic,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        open_timeout_ms: int = 5000,
        read_timeout_ms: int = 5000,
        rng: random.Random | None = None,
        on_frame: FrameHook | None = None,
        on_state: StateHook | None = None,
        loop_file: bool = True,
    ) -> None:
        self.name = name
        self._on_frame = on_frame
        self._on_state = on_state
        self._loop_file = loop_file
        self._cfg = cfg
        self._clock = clock
        self._reconnect_initial = reconnect_initial_s
        self._reconnect_max = reconnect_max_s
        self._open_timeout_ms = open_timeout_ms
        self._read_timeout_ms = read_timeout_ms
        self._rng = rng or random.Random()
        self._is_file = not (cfg.url.isdigit() or cfg.url.startswith("/dev/") or "://" in cfg.url)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frame: np.ndarray[Any, Any] | None = None
        self._frame_at = 0.0
        self._frames = 0
        self._connected = False
        self._reconnects = 0
        self._state = "new"  # new -> up <-> down; logged on change only
        self._ever_up = False
        self._last_error: str | None = None

    # --- consumer side (any thread) ---------------------------------------------------

    def latest_frame(self) -> np.ndarray[Any, Any] | None:
        """The newest fresh frame (BGR, not a copy: do not modify it), or None."""
        with self._lock:
            frame, at = self._frame, self._frame_at
        if frame is None or self._clock() - at > self._cfg.stale_after_s:
            return None
        return frame

    def snapshot_jpeg(self) -> bytes | None:
        """JPEG of the latest fresh frame at the configured quality, or None when there is none.

        Encoding a full-HD frame takes tens of milliseconds on a Pi: from the
        event loop, prefer `await snapshot()`.
        """
        frame = self.latest_frame()
        if frame is None:
            return None
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self._cfg.jpeg_quality])
        return buf.tobytes() if ok else None

    async def snapshot(self) -> bytes | None:
        """snapshot_jpeg() in a worker thread, so encoding never stalls the event loop."""
        return await asyncio.to_thread(self.snapshot_jpeg)

    @property
    def status(self) -> CameraStatus:
        """Connection state, age of the latest frame, reconnect count."""
        with self._lock:
            age = None if self._frame is None else max(0.0, self._clock() - self._frame_at)
            return CameraStatus(
                connected=self._connected,
                last_frame_age_s=age,
                reconnects=self._reconnects,
                frames=self._frames,
                last_error=self._last_error,
            )

    # --- owner ------------------------------------------------------------------------

    async def run(self) -> None:
        """Capture until cancelled (then stop and join the thread); HardwareError if it dies."""
        self._stop.clear()
        try:
            # A capture blocked in FFmpeg returns within read_timeout_ms.
            failure = await run_in_thread(
                f"camera-{self.name}",
                self._capture_forever,
                self._stop,
                join_timeout_s=self._read_timeout_ms / 1000 + 5,
            )
        finally:
            with self._lock:
                self._connected = False
        if failure is not None:
            raise HardwareError(f"camera {self.name}: capture thread failed") from failure
        raise HardwareError(f"camera {self.name}: capture thread stopped")

    # --- capture thread -----------------------------------------------------------

    def _capture_forever(self) -> None:
        backoff = Backoff(self._reconnect_initial, self._reconnect_max, rng=self._rng)
        while not self._stop.is_set():
            cap = _open_capture(self._cfg.url, self._open_timeout_ms, self._read_timeout_ms)
            opened = cap.isOpened()
            try:
                if not opened:
                    self._lost("cannot open video file" if self._is_file else "cannot open stream")
                    got_frames = False
                else:
                    got_frames = self._read_until_drop(cap)
            finally:
                cap.release()
            if got_frames:
                backoff.reset()
                if self._is_file and self._loop_file:
                    continue  # end of a demo file: loop it at once
                if self._is_file:
                    log.info("camera %s: end of the video file", self.name)
                    self._stop.wait()  # played once: nothing more to read
                    return
                self._lost("stream dropped")
            elif opened:  # opened but unreadable: a corrupt file, a camera sending nothing
                self._lost(
                    "video file gave no frames (corrupt, or not a video)"
                    if self._is_file else "stream gave no frames")
            if self._stop.wait(backoff.next_delay()):
                return

    def _read_until_drop(self, cap: cv2.VideoCapture) -> bool:
        """Read frames into the one-frame slot until the stream ends; True if any arrived."""
        interval = 1.0 / self._cfg.fps_limit
        next_due = time.monotonic()
        got = False
        while not self._stop.is_set():
            if self._is_file:
                # A file would decode as fast as the CPU allows: pace it like a camera.
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return got
                ok, frame = cap.read()
            else:
                # Drain every frame so FFmpeg's buffer never lags; decode colour only when due.
                if not cap.grab():
                    return got
                if time.monotonic() < next_due:
                    continue
                ok, frame = cap.retrieve()
            if not ok or frame is None:
                return got
            next_due = max(next_due + interval, time.monotonic())
            if not got:
                got = True
                self._up()
            with self._lock:
                self._frame = frame  # the previous frame is released here: one frame kept
                self._frame_at = at = self._clock()
                self._frames += 1
            if self._on_frame is not None:
                self._on_frame(frame, at)
        return got

    def _up(self) -> None:
        with self._lock:
            if self._state == "down":
                self._reconnects += self._ever_up  # a first open after failures is no reconnect
                log.warning("camera %s: recovered", self.name)
            elif self._state == "new":
                log.info("camera %s: streaming", self.name)
            self._state = "up"
            self._ever_up = True
            self._connected = True
            self._last_error = None
        if self._on_state is not None:
            self._on_state(True, "streaming")

    def _lost(self, why: str) -> None:
        with self._lock:
            self._connected = False
            self._last_error = why
            if self._stop.is_set() or self._state == "down":
                return
            # The URL may carry credentials (rtsp://user:pass@…): never log it.
            log.warning("camera %s: %s", self.name, why)
            self._state = "down"
        if self._on_state is not None:
            self._on_state(False, why)


def _settle(fut: asyncio.Future[BaseException | None], value: BaseException | None) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        fut.set_result(value)
