"""Events the journal could not write yet (disk full, I/O error), held in memory in order.

A full SD card must not stop the gate: reads are still decided and the relay still
moves, but what cannot be journaled is never acknowledged as kept. The daemon's one
append path goes through `JournalHold`:

* A write the storage refuses (`JournalWriteError`) puts the event at the tail of an
  in-memory queue and raises `JournalHeldError` to the caller at once: a camera is
  answered 503, an audit caller sees the failure. Nothing is told "taken".
* While anything is held, every new event queues behind it (seq order is arrival
  order), and `run()` retries the oldest ones with a capped back-off. After an I/O
  error (not a full disk) the write connection is reopened before the next try.
* The queue is bounded (`[journal] hold_max_events`): past it the oldest held event is
  dropped and counted; once the queue is written, one `journal_hold_dropped` audit row
  says how many went. A stop with events still held logs how many were lost.

Memory, not disk: a power cut loses the held events; they were never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from gated.errors import JournalError
from gated.journal.writer import JournalWriteError
from gated.model import AccessEvent, AuditEvent

if TYPE_CHECKING:
    from gated.journal.journal import Journal

log = logging.getLogger(__name__)

Event = AccessEvent | AuditEvent
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
FLUSH_BATCH = 256  # held events handed to the journal per group commit


class JournalHeldError(JournalError):
    """The event is not on disk: it is held in memory and written once the journal can."""


class JournalHold:
    """The bounded, ordered queue of events waiting for the journal to take writes again."""

    def __init__(
        self,
        journal: Journal | None,
        max_events: int,
        *,
        on_change: Callable[[int, str], None] | None = None,
        dropped_record: Callable[[int], AuditEvent] | None = None,
    ) -> None:
        self.journal = journal
        self.max_events = max_events
        self._held: deque[Event] = deque()
        self._on_change = on_change  # (held count, detail); 0 means writing again
        self._dropped_record = dropped_record
        self.dropped_total = 0  # held events pushed out by the bound (a metric)
        self.written_total = 0  # held events written later (a metric)
        self._dropped_unreported = 0  # dropped since the last journal_hold_dropped row
        self._reopen = False  # an I/O error: reopen the write connection before retrying
        self._last_error = ""
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._closed = False

    def attach(self, journal: Journal) -> None:
        """The journal, once a start on a full disk could open it: write what is held."""
        self.journal = journal
        self._wake.set()

    @property
    def unreported_drops(self) -> int:
        """Dropped held events not yet on record as a journal_hold_dropped row."""
        return self._dropped_unreported

    @property
    def held(self) -> int:
        """Events waiting in memory for the journal."""
        return len(self._held)

    async def append(self, event: Event) -> int:
        """Journal one event and return its seq; JournalHeldError when it is held instead."""
        if self.journal is None:  # a start on a full disk: not open yet
            if self._closed:
                raise JournalError("the journal never opened (disk full)")
            self._last_error = self._last_error or "the journal cannot be opened: disk full"
            self._hold(event, self._last_error)
            raise JournalHeldError(f"journal not open, event held: {self._last_error}")
        if self._held and not self._closed:  # keep order: nothing overtakes a held event
            self._hold(event, self._last_error)
            raise JournalHeldError(f"journal not writable, event held: {self._last_error}")
        try:
            return await self.journal.append(event)
        except JournalWriteError as err:
            if self._closed:
                raise
            if not err.disk_full:
                self._reopen = True
            self._last_error = str(err)
            self._hold(event, str(err))
            raise JournalHeldError(f"{err}; event held in memory") from err

    def _hold(self, event: Event, why: str) -> None:
        first = not self._held
        self._held.append(event)
        if len(self._held) > self.max_events:
            self._held.popleft()
            self.dropped_total += 1
            self._dropped_unreported += 1
            if self._dropped_unreported == 1:
                log.error("journal hold is full (%d events): dropping the oldest held",
                          self.max_events)
        if first:
            log.error("journal not writable, holding events in memory: %s", why)
        self._changed()
        self._wake.set()

    def _changed(self) -> None:
        if self._on_change is not None:
            detail = (f"{len(self._held)} events held in memory, {self.dropped_total} dropped: "
                      f"{self._last_error}" if self._held else "")
            self._on_change(len(self._held), detail)

    async def run(self) -> None:
        """Write held events back, oldest first, with a capped back-off; until cancelled."""
        delay = RETRY_MIN_S
        while True:
            await self._wake.wait()
            await asyncio.sleep(delay)
            if not await self.flush():
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            if not self._held:  # one held while the dropped row was written: go again
                self._wake.clear()

    async def flush(self) -> bool:
        """Try to write every held event in order; True once none is held."""
        async with self._flushing:
            if self.journal is None:
                return False
            if self._reopen and self._held:
                try:
                    await self.journal.reopen()
                except JournalError as err:
                    self._last_error = str(err)
                    return False
                self._reopen = False
                log.warning("journal write connection reopened after an I/O error")
            while self._held:
                batch = [self._held[i] for i in range(min(FLUSH_BATCH, len(self._held)))]
                # One append per event: each caller's result is its own, and the journal
                # group-commits them in the order they were handed over.
                results = await asyncio.gather(
                    *(self.journal.append(e) for e in batch), return_exceptions=True)
                done: set[str] = set()
                failed: BaseException | None = None
                for event, result in zip(batch, results, strict=True):
                    if isinstance(result, JournalWriteError):
                        failed = failed or result
                        continue
                    if isinstance(result, BaseException):
                        # Already in the journal (a write reported failed that committed)
                        # or refused for good: holding it longer would block the rest.
                        log.error("held event %s not written: %s", event.event_id, result)
                    done.add(event.event_id)
                self.written_total += sum(1 for r in results if isinstance(r, int))
                self._held = deque(e for e in self._held if e.event_id not in done)
                if failed is not None:
                    self._last_error = str(failed)
                    if not getattr(failed, "disk_full", False):
                        self._reopen = True
                    self._changed()
                    return False
            log.warning("journal writable again: held events written (%d in all)",
                        self.written_total)
            self._changed()
            await self._report_dropped()
            return True

    async def _report_dropped(self) -> None:
        """One audit row for the events the bound pushed out, once the journal takes rows."""
        count = self._dropped_unreported
        if not count or self._dropped_record is None:
            return
        self._dropped_unreported = 0
        try:
            assert self.journal is not None
            await self.journal.append(self._dropped_record(count))
        except JournalError as err:  # counted again and said at the next flush
            self._dropped_unreported += count
            log.error("could not journal that %d held events were dropped: %s", count, err)

    async def close(self, timeout_s: float) -> int:
        """Stop holding: one last bounded flush; the number of held events lost."""
        if self._held:
            with contextlib.suppress(TimeoutError, JournalError):
                await asyncio.wait_for(self.flush(), timeout_s)
        self._closed = True
        return len(self._held)
