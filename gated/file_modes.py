"""Modes of the files gated creates: 0640, whatever umask it was started with.

The journal, the rule store, snapshots and the metrics textfile hold plates, names and
addresses (or sit beside them): the service user writes them, its group may read them
(backups, node_exporter added to the group), nobody else. Folders are 0750, made by
gated.state_dirs. A mode passed to open() is filtered by the umask, so every file is
also fchmod-ed; SQLite gives a database's -wal and -shm files the database file's own
mode, so creating the database file first is enough for those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o640


def open_private(path: str | os.PathLike[str],
                 flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open creating the file 0640 whatever the umask; returns the descriptor."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by name (a folder's fsync makes renames into it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private(path: str | os.PathLike[str], data: bytes, *,
                    tmp_suffix: str = ".tmp") -> None:
    """Put `data` at `path` atomically and durably, 0640: written beside it under a temporary
    name, fsynced, renamed over it, the folder fsynced. The temporary file never outlives a
    failure; a power cut leaves the old content or the new, never a mix."""
    target = Path(path)
    tmp = target.with_name(target.name + tmp_suffix)
    try:
        with os.fdopen(open_private(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(target.parent)


def restrict(path: str | os.PathLike[str]) -> None:
    """Take permission bits beyond 0640 away from an existing file; never adds any.

    A file made by an older gated (or under a loose umask) is tightened at the next
    open; one that is not ours to change is left as it is, with a warning.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if mode & ~FILE_MODE:
        try:
            os.chmod(path, mode & FILE_MODE)
        except OSError as err:
            log.warning("cannot restrict %s to mode %o: %s", path, FILE_MODE, err.strerror)


def prepare_sqlite_file(path: str | os.PathLike[str]) -> None:
    """Create a SQLite database file empty and 0640 (or restrict an existing one and its
    -wal/-shm), so the files SQLite itself creates beside it take the same mode."""
    try:
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        restrict(path)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            restrict(f"{os.fspath(path)}{suffix}")
