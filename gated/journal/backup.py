"""`gated journal backup DEST`: a consistent copy of a live journal, verified before it counts.

SQLite's online backup API copies every page in one step inside one read transaction:
in WAL mode that is a snapshot of the committed journal, taken while the daemon keeps
appending (readers never block the writer), and it is never restarted by those writes.
The copy is written beside DEST under a temporary name, switched to rollback-journal mode
(one self-contained file to carry to a new card), fsynced, checked (integrity_check and
the whole hash chain) and only then renamed to DEST. A copy that does not verify is
deleted and the command fails.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gated.errors import JournalError
from gated.file_modes import fsync_path, open_private
from gated.journal.verify import verify


@dataclass(frozen=True, slots=True)
class Backup:
    """A verified backup: where, how big, the chain head it holds and how long it took."""

    path: Path
    bytes: int
    rows: int
    head_seq: int
    head_hash: str
    seconds: float


def backup(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Backup:
    """Copy the journal at `source` to `dest` (a new file, or a folder to put it in)."""
    started = time.monotonic()
    source, dest = Path(source), Path(dest)
    if not source.is_file() or source.stat().st_size == 0:
        raise JournalError(f"backup: no journal at {source}")
    if dest.is_dir():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = dest / f"{source.stem}-{stamp}{source.suffix}"
    if dest.exists():
        raise JournalError(f"backup: {dest} already exists (choose a new name)")
    if dest.resolve() == source.resolve():
        raise JournalError("backup: the destination is the journal itself")
    if not dest.parent.is_dir():
        raise JournalError(f"backup: folder {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        src = sqlite3.connect(source, timeout=10.0)
        try:
            src.execute("PRAGMA query_only = ON")
            # Created 0640 before SQLite opens it: the copy holds plates and names too.
            os.close(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # pages=-1: every page in one step, one consistent snapshot
                dst.execute("PRAGMA journal_mode = DELETE")
            finally:
                dst.close()
        finally:
            src.close()
        fsync_path(tmp)
        check = sqlite3.connect(f"{tmp.resolve().as_uri()}?mode=ro", uri=True)
        try:
            integrity = [r[0] for r in check.execute("PRAGMA integrity_check(5)")]
        finally:
            check.close()
        if integrity != ["ok"]:
            raise JournalError(f"backup: the copy fails integrity_check: {integrity}")
        result = verify(tmp)
        if not result.ok:
            raise JournalError(f"backup: the copy does not verify: {result.message}")
        os.replace(tmp, dest)
        fsync_path(dest.parent)
    except sqlite3.Error as err:
        raise JournalError(f"backup to {dest} failed: {err}") from err
    except OSError as err:
        raise JournalError(f"backup to {dest} failed: {err.strerror or err}") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Backup(dest, dest.stat().st_size, result.rows, result.head_seq,
                  _head_hash(dest), time.monotonic() - started)


def _head_hash(path: Path) -> str:
    from gated.journal.verify import read_head

    return read_head(path)[1]
