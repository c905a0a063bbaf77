"""The small protocols every device driver implements, and the values they emit.

Services are long-running coroutines (`async def run(...)`) owned by the
TaskGroup in gated.app; a driver that fails raises HardwareError and is
restarted with backoff by its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gated.errors import HardwareError
from gated.model import PlateRead

__all__ = [
    "Emit",
    "FrameSource",
    "HardwareError",
    "InputEvent",
    "InputSource",
    "PlateSource",
    "Relay",
]


@runtime_checkable
class Relay(Protocol):
    """One relay output driving a gate, barrier or door strike."""

    name: str

    @property
    def fault(self) -> str | None:
        """A short description of the current fault, or None when healthy."""
        ...

    async def pulse(self, ms: int) -> None:
        """Energise for `ms` milliseconds, then release; returns once energised."""
        ...

    async def hold(self) -> None:
        """Energise until release() (hold-open)."""
        ...

    async def release(self) -> None:
        """De-energise: the configured safe state."""
        ...

    async def aclose(self) -> None:
        """Release and free the port or pin."""
        ...

    async def run(self) -> None:
        """Keep the device open, reopening it with backoff after a fault, until cancelled."""
        ...


@dataclass(frozen=True, slots=True)
class InputEvent:
    """A debounced change on a wired input (button, position switch, loop detector)."""

    input: str  # configured name of the input
    kind: str  # "press", "long_press", "active", "inactive"
    at_mono: float  # time.monotonic() of the edge


# emit(read) hands a read to its lane and returns a future that resolves once the
# journal row recording it (or the event it was merged into) has committed: to the
# row's seq, or None when the read was deliberately not journaled (config says ignore,
# unknown lane). A source that can answer its device ("taken") awaits it first; sources
# that cannot answer may ignore it. It never raises; at shutdown it may be cancelled.
Emit = Callable[[PlateRead], "asyncio.Future[int | None]"]


@runtime_checkable
class PlateSource(Protocol):
    """Anything that produces plate or tag reads: camera push, serial reader, simulator."""

    name: str

    async def run(self, emit: Emit) -> None:
        """Produce reads forever, calling emit(read) from the event loop thread."""
        ...


@runtime_checkable
class InputSource(Protocol):
    """Wired inputs that produce InputEvents."""

    name: str

    async def run(self, emit: Callable[[InputEvent], None]) -> None:
        """Report edges forever, calling emit(event) from the event loop thread."""
        ...


@runtime_checkable
class FrameSource(Protocol):
    """A video stream kept at its latest frame, for snapshots and on-device recognition."""

    name: str

    async def run(self) -> None:
        """Keep capturing (reconnecting with backoff) until cancelled."""
        ...

    def snapshot_jpeg(self) -> bytes | None:
        """JPEG of the latest fresh frame, or None when there is none."""
        ...
