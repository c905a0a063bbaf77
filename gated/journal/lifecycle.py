"""Retention by age and the state folder's disk quota: what the daemon's housekeeping runs.

Retention (`Retention.run_once`): rows older than their kind's limit leave oldest first
across both tables (one hash chain: the first row that must stay ends the pass), and only
once the upstream acknowledged them unless `require_synced` is off; each batch is chained
as a `journal_pruned` row carrying the checkpoint, so `gated journal verify` still passes.
Pictures older than their limit are deleted while their rows stay.

Quota (`StateQuota.enforce`): the journal's folder plus the snapshot folder, measured as
the bytes in use (the journal's pages holding data, its -wal and -shm, every other file).
Over quota: pictures of acknowledged events go first (oldest first), then acknowledged
rows; an unacknowledged event is never deleted here, nor a picture still owed upstream
(it outlives its row until uploaded). If that is not enough the outcome says so
(`exhausted`) and the daemon journals new events without pictures, raises an alarm and
audits it. Design and figures: docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gated.errors import PayloadError
from gated.journal.journal import Journal
from gated.snapshots import SnapshotStore

log = logging.getLogger(__name__)

DAY_S = 86_400.0
_QUOTA_PRUNE_BATCH = 1000
ORPHAN_AGE_S = 3600.0  # a picture with no row and no upload owed, older than this, is freed


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Ages (seconds) after which each kind may go, and whether only synced ones may."""

    access_s: float
    audit_s: float
    snapshot_s: float
    require_synced: bool = True


@dataclass(frozen=True, slots=True)
class RetentionOutcome:
    """What one retention pass removed."""

    rows: int = 0
    unsynced_rows: int = 0
    through_seq: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0


class Retention:
    """Age-based retention over one journal and its snapshot store."""

    def __init__(self, journal: Journal, snapshots: SnapshotStore,
                 policy: RetentionPolicy) -> None:
        self.journal = journal
        self.snapshots = snapshots
        self.policy = policy
        # Rows whose pictures were already handled; a restart walks them once more (cheap:
        # a missing file is skipped).
        self._snapshot_seq = 0

    async def run_once(self, now: float, clock_unsynced: bool = False) -> RetentionOutcome:
        """Prune expired rows, then expired pictures; report what went."""
        p = self.policy
        # Ages come from the wall clock. While it is unsynchronised (a Pi without an RTC
        # booting in 1970, or jumping ahead) only acknowledged rows may go, whatever
        # require_synced says: a wrong age then costs nothing the upstream does not hold.
        keep_unsynced = p.require_synced or clock_unsynced
        pruned = await self.journal.prune(
            {"access": now - p.access_s, "audit": now - p.audit_s},
            keep_unsynced=keep_unsynced, now=now, clock_unsynced=clock_unsynced)
        count = 0
        freed = 0
        if pruned.snapshot_paths:
            freed += await asyncio.to_thread(self.snapshots.remove, pruned.snapshot_paths)
            count += len(pruned.snapshot_paths)
        while True:
            found = await self.journal.snapshots_before(
                now - p.snapshot_s, after_seq=self._snapshot_seq, limit=500)
            doomed: list[str] = []
            for seq, path, synced in found:
                if keep_unsynced and not synced:
                    found = []  # stop here: this picture waits for its ack, so do later ones
                    break
                doomed.append(path)
                self._snapshot_seq = seq
            if doomed:
                gone = await asyncio.to_thread(self.snapshots.remove, doomed)
                if gone:
                    freed += gone
                    count += len(doomed)
            if len(found) < 500:
                break
        return RetentionOutcome(pruned.rows, pruned.unsynced_rows, pruned.through_seq,
                                count, freed)


@dataclass(frozen=True, slots=True)
class QuotaOutcome:
    """One quota pass: usage before and after, what was freed, and whether that sufficed."""

    quota_bytes: int
    used_before: int
    used_after: int
    snapshots: int = 0
    snapshot_bytes: int = 0
    rows: int = 0

    @property
    def exhausted(self) -> bool:
        """Still over quota with nothing acknowledged left to free."""
        return self.used_after > self.quota_bytes


def _tree_bytes(root: Path, skip: set[Path]) -> int:
    total = 0
    for dirpath, dirs, names in os.walk(root):
        here = Path(dirpath)
        dirs[:] = [d for d in dirs if (here / d).resolve() not in skip]
        for name in names:
            full = here / name
            if full.resolve() in skip:
                continue
            try:
                total += full.lstat().st_size
            except OSError:
                continue
    return total


class StateQuota:
    """The disk quota of the journal's folder plus the snapshot folder."""

    def __init__(self, journal: Journal, snapshots: SnapshotStore, quota_bytes: int,
                 owed: Callable[[str], bool] | None = None) -> None:
        self.journal = journal
        self.snapshots = snapshots
        self.quota_bytes = quota_bytes
        # A picture still owed to the service (its event synced as "pending") is the only
        # copy: like an unacknowledged event's, it is never freed to make room.
        self.owed = owed or (lambda _event_id: False)

    def _other_bytes(self) -> int:
        # Everything else in the state folders: rules, keys, sync state, moved-aside files.
        path = Path(self.journal.path).resolve()
        snaps = self.snapshots.directory.resolve()
        skip = {path, Path(f"{path}-wal"), Path(f"{path}-shm"), snaps}
        # The snapshot folder, inside or not, is counted by the store itself.
        return _tree_bytes(path.parent, skip)

    def _old_orphans(self, rels: list[str], now: float) -> set[str]:
        # A picture whose row is gone (pruned while its upload was owed, then uploaded) is
        # nobody's once it is not owed. A picture is saved just before its row is appended,
        # so only one older than ORPHAN_AGE_S counts: never one whose row is on its way.
        old: set[str] = set()
        for rel in rels:
            try:
                if now - self.snapshots.path_of(rel).stat().st_mtime > ORPHAN_AGE_S:
                    old.add(rel)
            except (OSError, PayloadError):
                continue
        return old

    async def usage(self) -> int:
        """Bytes the state folders use now (journal pages in use, WAL, pictures, the rest)."""
        other = await asyncio.to_thread(self._other_bytes)
        pictures = await asyncio.to_thread(self.snapshots.used_bytes)
        return other + pictures + await self.journal.bytes_in_use()

    async def enforce(self, now: float, clock_unsynced: bool = False) -> QuotaOutcome:
        """Free acknowledged pictures, then acknowledged rows, until under the quota."""
        before = used = await self.usage()
        if used <= self.quota_bytes:
            return QuotaOutcome(self.quota_bytes, before, used)
        pictures = picture_bytes = rows = 0
        # 1. Pictures of acknowledged events, oldest first.
        files = await asyncio.to_thread(self.snapshots.files)
        for start in range(0, len(files), 500):
            if used <= self.quota_bytes:
                break
            chunk = files[start:start + 500]
            states = await self.journal.sync_states([Path(r).stem for r, _ in chunk])
            orphans = await asyncio.to_thread(
                self._old_orphans, [r for r, _ in chunk if Path(r).stem not in states], now)
            doomed: list[str] = []
            for rel, size in chunk:
                if used <= self.quota_bytes:
                    break
                stem = Path(rel).stem
                if (states.get(stem) or rel in orphans) and not self.owed(stem):
                    doomed.append(rel)
                    used -= size
            if doomed:
                freed = await asyncio.to_thread(self.snapshots.remove, doomed)
                pictures += len(doomed)
                picture_bytes += freed
        if pictures:
            used = await self.usage()
        # 2. Acknowledged rows, oldest first, a batch at a time (their pages are reused
        # before the file grows again; the file itself never shrinks: no VACUUM rewrite).
        while used > self.quota_bytes:
            pruned = await self.journal.prune(
                float("inf"), keep_unsynced=True, now=now, clock_unsynced=clock_unsynced,
                batch=_QUOTA_PRUNE_BATCH, max_batches=1)
            if pruned.rows == 0:
                break
            rows += pruned.rows
            # A picture still owed upstream outlives its row: the service holds the event
            # and waits for this file, which is its only copy.
            gone = [p for p in pruned.snapshot_paths if not self.owed(Path(p).stem)]
            if gone:
                picture_bytes += await asyncio.to_thread(self.snapshots.remove, gone)
                pictures += len(gone)
            used = await self.usage()
        return QuotaOutcome(self.quota_bytes, before, used, pictures, picture_bytes, rows)
