"""The outbox against a real journal: the backfill reads a batch at a time however small the
window's room, every row goes out once in seq order, live rows do not wait behind the
read-ahead, and in-flight events fall due (re-sent) in order after the ack timeout."""

from __future__ import annotations

from typing import Any

from gated.journal import Journal
from gated.sync.outbox import Outbox
from tests.sync.conftest import access_event


class CountingJournal:
    """The journal as the outbox sees it, counting the reads it makes."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.reads = 0

    @property
    def commits(self) -> Any:
        return self.journal.commits

    async def unsynced(self, stream: str, limit: int = 100,
                       after_seq: int = 0) -> list[dict[str, Any]]:
        self.reads += 1
        return await self.journal.unsynced(stream, limit, after_seq)

    async def mark_synced(self, stream: str, event_ids: Any, when: float | None = None) -> int:
        return await self.journal.mark_synced(stream, event_ids, when)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_backfill_reads_a_batch_at_a_time_however_little_room_the_window_has(
    journal: Journal,
) -> None:
    seqs = await journal.append_many([access_event(i) for i in range(1200)])
    counting = CountingJournal(journal)
    outbox = Outbox(counting, batch_max_events=500, ack_timeout_s=30.0)
    handed: list[int] = []
    while len(handed) < 1200:
        batch = await outbox.next_batch(7)  # acks free the window a few ids at a time
        assert not batch.live and len(batch.rows) <= 7
        handed += [row["seq"] for row in batch.rows]
        outbox.acknowledged([row["event_id"] for row in batch.rows])
    assert handed == seqs  # every row once, oldest first
    # Three reads of 500 (the last one short) per stream, not one per 7 rows handed out.
    assert counting.reads <= 2 * 4
    await outbox.flush()
    assert await journal.unsynced("access", 10) == []


async def test_a_live_event_goes_before_the_read_ahead_of_the_backlog(journal: Journal) -> None:
    await journal.append_many([access_event(i) for i in range(300)])
    outbox = Outbox(journal, batch_max_events=100, ack_timeout_s=30.0)
    first = await outbox.next_batch(10)
    assert not first.live  # the backfill began and holds rows read ahead
    live_seq = await journal.append(access_event(1000))
    batch = await outbox.next_batch(10)
    assert batch.live and [row["seq"] for row in batch.rows] == [live_seq]


async def test_unacked_events_fall_due_in_order_and_are_handed_out_again(
    journal: Journal,
) -> None:
    await journal.append_many([access_event(i) for i in range(10)])
    clock = Clock()
    outbox = Outbox(journal, batch_max_events=5, ack_timeout_s=30.0, monotonic=clock)
    first = await outbox.next_batch()
    clock.now += 10
    second = await outbox.next_batch()
    assert outbox.awaited(clock.now) == 10
    assert outbox.earliest_due() == 1030.0
    outbox.acknowledged([row["event_id"] for row in first.rows[:2]])  # two of the first
    assert outbox.awaited(clock.now) == 8

    clock.now = 1031.0  # the first batch's rest is due, the second's is not yet
    assert outbox.awaited(clock.now) == 5
    again = await outbox.next_batch()
    assert [r["event_id"] for r in again.rows] == [r["event_id"] for r in first.rows[2:]]
    assert outbox.resent == 3
    assert outbox.earliest_due() == 1040.0  # the second batch's, now first in line
    assert outbox.awaited(clock.now) == 8

    outbox.give_back([second.rows[4]["event_id"]])  # the transport could not send it
    assert outbox.earliest_due() == clock.now
    assert outbox.awaited(clock.now) == 7
    retry = await outbox.next_batch()
    assert [r["event_id"] for r in retry.rows] == [second.rows[4]["event_id"]]
    assert outbox.awaited(clock.now) == 8
