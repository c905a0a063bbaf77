"""Data lifecycle on a real journal file: retention by kind, the state quota, WAL bounds,
online backup, redaction and the corrupt-file check (the daemon's side: tests/daemon)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.backup import backup
from gated.journal.lifecycle import ORPHAN_AGE_S, Retention, RetentionPolicy, StateQuota
from gated.journal.recovery import check_file, read_old_head, recover_if_corrupt
from gated.journal.redact import redact
from gated.journal.verify import verify
from gated.snapshots import SnapshotStore
from tests.journal.journal_child import access_event, audit_event

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 20_000


def _size(path: Path) -> int:
    return path.stat().st_size


def rows(path: Path, table: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY seq").fetchall()
    finally:
        conn.close()


async def _ids(journal: Journal, stream: str) -> list[str]:
    return [r["event_id"] for r in await journal.unsynced(stream, 10_000)]


async def test_retention_per_kind_only_acknowledged_and_verify_still_passes(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    snaps = SnapshotStore(tmp_path / "snaps", 10**9)
    j = await Journal.open(path)
    now = 1_800_000_000.0
    day = 86_400.0
    # Oldest first: 3 old access rows with pictures, 1 old audit row, then new rows.
    for i in range(3):
        e = access_event(created_at=now - 100 * day + i)
        rel, sha = snaps.save(e.event_id, JPEG, e.created_at)
        await j.append(access_event(event_id=e.event_id, created_at=e.created_at,
                                    snapshot_path=rel, snapshot_sha256=sha))
    await j.append(audit_event(created_at=now - 40 * day))  # audit kept 30 days: expired
    await j.append(access_event(created_at=now - 40 * day))  # access kept 90: stays
    await j.append(access_event(created_at=now - day))
    policy = RetentionPolicy(90 * day, 30 * day, 90 * day, require_synced=True)
    retention = Retention(j, snaps, policy)
    # Nothing acknowledged: nothing goes, whatever its age.
    assert (await retention.run_once(now)).rows == 0
    assert len(snaps.files()) == 3
    # The first two acknowledged: only they go (the third, unacknowledged, ends the pass).
    first = (await _ids(j, "access"))[:2]
    await j.mark_synced("access", first)
    done = await retention.run_once(now)
    assert (done.rows, done.through_seq, done.snapshots) == (2, 2, 2)
    assert rows(path, "access_logs")[0]["seq"] == 3
    assert len(snaps.files()) == 1
    # Everything acknowledged: rows 3 and 4 (the 40-day audit row) go, 5 (40-day access) stays.
    await j.mark_synced("access", await _ids(j, "access"))
    await j.mark_synced("audit", await _ids(j, "audit"))
    done = await retention.run_once(now)
    assert done.through_seq == 4
    remaining = rows(path, "access_logs")
    assert remaining[0]["seq"] == 5
    pruned = [r for r in rows(path, "audit_logs") if r["action"] == "journal_pruned"]
    assert len(pruned) == 2 and all(r["status"] == "success" for r in pruned)
    await j.close()
    result = verify(path)
    assert result.ok, result.message
    assert result.checkpoint_seq == 4
    # An edit after the prune is still caught.
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER access_logs_append_only_update")
    conn.execute("UPDATE access_logs SET decision_reason = 'forged' WHERE seq = 5")
    conn.commit()
    conn.close()
    broken = verify(path)
    assert not broken.ok and broken.first_bad_seq == 5


async def test_retention_without_sync_keeps_rows_unless_require_synced_is_off(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    snaps = SnapshotStore(tmp_path / "snaps", 10**9)
    j = await Journal.open(path)
    now = 1_800_000_000.0
    for i in range(4):
        await j.append(access_event(created_at=now - 200 * 86_400 + i))
    await j.append(access_event(created_at=now))
    kept = Retention(j, snaps, RetentionPolicy(86_400, 86_400, 86_400, require_synced=True))
    assert (await kept.run_once(now)).rows == 0
    forced = Retention(j, snaps, RetentionPolicy(86_400, 86_400, 86_400, require_synced=False))
    # An unsynchronised clock cannot be trusted with ages: unacknowledged rows stay.
    assert (await forced.run_once(now, clock_unsynced=True)).rows == 0
    done = await forced.run_once(now)
    assert (done.rows, done.unsynced_rows) == (4, 4)
    await j.close()
    assert verify(path).ok


async def test_expired_pictures_go_and_their_rows_stay(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    snaps = SnapshotStore(tmp_path / "snaps", 10**9)
    j = await Journal.open(path)
    now = 1_800_000_000.0
    for age_days in (20, 10, 1):
        e = access_event(created_at=now - age_days * 86_400)
        rel, sha = snaps.save(e.event_id, JPEG, e.created_at)
        await j.append(access_event(event_id=e.event_id, created_at=e.created_at,
                                    snapshot_path=rel, snapshot_sha256=sha))
    await j.mark_synced("access", await _ids(j, "access"))
    done = await Retention(j, snaps, RetentionPolicy(
        900 * 86_400, 900 * 86_400, 5 * 86_400)).run_once(now)
    assert (done.rows, done.snapshots) == (0, 2)
    assert len(snaps.files()) == 1 and len(rows(path, "access_logs")) == 3
    await j.close()
    assert verify(path).ok


async def test_state_quota_frees_acknowledged_pictures_then_rows_never_unacknowledged(
        tmp_path: Path) -> None:
    path = tmp_path / "state" / "j.sqlite3"
    snaps = SnapshotStore(tmp_path / "state" / "snaps", 10**9)
    j = await Journal.open(path)
    now = 1_800_000_000.0
    ids = []
    for i in range(40):
        e = access_event(created_at=now + i, metadata={"pad": "p" * 2000})
        rel, sha = snaps.save(e.event_id, JPEG, e.created_at)
        await j.append(access_event(event_id=e.event_id, created_at=e.created_at,
                                    snapshot_path=rel, snapshot_sha256=sha,
                                    metadata={"pad": "p" * 2000}))
        ids.append(e.event_id)
    await j.checkpoint("TRUNCATE")
    quota = StateQuota(j, snaps, 10**9)
    used = await quota.usage()
    # A quota a few pictures below the use: acknowledged pictures alone make room.
    await j.mark_synced("access", ids[:20])
    quota.quota_bytes = used - 3 * len(JPEG)
    done = await quota.enforce(now)
    assert not done.exhausted and done.rows == 0 and done.snapshots >= 3
    left = {Path(rel).stem for rel, _ in snaps.files()}
    assert set(ids[20:]) <= left  # no unacknowledged picture touched
    assert ids[0] not in left  # oldest acknowledged first
    # A picture still owed upstream (its row synced as "pending") is never freed.
    assert ids[19] in left
    quota.owed = lambda event_id: event_id == ids[19]
    quota.quota_bytes = 1
    done = await quota.enforce(now)
    # Pictures, then acknowledged rows went, even the owed picture's row; not the picture.
    assert done.exhausted
    assert {Path(rel).stem for rel, _ in snaps.files()} == set(ids[19:])
    # Once uploaded it is nobody's: freed, but only when older than a row's way in.
    quota.owed = lambda _event_id: False
    await quota.enforce(time.time())
    assert ids[19] in {Path(rel).stem for rel, _ in snaps.files()}
    done = await quota.enforce(time.time() + ORPHAN_AGE_S + 60)
    assert done.exhausted
    assert {Path(rel).stem for rel, _ in snaps.files()} == set(ids[20:])
    seqs = [r["event_id"] for r in rows(path, "access_logs")]
    assert seqs[0] == ids[20] and len(seqs) == 20  # acknowledged rows gone, the rest kept
    await j.close()
    assert verify(path).ok


async def test_wal_is_cut_back_once_a_long_reader_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    limit = 256 * 1024
    j = await Journal.open(path, wal_limit_bytes=limit)
    wal = Path(f"{path}-wal")
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM access_logs").fetchone()  # holds its snapshot
    for _ in range(30):
        await j.append_many([access_event(metadata={"pad": "p" * 1500}) for _ in range(50)])
    # While the reader holds its snapshot the WAL cannot restart: it grows.
    grown = _size(wal)
    assert grown > 4 * limit
    busy, _, _ = await j.checkpoint("TRUNCATE")
    assert busy == 1  # gave up at once instead of blocking the writer
    reader.execute("COMMIT")
    reader.close()
    busy, _, _ = await j.checkpoint("TRUNCATE")
    assert busy == 0 and _size(wal) == 0
    # More appends after that: SQLite's own checkpoints keep it within the limit.
    for _ in range(30):
        await j.append_many([access_event(metadata={"pad": "p" * 1500}) for _ in range(50)])
    await j.checkpoint("PASSIVE")
    await j.append(access_event())  # restarts the WAL from its start, cut to the limit
    assert _size(wal) <= limit + 64 * 1024
    await j.close()
    assert verify(path).ok


async def test_backup_is_verified_consistent_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    await j.append_many([access_event() for _ in range(200)])
    head = await j.head()
    done = backup(path, tmp_path / "copy.sqlite3")
    assert (done.head_seq, done.head_hash) == head and done.rows == 200
    assert verify(done.path).ok
    assert oct(done.path.stat().st_mode & 0o777) == "0o640"
    with pytest.raises(JournalError, match="already exists"):
        backup(path, done.path)
    in_folder = backup(path, tmp_path)
    assert in_folder.path.parent == tmp_path and in_folder.path.name.startswith("j-")
    await j.close()


async def test_redact_by_plate_and_resident_clears_fields_and_pictures(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    snaps = SnapshotStore(tmp_path / "snaps", 10**9)
    j = await Journal.open(path)
    events = [access_event(vehicle_plate="XY12ZZZ", resident_id="r-x"),
              access_event(vehicle_plate="OTHER11", resident_id="r-y"),
              access_event(vehicle_plate="XY12ZZZ", resident_id=None),
              access_event(vehicle_plate="RES0001", resident_id="r-y")]
    for e in events:
        rel, sha = snaps.save(e.event_id, JPEG, e.created_at)
        await j.append(access_event(**{**{f: getattr(e, f) for f in (
            "event_id", "created_at", "vehicle_plate", "resident_id")},
            "snapshot_path": rel, "snapshot_sha256": sha}))
    requests: list[dict[str, object]] = []

    def build(metadata: dict[str, object]):
        requests.append(metadata)
        return audit_event(action="personal_data_erased", resource_type="person",
                           ip_address=None, user_agent=None, metadata=metadata)

    done = await redact(j, snaps, build, plate="xy-12 zzz")
    assert done.erased_seqs == (1, 3) and done.snapshots_removed == 2
    assert "XY12ZZZ" not in str(requests[-1])  # the record never names the plate
    done = await redact(j, snaps, build, resident_id="r-y")
    assert done.erased_seqs == (2, 4)
    assert all(r["vehicle_plate"] is None for r in rows(path, "access_logs"))
    assert snaps.files() == []
    records = [r for r in rows(path, "audit_logs") if r["action"] == "personal_data_erased"]
    assert len(records) == 2
    with pytest.raises(JournalError):
        await redact(j, snaps, build)
    await j.close()
    result = verify(path)
    assert result.ok and result.erased_rows == 4, result.message


def _journal_with_rows(path: Path, n: int = 300) -> tuple[int, str]:
    async def fill() -> tuple[int, str]:
        j = await Journal.open(path)
        await j.append_many([access_event(metadata={"pad": "p" * 500}) for _ in range(n)])
        head = await j.head()
        await j.close()
        return head

    import asyncio

    return asyncio.run(fill())


def _flip_page(path: Path, page: int) -> None:
    size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as fh:
        fh.seek(page * size)
        fh.write(os.urandom(size))


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _zero_header(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.write(b"\0" * 100)


@pytest.mark.parametrize("damage", [_truncate, _zero_header,
                                    lambda p: _flip_page(p, 3)], ids=["truncated", "zeroed-header",
                                                                      "flipped-page"])
def test_corruption_is_found_and_moved_aside_with_its_wal(tmp_path: Path, damage) -> None:
    path = tmp_path / "j.sqlite3"
    _journal_with_rows(path)
    assert check_file(path) is None
    damage(path)
    Path(f"{path}-wal").write_bytes(b"")
    recovery = recover_if_corrupt(path)
    assert recovery is not None and recovery.problem
    assert not path.exists() and recovery.moved_to.exists()
    assert Path(f"{recovery.moved_to}-wal").exists()


def test_an_empty_or_missing_file_is_no_corruption(tmp_path: Path) -> None:
    assert check_file(tmp_path / "none.sqlite3") is None
    (tmp_path / "empty.sqlite3").write_bytes(b"")
    assert check_file(tmp_path / "empty.sqlite3") is None


def test_old_head_is_read_from_a_damaged_file_where_possible(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    head = _journal_with_rows(path)
    assert read_old_head(path) == head  # undamaged: the head it must find
    _flip_page(path, 3)
    assert read_old_head(path) in (head, None)  # random damage: the head or nothing, never junk
    path2 = tmp_path / "k.sqlite3"
    _journal_with_rows(path2)
    _zero_header(path2)
    assert read_old_head(path2) is None


async def test_a_fresh_journal_continues_the_chain_after_the_old_head(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    seq = await j.continue_from(audit_event(action="journal_recovered"), (41, "ab" * 32))
    assert seq == 42
    await j.append(access_event())
    with pytest.raises(JournalError):
        await j.continue_from(audit_event(), (50, "cd" * 32))
    await j.close()
    result = verify(path)
    assert result.ok and result.checkpoint_seq == 41 and result.head_seq == 43, result.message


def test_backup_while_another_thread_appends(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "j.sqlite3"
    _journal_with_rows(path, 50)
    stop = threading.Event()

    def load() -> None:
        async def go() -> None:
            j = await Journal.open(path)
            while not stop.is_set():
                await j.append_many([access_event() for _ in range(20)])
            await j.close()

        asyncio.run(go())

    worker = threading.Thread(target=load)
    worker.start()
    try:
        done = [backup(path, tmp_path / f"b{i}.sqlite3") for i in range(3)]
    finally:
        stop.set()
        worker.join()
    for b in done:
        assert verify(b.path).ok
