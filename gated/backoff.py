"""Capped, jittered exponential backoff: a pure schedule, no sleeping, no clock.

One schedule for everything that retries (the supervisor's restarts, relays, readers and
cameras reopening their device, MqttLink reconnecting, the upstream sync): callers sleep, so
the schedule is tested as plain numbers and shared by the core and the edges alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Delays of initial·factor^n capped at maximum, with 'full jitter' on the upper half.

    Jitter keeps a thousand gates that lost the same broker from reconnecting in
    lock-step; keeping the lower half fixed keeps a single device's retries
    predictable enough to reason about in logs.
    """

    initial: float = 0.5
    maximum: float = 60.0
    factor: float = 2.0
    rng: random.Random | None = None
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the schedule."""
        base = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt = min(self.attempt + 1, 64)
        assert self.rng is not None
        return base / 2 + self.rng.uniform(0, base / 2)

    def reset(self) -> None:
        """Start again from the initial delay (after a success)."""
        self.attempt = 0


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """uniform(0, min(cap, base * 2**attempt)): the HTTP uplink's 'full jitter' back-off.

    A request answered 5xx by a service that a whole fleet is retrying against spreads best
    over the whole interval; a connection to one's own broker keeps Backoff's floor.
    """
    return rng.uniform(0, min(cap, base * 2 ** min(attempt, 32)))
