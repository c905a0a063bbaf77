"""The live feed's hub on a journal double: one read per commit batch, however many pages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gated.journal.commits import CommitFeed
from gated.web.feed import QUEUE_MAX, LiveHub


class _Journal:
    def __init__(self) -> None:
        self.commits = CommitFeed()
        self.rows: list[dict[str, Any]] = []
        self.reads = 0

    def commit(self, plate: str) -> None:
        seq = len(self.rows) + 1
        self.rows.append({
            "seq": seq, "stream": "access", "event_id": f"e{seq}", "created_at": 1.0,
            "access_point": "main-in", "event_type": "entry", "vehicle_plate": plate,
            "decision_reason": "resident", "authorization_method": "auto_plate"})
        self.commits.advance(seq)

    async def after(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        self.reads += 1
        return [r for r in self.rows if r["seq"] > seq][:limit]


async def _status() -> dict[str, Any]:
    return {"lanes": {}}


def _plates(queue: asyncio.Queue[bytes | None]) -> list[str]:
    out = []
    while not queue.empty():
        message = queue.get_nowait()
        assert message is not None
        kind, data = message.decode().split("\n")[:2]
        if kind == "event: access":
            out.append(json.loads(data[6:])["plate"])
    return out


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_every_page_gets_each_row_from_one_read() -> None:
    journal = _Journal()
    hub = LiveHub(journal, _status, max_clients=8)
    task = asyncio.create_task(hub.run())
    try:
        await _settle()
        journal.commit("NOBODY1")  # no page open: not even read
        await _settle()
        assert journal.reads == 0
        queues = [hub.subscribe() for _ in range(8)]
        assert hub.subscribe() is None  # max_clients
        journal.commit("AB123CD")
        await _settle()
        assert journal.reads == 1
        for queue in queues:
            assert queue is not None and _plates(queue) == ["AB123CD"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_page_that_does_not_read_is_cut_off_not_buffered() -> None:
    journal = _Journal()
    hub = LiveHub(journal, _status)
    slow = hub.subscribe()
    assert slow is not None
    for i in range(QUEUE_MAX + 1):
        hub.publish("access", {"plate": f"P{i}"})
    assert hub.clients == 0 and hub.dropped == 1
    assert slow.qsize() == QUEUE_MAX
    while not slow.empty():
        last = slow.get_nowait()
    assert last is None  # the handler ends the response on it
