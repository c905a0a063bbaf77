"""The journal's commit notification: consumers await committed seqs, never poll."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gated.ids import new_event_id
from gated.journal import Journal
from gated.journal.commits import CommitFeed
from gated.model import AuditEvent


def audit_event(action: str = "test") -> AuditEvent:
    return AuditEvent(new_event_id(), "t", "s", "d", time.time(), action, "test", "system")


async def test_waiters_wake_in_order_once_their_seq_commits(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        feed = journal.commits
        assert feed.seq == 0
        woke: list[tuple[str, int]] = []

        async def wait(name: str, seq: int) -> None:
            woke.append((name, await feed.wait(seq)))

        waiters = [asyncio.create_task(wait("third", 3)), asyncio.create_task(wait("first", 1))]
        await asyncio.sleep(0.01)
        assert woke == []  # nothing committed yet: nobody woke
        assert await journal.append(audit_event()) == 1
        await asyncio.sleep(0)
        assert woke == [("first", 1)]
        await journal.append_many([audit_event(), audit_event()])
        await asyncio.gather(*waiters)
        assert woke == [("first", 1), ("third", 3)]
        assert await feed.wait(2) == 3  # already committed: at once


async def test_feed_starts_at_the_existing_head_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.append_many([audit_event() for _ in range(5)])
    journal = await Journal.open(path)
    feed = journal.commits
    assert feed.seq == 5
    pending = asyncio.create_task(feed.wait(6))
    await asyncio.sleep(0)
    await journal.close()
    with pytest.raises(EOFError):
        await pending
    with pytest.raises(EOFError):
        await feed.wait(7)


async def test_a_refused_event_does_not_advance_the_feed(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.append(audit_event())
        with pytest.raises(Exception):  # noqa: B017 - any refusal, before anything is written
            await journal.append(audit_event(action="x" * 100_000))
        assert journal.commits.seq == 1


def test_feed_ignores_going_backwards() -> None:
    feed = CommitFeed(10)
    feed.advance(4)
    assert feed.seq == 10


async def test_erasure_and_retention_records_advance_the_feed(tmp_path: Path) -> None:
    # Their audit rows are chained by the writer outside an append: sync and the live
    # feed must hear of them at once, not with whatever is appended next.
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        await journal.append_many([audit_event() for _ in range(3)])
        feed = journal.commits
        waiter = asyncio.create_task(feed.wait(4))
        erasure = await journal.erase_personal(audit_event("erase"), event_ids=["x"])
        assert erasure.audit_seq == 4 and await asyncio.wait_for(waiter, 5) == 4
        await journal.mark_synced("audit", [r["event_id"] for r in await journal.recent()])
        pruned = await journal.prune(float("inf"), now=time.time())
        assert pruned.audit_seqs and feed.seq == pruned.audit_seqs[-1] == journal.head_seq
