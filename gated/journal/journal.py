"""The async journal: the one object the daemon, the CLI and (next) sync and the status
page use to append events, read rows back and manage sync state, erasure and retention.

Appends are validated on the event loop and group-committed by the writer thread (see
`gated.journal.writer`); each caller awaits its own durable commit, and `commits` tells
consumers which seqs are committed without polling. Reads use a second, read-only
aiosqlite connection, which WAL lets run while a batch commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from gated.errors import JournalError
from gated.journal.commits import CommitFeed
from gated.journal.rows import (
    COLUMNS,
    TABLES,
    Stream,
    checked_text,
    prepare,
    prepare_values,
    public_row,
)
from gated.journal.schema import HEAD_SQL, WAL_LIMIT_BYTES
from gated.journal.writer import Erasure, Pruned, Writer, WriterThread, write_error
from gated.model import AccessEvent, AuditEvent

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    """One caller's events (at most max_batch) and the future of their results."""

    items: list[tuple[Stream, list[Any]]]
    future: asyncio.Future[list[int | JournalError]] = field(repr=False)


class Journal:
    """The device's append-only, hash-chained event journal (one per SQLite file)."""

    def __init__(self, path: Path, writer: Writer, thread: WriterThread,
                 reader: aiosqlite.Connection, max_batch: int) -> None:
        self.path = path
        self._writer = writer
        self._thread = thread
        self._reader = reader
        self._max_batch = max_batch
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Pending] = deque()
        self._in_flight = False  # a batch is on the writer thread
        self._held = False  # a delivery's callers run before the next hand-over
        self._drained: asyncio.Future[None] | None = None  # close() waits on it
        self._closed = False
        # Consumers (sync, the live feed) await committed seqs here, never the writer.
        self.commits = CommitFeed(writer.head.seq)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, max_batch: int = 256,
                   migrations: Path | None = None,
                   wal_limit_bytes: int = WAL_LIMIT_BYTES) -> Journal:
        """Open (creating dirs and schema as needed) and check the tail of the chain."""
        path = Path(path)
        thread = WriterThread("gated-journal")
        writer = Writer(path, wal_limit_bytes)
        try:
            await thread.call(writer.open, migrations)
        except BaseException:  # also a cancelled open: the queued open may still succeed
            thread.post(writer.close)
            thread.stop()
            raise
        try:
            reader = await aiosqlite.connect(path)
            await reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as err:
            await thread.call(writer.close)
            thread.stop()
            raise JournalError(f"cannot open journal {path} for reading: {err}") from err
        if writer.tail_problem:
            log.error("journal tail does not verify: %s (run `gated journal verify`)",
                      writer.tail_problem)
        if writer.trigger_problem:
            log.error("journal is not protected: %s (run `gated journal verify`)",
                      writer.trigger_problem)
        return cls(path, writer, thread, reader, max_batch)

    @property
    def head_seq(self) -> int:
        """Seq of the newest committed row (0 when empty)."""
        return self._writer.head.seq

    @property
    def tail_problem(self) -> str | None:
        """What was wrong with the newest rows at open, or None; the daemon keeps appending."""
        return self._writer.tail_problem

    @property
    def integrity_problem(self) -> str | None:
        """What the checks at open found (bad tail, dropped or altered triggers), or None."""
        found = [p for p in (self._writer.tail_problem, self._writer.trigger_problem) if p]
        return "; ".join(found) or None

    async def head(self) -> tuple[int, str]:
        """(seq, row_hash) of the newest committed row: the value to anchor the chain with."""
        async with self._reader.execute(HEAD_SQL) as cur:
            seq, digest = _one(await cur.fetchone())
        return int(seq), str(digest)

    async def append(self, event: AccessEvent | AuditEvent) -> int:
        """Journal one event; return its seq once its commit is durable.

        Raises JournalError for an invalid event (nothing written) or a failed write.
        A caller cancelled while waiting may still see its event journaled.
        """
        (seq,) = await self.append_many([event])
        return seq

    async def append_many(self, events: Iterable[AccessEvent | AuditEvent]) -> list[int]:
        """Journal several events (all validated first); return their seqs in order."""
        if self._closed:
            raise JournalError("journal is closed")
        prepared = [prepare_values(e) for e in events]  # all validated before any is queued
        if not prepared:
            return []
        create = self._loop.create_future
        if len(prepared) <= self._max_batch:  # the common case: one chunk, one future
            chunks = [_Pending(prepared, create())]
        else:  # one future per chunk, not per event: cheap bookkeeping for large appends
            chunks = [_Pending(prepared[i:i + self._max_batch], create())
                      for i in range(0, len(prepared), self._max_batch)]
        self._pending.extend(chunks)
        if not self._in_flight and not self._held:
            self._submit()
        seqs: list[int] = []
        for chunk in chunks:
            for result in await chunk.future:
                if isinstance(result, BaseException):
                    raise result
                seqs.append(result)
        return seqs

    # Group commit without a writer task: the loop hands whatever is pending (up to
    # max_batch rows) to the writer thread, which commits it and calls back into the loop
    # once (call_soon_threadsafe); the callback answers the callers and hands over the
    # next batch. One thread hop each way per batch. An append finding the writer idle
    # hands over at once (no extra loop iteration for a lone event). After a delivery the
    # hand-over is held until the callers it woke have run (call_soon queues it behind
    # their wake-ups): producers append again right away, and without the hold the first
    # of them would commit alone (one fsync for one row) while the rest queue behind it.

    def _submit(self) -> None:
        pending = self._pending
        batch = [pending.popleft()]
        rows = len(batch[0].items)
        while pending and rows + len(pending[0].items) <= self._max_batch:
            rows += len(pending[0].items)
            batch.append(pending.popleft())
        items = batch[0].items if len(batch) == 1 else [i for p in batch for i in p.items]
        self._in_flight = True
        self._thread.post(lambda: self._commit(batch, items))

    def _commit(self, batch: list[_Pending], items: list[tuple[Stream, list[Any]]]) -> None:
        # Runs on the writer thread.
        try:
            results = self._writer.append_batch(items)
        except BaseException as err:  # the write itself failed: every caller hears it
            results = [write_error(err)] * len(items)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to tell
            self._loop.call_soon_threadsafe(self._delivered, batch, results)

    def _delivered(self, batch: list[_Pending], results: list[int | JournalError]) -> None:
        start = 0
        for pending in batch:
            end = start + len(pending.items)
            if not pending.future.done():  # a cancelled caller's events are still journaled
                pending.future.set_result(results[start:end])
            start = end
        self._in_flight = False
        self._held = True
        committed = [r for r in results if isinstance(r, int)]
        if committed:
            self.commits.advance(max(committed))
        self._loop.call_soon(self._release)

    def _release(self) -> None:
        self._held = False
        if self._pending:
            if not self._in_flight:
                self._submit()
        elif self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def _write(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise JournalError("journal is closed")
        try:
            return await self._thread.call(fn, *args)
        except sqlite3.Error as err:
            raise JournalError(f"journal write failed: {err}") from err

    async def reopen(self) -> None:
        """Open the write connection again (after an I/O error); raises JournalWriteError."""
        try:
            await self._write(self._writer.reopen)
        except JournalError as err:
            raise write_error(err) from err

    async def close(self) -> None:
        """Drain pending appends, then close both connections and the writer thread."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight or self._held:
            self._drained = self._loop.create_future()
            await self._drained
        self.commits.close()
        await self._reader.close()
        await self._thread.call(self._writer.close)
        self._thread.stop()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- queries --------------------------------------------------------------------------

    async def _rows(self, stream: str, where: str, params: Sequence[Any],
                    order: str, limit: int) -> list[dict[str, Any]]:
        if stream not in TABLES:
            raise JournalError(f"stream: expected access or audit, got {stream!r}")
        sql = f"{_select(stream)} {where} ORDER BY seq {order} LIMIT ?"
        # One hop to the reader thread (execute, fetch and close in one call): the sync's
        # drain reads a batch per round and each hop waits for that thread's turn.
        rows = await self._reader.execute_fetchall(sql, [*params, int(limit)])
        return [public_row(stream, r) for r in rows]

    async def recent(self, stream: str = "all", limit: int = 50) -> list[dict[str, Any]]:
        """Newest rows first (each with a "stream" key); stream is access, audit or all."""
        if stream == "all":
            rows = await self._rows("access", "", (), "DESC", limit)
            rows += await self._rows("audit", "", (), "DESC", limit)
            return sorted(rows, key=lambda r: r["seq"], reverse=True)[:limit]
        return await self._rows(stream, "", (), "DESC", limit)

    async def after(self, seq: int, limit: int = 200) -> list[dict[str, Any]]:
        """Rows of both streams with seq > `seq`, oldest first (the live feed's one reader)."""
        rows = await self._rows("access", "WHERE seq > ?", (int(seq),), "ASC", limit)
        rows += await self._rows("audit", "WHERE seq > ?", (int(seq),), "ASC", limit)
        return sorted(rows, key=lambda r: r["seq"])[:limit]

    async def get(self, stream: str, event_id: str) -> dict[str, Any] | None:
        """One row by its event id, or None."""
        rows = await self._rows(stream, "WHERE event_id = ?", (str(event_id),), "DESC", 1)
        return rows[0] if rows else None

    async def find(self, stream: str, *, equals: Mapping[str, Any] | None = None,
                   contains: Mapping[str, str] | None = None, since: float | None = None,
                   until: float | None = None, before_seq: int | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        """Newest rows first matching every filter (the status page's lists and CSV export).

        Column names are checked against the stream's columns (never interpolated from
        input); `contains` is a case-insensitive substring match.
        """
        if stream not in TABLES:
            raise JournalError(f"stream: expected access or audit, got {stream!r}")
        clauses: list[str] = []
        params: list[Any] = []
        for name, value in (equals or {}).items():
            _column(stream, name)
            clauses.append(f"{name} = ?")
            params.append(value)
        for name, value in (contains or {}).items():
            _column(stream, name)
            clauses.append(f"instr(lower({name}), lower(?)) > 0")
            params.append(str(value))
        for clause, value in (("created_at >= ?", since), ("created_at < ?", until),
                              ("seq < ?", before_seq)):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._rows(stream, where, params, "DESC", limit)

    async def pass_uses(self) -> dict[str, int]:
        """Entries made with each visitor pass (exits do not use a pass up), surviving retention."""
        async with self._reader.execute("SELECT pass_id, uses FROM pass_use_counts") as cur:
            return {pass_id: uses for pass_id, uses in await cur.fetchall()}

    async def last_passages(self, since: float) -> dict[str, tuple[str, float]]:
        """Anti-passback subjects → (direction, created_at) of their last passage.

        A passage is an allowed row whose gate opened (gated.lane records the same
        in the live state), in the direction the lane resolved for it.
        The subject is the vehicle, else the visitor pass, else the resident, exactly
        as gated.policy.subject_for picks it, so seeded state matches live state.
        "Last" is by seq, never by timestamp (the clock may have stepped).
        """
        sql = (
            "SELECT coalesce(vehicle_id, pass_id, resident_id) AS subject, direction, created_at, "
            "max(seq) FROM access_logs WHERE created_at >= ? AND event_type != 'denied' "
            "AND coalesce(gate_opened, 1) = 1 "  # a relay that failed let nobody through
            "AND direction IS NOT NULL AND subject IS NOT NULL GROUP BY subject"
        )
        async with self._reader.execute(sql, (float(since),)) as cur:
            return {subject: (d, t) for subject, d, t, _ in await cur.fetchall()}

    async def unsynced(self, stream: str, limit: int = 100,
                       after_seq: int = 0) -> list[dict[str, Any]]:
        """Oldest unsynced rows of one stream with seq > after_seq, for the upstream sync."""
        return await self._rows(stream, "WHERE synced_at IS NULL AND seq > ?",
                                (int(after_seq),), "ASC", limit)

    async def backlog(self) -> tuple[dict[str, int], float | None]:
        """Unsynced rows per stream and the oldest one's created_at (None when none).

        Both come from the unsynced partial indexes: cheap with a month of backlog.
        """
        counts: dict[str, int] = {}
        oldest: float | None = None
        for stream, table in TABLES.items():
            async with self._reader.execute(
                f"SELECT count(*), min(seq) FROM {table} WHERE synced_at IS NULL"
            ) as cur:
                count, first = _one(await cur.fetchone())
            counts[stream] = int(count)
            if first is not None:
                async with self._reader.execute(
                    f"SELECT created_at FROM {table} WHERE seq = ?", (first,)
                ) as cur:
                    (created,) = _one(await cur.fetchone())
                oldest = created if oldest is None else min(oldest, created)
        return counts, oldest

    async def mark_synced(self, stream: str, event_ids: Sequence[str],
                          when: float | None = None) -> int:
        """Mark events synced (call only after the transport's acknowledgement)."""
        if stream not in TABLES:
            raise JournalError(f"stream: expected access or audit, got {stream!r}")
        when = time.time() if when is None else float(when)
        return int(await self._write(self._writer.mark_synced, stream, list(event_ids), when))

    async def erase_personal(self, request: AuditEvent, *, plate: str | None = None,
                             visitor_name: str | None = None, ip_address: str | None = None,
                             event_ids: Sequence[str] = ()) -> Erasure:
        """Lawful erasure: clear plate, visitor name, IP and user agent of matching rows.

        `request` is the caller's audit record of the request (who asked, why); it is
        chained in the same transaction with the erased seqs added to its metadata, which
        is how `verify` tells a lawful erasure from tampering. Matches are exact text.
        """
        if not isinstance(request, AuditEvent):
            raise JournalError("erase_personal needs the AuditEvent recording the request")
        if plate is None and visitor_name is None and ip_address is None and not event_ids:
            raise JournalError("erase_personal: give a plate, visitor name, IP or event ids")
        _, record = prepare(request)
        for name, value in (("plate", plate), ("visitor_name", visitor_name),
                            ("ip_address", ip_address)):
            checked_text(name, value)
        ids = [checked_text("event_ids", i, required=True) for i in event_ids]
        erasure: Erasure = await self._write(
            self._writer.erase, record, plate, visitor_name, ip_address, ids)
        self.commits.advance(erasure.audit_seq)  # its record goes upstream like any row
        return erasure

    async def prune(self, older_than: float | Mapping[str, float], keep_unsynced: bool = True,
                    *, now: float | None = None, clock_unsynced: bool = False,
                    batch: int = 2000, max_batches: int = 0) -> Pruned:
        """Retention: delete oldest rows created before `older_than`, oldest first.

        `older_than` is one cutoff or one per stream ({"access": t, "audit": t}).
        Stops at the first row that must stay (too new, or unsynced while keep_unsynced),
        records the checkpoint and chains a "journal_pruned" audit record per batch;
        `max_batches` > 0 stops after that many batches (the disk quota measures between).
        Returns the deleted snapshot paths for the caller to remove.
        """
        now = time.time() if now is None else float(now)
        cutoffs = ({str(k): float(v) for k, v in older_than.items()}
                   if isinstance(older_than, Mapping)
                   else dict.fromkeys(TABLES, float(older_than)))
        pruned: Pruned = await self._write(self._writer.prune, cutoffs, keep_unsynced, now,
                                           clock_unsynced, int(batch), int(max_batches))
        if pruned.audit_seqs:  # the journal_pruned records go upstream like any row
            self.commits.advance(pruned.audit_seqs[-1])
        return pruned

    async def continue_from(self, record: AuditEvent, anchor: tuple[int, str] | None) -> int:
        """Journal `record` as the first row of an empty journal, after the old head `anchor`.

        Used once, when a corrupt journal was moved aside (gated.journal.recovery).
        """
        _, values = prepare(record)
        seq = int(await self._write(self._writer.continue_from, values, anchor))
        self.commits.advance(seq)
        return seq

    async def checkpoint(self, mode: str = "TRUNCATE") -> tuple[int, int, int]:
        """A WAL checkpoint on the writer thread: (busy, WAL frames, frames copied).

        busy=1 means a reader still holds an older snapshot; nothing waits for it.
        """
        return tuple(await self._write(self._writer.checkpoint, mode))

    async def bytes_in_use(self) -> int:
        """Bytes of the journal's main file that hold data, plus its WAL and index files."""
        used = int(await self._write(self._writer.pages_in_use))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                used += os.stat(f"{self.path}{suffix}").st_size
        return used

    async def snapshots_before(self, before: float, *, after_seq: int = 0,
                               limit: int = 500) -> list[tuple[int, str, bool]]:
        """(seq, snapshot_path, synced) of access rows created before `before`, oldest first.

        For snapshot retention: the row stays (its snapshot_sha256 is hashed), the file goes.
        """
        sql = ("SELECT seq, snapshot_path, synced_at IS NOT NULL FROM access_logs "
               "WHERE seq > ? AND snapshot_path IS NOT NULL AND created_at < ? "
               "ORDER BY seq LIMIT ?")
        async with self._reader.execute(sql, (int(after_seq), float(before), int(limit))) as cur:
            return [(int(seq), str(path), bool(synced))
                    for seq, path, synced in await cur.fetchall()]

    async def sync_states(self, event_ids: Sequence[str]) -> dict[str, bool]:
        """For those of these access events still journaled: acknowledged upstream or not."""
        found: dict[str, bool] = {}
        ids = list(event_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            async with self._reader.execute(
                f"SELECT event_id, synced_at IS NOT NULL FROM access_logs "
                f"WHERE event_id IN ({marks})", chunk) as cur:
                found.update((str(e), bool(s)) for e, s in await cur.fetchall())
        return found

    async def access_matching(self, *, plates: Sequence[str] = (),
                              resident_id: str | None = None) -> list[dict[str, Any]]:
        """event_id, seq and snapshot_path of access rows with one of these plates or this
        resident whose personal fields are not erased yet (for `gated journal redact`)."""
        found: list[dict[str, Any]] = []
        wanted = [p for p in plates if p]
        clauses, params = [], []
        if wanted:
            clauses.append(f"vehicle_plate IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if resident_id is not None:
            clauses.append("resident_id = ?")
            params.append(resident_id)
        if not clauses:
            return found
        sql = ("SELECT seq, event_id, snapshot_path, snapshot_sha256 FROM access_logs "
               f"WHERE pii_salt IS NOT NULL AND ({' OR '.join(clauses)}) ORDER BY seq")
        async with self._reader.execute(sql, params) as cur:
            for seq, event_id, path, sha in await cur.fetchall():
                found.append({"seq": seq, "event_id": event_id, "snapshot_path": path,
                              "snapshot_sha256": sha})
        return found


def _one(row: Any) -> Any:
    # An aggregate query always yields one row; None would be a broken SQLite.
    if row is None:
        raise JournalError("the journal answered no row to an aggregate query")
    return row


def _column(stream: str, name: str) -> None:
    if name not in COLUMNS[stream] or name == "pii_salt":
        raise JournalError(f"{stream} rows have no column {name!r}")


def _select(stream: str) -> str:
    return f"SELECT {', '.join(COLUMNS[stream])} FROM {TABLES[stream]}"
