"""Is the wall clock trustworthy? A Pi has no RTC and may boot in 1970."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

# Anything before this is certainly a clock that was never set (the release
# year of this code); records made then carry clock_unsynced.
_EARLIEST_PLAUSIBLE = 1_767_225_600.0  # 2026-01-01T00:00:00Z
_SYNC_MARKER = "/run/systemd/timesync/synchronized"
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only `status` is read, the rest is padding
    # large enough for every Linux ABI (the kernel struct is 208 bytes on 64-bit).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("_pad", ctypes.c_char * 4),
        ("rest", ctypes.c_char * 512),
    ]


def _kernel_says_synchronised() -> bool | None:
    """adjtimex(2): the kernel's own view (STA_UNSYNC / TIME_ERROR); None when unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = _Timex()
        state = libc.adjtimex(ctypes.byref(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def plausible_time(now: float) -> bool:
    """False for a clock that was certainly never set (before this code was released)."""
    return now >= _EARLIEST_PLAUSIBLE


def clock_synchronised(now: float | None = None) -> bool:
    """True when the wall clock is plausibly correct (NTP-synchronised or at least set)."""
    current = time.time() if now is None else now
    if current < _EARLIEST_PLAUSIBLE:
        return False
    if os.path.exists(_SYNC_MARKER):
        return True
    kernel = _kernel_says_synchronised()
    return True if kernel is None else kernel


# A step of the wall clock against the monotonic clock larger than this is a jump
# (NTP slews far less; a person or a bad RTC steps it): the cached answer is dropped.
_JUMP_S = 2.0


class ClockWatch:
    """Caches clock_synchronised() and keeps the boot's last good time base.

    The hot path pays for the synchronisation check once every `recheck_s`, or at
    once when the wall clock steps against the monotonic clock. While the clock is
    synchronised the watch remembers wall - monotonic; once it is not, the offset
    from the wall clock to that time base is handed to the listeners (the policy's
    view: schedules and pass windows keep to the time base, docs/operations.md).
    `wall`, `mono` and `synced` are injectable so tests can move the clock.
    """

    def __init__(self, recheck_s: float = 10.0, *,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 synced: Callable[[float], bool] = clock_synchronised) -> None:
        self._recheck_s = recheck_s
        self._wall, self._mono, self._synced_at = wall, mono, synced
        self._checked_at = float("-inf")
        self._synced = False
        self._plausible = False
        self._drift: float | None = None  # wall - mono at the last call
        self._base: float | None = None  # wall - mono while last seen synchronised
        # Told (synced, offset_s, plausible) at every check while unsynchronised, and on
        # every change: the policy's view of the clock.
        self.listeners: list[Callable[[bool, float | None, bool], None]] = []

    def unsynced(self) -> bool:
        """True while the clock is not known to be synchronised."""
        mono = self._mono()
        wall = self._wall()
        drift = wall - mono
        jumped = self._drift is not None and abs(drift - self._drift) > _JUMP_S
        self._drift = drift
        if jumped or mono - self._checked_at >= self._recheck_s:
            was = self._synced
            self._synced = self._synced_at(wall)
            self._plausible = plausible_time(wall)
            self._checked_at = mono
            if self._synced:
                self._base = drift
            if jumped or was != self._synced or not self._synced:
                self._tell()
        return not self._synced

    def offset_s(self) -> float | None:
        """While unsynchronised: what to add to the wall clock to reach the time base."""
        if self._synced or self._base is None or self._drift is None:
            return None
        return self._base - self._drift

    def estimated_now(self) -> float | None:
        """Best wall-clock time for ages and windows: the time base if any; None if unusable."""
        self.unsynced()
        offset = self.offset_s()
        if offset is not None:
            return self._wall() + offset
        return self._wall() if self._synced or self._plausible else None

    def _tell(self) -> None:
        offset = self.offset_s()
        for listener in list(self.listeners):
            listener(self._synced, offset, self._plausible)
