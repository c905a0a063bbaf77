"""A corrupt journal at start-up: found by a quick check, moved aside, a fresh one started.

`gated run` calls `check_file` before it opens the journal. A file SQLite calls corrupt
(SQLITE_CORRUPT, SQLITE_NOTADB: a truncated file, a flipped page, a zeroed header) is
moved aside with its -wal and -shm for forensics, and the daemon starts a fresh journal
whose first row (`journal_recovered`) continues the chain from the old head where it could
still be read. Anything else (a full disk, a permission problem) is NOT corruption: the
file stays where it is and the open fails as before, so a full card never costs the
journal. Synchronous; called on a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gated.file_modes import fsync_path

log = logging.getLogger(__name__)

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_MAGIC = b"SQLite format 3\x00"
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Recovery:
    """A corrupt journal moved aside: why, where to, and the old head if it could be read.

    `last_readable` is the newest row a forward scan still reached when the head itself
    could not be read: forensic information only, since later rows may have existed.
    """

    problem: str
    moved_to: Path
    old_head: tuple[int, str] | None
    check_ms: float
    last_readable: tuple[int, str] | None = None


def _is_corruption(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(err)
    return "malformed" in text or "not a database" in text


def check_file(path: Path) -> str | None:
    """What is corrupt about the journal file, or None (also for no file or an empty one).

    The header is read first (its magic and page size); then `PRAGMA quick_check`, which
    reads every page once without checking index contents against the tables: on a
    Raspberry Pi 4 that is seconds for a journal of hundreds of MB (docs/operations.md).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None  # created empty by `gated run`'s preparation: a new journal
    with path.open("rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_MAGIC):
        return "the file has no SQLite header (zeroed or overwritten)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"the header's page size {page_size} is invalid"
    if size % page_size:
        return f"the file is {size} bytes, not a whole number of {page_size}-byte pages (truncated)"
    try:
        conn = sqlite3.connect(path, timeout=5.0)
    except sqlite3.Error as err:
        return str(err) if _is_corruption(err) else None
    try:
        found = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.Error as err:
        return f"quick_check failed: {err}" if _is_corruption(err) else None
    finally:
        conn.close()
    if found != ["ok"]:
        return "quick_check: " + "; ".join(str(f) for f in found)
    return None


def read_old_head(path: Path) -> tuple[int, str] | None:
    """The newest (seq, row_hash) still readable from a corrupt journal, or None."""
    best: tuple[int, str] | None = None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        for table in ("access_logs", "audit_logs"):
            # Each table on its own: one may be readable when the other's pages are not.
            with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
                row = conn.execute(
                    f"SELECT seq, row_hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
                if row is not None and isinstance(row[0], int) and isinstance(row[1], str) \
                        and _HASH.fullmatch(row[1]) and (best is None or row[0] > best[0]):
                    best = (row[0], row[1])
        if best is None:  # no row left: the retention checkpoint may still say where it was
            with contextlib.suppress(sqlite3.Error, TypeError):
                row = conn.execute(
                    "SELECT seq, row_hash FROM journal_checkpoint WHERE id = 1").fetchone()
                if row is not None and row[0] > 0 and _HASH.fullmatch(str(row[1])):
                    best = (int(row[0]), str(row[1]))
    finally:
        conn.close()
    return best


def read_last_readable(path: Path) -> tuple[int, str] | None:
    """The newest row a forward scan of each table reaches before damage stops it."""
    best: tuple[int, str] | None = None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        for table in ("access_logs", "audit_logs"):
            try:
                cur = conn.execute(f"SELECT seq, row_hash FROM {table} ORDER BY seq")
                while rows := cur.fetchmany(1000):
                    seq, digest = rows[-1]
                    if isinstance(seq, int) and isinstance(digest, str) \
                            and (best is None or seq > best[0]):
                        best = (seq, digest)
            except sqlite3.Error:
                continue  # the damage: what came before it counts
    finally:
        conn.close()
    return best


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the journal and its -wal/-shm to `NAME.corrupt-<UTC time>`; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The -wal first: a journal renamed without its WAL would be read without it.
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    fsync_path(path.parent)  # the renames are durable before a fresh journal takes the name
    return target


def recover_if_corrupt(path: str | os.PathLike[str]) -> Recovery | None:
    """Check the journal; when corrupt, move it aside and say what was found."""
    path = Path(path)
    started = time.monotonic()
    problem = check_file(path)
    check_ms = (time.monotonic() - started) * 1000.0
    if problem is None:
        log.debug("journal quick check passed in %.0f ms", check_ms)
        return None
    old_head = read_old_head(path)
    last = read_last_readable(path) if old_head is None else None
    moved = move_aside(path)
    log.critical("journal %s is corrupt (%s): moved aside to %s; starting a fresh journal%s",
                 path, problem, moved,
                 f" from the old head seq {old_head[0]}" if old_head else
                 " (the old head could not be read)")
    return Recovery(problem, moved, old_head, check_ms, last)
