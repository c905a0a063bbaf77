"""The shared backoff schedule: doubling, capped, jittered, resettable."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gated.backoff import Backoff, full_jitter


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


@given(st.integers(0, 200), st.floats(0.01, 10), st.floats(0.01, 600), st.integers(0, 2**32))
def test_full_jitter_spans_zero_to_the_capped_doubling(attempt: int, base: float, cap: float,
                                                       seed: int) -> None:
    delay = full_jitter(attempt, base, cap, random.Random(seed))
    assert 0 <= delay <= min(cap, base * 2 ** min(attempt, 32))


def test_full_jitter_reaches_low_delays_backoff_never_gives() -> None:
    rng = random.Random(7)
    delays = [full_jitter(6, 1.0, 30.0, rng) for _ in range(200)]
    assert min(delays) < 15.0 <= max(delays) <= 30.0  # Backoff keeps the lower half fixed
