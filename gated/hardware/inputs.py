"""Wired inputs: guard buttons, the gate position switch and the vehicle presence detector.

Each source is an InputSource: `await source.run(emit)` opens its pins with
gpiozero, reports debounced edges as base.InputEvent until cancelled, and frees
the pins on the way out (so the daemon's supervisor can restart it).

Debouncing is done here, not by the pin library, so it behaves the same on
every pin factory (gpiozero's MockFactory does not implement bounce at all, and
the real back-ends differ). A level must stay put for `bounce_ms` before it
counts: a spike shorter than that from a long cable run to a gate is ignored,
at the cost of `bounce_ms` latency on a press.

Event kinds:
  buttons  "press" (long_press_s == 0) or "long_press" (held long_press_s; a
           shorter press emits nothing, it was a bump)
  sensors  "active" / "inactive"; the current level is emitted once at start
           so the gate state machine learns where the gate is

gpiozero callbacks arrive on its own thread; `_to_loop` is the one place they
cross into asyncio. Exercised with gpiozero MockFactory pins only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gated.config import ButtonConfig, GateSensorsConfig
from gated.errors import HardwareError
from gated.hardware.base import InputEvent
from gated.hardware.threads import call_in_loop

__all__ = [
    "CLOSED",
    "PRESENCE",
    "GateSensors",
    "GuardButton",
    "sensor_input",
    "split_sensor_input",
]

log = logging.getLogger(__name__)

CLOSED = "closed"
PRESENCE = "presence"

Emit = Callable[[InputEvent], None]


def sensor_input(lane_id: str, which: str) -> str:
    """The InputEvent.input name of a lane's sensor: "<lane>:closed" or "<lane>:presence"."""
    return f"{lane_id}:{which}"


def split_sensor_input(input_name: str) -> tuple[str, str] | None:
    """(lane id, "closed"/"presence") for a sensor input name, None for anything else."""
    lane_id, sep, which = input_name.rpartition(":")
    if not sep or not lane_id or which not in (CLOSED, PRESENCE):
        return None
    return lane_id, which


def _to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None]) -> Callable[..., None]:
    """Wrap fn so any thread may call it; it runs on `loop`. The one thread seam here."""

    def cross(*args: Any) -> None:
        call_in_loop(loop, fn, *args)

    return cross


class _Debounced:
    """A level that counts only after it held for bounce_s (runs on the event loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bounce_s: float,
        initial: bool,
        on_change: Callable[[bool, float], None],
    ) -> None:
        self._loop = loop
        self._bounce_s = bounce_s
        self._on_change = on_change
        self.stable = initial
        self._raw = initial
        self._raw_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def edge(self, level: bool, at_mono: float) -> None:
        """A raw edge reported by the pin library."""
        self._raw, self._raw_at = level, at_mono
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._bounce_s <= 0:
            self._settle()
        else:
            self._timer = self._loop.call_later(self._bounce_s, self._settle)

    def _settle(self) -> None:
        self._timer = None
        if self._raw != self.stable:
            self.stable = self._raw
            self._on_change(self._raw, self._raw_at)

    def cancel(self) -> None:
        """Drop a pending settle (the source is stopping)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _safe_emit(emit: Emit, event: InputEvent) -> None:
    """Call the daemon's emit; its failure must not stop the input."""
    try:
        emit(event)
    except Exception:
        log.exception("input %s: emit failed for %s", event.input, event.kind)


def _open_device(cls_name: str, pin: int, pull_up: bool, pin_factory: Any, what: str) -> Any:
    """Open a gpiozero input device, translating its errors into HardwareError."""
    # imported here: gpiozero is slow to import on a Pi and a site without wired inputs skips it
    import gpiozero

    cls = getattr(gpiozero, cls_name)
    try:
        # bounce_time=None: we debounce ourselves, identically on every pin factory
        return cls(pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory)
    except (gpiozero.GPIOZeroError, OSError, RuntimeError) as err:
        raise HardwareError(f"{what}: cannot use GPIO{pin}: {err}") from err


def _attach(device: Any, loop: asyncio.AbstractEventLoop, line: _Debounced) -> None:
    """Route the device's activate/deactivate callbacks (its thread) into `line` (the loop)."""
    cross = _to_loop(loop, line.edge)
    device.when_activated = lambda: cross(True, time.monotonic())
    device.when_deactivated = lambda: cross(False, time.monotonic())


def _detach(device: Any) -> None:
    device.when_activated = None
    device.when_deactivated = None
    try:
        device.close()
    except Exception:
        log.debug("closing GPIO device failed", exc_info=True)


class GuardButton:
    """A guard button on a GPIO pin (to ground with the internal pull-up by default).

    Opened as a plain DigitalInputDevice: gpiozero's Button would add a hold
    thread per button, and long presses are timed here on the event loop anyway.
    """

    def __init__(self, cfg: ButtonConfig, *, pin_factory: Any = None) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._pin_factory = pin_factory

    async def run(self, emit: Emit) -> None:
        """Report presses until cancelled."""
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        device = _open_device(
            "DigitalInputDevice", cfg.pin, cfg.pull_up, self._pin_factory, cfg.name
        )
        long_timer: asyncio.TimerHandle | None = None

        def fire_long(pressed_at: float) -> None:
            nonlocal long_timer
            long_timer = None
            if line.stable:
                _safe_emit(emit, InputEvent(cfg.name, "long_press", pressed_at))

        def changed(active: bool, at_mono: float) -> None:
            nonlocal long_timer
            if long_timer is not None:
                long_timer.cancel()
                long_timer = None
            if not active:
                return
            if cfg.long_press_s <= 0:
                _safe_emit(emit, InputEvent(cfg.name, "press", at_mono))
            else:
                long_timer = loop.call_later(cfg.long_press_s, fire_long, at_mono)

        # a button held at start-up (stuck, or a guard leaning on it) must not act
        line = _Debounced(loop, cfg.bounce_ms / 1000.0, bool(device.is_active), changed)
        _attach(device, loop, line)
        try:
            await asyncio.Event().wait()
        finally:
            line.cancel()
            if long_timer is not None:
                long_timer.cancel()
            _detach(device)


class GateSensors:
    """A lane's position switch (`closed_pin`) and vehicle presence input (`presence_pin`)."""

    def __init__(
        self,
        lane_id: str,
        cfg: GateSensorsConfig,
        *,
        pin_factory: Any = None,
        bounce_ms: int = 50,
    ) -> None:
        self.name = f"{lane_id}:sensors"
        self.lane_id = lane_id
        self._cfg = cfg
        self._pin_factory = pin_factory
        self._bounce_s = bounce_ms / 1000.0

    @property
    def wired(self) -> tuple[str, ...]:
        """Which sensors this lane has ("closed", "presence")."""
        pins = ((CLOSED, self._cfg.closed_pin), (PRESENCE, self._cfg.presence_pin))
        return tuple(which for which, pin in pins if pin is not None)

    async def run(self, emit: Emit) -> None:
        """Emit each sensor's level now, then every debounced change, until cancelled."""
        loop = asyncio.get_running_loop()
        opened: list[tuple[Any, _Debounced]] = []
        try:
            for which, pin in ((CLOSED, self._cfg.closed_pin), (PRESENCE, self._cfg.presence_pin)):
                if pin is None:
                    continue
                name = sensor_input(self.lane_id, which)
                device = _open_device(
                    "DigitalInputDevice", pin, self._cfg.pull_up, self._pin_factory, name
                )

                def changed(active: bool, at_mono: float, name: str = name) -> None:
                    kind = "active" if active else "inactive"
                    _safe_emit(emit, InputEvent(name, kind, at_mono))

                level = bool(device.is_active)
                line = _Debounced(loop, self._bounce_s, level, changed)
                opened.append((device, line))
                _attach(device, loop, line)
                _safe_emit(
                    emit, InputEvent(name, "active" if level else "inactive", time.monotonic())
                )
            await asyncio.Event().wait()
        finally:
            for device, line in opened:
                line.cancel()
                _detach(device)
