"""A plain camera (or a video file) that gated reads plates from itself.

A `kind = "camera"` source: an OpenCvCamera (gated.hardware.cameras) whose frames go,
while a vehicle is present, to the on-device recogniser (gated.hardware.recognizer),
and whose reads go to the lane like any plate-reading camera's, each with its frame as
the snapshot. The lane's consensus (gated.consensus, on by default for this kind)
decides when enough frames agree.

CPU discipline (a Raspberry Pi-class CPU, two to four cores):

* Recognition runs only while triggered, plus `tail_s`: on motion in the region of
  interest (the difference of two consecutive frames, grey and downscaled to at most
  160 px wide: well under a millisecond a frame), on the lane's loop detector
  (`presence`), or `always`. With no traffic only the motion check runs.
* The recogniser runs on one worker thread fed by a queue of at most QUEUE_FRAMES
  frames: when it falls behind, the oldest frame is dropped (counted), never the
  capture and never the event loop. Reads cross into asyncio through the one seam
  (gated.hardware.threads.call_in_loop).
* The recogniser and its runtime are imported and loaded on that worker thread when
  the source starts, never at import time. A recogniser that cannot be loaded (model
  missing, runtime absent) is logged and shown in health once; the camera keeps
  streaming for snapshots and the daemon keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from gated.config import CameraConfig, CameraSourceConfig
from gated.errors import HardwareError
from gated.hardware.base import Emit
from gated.hardware.cameras import OpenCvCamera
from gated.hardware.threads import call_in_loop, run_in_thread
from gated.model import PlateRead

if TYPE_CHECKING:
    from gated.hardware.recognizer import Recognizer

__all__ = ["MotionDetector", "RecognisingCamera", "RecognitionStats"]

log = logging.getLogger(__name__)

QUEUE_FRAMES = 2  # frames waiting for the recogniser; older ones are dropped
MOTION_WIDTH = 160  # the region of interest is compared at this width at most
PIXEL_CHANGE = 25  # grey levels a pixel must change by to count as moved

StateHook = Callable[[bool, str], None]


@dataclass(slots=True)
class RecognitionStats:
    """What the source counts, for /metrics and the tests of its CPU discipline."""

    frames: int = 0  # frames the camera kept
    triggered: int = 0  # frames seen while triggered (motion, presence, always, tail)
    recognised: int = 0  # frames the recogniser read
    dropped: int = 0  # frames dropped because the recogniser was behind
    reads: int = 0  # plate reads handed to the lane
    recognise_ms_total: float = 0.0


class MotionDetector:
    """Motion in a region of interest: the share of changed pixels between two frames."""

    def __init__(self, roi: tuple[float, float, float, float], threshold: float) -> None:
        self._roi = roi
        self._threshold = threshold
        self._previous: np.ndarray[Any, Any] | None = None

    def moved(self, frame: np.ndarray[Any, Any]) -> bool:
        """True when the region changed by more than the threshold since the last frame."""
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = self._roi
        region = frame[int(y0 * h) : max(int(y1 * h), int(y0 * h) + 1),
                       int(x0 * w) : max(int(x1 * w), int(x0 * w) + 1)]
        scale = min(1.0, MOTION_WIDTH / max(1, region.shape[1]))
        small = cv2.resize(region, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        previous, self._previous = self._previous, grey
        if previous is None or previous.shape != grey.shape:
            return False
        changed = cv2.countNonZero(
            cv2.threshold(cv2.absdiff(grey, previous), PIXEL_CHANGE, 255, cv2.THRESH_BINARY)[1])
        return changed / grey.size > self._threshold


class RecognisingCamera:
    """A camera whose frames are read for plates while a vehicle is present."""

    def __init__(
        self,
        cfg: CameraSourceConfig,
        lane_id: str,
        *,
        recognizer: Recognizer | None = None,
        on_state: StateHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = cfg.name
        self.lane_id = lane_id
        self._cfg = cfg
        self._recognizer = recognizer  # None: loaded when the source starts
        self._on_state = on_state
        self._clock = clock
        self.stats = RecognitionStats()
        self.camera = OpenCvCamera(
            cfg.name,
            CameraConfig(url=cfg.url, fps_limit=cfg.fps_limit, stale_after_s=cfg.stale_after_s,
                         jpeg_quality=cfg.jpeg_quality),
            on_frame=self._on_frame,
            on_state=self._camera_state,
            loop_file=cfg.at_end == "loop",
        )
        self._motion = MotionDetector(cfg.roi, cfg.motion_threshold)
        self._present = False  # the loop detector says a vehicle is there
        self._until = -1.0  # recognise until this monotonic time (the tail)
        self._queue: collections.deque[tuple[np.ndarray[Any, Any], float]] = collections.deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._emit: Emit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failure: str | None = None  # why recognition is off (the recogniser would not load)

    def _camera_state(self, up: bool, detail: str) -> None:
        """The stream's state, for health; a recogniser that would not load stays shown."""
        if self._on_state is not None:
            failure = self.failure
            self._on_state(up and failure is None, failure or detail)

    # --- FrameSource: the lane's snapshots of other sources' reads ---------------

    def snapshot_jpeg(self) -> bytes | None:
        """JPEG of the latest fresh frame, or None."""
        return self.camera.snapshot_jpeg()

    # --- triggers ---------------------------------------------------------------

    def on_presence(self, present: bool, at_mono: float) -> None:
        """The lane's loop detector changed (event loop thread)."""
        with self._wake:
            if self._present and not present:  # the car left: a tail (not at start-up's report)
                self._until = max(self._until, at_mono + self._cfg.tail_s)
            self._present = present

    def _triggered(self, frame: np.ndarray[Any, Any], now: float) -> bool:
        trigger = self._cfg.trigger
        if trigger == "always":
            return True
        if trigger == "presence":
            with self._wake:
                return self._present or now <= self._until
        if self._motion.moved(frame):
            self._until = now + self._cfg.tail_s
            return True
        return now <= self._until

    def _on_frame(self, frame: np.ndarray[Any, Any], at: float) -> None:
        """Capture thread: count, check the trigger, queue the frame for the worker."""
        self.stats.frames += 1
        if not self._triggered(frame, at) or self.failure is not None:
            return
        self.stats.triggered += 1
        with self._wake:
            if len(self._queue) >= QUEUE_FRAMES:
                self._queue.popleft()  # the recogniser is behind: the oldest frame goes
                self.stats.dropped += 1
            self._queue.append((frame, at))
            self._wake.notify()

    # --- owner ------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        """Capture and recognise until cancelled."""
        self._emit = emit
        self._loop = asyncio.get_running_loop()
        self._stop.clear()

        def interrupt() -> None:
            with self._wake:
                self._wake.notify_all()

        worker = asyncio.ensure_future(run_in_thread(
            f"recognise-{self.name}", self._recognise_forever, self._stop, interrupt=interrupt,
            join_timeout_s=30.0))
        capture = asyncio.ensure_future(self.camera.run())
        try:
            await asyncio.wait({worker, capture}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done() and worker.result() is not None:
                # A worker that died must not leave a camera that silently reads nothing:
                # the owner restarts the whole source (and audits the failure).
                raise HardwareError(f"camera {self.name}: recognition failed") from (
                    worker.result())
            await capture  # the worker ended on purpose (no recogniser): pictures only
        finally:
            for task in (capture, worker):
                task.cancel()
            await asyncio.gather(capture, worker, return_exceptions=True)

    # --- worker thread ----------------------------------------------------------

    def _load(self) -> Recognizer | None:
        if self._recognizer is not None:
            return self._recognizer
        from gated.hardware.recognizer import load_recognizer

        try:
            self._recognizer = load_recognizer(self._cfg.recognizer)
        except Exception as err:  # a missing model must not take the daemon down
            self.failure = f"recogniser not loaded: {err}"
            log.error("camera %s: %s; the camera streams for snapshots only", self.name, err)
            if self._on_state is not None and self._loop is not None:
                call_in_loop(self._loop, self._on_state, False, self.failure)
            return None
        log.info("camera %s: recogniser %s loaded", self.name, self._recognizer.name)
        return self._recognizer

    def _recognise_forever(self) -> None:
        recognizer = self._load()
        if recognizer is None:
            return
        while not self._stop.is_set():
            with self._wake:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait(1.0)
                if self._stop.is_set():
                    return
                frame, at = self._queue.popleft()
            self._recognise(recognizer, frame, at)

    def _recognise(self, recognizer: Recognizer, frame: np.ndarray[Any, Any], at: float) -> None:
        started = time.perf_counter()
        try:
            found = recognizer.read(frame)
        except Exception:  # one bad frame must not stop recognition
            log.exception("camera %s: recognition failed on a frame", self.name)
            return
        finally:
            self.stats.recognised += 1
            self.stats.recognise_ms_total += (time.perf_counter() - started) * 1000
        floor = self._cfg.recognizer.min_confidence
        found = [p for p in found if p.text and p.confidence >= floor]
        if not found:
            return
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self._cfg.jpeg_quality])
        snapshot = jpeg.tobytes() if ok else None
        now = time.time()
        for plate in found:
            read = PlateRead(
                access_point=self.lane_id,
                text=plate.text,
                source=self.name,
                read_at=now,
                received_mono=at,
                confidence=float(plate.confidence),
                snapshot=snapshot,
                vendor="gated",
                extra={"region": plate.region, "box": list(plate.box)},
            )
            self.stats.reads += 1
            if self._loop is not None:
                call_in_loop(self._loop, self._hand_over, read)

    def _hand_over(self, read: PlateRead) -> None:
        """Event loop: give a read to the lane (its answer is not awaited: no device to tell)."""
        if self._emit is not None:
            self._emit(read)


_COUNTERS = (
    ("gated_camera_frames_total", "Frames kept by a recognising camera", "frames"),
    ("gated_camera_frames_triggered_total", "Frames seen while a vehicle was present",
     "triggered"),
    ("gated_camera_frames_recognised_total", "Frames the recogniser read", "recognised"),
    ("gated_camera_frames_dropped_total", "Frames dropped while the recogniser was behind",
     "dropped"),
    ("gated_camera_plate_reads_total", "Plate reads handed to the lane", "reads"),
)


def render_metrics(cameras: list[RecognisingCamera]) -> str:
    """Prometheus text of every recognising camera's counters."""
    out: list[str] = []
    for name, help_text, attr in _COUNTERS:
        out += [f"# HELP {name} {help_text}.", f"# TYPE {name} counter"]
        out += [f'{name}{{camera="{c.name}"}} {getattr(c.stats, attr)}' for c in cameras]
    out += ["# HELP gated_camera_recognise_seconds_total CPU time spent recognising.",
            "# TYPE gated_camera_recognise_seconds_total counter"]
    out += [f'gated_camera_recognise_seconds_total{{camera="{c.name}"}} '
            f"{c.stats.recognise_ms_total / 1000:.3f}" for c in cameras]
    return "\n".join(out) + "\n"
