"""The dashboard's hourly tally on a journal double: each committed row counted once."""

from __future__ import annotations

import asyncio
from typing import Any

from gated.web.charts import HourlyTally

NOW = 1_800_000_000.0


class _Journal:
    """Access rows by seq; every read yields to the loop as the real reads do."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, event_type: str, latency: float | None = None) -> None:
        self.rows.append({"seq": len(self.rows) + 1, "created_at": NOW - 10,
                          "event_type": event_type, "read_to_relay_ms": latency})

    async def head(self) -> tuple[int, str]:
        await asyncio.sleep(0)
        return len(self.rows), "0" * 64

    async def find(self, stream: str, *, since: float, before_seq: int,
                   limit: int) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        found = [r for r in reversed(self.rows) if r["seq"] < before_seq
                 and r["created_at"] >= since]
        return found[:limit]

    async def after(self, seq: int, limit: int = 500) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        return [r for r in self.rows if r["seq"] > seq][:limit]


def _totals(hours: list[Any]) -> tuple[int, int, int, int]:
    return (sum(h.entries for h in hours), sum(h.exits for h in hours),
            sum(h.denials for h in hours), sum(len(h.latencies) for h in hours))


async def test_first_and_later_loads_count_each_row_once() -> None:
    journal = _Journal()
    journal.add("entry", 0.5)
    journal.add("denied")
    tally = HourlyTally(journal)
    assert _totals(await tally.refresh(NOW)) == (1, 0, 1, 1)
    journal.add("exit", 0.7)
    assert _totals(await tally.refresh(NOW)) == (1, 1, 1, 2)
    assert _totals(await tally.refresh(NOW)) == (1, 1, 1, 2)


async def test_dashboards_loaded_at_once_count_each_row_once() -> None:
    journal = _Journal()
    for _ in range(3):
        journal.add("entry", 0.5)
    tally = HourlyTally(journal)
    first = await asyncio.gather(*(tally.refresh(NOW) for _ in range(4)))
    assert [_totals(h) for h in first] == [(3, 0, 0, 3)] * 4
    journal.add("exit", 0.7)
    later = await asyncio.gather(*(tally.refresh(NOW) for _ in range(4)))
    assert [_totals(h) for h in later] == [(3, 1, 0, 4)] * 4
