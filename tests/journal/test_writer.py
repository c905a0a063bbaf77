"""The journal's writer thread and group commit: ordering, failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.verify import verify
from tests.journal.journal_child import access_event, audit_event


def writer_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "gated-journal")


async def test_empty_append_many_writes_nothing(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        assert await journal.append_many([]) == []
        assert journal.head_seq == 0
        assert await journal.append(access_event()) == 1


async def test_a_large_append_keeps_contiguous_seqs_among_concurrent_appends(
    tmp_path: Path,
) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite3", max_batch=3)
    results = await asyncio.gather(
        *(journal.append(audit_event()) for _ in range(5)),
        journal.append_many([access_event() for _ in range(10)]),
        *(journal.append(audit_event()) for _ in range(5)),
    )
    seqs, others = results[5], results[:5] + results[6:]
    await journal.close()
    assert seqs == list(range(seqs[0], seqs[0] + 10))  # chunks stay adjacent in the queue
    assert sorted(seqs + others) == list(range(1, 21))
    assert verify(journal.path).ok


async def test_a_broken_write_connection_answers_every_caller(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite3")
    assert await journal.append(access_event()) == 1
    assert journal._writer.conn is not None
    journal._writer.conn.close()  # the disk or the file went away under the writer
    results = await asyncio.gather(*(journal.append(access_event()) for _ in range(4)),
                                   return_exceptions=True)
    assert all(isinstance(r, JournalError) for r in results)
    with pytest.raises(JournalError, match="journal write failed"):
        await journal.mark_synced("access", ["x"])
    await journal.close()  # still shuts down cleanly
    assert verify(journal.path).ok


async def test_close_ends_the_writer_thread(tmp_path: Path) -> None:
    before = writer_threads()
    journal = await Journal.open(tmp_path / "j.sqlite3")
    assert writer_threads() == before + 1
    await asyncio.gather(*(journal.append(access_event()) for _ in range(20)))
    await journal.close()
    await journal.close()  # twice is harmless
    assert writer_threads() == before


async def test_a_failed_open_ends_the_writer_thread(tmp_path: Path) -> None:
    before = writer_threads()
    bad = tmp_path / "garbage.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError):
        await Journal.open(bad)
    assert writer_threads() == before


async def test_appends_interleave_with_sync_state_writes_in_order(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "j.sqlite3") as journal:
        events = [access_event() for _ in range(6)]
        first = asyncio.gather(*(journal.append(e) for e in events[:3]))
        marked = journal.mark_synced("access", [e.event_id for e in events[:3]])
        second = asyncio.gather(*(journal.append(e) for e in events[3:]))
        assert sorted(await first + await second) == list(range(1, 7))
        # The writer thread runs jobs in the order they were handed over.
        assert await marked == 3
        unsynced = await journal.unsynced("access")
        assert [r["event_id"] for r in unsynced] == [e.event_id for e in events[3:]]


async def test_producers_woken_together_commit_together(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite3")
    writer = journal._writer
    batches: list[int] = []
    commit = writer.append_batch

    def counted(items):  # count transactions on this one instance
        batches.append(len(items))
        return commit(items)

    writer.append_batch = counted  # type: ignore[method-assign]

    async def produce() -> None:
        for _ in range(4):
            await journal.append(access_event())

    await asyncio.gather(*(produce() for _ in range(32)))
    await journal.close()
    # The first append finds the writer idle and goes alone; after that every round of
    # 32 appends is one transaction: the first producer woken by a delivery does not
    # commit alone while the other 31 queue behind it.
    assert sum(batches) == 128
    assert len(batches) <= 5, batches
