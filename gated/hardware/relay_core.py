"""The behaviour every relay shares, whatever drives its contact: `RelayCore`.

A pulse energises at once and schedules its release on the event loop; a second pulse
extends (never shortens) it; a held relay ignores pulses until released; a fault makes
commands raise HardwareError and is reported once per change through `on_fault`. The
real relays (`gated.hardware.relays`) and `gated.hardware.fake.FakeRelay` build on this
public core and add only the output, as gpiozero's mock pins build on its pin classes,
so the fake can never drift from the rules the real boards follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gated.errors import HardwareError

__all__ = ["FaultCallback", "RelayCore"]

# The relays' logger, whichever module the line comes from: an operator follows relay
# faults under one name.
log = logging.getLogger("gated.hardware.relays")

FaultCallback = Callable[[str, str | None], None]
"""on_fault(relay name, fault description or None when recovered)."""


class RelayCore:
    """Pulse/hold/release bookkeeping shared by every relay kind; subclasses drive the output.

    A subclass implements `_drive(on)` (and `_free()` if it holds a pin or port); it may
    override `_lose(reason)` to reconnect, and reports faults and recoveries through
    `_set_fault`. Everything else, the timing rules included, is this class's.
    """

    def __init__(self, name: str, *, on_fault: FaultCallback | None = None) -> None:
        self.name = name
        self._on_fault = on_fault
        self._fault: str | None = None
        self._reported = False  # whether on_fault was told about the current fault
        self._held = False
        self._energised = False
        self._release_at: float | None = None
        self._release_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._lock = asyncio.Lock()  # one command on the wire at a time
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fault(self) -> str | None:
        """A short description of the current fault, or None when healthy."""
        return self._fault

    @property
    def energised(self) -> bool:
        """Whether the last command left the relay energised."""
        return self._energised

    async def pulse(self, ms: int) -> None:
        """Energise for `ms` milliseconds, then release; returns once energised."""
        if ms < 1:
            raise ValueError(f"pulse length must be >= 1 ms, got {ms}")
        self._check_usable()
        if self._held:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + ms / 1000.0
        if not self._energised:
            await self._set(True)
        if self._release_at is None or until > self._release_at:
            self._cancel_timer()
            self._release_at = until
            self._release_timer = loop.call_at(until, self._pulse_ended)

    async def hold(self) -> None:
        """Energise until release() (hold-open)."""
        self._check_usable()
        self._cancel_timer()
        await self._set(True)
        self._held = True

    async def release(self) -> None:
        """De-energise: the configured safe state."""
        self._check_usable()
        self._cancel_timer()
        self._held = False
        await self._set(False)

    async def run(self) -> None:
        """Supervise the output until cancelled (GPIO and fake relays have nothing to do)."""
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        """Release and free the port or pin."""
        if self._closed:
            return
        self._cancel_timer()
        self._held = False
        if self._fault is None:
            try:
                await self._set(False)
            except HardwareError as err:
                log.warning("relay %s: could not release on close: %s", self.name, err)
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await self._free()

    # -- for subclasses --

    async def _drive(self, on: bool) -> None:
        """Put the output in the given state; raise HardwareError on failure."""
        raise NotImplementedError

    async def _free(self) -> None:
        """Free the pin or port (after the final release)."""

    async def _lose(self, reason: str) -> None:
        """The output failed: record why (serial relays also drop and reopen the port)."""
        self._set_fault(reason)

    # -- internals --

    def _check_usable(self) -> None:
        if self._closed:
            raise HardwareError(f"relay {self.name}: closed")
        if self._fault is not None:
            raise HardwareError(f"relay {self.name}: {self._fault}")

    async def _set(self, on: bool) -> None:
        async with self._lock:
            if self._fault is not None:
                raise HardwareError(f"relay {self.name}: {self._fault}")
            try:
                await self._drive(on)
            except HardwareError as err:
                await self._lose(str(err))
                raise HardwareError(f"relay {self.name}: {err}") from err
            self._energised = on

    def _cancel_timer(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
        self._release_timer = None
        self._release_at = None

    def _pulse_ended(self) -> None:
        self._release_timer = None
        self._release_at = None
        if self._held or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._auto_release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto_release(self) -> None:
        if self._held or self._release_at is not None:
            return  # a hold or a newer pulse took over while this task was queued
        try:
            await self._set(False)
        except HardwareError as err:
            # the fault is recorded; the reconnect drives the relay to released
            log.debug("relay %s: pulse release failed: %s", self.name, err)

    def _set_fault(self, fault: str | None) -> None:
        """Record a fault (or recovery) and tell the daemon once per change."""
        self._fault = fault
        if fault is not None:
            self._energised = False  # unknown; the reconnect will drive it released
            self._held = False
            self._cancel_timer()
            if self._reported:
                return
            self._reported = True
            log.warning("relay %s fault: %s", self.name, fault)
        else:
            if not self._reported:
                return
            self._reported = False
            log.warning("relay %s recovered", self.name)
        if self._on_fault is not None:
            try:
                self._on_fault(self.name, fault)
            except Exception:
                log.exception("relay %s: on_fault callback failed", self.name)
