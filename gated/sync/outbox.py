"""The journal as the outbox: what to send next, what is in flight, what was acknowledged.

Nothing is copied out of the journal: rows whose `synced_at` is null are the queue.
Two lanes read it (docs/protocol.md, section 4):

* the **live lane** follows the journal's commit feed from the head it found at start,
  so an event committed now goes in the next batch (oldest of the new rows first);
* the **backfill lane** walks the unsynced rows at or below that start head, oldest
  first, `batch_max_events` at a time, with a cursor: a month of backlog is streamed
  from SQLite, never loaded whole, and never stands in front of a live event. It reads
  a full `batch_max_events` even when the transport has room for fewer (acks free
  the window a few ids at a time) and hands the rest out from that read-ahead on
  later turns: the fixed cost of a read (a hop to the reader thread per stream) is
  paid once per batch, not once per ack.

In-flight events are remembered by id and seq only (bounded by the transport's
window), in the order they fall due, so the transport asks "how many are still
awaited" and "when is the next one due" without scanning them all on every ack;
the rows themselves are re-read when sent again. An event not acknowledged
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
from collections import OrderedDict, deque
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
        self.backfill_cursor = 0  # … and has read those up to here in this pass
        self.backfill_done = False
        self._ahead: deque[dict[str, Any]] = deque()  # backfill rows read, not handed out
        self._read_all = False  # this pass's reads reached the end of its part
        self._passes = 0  # backfill passes begun (a read spanning a restart is dropped)
        self._reading: asyncio.Future[None] | None = None  # the read-ahead under way
        # Kept in due order: handed-out events go to the end (their due is now + timeout,
        # never earlier than one already held); given-back ones, due now, to the front.
        self.inflight: OrderedDict[str, _InFlight] = OrderedDict()
        self._live_turns = 0
        self._to_mark: dict[str, list[str]] = {s: [] for s in STREAMS}
        self._acked_unmarked: set[str] = set()  # ids in _to_mark or in the flush under way
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
        event_id = row["event_id"]
        if event_id in self._acked_unmarked:
            return False  # acknowledged, its row not yet marked: a re-send would be waste
        held = self.inflight.get(event_id)
        return held is None or held.due <= now

    def live_waiting(self) -> bool:
        """Rows were committed that the live lane has not looked at yet."""
        return self.journal.commits.seq > self.live_cursor

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
        live_ready = self.live_waiting()
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
        ahead = self._ahead
        while not self.backfill_done:
            if not ahead and not self._read_all:
                await self._read_ahead_now()
            usable: list[dict[str, Any]] = []
            while ahead and len(usable) < limit:
                row = ahead.popleft()
                if self._usable(row, now):
                    usable.append(row)
            if not self._read_all and len(ahead) < self.batch_max_events:
                self._start_read_ahead()  # read on while this batch is sent and acked
            if usable:
                return self._hand_out(usable, live=False, now=now)
            if not ahead and self._read_all:
                self.backfill_done = True
        return None

    def _start_read_ahead(self) -> asyncio.Future[None]:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_next())
            self._reading.add_done_callback(self._read_finished)
        return self._reading

    async def _read_ahead_now(self) -> None:
        # Shielded: a cancelled caller (the service stopping) leaves the read to finish
        # on its own (its done callback takes any error) instead of cutting it half-way.
        await asyncio.shield(self._start_read_ahead())

    def _read_finished(self, task: asyncio.Future[None]) -> None:
        if self._reading is task:
            self._reading = None
        if not task.cancelled() and task.exception() is not None:
            log.debug("sync: backfill read failed: %s", task.exception())

    async def _read_next(self) -> None:
        """Read the next `batch_max_events` rows of this backfill pass into the read-ahead."""
        passes = self._passes
        rows = await self._read(self.backfill_cursor, self.batch_max_events)
        if passes != self._passes:
            return  # a new pass began while this read was awaited: its rows are not ours
        if len(rows) < self.batch_max_events:
            self._read_all = True
        if rows:
            self.backfill_cursor = rows[-1]["seq"]
        inside = [r for r in rows if r["seq"] <= self.backfill_limit]
        if len(inside) < len(rows):
            self._read_all = True  # reached the live lane's part
        self._ahead.extend(inside)

    def _restart_backfill(self) -> None:
        """Start a new backfill pass over everything the live lane has passed."""
        self.backfill_cursor = 0
        self.backfill_limit = self.live_cursor
        self.backfill_done = False
        self._ahead.clear()
        self._read_all = False
        self._passes += 1

    def _due(self, now: float) -> bool:
        earliest = self.earliest_due()
        return earliest is not None and earliest <= now

    def earliest_due(self) -> float | None:
        """When the first in-flight event falls due (None when nothing is in flight)."""
        for item in self.inflight.values():
            return item.due
        return None

    def awaited(self, now: float) -> int:
        """In-flight events not yet due: those still awaiting their ack (the window's use)."""
        due = 0
        for item in self.inflight.values():  # the due ones, if any, are at the front
            if item.due > now:
                break
            due += 1
        return len(self.inflight) - due

    def _hand_out(self, rows: list[dict[str, Any]], *, live: bool, now: float) -> Batch:
        due = now + self.ack_timeout_s
        inflight = self.inflight
        for row in rows:
            event_id = row["event_id"]
            if inflight.pop(event_id, None) is not None:  # re-inserted below: at the end
                self.resent += 1
            inflight[event_id] = _InFlight(row["stream"], row["seq"], due)
        return Batch(rows, live)

    async def _wait_for_work(self) -> None:
        """Sleep until a new commit or the earliest in-flight event falls due."""
        waits: list[Awaitable[Any]] = [self.journal.commits.wait(self.live_cursor + 1)]
        earliest = self.earliest_due()
        if earliest is not None:
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
                self.inflight.move_to_end(event_id, last=False)  # due order: now is first
        if self.backfill_done:
            self._restart_backfill()

    def acknowledged(self, event_ids: Sequence[str]) -> int:
        """Record an acknowledgement of record; the ids are marked synced shortly.

        Ids the outbox does not hold in flight (a late ack for an event sent before a
        restart) are marked too: the service stored them either way.
        """
        self._acked_unmarked.update(event_ids)
        for event_id in event_ids:
            item = self.inflight.pop(event_id, None)
            if item is None:
                # Unknown here: try both tables (mark_synced touches only matching rows).
                for s in STREAMS:
                    self._to_mark[s].append(event_id)
            else:
                self._to_mark[item.stream].append(event_id)
        self.acked += len(event_ids)
        pending = self.pending_marks
        if pending >= MARK_MAX:
            self._schedule_mark(0.0)
        elif pending:
            self._schedule_mark(MARK_EVERY_S)
        return len(event_ids)

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
            done: list[str] = []
            for stream in STREAMS:
                ids, self._to_mark[stream] = self._to_mark[stream], []
                if not ids:
                    continue
                done += ids
                try:
                    changed += await self.journal.mark_synced(stream, ids)
                except Exception as err:
                    # Unmarked rows are sent again later and deduplicated: nothing lost.
                    log.warning("sync: cannot mark %d event(s) synced: %s", len(ids), err)
            self._acked_unmarked.difference_update(done)
        if changed and self._on_marked is not None:
            self._on_marked(changed)
        return changed

    @property
    def pending_marks(self) -> int:
        """Acknowledged ids not yet marked synced."""
        return sum(len(v) for v in self._to_mark.values())
