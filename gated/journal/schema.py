"""The journal's SQLite file: schema migrations, the append-only trigger check, the write
connection's pragmas, the chain-head query and streaming reads of both tables in seq order.

Everything here takes a plain sqlite3 connection, so the writer thread, `verify`, the export
and the benchmarks open and read a journal file the same way. Migrations are the numbered
`migrations/NNN_*.sql` files of this package, applied in order, each in one transaction.
"""

from __future__ import annotations

import functools
import heapq
import logging
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gated.errors import JournalError
from gated.journal.rows import ADDED, COLUMNS, TABLES

log = logging.getLogger(__name__)


def migration_files(directory: Path | None = None) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every NNN_*.sql migration, in order."""
    found: list[tuple[int, str, str]] = []
    if directory is None:
        from importlib import resources  # only at open: ~10 ms of import time otherwise

        entries = [(e.name, e) for e in resources.files("gated.journal.migrations").iterdir()]
    else:
        entries = [(p.name, p) for p in Path(directory).iterdir()]
    for name, entry in entries:
        match = re.match(r"^(\d{3})_[\w-]+\.sql$", name)
        if match:
            found.append((int(match.group(1)), name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise JournalError(f"journal migrations are not numbered 001, 002, …: {versions}")
    return found


def migrate(conn: sqlite3.Connection, directory: Path | None = None) -> int:
    """Apply pending migrations in order, each in its own transaction; return the version."""
    files = migration_files(directory)
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = files[-1][0] if files else 0
    if current > latest:
        raise JournalError(
            f"journal schema version {current} is newer than this gated knows ({latest})"
        )
    for version, name, sql in files:
        if version <= current:
            continue
        try:
            # One script, one transaction: a failed migration leaves the previous version.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.rollback()
            raise JournalError(f"journal migration {name} failed: {err}") from err
        log.info("journal schema migrated to version %d (%s)", version, name)
    return latest


@functools.lru_cache(maxsize=8)
def _expected_triggers(version: int, directory: Path | None) -> tuple[tuple[str, str], ...]:
    # What the migrations up to `version` leave behind, built in memory by the same SQLite:
    # a later migration that re-creates a trigger is followed without a hand-kept copy.
    conn = sqlite3.connect(":memory:")
    try:
        for number, _, sql in migration_files(directory):
            if number <= version:
                conn.executescript(sql)
        return tuple(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name"))
    finally:
        conn.close()


def _same_sql(a: str | None, b: str | None) -> bool:
    # Whitespace is not behaviour; anything else in a trigger's text is.
    return (a or "").split() == (b or "").split()


def trigger_problem(conn: sqlite3.Connection, directory: Path | None = None) -> str | None:
    """What is wrong with the journal's triggers (dropped, altered or added), or None.

    The triggers are what makes the file append-only; without them the next edit leaves
    no trace of when the file was opened up. Raises JournalError for a schema version this
    gated does not know (it cannot say what the triggers should be).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    files = migration_files(directory)
    latest = files[-1][0] if files else 0
    if not 0 <= version <= latest:
        raise JournalError(
            f"journal schema version {version} is newer than this gated knows ({latest})")
    expected = dict(_expected_triggers(version, directory))
    actual = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    problems = []
    missing = sorted(set(expected) - set(actual))
    if missing:
        problems.append(f"journal triggers missing: {', '.join(missing)}")
    altered = sorted(n for n in expected if n in actual and not _same_sql(expected[n], actual[n]))
    if altered:
        problems.append(f"triggers altered: {', '.join(altered)}")
    added = sorted(set(actual) - set(expected))
    if added:
        problems.append(f"unknown triggers added: {', '.join(added)}")
    return "; ".join(problems) or None


# The chain's head: the newest row of either table, or the retention checkpoint when no
# row is left (genesis in an empty journal). Reads committed rows only.
HEAD_SQL = (
    "SELECT seq, row_hash FROM ("
    "SELECT seq, row_hash FROM access_logs WHERE seq = (SELECT max(seq) FROM access_logs) "
    "UNION ALL SELECT seq, row_hash FROM audit_logs WHERE seq = (SELECT max(seq) FROM audit_logs) "
    "UNION ALL SELECT seq, row_hash FROM journal_checkpoint WHERE id = 1"
    ") ORDER BY seq DESC LIMIT 1"
)


WAL_LIMIT_BYTES = 4 * 1024 * 1024


def connect(path: Path, *, timeout_s: float = 5.0,
            wal_limit_bytes: int = WAL_LIMIT_BYTES) -> sqlite3.Connection:
    """A write connection with the journal's pragmas (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout_s,
                           check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged event survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Keep the WAL file from staying large on the SD card after a burst (or after a long
    # reader held checkpoints back): each checkpoint that resets it cuts it to this size.
    conn.execute(f"PRAGMA journal_size_limit = {int(wal_limit_bytes)}")
    return conn


def iter_rows(conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = (),
              *, descending: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(stream, row) of both tables merged in seq order, streaming (bounded memory)."""
    order = "DESC" if descending else "ASC"

    def rows(stream: str) -> Iterator[tuple[str, dict[str, Any]]]:
        cols = COLUMNS[stream]
        # A file not yet migrated (a copy, a backup) lacks later columns: read them as
        # NULL, which is what they hash as (see ADDED).
        present = {r[1] for r in conn.execute(f"PRAGMA table_info({TABLES[stream]})")}
        listed = [c if c in present or c not in ADDED[stream] else f"NULL AS {c}" for c in cols]
        sql = f"SELECT {', '.join(listed)} FROM {TABLES[stream]} {where} ORDER BY seq {order}"
        for values in conn.execute(sql, params):
            yield stream, dict(zip(cols, values, strict=True))

    cursors = [rows(stream) for stream in TABLES]
    key = (lambda item: -item[1]["seq"]) if descending else (lambda item: item[1]["seq"])
    yield from heapq.merge(*cursors, key=key)
