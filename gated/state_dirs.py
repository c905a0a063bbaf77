"""The directories gated keeps its state in: created private (0750) before a command writes, or
refused with one line naming the path.

An installer's first command often runs before the service ever started (so before systemd's
`StateDirectory=` made /var/lib/gated), and sometimes as root. Files that root creates in a
directory owned by the service user are handed to that user, so the daemon can write them later.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gated.errors import StateError

STATE_DIR_MODE = 0o750  # plates, names and addresses: the service user and its group only


def _hint(directory: Path) -> str:
    return (
        f" (create it as root: install -d -o gated -g gated -m 0750 {directory};"
        " then run this as the gated user)"
    )


def _owner_to_adopt(directory: Path) -> tuple[int, int] | None:
    """(uid, gid) that root should give new files in `directory`, or None to leave them as made."""
    if os.geteuid() != 0:
        return None
    st = directory.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def prepare_dir(directory: str | os.PathLike[str], what: str) -> list[Path]:
    """Make sure `directory` exists and is writable, creating missing parts 0750.

    Returns the directories created; raises StateError (one line, naming the path) instead.
    """
    directory = Path(directory).absolute()
    missing: list[Path] = []
    existing = directory
    while not existing.exists() and existing.parent != existing:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise StateError(f"cannot create {directory} for {what}: {existing} is not a directory")
    owner = _owner_to_adopt(existing)
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir(mode=STATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: checked below like any directory
        except OSError as err:
            hint = _hint(d) if isinstance(err, PermissionError) else ""
            raise StateError(
                f"cannot create {directory} for {what}: {err.strerror or err}{hint}"
            ) from err
        os.chmod(d, STATE_DIR_MODE)  # mkdir's mode is filtered by the umask; this is not
        if owner is not None:
            os.chown(d, *owner)
        created.append(d)
    if not directory.is_dir():
        raise StateError(f"cannot use {directory} for {what}: not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateError(
            f"cannot write in {directory} for {what}: permission denied{_hint(directory)}"
        )
    return created


def prepare_file(path: str | os.PathLike[str], what: str) -> Path:
    """Make sure the state file `path` can be created or written (its directory created 0750)."""
    path = Path(path).absolute()
    prepare_dir(path.parent, what)
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StateError(f"cannot write {path} ({what}): permission denied")
    return path


def adopt_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """As root, give each SQLite file (and its -wal/-shm) the owner of the directory holding it.

    `sudo gated rules import …` must not leave a root-owned store the daemon cannot write.
    """
    if os.geteuid() != 0:
        return
    for path in paths:
        base = Path(path)
        owner = _owner_to_adopt(base.parent) if base.parent.is_dir() else None
        if owner is None:
            continue
        for file in (base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm")):
            try:
                st = file.stat()
            except FileNotFoundError:
                continue
            if (st.st_uid, st.st_gid) != owner:
                os.chown(file, *owner)
