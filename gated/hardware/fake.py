"""Fake devices that record what was done to them, for the demo and for tests.

FakeRelay behaves exactly like the real relays (same pulse/hold/release rules,
same fault callback) because it builds on their public core
(`gated.hardware.relay_core.RelayCore`); only the output is a list.
FakeInputs lets the demo or a test press buttons and move sensors by name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gated.errors import HardwareError
from gated.hardware.base import InputEvent
from gated.hardware.relay_core import FaultCallback, RelayCore

__all__ = ["FakeInputs", "FakeRelay"]


class FakeRelay(RelayCore):
    """A relay that records (time.monotonic(), action) tuples.

    Actions: "pulse", "hold", "release" for commands, "on" / "off" for the
    contact actually changing (a pulse's scheduled release records "off").
    """

    def __init__(self, name: str = "fake", *, on_fault: FaultCallback | None = None) -> None:
        super().__init__(name, on_fault=on_fault)
        self.records: list[tuple[float, str]] = []
        self.pulses_ms: list[int] = []

    @property
    def actions(self) -> list[str]:
        """The recorded actions without their times."""
        return [action for _, action in self.records]

    async def pulse(self, ms: int) -> None:
        """Energise for `ms` milliseconds, then release; returns once energised."""
        self._record("pulse")
        self.pulses_ms.append(ms)
        await super().pulse(ms)

    async def hold(self) -> None:
        """Energise until release() (hold-open)."""
        self._record("hold")
        await super().hold()

    async def release(self) -> None:
        """De-energise: the configured safe state."""
        self._record("release")
        await super().release()

    def fail(self, reason: str) -> None:
        """Simulate a fault (board unplugged): the contact drops, commands raise HardwareError."""
        if self._energised:
            self._record("off")
        self._set_fault(reason)

    def recover(self) -> None:
        """Simulate a reconnect: the contact is released and the fault cleared."""
        if self._energised:
            self._record("off")
        self._energised = False
        self._set_fault(None)

    async def _drive(self, on: bool) -> None:
        if on != self._energised:
            self._record("on" if on else "off")

    def _record(self, action: str) -> None:
        self.records.append((time.monotonic(), action))


class FakeInputs:
    """An InputSource driven by calls: press("gate-button"), set_active("lane1:presence", True)."""

    def __init__(self, name: str = "fake-inputs") -> None:
        self.name = name
        self._emit: Callable[[InputEvent], None] | None = None
        self._pending: list[InputEvent] = []

    async def run(self, emit: Callable[[InputEvent], None]) -> None:
        """Deliver queued and future events until cancelled."""
        self._emit = emit
        pending, self._pending = self._pending, []
        for event in pending:
            emit(event)
        try:
            await asyncio.Event().wait()
        finally:
            self._emit = None

    def press(self, input_name: str, *, long: bool = False) -> None:
        """A debounced press (or long press) of a button."""
        self._send(InputEvent(input_name, "long_press" if long else "press", time.monotonic()))

    def set_active(self, input_name: str, active: bool) -> None:
        """A sensor input (position switch, presence) changing."""
        self._send(InputEvent(input_name, "active" if active else "inactive", time.monotonic()))

    def _send(self, event: InputEvent) -> None:
        if self._emit is None:
            if len(self._pending) >= 1000:
                raise HardwareError(f"{self.name}: too many events before run()")
            self._pending.append(event)
        else:
            self._emit(event)
