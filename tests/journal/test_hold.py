"""JournalHold: order, the bound and the reopen after an I/O error, on a journal double.

The daemon-level behaviour (a real full tmpfs, real EIO) is in tests/daemon/
test_full_disk.py and test_io_errors.py; these pin the queue's own rules.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gated.audit import Auditor
from gated.journal.hold import JournalHeldError, JournalHold
from gated.journal.writer import JournalWriteError
from gated.model import AuditEvent, SiteIdentity

IDENTITY = SiteIdentity(tenant_id="t", site_id="s", device_id="d")


class RefusingJournal:
    """Appends to a list while `failing` is None; otherwise raises that error."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.failing: JournalWriteError | None = None
        self.reopened = 0

    async def append(self, event: AuditEvent) -> int:
        await asyncio.sleep(0)
        if self.failing is not None:
            raise self.failing
        self.rows.append(event.action)
        return len(self.rows)

    async def reopen(self) -> None:
        self.reopened += 1


def auditor() -> Auditor:
    async def unused(event: Any) -> int:
        raise AssertionError("not used")

    return Auditor(unused, IDENTITY)


def event(action: str) -> AuditEvent:
    return auditor().build(action, "test")


async def held(hold: JournalHold, action: str) -> None:
    with pytest.raises(JournalHeldError):
        await hold.append(event(action))


async def test_held_events_are_written_in_order_and_nothing_overtakes_them() -> None:
    journal = RefusingJournal()
    changes: list[int] = []
    hold = JournalHold(journal, 10, on_change=lambda n, _: changes.append(n))  # type: ignore[arg-type]
    assert await hold.append(event("a")) == 1
    journal.failing = JournalWriteError("database or disk is full", disk_full=True)
    await held(hold, "b")
    journal.failing = None
    # Writable again, but "b" is still held: "c" must queue behind it, not overtake it.
    await held(hold, "c")
    assert hold.held == 2
    assert await hold.flush()
    assert journal.rows == ["a", "b", "c"]
    assert hold.held == 0 and hold.written_total == 2
    assert changes[-1] == 0 and max(changes) == 2
    assert journal.reopened == 0  # a full disk needs no reopen
    assert await hold.append(event("d")) == 4


async def test_past_the_bound_the_oldest_go_and_one_audit_row_says_how_many() -> None:
    journal = RefusingJournal()
    made = auditor()
    hold = JournalHold(journal, 2,  # type: ignore[arg-type]
                       dropped_record=lambda n: made.build("journal_hold_dropped", "journal",
                                                           metadata={"dropped": n}))
    journal.failing = JournalWriteError("database or disk is full", disk_full=True)
    for action in ("a", "b", "c", "d", "e"):
        await held(hold, action)
    assert hold.held == 2 and hold.dropped_total == 3 and hold.unreported_drops == 3
    assert not await hold.flush()  # still full: nothing written, nothing lost
    journal.failing = None
    assert await hold.flush()
    assert journal.rows == ["d", "e", "journal_hold_dropped"]
    assert hold.unreported_drops == 0


async def test_an_io_error_reopens_the_journal_before_the_next_try() -> None:
    journal = RefusingJournal()
    hold = JournalHold(journal, 10)  # type: ignore[arg-type]
    journal.failing = JournalWriteError("disk I/O error")
    await held(hold, "a")
    assert not await hold.flush()
    assert journal.reopened == 1
    journal.failing = None
    assert await hold.flush()
    assert journal.reopened == 2 and journal.rows == ["a"]


async def test_a_stop_counts_what_is_still_held() -> None:
    journal = RefusingJournal()
    hold = JournalHold(journal, 10)  # type: ignore[arg-type]
    journal.failing = JournalWriteError("database or disk is full", disk_full=True)
    await held(hold, "a")
    await held(hold, "b")
    assert await hold.close(0.5) == 2
    # Closed: no more holding, a refused write is the caller's error again.
    with pytest.raises(JournalWriteError):
        await hold.append(event("c"))


async def test_a_start_before_the_journal_opens_holds_until_it_is_attached() -> None:
    hold = JournalHold(None, 10)
    await held(hold, "daemon_start")
    assert not await hold.flush()
    journal = RefusingJournal()
    hold.attach(journal)  # type: ignore[arg-type]
    assert await hold.flush()
    assert journal.rows == ["daemon_start"]
