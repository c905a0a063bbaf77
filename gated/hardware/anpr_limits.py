"""What the camera listener allows each client address: connections, refusals, lock-outs.

A flood of wrong-credential pushes from one address must cost a few bytes of
memory and one audit row per interval, not one fsynced journal row each; a
client that holds connections open must not take the file descriptors the real
cameras need. Pure bookkeeping: the caller passes the clocks and acts on the
verdicts (gated.hardware.anpr_http).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["OVERFLOW", "AddressBook", "BodyBudget", "RefusalSummary", "address_key"]

# Key shared by every address once the table is full of busy entries: a distributed
# flood then shares one lock-out instead of growing memory.
OVERFLOW = "*"
LOCKED_OUT = "locked out"  # the reason counted for pushes refused by a lock-out


def address_key(remote: str) -> str:
    """The unit limits apply to: an IPv4 address, or the /64 an IPv6 client holds."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64] or "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        # one host on a /64 can use any of its 2^64 addresses
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class RefusalSummary:
    """Refused pushes from one address over one interval: what the audit row records."""

    address: str
    count: int = 0
    first_at: float = 0.0  # wall clock of the first refusal in the interval
    last_at: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    cameras: dict[str, int] = field(default_factory=dict)
    locked_out: bool = False  # the address was locked out when the summary was taken

    def add(self, camera: str, reason: str, now: float) -> None:
        """Count one refusal."""
        if self.count == 0:
            self.first_at = now
        self.count += 1
        self.last_at = now
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if camera:
            self.cameras[camera] = self.cameras.get(camera, 0) + 1


@dataclass(slots=True)
class _Address:
    """What is remembered about one client address."""

    connections: int = 0
    refusals: deque[float] = field(default_factory=deque)  # monotonic times, bounded
    locked_until: float = 0.0  # monotonic
    reported: bool = False  # its first refusal of the interval was already reported
    pending: RefusalSummary | None = None

    def idle(self, now_mono: float) -> bool:
        return self.connections == 0 and self.pending is None and self.locked_until <= now_mono


class AddressBook:
    """Per-address connection counts, refusal rates and lock-outs, in bounded memory."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        lockout_after: int,
        lockout_window_s: float,
        lockout_s: float,
        max_addresses: int = 4096,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.lockout_after = lockout_after
        self.lockout_window_s = lockout_window_s
        self.lockout_s = lockout_s
        self.max_addresses = max_addresses
        self.open_connections = 0
        self._table: OrderedDict[str, _Address] = OrderedDict()

    def _entry(self, key: str, now_mono: float) -> tuple[str, _Address]:
        """The entry for key (created, evicting an idle one when the table is full)."""
        entry = self._table.get(key)
        if entry is not None:
            self._table.move_to_end(key)
            return key, entry
        if len(self._table) >= self.max_addresses:
            for old_key, old in self._table.items():
                if old_key != OVERFLOW and old.idle(now_mono):
                    del self._table[old_key]
                    break
            else:
                key = OVERFLOW
                entry = self._table.get(OVERFLOW)
                if entry is not None:
                    return key, entry
        entry = _Address()
        self._table[key] = entry
        return key, entry

    def locked(self, key: str, now_mono: float) -> bool:
        """True while this address is locked out."""
        entry = self._table.get(key) or self._table.get(OVERFLOW)
        return entry is not None and entry.locked_until > now_mono

    def open(self, key: str, now_mono: float, *, camera: bool = False) -> str | None:
        """Admit a connection: None when admitted, else why not ('busy', 'address', 'locked').

        A configured camera address (`camera`) may use a reserve of max_per_address
        beyond the total cap: a flood from elsewhere that fills the cap does not
        shut out the gate's own cameras.
        """
        reserve = self.max_per_address if camera else 0
        if self.open_connections >= self.max_connections + reserve:
            return "busy"
        key, entry = self._entry(key, now_mono)
        if entry.locked_until > now_mono:
            return "locked"
        if entry.connections >= self.max_per_address:
            return "address"
        entry.connections += 1
        self.open_connections += 1
        return None

    def close(self, key: str) -> None:
        """A connection admitted by open() ended."""
        entry = self._table.get(key) or self._table.get(OVERFLOW)
        if entry is not None and entry.connections > 0:
            entry.connections -= 1
        self.open_connections = max(0, self.open_connections - 1)

    def refuse(
        self, key: str, camera: str, reason: str, now: float, now_mono: float
    ) -> RefusalSummary | None:
        """Count a refusal; returns a summary to audit at once for the first one in an interval.

        Repeated refusals within lockout_window_s lock the address out for lockout_s.
        """
        key, entry = self._entry(key, now_mono)
        if reason != LOCKED_OUT:
            times = entry.refusals
            times.append(now_mono)
            while times and (
                now_mono - times[0] > self.lockout_window_s or len(times) > self.lockout_after
            ):
                times.popleft()
            if len(times) >= self.lockout_after:
                entry.locked_until = now_mono + self.lockout_s
                times.clear()
        if not entry.reported:
            entry.reported = True
            first = RefusalSummary(key)
            first.add(camera, reason, now)
            first.locked_out = entry.locked_until > now_mono
            return first
        if entry.pending is None:
            entry.pending = RefusalSummary(key)
        entry.pending.add(camera, reason, now)
        return None

    def take_summaries(self, now_mono: float) -> list[RefusalSummary]:
        """The summaries of the interval that ends now (one per address); opens a new interval."""
        out: list[RefusalSummary] = []
        for entry in self._table.values():
            if entry.pending is not None:
                entry.pending.locked_out = entry.locked_until > now_mono
                out.append(entry.pending)
            entry.pending = None
            entry.reported = False
        for key in [k for k, e in self._table.items() if e.idle(now_mono) and not e.refusals]:
            del self._table[key]
        return out


class BodyBudget:
    """Bytes of request bodies held at once, across every connection of a listener."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever held at once (for metrics and tests)
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> int:
        """Wait until `size` bytes (at most the whole budget) are free; returns what was taken."""
        size = min(size, self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
            self.peak = max(self.peak, self.used)
        return size

    async def release(self, size: int) -> None:
        """Give back what acquire() returned."""
        async with self._changed:
            self.used -= size
            self._changed.notify_all()
