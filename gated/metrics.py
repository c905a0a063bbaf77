"""Counters and latency histograms, in Prometheus' shape, for the status API and /metrics."""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field

# Read→relay and journal lags are measured in milliseconds; a gate should sit in
# the first few buckets, and anything past a second is a fault worth seeing.
LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000)


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram with a fixed memory footprint."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0
    # The most recent raw values, for exact percentiles on the status page and in
    # benchmarks; bounded so memory does not grow with uptime.
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1
        self.recent.append(value)

    def recent_quantile(self, q: float) -> float | None:
        """Exact quantile q of the recent raw values (None when empty)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (None when empty)."""
        if self.n == 0:
            return None
        target = q * self.n
        running = 0
        for i, count in enumerate(self.counts):
            running += count
            if running >= target:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")


@dataclass(slots=True)
class LaneMetrics:
    """What one lane counts."""

    reads: int = 0
    duplicates: int = 0
    updates: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    relay_failures: int = 0
    journal_failures: int = 0
    snapshots_missing: int = 0
    read_to_relay_ms: Histogram = field(default_factory=Histogram)
    journal_lag_ms: Histogram = field(default_factory=Histogram)
