"""The journal as the outbox: what to send next, what is in flight, what was acknowledged.

Nothing is copied out of the journal: rows whose `synced_at` is null are the queue.
Two lanes read it (docs/protocol.md, section 4):

* the **live lane** follows the journal's commit feed from the head it found at start,
  so an event committed now goes in the next batch (oldest of the new rows first);
* the **backfill lane** walks the unsynced rows at or below that start head, oldest
  first, `batch_max_events` at a time, with a cursor: a month of backlog is streamed
  from SQLite, never loaded whole, and never stands in front of a live event.

In-flight events are remembered by id and seq only (bounded by the transport's
window); the rows themselves are re-read when sent again. An event not acknowledged
within `ack_timeout_s` is sent again (the backfill pass restarts from the oldest
unsynced row and skips what is still in flight and not yet due). Acknowledged ids
are marked synced in batches (one journal transaction per flush, not per event),
so sync costs the gate's writer thread little.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Batch", "CommitWaiter", "Outbox", "OutboxJournal"]

log = logging.getLogger(__name__)

STREAMS = ("access", "audit")
MARK_EVERY_S = 0.05  # acknowledged ids wait at most this long to be marked synced
MARK_MAX = 500  # … or until this many are waiting
LIVE_TURNS = 4  # live batches in a row before one backfill batch gets its turn


class CommitWaiter(Protocol):
    """gated.journal's CommitFeed, as far as sync uses it."""

    seq: int

    async def wait(self, seq: int) -> int:
        """Wait until rows up to seq are committed."""
        ...


class OutboxJournal(Protocol):
    """What the outbox needs of the journal (app.py hands it the Journal)."""

    @property
    def commits(self) -> CommitWaiter:
        """The feed of committed seqs."""
        ...

    async def unsynced(self, stream: str, limit: int = 100,
                       after_seq: int = 0) -> list[dict[str, Any]]:
        """Oldest unsynced rows of one stream with seq > after_seq."""
        ...

    async def mark_synced(self, stream: str, event_ids: Sequence[str],
                          when: float | None = None) -> int:
        """Set synced_at on these events."""
        ...


@dataclass(slots=True)
class Batch:
    """Rows to send (public rows, each with "stream"), oldest first; `live` says which lane."""

    rows: list[dict[str, Any]]
    live: bool


@dataclass(slots=True)
class _InFlight:
    stream: str
    seq: int
    due: float  # monotonic time after which it is sent again


class Outbox:
    """Hands out batches of unsynced rows, tracks them in flight, marks acknowledged ones."""

    def __init__(self, journal: OutboxJournal, *, batch_max_events: int = 500,
                 ack_timeout_s: float = 30.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_marked: Callable[[int], None] | None = None) -> None:
        self.journal = journal
        self.batch_max_events = batch_max_events
        self.ack_timeout_s = ack_timeout_s
        self._monotonic = monotonic
        self._on_marked = on_marked
        start = journal.commits.seq
        self.live_cursor = start  # the live lane has handed out every row up to here
        self.backfill_limit = start  # the backfill lane covers rows up to here …
        self.backfill_cursor = 0  # … and has handed out those up to here in this pass
        self.backfill_done = False
        self.inflight: dict[str, _InFlight] = {}
        self._live_turns = 0
        self._to_mark: dict[str, list[str]] = {s: [] for s in STREAMS}
        self._mark_task: asyncio.Task[None] | None = None
        self._marking: asyncio.Lock = asyncio.Lock()
        self.acked = 0  # ids acknowledged since start (counted once each)
        self.resent = 0  # events handed out again after their ack timed out

    # --- reading ----------------------------------------------------------------------

    async def _read(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        # Both streams share one seq: read `limit` of each past the cursor and merge.
        parts = [await self.journal.unsynced(s, limit, after_seq) for s in STREAMS]
        return list(heapq.merge(*parts, key=lambda r: r["seq"]))[:limit]

    def _usable(self, row: dict[str, Any], now: float) -> bool:
        held = self.inflight.get(row["event_id"])
        return held is None or held.due <= now

    async def next_batch(self, limit: int | None = None) -> Batch:
        """Wait for rows to send and return up to `limit` of them, marked in flight."""
        limit = min(limit or self.batch_max_events, self.batch_max_events)
        while True:
            batch = await self._try_batch(limit)
            if batch is not None:
                return batch
            await self._wait_for_work()

    async def _try_batch(self, limit: int) -> Batch | None:
        now = self._monotonic()
        live_ready = self.journal.commits.seq > self.live_cursor
        backfill_ready = not self.backfill_done
        if live_ready and (self._live_turns < LIVE_TURNS or not backfill_ready):
            committed = self.journal.commits.seq  # before the read: later rows may be missed
            rows = await self._read(self.live_cursor, limit)
            # Everything up to the committed seq was looked at, even where none is unsynced.
            self.live_cursor = rows[-1]["seq"] if len(rows) == limit else max(
                self.live_cursor, committed)
            rows = [r for r in rows if self._usable(r, now)]
            self._live_turns += 1
            if rows:
                return self._hand_out(rows, live=True, now=now)
            return None if not backfill_ready else await self._backfill(limit, now)
        if backfill_ready:
            self._live_turns = 0
            return await self._backfill(limit, now)
        if self._due(now):
            self._restart_backfill()
            return await self._backfill(limit, now)
        return None

    async def _backfill(self, limit: int, now: float) -> Batch | None:
        while not self.backfill_done:
            rows = await self._read(self.backfill_cursor, limit)
            if len(rows) < limit:
                self.backfill_done = True
            if rows:
                self.backfill_cursor = rows[-1]["seq"]
            inside = [r for r in rows if r["seq"] <= self.backfill_limit]
            if len(inside) < len(rows):
                self.backfill_done = True  # reached the live lane's part
            usable = [r for r in inside if self._usable(r, now)]
            if usable:
                return self._hand_out(usable, live=False, now=now)
        return None

    def _restart_backfill(self) -> None:
        """Start a new backfill pass over everything the live lane has passed."""
        self.backfill_cursor = 0
        self.backfill_limit = self.live_cursor
        self.backfill_done = False

    def _due(self, now: float) -> bool:
        return any(item.due <= now for item in self.inflight.values())

    def _hand_out(self, rows: list[dict[str, Any]], *, live: bool, now: float) -> Batch:
        due = now + self.ack_timeout_s
        for row in rows:
            if row["event_id"] in self.inflight:
                self.resent += 1
            self.inflight[row["event_id"]] = _InFlight(row["stream"], row["seq"], due)
        return Batch(rows, live)

    async def _wait_for_work(self) -> None:
        """Sleep until a new commit or the earliest in-flight event falls due."""
        waits: list[Awaitable[Any]] = [self.journal.commits.wait(self.live_cursor + 1)]
        if self.inflight:
            earliest = min(item.due for item in self.inflight.values())
            waits.append(asyncio.sleep(max(0.0, earliest - self._monotonic()) + 0.001))
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # EOFError when the journal closed
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, EOFError):
                    await task
        if self._due(self._monotonic()) and self.backfill_done:
            self._restart_backfill()

    # --- acknowledgements ----------------------------------------------------------------

    def give_back(self, event_ids: Sequence[str]) -> None:
        """Make these in-flight events due now (the transport could not send them)."""
        now = self._monotonic()
        for event_id in event_ids:
            item = self.inflight.get(event_id)
            if item is not None:
                item.due = now
        if self.backfill_done:
            self._restart_backfill()

    def acknowledged(self, event_ids: Sequence[str]) -> int:
        """Record an acknowledgement of record; the ids are marked synced shortly.

        Ids the outbox does not hold in flight (a late ack for an event sent before a
        restart) are marked too: the service stored them either way.
        """
        count = 0
        for event_id in event_ids:
            item = self.inflight.pop(event_id, None)
            stream = item.stream if item is not None else None
            if stream is None:
                # Unknown here: try both tables (mark_synced touches only matching rows).
                for s in STREAMS:
                    self._to_mark[s].append(event_id)
            else:
                self._to_mark[stream].append(event_id)
            count += 1
        self.acked += count
        pending = sum(len(v) for v in self._to_mark.values())
        if pending >= MARK_MAX:
            self._schedule_mark(0.0)
        elif pending:
            self._schedule_mark(MARK_EVERY_S)
        return count

    def forget(self, event_id: str) -> None:
        """Drop an event from the in-flight set without marking it (quarantine handles it)."""
        self.inflight.pop(event_id, None)

    def _schedule_mark(self, delay: float) -> None:
        if self._mark_task is not None and not self._mark_task.done() and delay > 0:
            return  # a flush is already coming
        self._mark_task = asyncio.get_running_loop().create_task(self._mark_later(delay))

    async def _mark_later(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        # Ids acknowledged while a flush was writing were not in it, and their
        # acknowledged() saw this task still running: flush until none is left.
        while self.pending_marks:
            await self.flush()

    async def flush(self) -> int:
        """Mark every acknowledged id synced now; returns how many rows changed."""
        changed = 0
        async with self._marking:
            for stream in STREAMS:
                ids, self._to_mark[stream] = self._to_mark[stream], []
                if not ids:
                    continue
                try:
                    changed += await self.journal.mark_synced(stream, ids)
                except Exception as err:
                    # Unmarked rows are sent again later and deduplicated: nothing lost.
                    log.warning("sync: cannot mark %d event(s) synced: %s", len(ids), err)
        if changed and self._on_marked is not None:
            self._on_marked(changed)
        return changed

    @property
    def pending_marks(self) -> int:
        """Acknowledged ids not yet marked synced."""
        return sum(len(v) for v in self._to_mark.values())
