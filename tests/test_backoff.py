"""The shared backoff schedule: doubling, capped, jittered, resettable."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gated.backoff import Backoff


def test_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(20)]
    for n, d in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**n)
        assert ceiling / 2 <= d <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lock-step


def test_reset_starts_small_again() -> None:
    backoff = Backoff(1.0, 60.0, rng=random.Random(2))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 1.0


@given(initial=st.floats(0.001, 10), maximum=st.floats(0.001, 600), n=st.integers(0, 200))
def test_never_exceeds_the_cap(initial: float, maximum: float, n: int) -> None:
    backoff = Backoff(initial, maximum)
    for _ in range(n):
        assert 0 < backoff.next_delay() <= maximum
