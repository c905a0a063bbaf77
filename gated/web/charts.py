"""The dashboard's two charts, drawn on the server as inline SVG (no script, no styles).

`HourlyTally` keeps per-hour counts of the last 24 hours (entries, exits, denials) and
the read→relay latencies the journal recorded. It reads the journal once at the first
dashboard load (newest first, by sequence) and afterwards only the rows committed since
(`Journal.after`), so a busy gate costs one short read per dashboard load, not a scan of
the day. The SVG holds numbers and fixed words only; colours come from app.css classes
(the CSP allows no inline style).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["HourlyTally", "hourly_svg", "latency_svg"]

HOURS = 24
HOUR_S = 3600
READ_BATCH = 500
FIRST_READ_MAX = 100_000  # rows read at the first load; older rows of the day are left out
LATENCIES_PER_HOUR = 5_000  # a bounded sample per hour: memory must not grow with traffic


class _Journal(Protocol):
    async def head(self) -> tuple[int, str]: ...

    async def find(self, stream: str, **filters: Any) -> list[dict[str, Any]]: ...

    async def after(self, seq: int, limit: int = ...) -> list[dict[str, Any]]: ...


@dataclass
class Hour:
    """One hour's tally."""

    start: int  # epoch seconds at the top of the hour
    entries: int = 0
    exits: int = 0
    denials: int = 0
    latencies: list[float] = field(default_factory=list)


class HourlyTally:
    """Per-hour counts and latencies of the last 24 hours, kept up to date incrementally."""

    def __init__(self, journal: _Journal) -> None:
        self.journal = journal
        self.hours: dict[int, Hour] = {}
        self.seq: int | None = None  # every access row up to here is counted
        self._reading = asyncio.Lock()  # dashboards loaded at once must not count a row twice

    def _add(self, row: dict[str, Any]) -> None:
        created = row.get("created_at")
        if not isinstance(created, int | float):
            return
        start = int(created // HOUR_S * HOUR_S)
        hour = self.hours.get(start)
        if hour is None:
            hour = self.hours[start] = Hour(start)
        kind = row.get("event_type")
        if kind in ("entry", "visitor_entry"):
            hour.entries += 1
        elif kind == "exit":
            hour.exits += 1
        elif kind == "denied":
            hour.denials += 1
        latency = row.get("read_to_relay_ms")
        if isinstance(latency, int | float) and len(hour.latencies) < LATENCIES_PER_HOUR:
            hour.latencies.append(float(latency))

    async def refresh(self, now: float) -> list[Hour]:
        """Count what was committed since the last call; the 24 hours ending now, oldest first."""
        async with self._reading:
            if self.seq is None:
                head, _ = await self.journal.head()
                before, read = head + 1, 0
                while read < FIRST_READ_MAX:
                    rows = await self.journal.find("access", since=now - HOURS * HOUR_S,
                                                   before_seq=before, limit=READ_BATCH)
                    for row in rows:
                        self._add(row)
                    read += len(rows)
                    if len(rows) < READ_BATCH:
                        break
                    before = rows[-1]["seq"]
                self.seq = head
            while True:
                rows = await self.journal.after(self.seq, READ_BATCH)
                for row in rows:
                    if "event_type" in row:  # access rows; audit rows only move the cursor
                        self._add(row)
                if rows:
                    self.seq = rows[-1]["seq"]
                if len(rows) < READ_BATCH:
                    break
        last = int(now // HOUR_S * HOUR_S)
        first = last - (HOURS - 1) * HOUR_S
        for start in [s for s in self.hours if s < first]:
            del self.hours[start]
        return [self.hours.get(s) or Hour(s) for s in range(first, last + 1, HOUR_S)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


_W, _H, _LEFT, _BOTTOM, _TOP = 480, 140, 34, 18, 8


def _frame(label: str, top_value: str, hours: Sequence[Hour], hour_label: Any) -> list[str]:
    plot_h = _H - _BOTTOM - _TOP
    parts = [f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W}" '
             f'y2="{_TOP + plot_h}"/>',
             f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">'
             f'{top_value}</text>',
             f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end">0</text>']
    step = (_W - _LEFT) / HOURS
    for i, hour in enumerate(hours):
        if i % 6 == 0:
            parts.append(f'<text class="tick" x="{_LEFT + i * step:.1f}" y="{_H - 4}">'
                         f'{hour_label(hour.start)}</text>')
    return [f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{label}" '
            f'xmlns="http://www.w3.org/2000/svg">', *parts]


def hourly_svg(hours: Sequence[Hour], hour_label: Any) -> str:
    """Stacked bars per hour: entries, exits, denials (a title per bar for the numbers)."""
    peak = max((h.entries + h.exits + h.denials for h in hours), default=0)
    scale = max(peak, 1)
    plot_h = _H - _BOTTOM - _TOP
    step = (_W - _LEFT) / HOURS
    out = _frame("entries, exits and denials per hour, last 24 hours", str(peak), hours,
                 hour_label)
    for i, hour in enumerate(hours):
        x = _LEFT + i * step + 1
        y = float(_TOP + plot_h)
        out.append(f'<g id="h-{hour_label(hour.start).replace(":", "")}"><title>'
                   f'{hour_label(hour.start)}: {hour.entries} entries, {hour.exits} exits, '
                   f'{hour.denials} denials</title>')
        for count, css in ((hour.entries, "entries"), (hour.exits, "exits"),
                           (hour.denials, "denials")):
            if count:
                height = count / scale * plot_h
                y -= height
                out.append(f'<rect class="{css}" x="{x:.1f}" y="{y:.1f}" width="{step - 2:.1f}" '
                           f'height="{height:.1f}"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def latency_svg(hours: Sequence[Hour], hour_label: Any) -> str:
    """Per hour, read→relay p95 (light bar) and median (dark bar) in milliseconds."""
    stats = [(percentile(h.latencies, 0.5), percentile(h.latencies, 0.95)) for h in hours]
    peak = max((p95 for _, p95 in stats if p95 is not None), default=0.0)
    top = _nice(peak)
    plot_h = _H - _BOTTOM - _TOP
    step = (_W - _LEFT) / HOURS
    out = _frame("read to relay latency per hour, last 24 hours", f"{top:g} ms", hours,
                 hour_label)
    for i, (hour, (p50, p95)) in enumerate(zip(hours, stats, strict=True)):
        if p50 is None or p95 is None:
            continue
        x = _LEFT + i * step + 1
        out.append(f'<g><title>{hour_label(hour.start)}: median {p50:.2f} ms, p95 {p95:.2f} ms'
                   f' ({len(hour.latencies)} reads)</title>')
        for value, css in ((p95, "p95"), (p50, "p50")):
            height = max(min(value / top, 1.0) * plot_h, 0.5)
            out.append(f'<rect class="{css}" x="{x:.1f}" y="{_TOP + plot_h - height:.1f}" '
                       f'width="{step - 2:.1f}" height="{height:.1f}"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _nice(value: float) -> float:
    """A round axis top at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if value <= m * power:
            return float(m * power)
    return float(10 * power)
