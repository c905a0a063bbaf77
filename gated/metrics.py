"""Counters and latency histograms, in Prometheus' shape, for the status API and /metrics."""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Read→relay and journal lags are measured in milliseconds; a gate should sit in
# the first few buckets, and anything past a second is a fault worth seeing.
LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000)


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram with a fixed memory footprint."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0
    # The most recent raw values, for exact percentiles on the status page and in
    # benchmarks; bounded so memory does not grow with uptime.
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.observations += 1
        self.recent.append(value)

    def recent_quantile(self, q: float) -> float | None:
        """Exact quantile q of the recent raw values (None when empty)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (None when empty)."""
        if self.observations == 0:
            return None
        target = q * self.observations
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
    ignored: int = 0  # reads the source's config says to drop (unread, wrong direction)
    held: int = 0  # reads held back awaiting agreement (gated.consensus)
    decisions: Counter[str] = field(default_factory=Counter)
    relay_failures: int = 0
    journal_failures: int = 0
    snapshots_missing: int = 0
    read_to_relay_ms: Histogram = field(default_factory=Histogram)
    journal_lag_ms: Histogram = field(default_factory=Histogram)


def _labels(**labels: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _histogram_seconds(out: list[str], name: str, lane: str, hist: Histogram) -> None:
    """Append a histogram kept in milliseconds as Prometheus seconds."""
    running = 0
    for bound, count in zip(hist.buckets, hist.counts, strict=False):
        running += count
        out.append(f"{name}_bucket{_labels(lane=lane, le=f'{bound / 1000:g}')} {running}")
    out.append(f"{name}_bucket{_labels(lane=lane, le='+Inf')} {hist.observations}")
    out.append(f"{name}_sum{_labels(lane=lane)} {hist.total / 1000:.6f}")
    out.append(f"{name}_count{_labels(lane=lane)} {hist.observations}")


def render_prometheus(
    lanes: dict[str, LaneMetrics],
    components: dict[str, bool],
    mqtt_links: Mapping[str, Any] | None = None,
) -> str:
    """The Prometheus text exposition of lanes, components and MQTT links (gated.mqttlink)."""
    out: list[str] = []
    counters = (
        ("gated_reads_total", "Plate and tag reads received", "reads"),
        ("gated_reads_duplicate_total", "Reads merged into an earlier event", "duplicates"),
        ("gated_reads_update_total", "Better reads of a vehicle already decided", "updates"),
        ("gated_reads_ignored_total", "Reads dropped by their source's config", "ignored"),
        ("gated_reads_held_total", "Reads held back awaiting agreement", "held"),
        ("gated_relay_failures_total", "Relay commands that failed", "relay_failures"),
        (
            "gated_journal_failures_total",
            "Journal appends that had to be retried",
            "journal_failures",
        ),
        (
            "gated_snapshots_missing_total",
            "Events journaled without their snapshot",
            "snapshots_missing",
        ),
    )
    for name, help_text, attr in counters:
        out += [f"# HELP {name} {help_text}.", f"# TYPE {name} counter"]
        out += [
            f"{name}{_labels(lane=lane)} {getattr(m, attr)}" for lane, m in sorted(lanes.items())
        ]
    out += [
        "# HELP gated_decisions_total Decisions by reason code.",
        "# TYPE gated_decisions_total counter",
    ]
    for lane, m in sorted(lanes.items()):
        out += [
            f"gated_decisions_total{_labels(lane=lane, reason=reason)} {n}"
            for reason, n in sorted(m.decisions.items())
        ]
    for name, help_text, attr in (
        (
            "gated_read_to_relay_seconds",
            "From a read's receipt to the relay command",
            "read_to_relay_ms",
        ),
        (
            "gated_journal_lag_seconds",
            "From a read's receipt to its durable journal row",
            "journal_lag_ms",
        ),
    ):
        out += [f"# HELP {name} {help_text}.", f"# TYPE {name} histogram"]
        for lane, m in sorted(lanes.items()):
            _histogram_seconds(out, name, lane, getattr(m, attr))
    out += [
        "# HELP gated_component_up 1 while a component is healthy.",
        "# TYPE gated_component_up gauge",
    ]
    out += [
        f"gated_component_up{_labels(component=name)} {int(ok)}"
        for name, ok in sorted(components.items())
    ]
    _mqtt_link_lines(out, mqtt_links or {})
    return "\n".join(out) + "\n"


def _mqtt_link_lines(out: list[str], links: Mapping[str, Any]) -> None:
    """Append each MQTT link's state and counters (LinkStats by link name)."""
    if not links:
        return
    out += [
        "# HELP gated_mqtt_connected 1 while the MQTT link is connected.",
        "# TYPE gated_mqtt_connected gauge",
    ]
    out += [
        f"gated_mqtt_connected{_labels(link=n)} {int(s.connected)}"
        for n, s in sorted(links.items())
    ]
    for name, help_text, attr in (
        ("gated_mqtt_reconnects_total", "Connections made again after a loss", "reconnects"),
        ("gated_mqtt_disconnects_total", "Established connections lost", "disconnects"),
        (
            "gated_mqtt_connect_failures_total",
            "Connection attempts that failed",
            "connect_failures",
        ),
        ("gated_mqtt_overflow_total", "Messages dropped because the loop fell behind", "overflow"),
    ):
        out += [f"# HELP {name} {help_text}.", f"# TYPE {name} counter"]
        out += [f"{name}{_labels(link=n)} {getattr(s, attr)}" for n, s in sorted(links.items())]
    for name, help_text, attr, key in (
        ("gated_mqtt_messages_total", "Messages received, by subscription", "messages", "topic"),
        ("gated_mqtt_malformed_total", "Malformed messages dropped", "malformed", "topic"),
        ("gated_mqtt_dropped_total", "Messages dropped on purpose, by reason", "dropped", "reason"),
    ):
        out += [f"# HELP {name} {help_text}.", f"# TYPE {name} counter"]
        for n, s in sorted(links.items()):
            out += [
                f"{name}{_labels(link=n, **{key: k})} {v}"
                for k, v in sorted(getattr(s, attr).items())
            ]
