"""JPEG snapshot store on disk with a byte quota.

A snapshot is written to a temp file, fsynced, renamed into place and the directory
fsynced before `save` returns, so the journal row that references it never points at a
file a power cut could lose. Layout: `YYYY/MM/DD/<event_id>.jpg` (UTC of `when`).
Quota: oldest first by path (date, then the time-ordered UUIDv7), synced events' files
before unsynced ones; unsynced ones go only when nothing else is left, and `enforce`
reports everything it removed so the caller can audit it.

Exercised on a PC's filesystem only; SD-card behaviour under power loss was not tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from gated.errors import JournalError, PayloadError, StateError
from gated.file_modes import replace_private
from gated.state_dirs import prepare_dir

_SOI = b"\xff\xd8\xff"  # JPEG start-of-image marker followed by the first segment's marker
_EVENT_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")  # no dots or slashes: no traversal
_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class RemovedSnapshot:
    """A snapshot deleted to respect the quota; `synced` False means evidence was lost."""

    relative_path: str
    event_id: str
    size: int
    synced: bool


# A temp file older than this cannot belong to a save still in progress.
_STALE_TMP_S = 300.0


class SnapshotStore:
    """JPEG files under one directory, bounded by `quota_bytes`."""

    def __init__(self, directory: str | os.PathLike[str], quota_bytes: int,
                 *, max_bytes: int = 2 * 1024 * 1024) -> None:
        if quota_bytes <= 0 or max_bytes <= 0:
            raise JournalError("snapshot quota and size limit must be positive")
        self.directory = Path(directory)
        self.quota_bytes = quota_bytes
        self.max_bytes = max_bytes
        self._used: int | None = None  # computed lazily by one directory walk
        # Set by the state quota when nothing more can be freed: new pictures are refused
        # (their rows record them as missing) until it clears.
        self.refuse_reason: str | None = None

    # --- writing ---------------------------------------------------------------------------

    def save(self, event_id: str, jpeg: bytes, when: float) -> tuple[str, str]:
        """Store a JPEG durably; return (path relative to the store, SHA-256 hex).

        Blocking (fsyncs): call it from a thread, e.g. via `save_async`. Raises
        PayloadError for non-JPEG, empty or oversized input and JournalError when the
        disk refuses; nothing is left behind in either case.
        """
        if not isinstance(jpeg, bytes | bytearray | memoryview):
            raise PayloadError("snapshot: expected JPEG bytes")
        data = bytes(jpeg)
        if len(data) > self.max_bytes:
            raise PayloadError(f"snapshot: {len(data)} bytes exceeds the {self.max_bytes} limit")
        if self.refuse_reason is not None:
            raise JournalError(f"snapshot not stored: {self.refuse_reason}")
        if not data.startswith(_SOI):
            raise PayloadError("snapshot: not a JPEG (no start-of-image marker)")
        if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
            raise PayloadError("snapshot: event id is not a safe file name")
        day = time.strftime("%Y/%m/%d", time.gmtime(max(0.0, float(when))))
        relative = f"{day}/{event_id}.jpg"
        final = self.directory / relative
        digest = hashlib.sha256(data).hexdigest()
        try:
            if not final.parent.is_dir():
                prepare_dir(final.parent, "snapshots")  # 0750 whatever the umask
            previous = final.stat().st_size if final.exists() else 0
            # 0640 whatever the umask; durable once the folder's entry is on disk too.
            replace_private(final, data, tmp_suffix=_TMP_SUFFIX)
        except StateError as err:
            raise JournalError(f"cannot store snapshot {relative}: {err}") from err
        except OSError as err:
            raise JournalError(f"cannot store snapshot {relative}: {err.strerror}") from err
        if self._used is not None:
            self._used += len(data) - previous
        return relative, digest

    async def save_async(self, event_id: str, jpeg: bytes, when: float) -> tuple[str, str]:
        """`save` on a worker thread, so the event loop never waits for an fsync."""
        return await asyncio.to_thread(self.save, event_id, jpeg, when)

    # --- reading, removing -------------------------------------------------------------------

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a stored snapshot; refuses paths escaping the store."""
        candidate = (self.directory / relative_path).resolve()
        if not candidate.is_relative_to(self.directory.resolve()):
            raise PayloadError("snapshot path escapes the snapshot directory")
        return candidate

    def _files(self) -> list[tuple[str, int]]:
        """(relative path, size) of every snapshot, oldest first; removes stale temp files."""
        found: list[tuple[str, int]] = []
        if not self.directory.exists():
            return found
        for root, dirs, names in os.walk(self.directory):
            dirs.sort()
            for name in names:
                full = Path(root) / name
                if name.endswith(_TMP_SUFFIX):
                    # Left by a crash between write and rename: never referenced by a row.
                    # A fresh one is a save in flight on another thread: leave it alone.
                    with contextlib.suppress(OSError):
                        if full.stat().st_mtime < time.time() - _STALE_TMP_S:
                            full.unlink()
                    continue
                if not name.endswith(".jpg"):
                    continue
                try:
                    size = full.stat().st_size
                except OSError:
                    continue
                found.append((full.relative_to(self.directory).as_posix(), size))
        found.sort()
        return found

    def files(self) -> list[tuple[str, int]]:
        """(relative path, size) of every stored snapshot, oldest first."""
        return self._files()

    def used_bytes(self) -> int:
        """Bytes the snapshots use now (one directory walk at first call, then tracked)."""
        if self._used is None:
            self._used = sum(size for _, size in self._files())
        return self._used

    def remove(self, relative_paths: Iterable[str]) -> int:
        """Delete snapshots (e.g. those of rows retention deleted); return bytes freed."""
        freed = 0
        for rel in relative_paths:
            try:
                path = self.path_of(rel)
                size = path.stat().st_size
                path.unlink()
            except (OSError, PayloadError):
                continue  # already gone or not ours: nothing to free
            freed += size
        if self._used is not None:
            self._used = max(0, self._used - freed)
        return freed

    def enforce(self, synced: Callable[[str], bool] | Collection[str]) -> list[RemovedSnapshot]:
        """Delete oldest snapshots until under quota; synced events' files first.

        `synced` is a predicate on event ids or a collection of synced event ids.
        Unsynced snapshots are deleted only when no synced one is left; each removal
        is reported (the caller audits them, loudly for unsynced ones).
        """
        if self.used_bytes() <= self.quota_bytes:
            return []
        is_synced = synced if callable(synced) else synced.__contains__
        files = self._files()
        self._used = sum(size for _, size in files)
        marked = [(rel, size, bool(is_synced(Path(rel).stem))) for rel, size in files]
        removed: list[RemovedSnapshot] = []
        for want_synced in (True, False):
            for rel, size, was_synced in marked:
                if self._used <= self.quota_bytes:
                    return removed
                if was_synced != want_synced:
                    continue
                try:
                    (self.directory / rel).unlink()
                except FileNotFoundError:
                    pass
                except OSError as err:
                    raise JournalError(f"cannot remove snapshot {rel}: {err.strerror}") from err
                self._used -= size
                removed.append(RemovedSnapshot(rel, Path(rel).stem, size, was_synced))
        return removed
