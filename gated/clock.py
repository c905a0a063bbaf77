"""Is the wall clock trustworthy? A Pi has no RTC and may boot in 1970."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

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


def clock_synchronised(now: float | None = None) -> bool:
    """True when the wall clock is plausibly correct (NTP-synchronised or at least set)."""
    current = time.time() if now is None else now
    if current < _EARLIEST_PLAUSIBLE:
        return False
    if os.path.exists(_SYNC_MARKER):
        return True
    kernel = _kernel_says_synchronised()
    return True if kernel is None else kernel


class ClockWatch:
    """Caches clock_synchronised() so the hot path pays for it once every few seconds."""

    def __init__(self, recheck_s: float = 10.0) -> None:
        self._recheck_s = recheck_s
        self._checked_at = float("-inf")
        self._synced = False

    def unsynced(self) -> bool:
        """True while the clock is not known to be synchronised."""
        mono = time.monotonic()
        if mono - self._checked_at >= self._recheck_s:
            self._synced = clock_synchronised()
            self._checked_at = mono
        return not self._synced
