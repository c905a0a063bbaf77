"""The journal's writer: the one thread that owns the write connection and the chain head,
and numbers, hashes, inserts and commits each batch of rows in one transaction.

Also lawful erasure and retention, which rewrite the file under the same lock. Every
`Writer` method runs on the `WriterThread`; the async `Journal` hands it work and hears
back with one `call_soon_threadsafe` per batch. Why one thread and stdlib sqlite3 rather
than aiosqlite or an executor: docs/journal-internals.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from gated.errors import JournalError, StateError
from gated.file_modes import prepare_sqlite_file
from gated.journal.rows import (
    COLUMNS,
    ERASED_KEY,
    GENESIS,
    POS_EVENT_ID,
    POS_PREV_HASH,
    POS_ROW_HASH,
    POS_SEQ,
    POS_SYNCED_AT,
    PRUNED_HASH_KEY,
    PRUNED_SEQ_KEY,
    TABLES,
    as_values,
    check_row,
    fill_personal,
    values_hash,
)
from gated.journal.schema import (
    WAL_LIMIT_BYTES,
    connect,
    iter_rows,
    migrate,
    trigger_problem,
)
from gated.state_dirs import prepare_dir

_INSERT_SQL = {
    s: f"INSERT INTO {TABLES[s]} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for s, cols in COLUMNS.items()
}
_TAIL_CHECK_ROWS = 64  # rows checked at open; the full walk is `gated journal verify`


class JournalWriteError(JournalError):
    """The storage refused a write (disk full, I/O error): nothing of it was committed.

    Unlike an invalid or duplicate event, the same write may succeed later, so the
    daemon holds the event and writes it again (gated.journal.hold).
    """

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


def write_error(err: BaseException) -> JournalWriteError:
    """The JournalWriteError for a failed write, saying whether the disk was full."""
    code = getattr(err, "sqlite_errorcode", None)
    disk_full = ((isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL)
                 or (isinstance(err, OSError) and err.errno == errno.ENOSPC)
                 or "database or disk is full" in str(err))
    error = JournalWriteError(f"journal write failed: {err}", disk_full=disk_full)
    error.__cause__ = err
    return error


@dataclass(frozen=True, slots=True)
class Erasure:
    """What a lawful erasure cleared, and the seq of the audit record that documents it."""

    erased_seqs: tuple[int, ...]
    audit_seq: int


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a retention pass deleted; the caller removes the snapshots and may audit it."""

    rows: int = 0
    through_seq: int = 0
    unsynced_rows: int = 0
    snapshot_paths: tuple[str, ...] = ()
    audit_seqs: tuple[int, ...] = ()


@dataclass(slots=True)
class _Head:
    seq: int = 0
    row_hash: str = GENESIS


class Writer:
    """Owns the write connection and the chain head; every method runs on one thread."""

    def __init__(self, path: Path, wal_limit_bytes: int = WAL_LIMIT_BYTES) -> None:
        self.path = path
        self.wal_limit_bytes = wal_limit_bytes
        self.conn: sqlite3.Connection | None = None
        self.head = _Head()
        self.tail_problem: str | None = None
        self.trigger_problem: str | None = None
        self._data_version = -1
        self._migrations: Path | None = None

    def open(self, migrations: Path | None) -> None:
        self._migrations = migrations
        try:
            # Folders 0750 and the file 0640 whatever the umask (its -wal/-shm follow it):
            # the journal holds plates, names and addresses.
            prepare_dir(self.path.parent, "the journal")
            prepare_sqlite_file(self.path)
            self.conn = connect(self.path, wal_limit_bytes=self.wal_limit_bytes)
            migrate(self.conn, migrations)
            self.trigger_problem = trigger_problem(self.conn, migrations)
            self._load_head()
        except (sqlite3.Error, OSError, StateError) as err:
            self.close()
            hint = _space_hint(self.path)
            message = f"cannot open journal {self.path}: {err}{hint}"
            if hint:  # the daemon starts degraded and opens it once there is room
                raise JournalWriteError(message, disk_full=True) from err
            raise JournalError(message) from err

    def _load_head(self) -> None:
        assert self.conn is not None
        cp_seq, cp_hash = self.conn.execute(
            "SELECT seq, row_hash FROM journal_checkpoint WHERE id = 1"
        ).fetchone()
        tail = list(iter_rows(self.conn, "WHERE seq > (SELECT max(seq) FROM "
                                          "(SELECT max(seq) AS seq FROM access_logs UNION ALL "
                                          "SELECT max(seq) FROM audit_logs)) - ?",
                              (_TAIL_CHECK_ROWS,)))
        self.head = _Head(cp_seq, cp_hash)
        if not tail:
            return
        # Check the tail links up; the full walk is `verify` (too slow for every start-up).
        expect_seq, expect_prev = tail[0][1]["seq"], tail[0][1]["prev_hash"]
        for stream, row in tail:
            problem = check_row(stream, row, expect_seq, expect_prev)
            if problem and self.tail_problem is None:
                self.tail_problem = f"seq {row['seq']}: {problem}"
            expect_seq, expect_prev = row["seq"] + 1, row["row_hash"]
        last = tail[-1][1]
        self.head = _Head(last["seq"], last["row_hash"])
        self._data_version = self.conn.execute("PRAGMA data_version").fetchone()[0]

    def _refresh_head(self) -> None:
        """Re-read the chain's head if another connection committed since we last looked.

        The daemon is not the only writer: `gated rules import` appends its audit
        row from its own process. PRAGMA data_version changes only for commits made
        through other connections, so the common case costs one pragma, and inside
        BEGIN IMMEDIATE nobody can commit between this read and our insert.
        """
        assert self.conn is not None
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        row = self.conn.execute(
            "SELECT seq, row_hash FROM access_logs WHERE seq = (SELECT max(seq) FROM access_logs) "
            "UNION ALL SELECT seq, row_hash FROM audit_logs "
            "WHERE seq = (SELECT max(seq) FROM audit_logs) "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None and row[0] > self.head.seq:
            self.head = _Head(row[0], row[1])

    def close(self) -> None:
        if self.conn is not None:
            # A busy reader just means the checkpoint happens later.
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
            self.conn = None

    def reopen(self) -> None:
        """Drop the write connection and open the file again (after an I/O error).

        No checkpoint on the way out: the disk just failed a write. The new connection
        reads the WAL back from disk (SQLite's recovery), so nothing this connection
        believed about pages the kernel may have dropped survives the error.
        """
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        self.open(self._migrations)

    def _insert(self, items: Sequence[tuple[str, list[Any]]]) -> list[int]:
        """Number, chain and insert rows (values in COLUMNS order) in the open transaction."""
        assert self.conn is not None
        seq, prev = self.head.seq, self.head.row_hash
        first = seq + 1
        grouped: dict[str, list[list[Any]]] = {"access": [], "audit": []}
        for stream, row in items:
            seq += 1
            # The values list is the journal's own: fill it in place (retries overwrite).
            row[POS_SEQ], row[POS_PREV_HASH], row[POS_SYNCED_AT] = seq, prev, None
            row[POS_ROW_HASH] = prev = values_hash(stream, row)
            grouped[stream].append(row)
        for stream, rows in grouped.items():
            if rows:
                self.conn.executemany(_INSERT_SQL[stream], rows)
        self.head = _Head(seq, prev)
        return list(range(first, seq + 1))

    def _transaction(self, work: Any) -> Any:
        if self.conn is None:  # a reopen after an I/O error failed: the next may not
            raise JournalWriteError("journal is not open (reopening failed)")
        saved = _Head(self.head.seq, self.head.row_hash)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._refresh_head()
            result = work()
            self.conn.execute("COMMIT")
        except BaseException:
            self.head = saved
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return result

    def append_batch(self, items: Sequence[tuple[str, list[Any]]]) -> list[int | JournalError]:
        """Commit a batch in one transaction; on failure retry one by one so only bad rows fail."""
        if self.conn is None:  # a reopen after an I/O error failed: the next may not
            return [JournalWriteError("journal is not open (reopening failed)")] * len(items)
        try:
            return list(self._transaction(lambda: self._insert(items)))
        except sqlite3.Error as err:
            if len(items) == 1:
                return [self._explain(err, items[0][1][POS_EVENT_ID])]
        results: list[int | JournalError] = []
        for item in items:
            results.extend(self.append_batch([item]))
        return results

    def _explain(self, err: sqlite3.Error, event_id: str) -> JournalError:
        if isinstance(err, sqlite3.IntegrityError) and "event_id" in str(err):
            return JournalError(f"event {event_id} is already in the journal")
        if isinstance(err, sqlite3.IntegrityError):  # a refused row, not the storage
            error = JournalError(f"journal write failed: {err}")
            error.__cause__ = err
            return error
        return write_error(err)

    def mark_synced(self, stream: str, event_ids: Sequence[str], when: float) -> int:
        """Set synced_at on the given events of one stream; return how many changed."""
        if self.conn is None:  # a reopen after an I/O error failed: the next may not
            raise JournalWriteError("journal is not open (reopening failed)")
        table = TABLES[stream]

        def work() -> int:
            assert self.conn is not None
            changed = 0
            for start in range(0, len(event_ids), 500):
                chunk = list(event_ids[start:start + 500])
                marks = ", ".join("?" * len(chunk))
                changed += self.conn.execute(
                    f"UPDATE {table} SET synced_at = ? WHERE synced_at IS NULL "
                    f"AND event_id IN ({marks})", [when, *chunk]).rowcount
            return changed

        return int(self._transaction(work))

    def erase(self, request: dict[str, Any], plate: str | None, visitor_name: str | None,
              ip_address: str | None, event_ids: Sequence[str]) -> Erasure:
        """Clear personal fields of matching rows and chain the request documenting it."""

        def work() -> Erasure:
            assert self.conn is not None
            ids = list(event_ids)
            id_marks = ", ".join("?" * len(ids)) or "NULL"
            found = self.conn.execute(
                "SELECT seq FROM access_logs WHERE pii_salt IS NOT NULL AND ("
                f"vehicle_plate = ? OR visitor_name = ? OR event_id IN ({id_marks}))",
                [plate, visitor_name, *ids]).fetchall()
            found += self.conn.execute(
                "SELECT seq FROM audit_logs WHERE pii_salt IS NOT NULL AND ("
                f"ip_address = ? OR event_id IN ({id_marks}))", [ip_address, *ids]).fetchall()
            seqs = sorted(s for (s,) in found)
            self.conn.execute("UPDATE journal_control SET erasing = 1 WHERE id = 1")
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                self.conn.execute(
                    "UPDATE access_logs SET vehicle_plate = NULL, visitor_name = NULL,"
                    f" pii_salt = NULL WHERE seq IN ({marks})", chunk)
                self.conn.execute("UPDATE audit_logs SET ip_address = NULL, user_agent = NULL,"
                                  f" pii_salt = NULL WHERE seq IN ({marks})", chunk)
            self.conn.execute("UPDATE journal_control SET erasing = 0 WHERE id = 1")
            record = dict(request)
            meta = msgspec.json.decode(record["metadata"])
            meta[ERASED_KEY] = seqs
            record["metadata"] = msgspec.json.encode(meta, order="sorted").decode()
            (audit_seq,) = self._insert([("audit", as_values("audit", record))])
            return Erasure(tuple(seqs), audit_seq)

        return self._transaction(work)

    def prune(self, cutoffs: Mapping[str, float], keep_unsynced: bool, now: float,
              clock_unsynced: bool, batch: int, max_batches: int = 0) -> Pruned:
        """Delete the oldest rows (synced unless told otherwise) created before their cutoff.

        `cutoffs` has one per stream ("access", "audit"; a stream left out has none);
        `max_batches` (0: no limit) lets the disk quota free a little at a time and
        measure again.
        """
        total = Pruned()
        batches = 0
        while True:
            part = self._transaction(
                lambda: self._prune_batch(cutoffs, keep_unsynced, now, clock_unsynced, batch))
            if part.rows == 0:
                return total
            total = Pruned(
                rows=total.rows + part.rows, through_seq=part.through_seq,
                unsynced_rows=total.unsynced_rows + part.unsynced_rows,
                snapshot_paths=total.snapshot_paths + part.snapshot_paths,
                audit_seqs=total.audit_seqs + part.audit_seqs)
            batches += 1
            if part.rows < batch or batches == max_batches:
                return total

    def _prune_batch(self, cutoffs: Mapping[str, float], keep_unsynced: bool, now: float,
                     clock_unsynced: bool, batch: int) -> Pruned:
        assert self.conn is not None
        doomed: list[tuple[str, dict[str, Any]]] = []
        for stream, row in iter_rows(self.conn, "WHERE seq IN (SELECT seq FROM access_logs "
                                     "UNION ALL SELECT seq FROM audit_logs ORDER BY seq LIMIT ?)",
                                     (batch,)):
            # Oldest first and contiguous: the remaining chain must start right after the
            # checkpoint, so the first row that must stay ends the pass (a row kept by its
            # own kind's retention keeps every newer row of either kind too).
            if (row["created_at"] >= cutoffs.get(stream, float("-inf"))
                    or (keep_unsynced and row["synced_at"] is None)):
                break
            doomed.append((stream, row))
        if not doomed:
            return Pruned()
        # Never delete the head row: the chain's newest hash must stay on disk.
        if doomed[-1][1]["seq"] == self.head.seq:
            doomed.pop()
            if not doomed:
                return Pruned()
        self.conn.execute("UPDATE journal_control SET retention = ? WHERE id = 1",
                          (1 if keep_unsynced else 2,))
        for stream, row in doomed:
            self.conn.execute(f"DELETE FROM {TABLES[stream]} WHERE seq = ?", (row["seq"],))
        last = doomed[-1][1]
        self.conn.execute("UPDATE journal_checkpoint SET seq = ?, row_hash = ? WHERE id = 1",
                          (last["seq"], last["row_hash"]))
        self.conn.execute("UPDATE journal_control SET retention = 0 WHERE id = 1")
        unsynced = sum(1 for _, r in doomed if r["synced_at"] is None)
        older = sorted(set(cutoffs.values()))
        record = {
            "event_id": _new_event_id(), "tenant_id": last["tenant_id"],
            "site_id": last["site_id"], "device_id": last["device_id"],
            "created_at": float(now), "clock_unsynced": int(clock_unsynced),
            "action": "journal_pruned", "resource_type": "journal", "resource_id": None,
            "actor_id": None, "actor_type": "system", "actor_role": None,
            "request_id": None, "old_values": None, "new_values": None, "status": "success",
            "error_message": None, "duration_ms": None,
            "metadata": msgspec.json.encode({
                PRUNED_SEQ_KEY: last["seq"], PRUNED_HASH_KEY: last["row_hash"],
                "rows": len(doomed), "unsynced_rows": unsynced,
                "older_than": older[0] if len(older) == 1 else
                {k: float(v) for k, v in sorted(cutoffs.items())}},
                order="sorted").decode(),
        }
        fill_personal(record, "audit", {"ip_address": None, "user_agent": None})
        (audit_seq,) = self._insert([("audit", as_values("audit", record))])
        return Pruned(
            rows=len(doomed), through_seq=last["seq"], unsynced_rows=unsynced,
            snapshot_paths=tuple(r["snapshot_path"] for s, r in doomed
                                 if s == "access" and r["snapshot_path"]),
            audit_seqs=(audit_seq,))

    def continue_from(self, record: dict[str, Any], anchor: tuple[int, str] | None) -> int:
        """Chain `record` first in an empty journal, after `anchor` (seq, row_hash) if given.

        For a fresh journal replacing a corrupt one: the checkpoint is set to the old head
        and the record carries it as a retention record does, so `verify` accepts the chain
        starting there and upstream sees the seqs continue.
        """

        def work() -> int:
            assert self.conn is not None
            if self.head.seq != 0:
                raise JournalError("the journal is not empty: it cannot continue another chain")
            meta = msgspec.json.decode(record["metadata"])
            if anchor is not None:
                seq, digest = anchor
                self.conn.execute("UPDATE journal_control SET retention = 1 WHERE id = 1")
                self.conn.execute(
                    "UPDATE journal_checkpoint SET seq = ?, row_hash = ? WHERE id = 1",
                    (int(seq), str(digest)))
                self.conn.execute("UPDATE journal_control SET retention = 0 WHERE id = 1")
                self.head = _Head(int(seq), str(digest))
                meta[PRUNED_SEQ_KEY], meta[PRUNED_HASH_KEY] = int(seq), str(digest)
            done = dict(record)
            done["metadata"] = msgspec.json.encode(meta, order="sorted").decode()
            (audit_seq,) = self._insert([("audit", as_values("audit", done))])
            return int(audit_seq)

        return int(self._transaction(work))

    def checkpoint(self, mode: str) -> tuple[int, int, int]:
        """Run a WAL checkpoint between batches; (busy, wal frames, frames copied).

        Runs on the writer thread, so no append of ours is half-way through it. The busy
        timeout is dropped to zero for it: a reader holding an old snapshot must make the
        checkpoint give up at once (busy=1), never stall appends for the 5 s timeout.
        """
        if self.conn is None:  # a reopen after an I/O error failed: the next may not
            raise JournalWriteError("journal is not open (reopening failed)")
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise JournalError(f"checkpoint mode: unknown {mode!r}")
        timeout_ms = self.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy, frames, copied = self.conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.OperationalError as err:  # "database is locked": another writer's turn
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            busy, frames, copied = 1, -1, -1
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
        return int(busy), int(frames), int(copied)

    def pages_in_use(self) -> int:
        """Bytes of the main file holding data (pages retention freed are reused first)."""
        if self.conn is None:  # a reopen after an I/O error failed: the next may not
            raise JournalWriteError("journal is not open (reopening failed)")
        size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        count = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(size) * max(0, int(count) - int(free))


def _space_hint(path: Path) -> str:
    # SQLite words a full disk at open as "disk I/O error"; say what the operator must fix.
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    return f" (the disk is full: {free} bytes free)" if free < 1024 * 1024 else ""


def _new_event_id() -> str:
    from gated.ids import new_event_id

    return new_event_id()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():  # the awaiting caller may have been cancelled
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class WriterThread:
    """The journal's one writer thread: runs jobs in order, each answering on the loop.

    A plain thread on a SimpleQueue instead of a ThreadPoolExecutor: a put is a C call
    (no Future, work item and semaphore per job) and jobs answer with one
    call_soon_threadsafe, so a durable append costs one wake-up each way. Daemon: an
    unclosed journal must not hang interpreter exit; a write cut short there is rolled
    back by SQLite at the next open like any crash.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()  # jobs catch and report their own errors

    def post(self, job: Callable[[], None]) -> None:
        """Queue a job that reports its own outcome (the group-commit path)."""
        self._jobs.put(job)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) on the writer thread and return (or raise) what it did."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def job() -> None:
            try:
                result, error = fn(*args), None
            except BaseException as err:  # handed to the awaiting caller, never lost
                result, error = None, err
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(_settle, future, result, error)

        self._jobs.put(job)
        return await future

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self._jobs.put(None)
        self._thread.join()
