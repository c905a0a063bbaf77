"""Event identifiers: UUIDv7 (RFC 9562), time-ordered so the receiver can index and deduplicate."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """Return a new UUIDv7; ids made in one process are strictly increasing.

    Uses RFC 9562 method 1: a 12-bit counter in rand_a, seeded randomly each
    millisecond, so ids stay monotonic even when many are made per millisecond
    or the wall clock steps backwards (the last timestamp is then reused).
    """
    global _last_ms, _counter
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave headroom
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= rand_b
    return uuid.UUID(int=value)


def new_event_id() -> str:
    """Return a new event id as its canonical string."""
    return str(uuid7())
