"""SnapshotStore: durable JPEG writes, refusal of bad input, quota with synced-first eviction."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from gated.errors import JournalError, PayloadError
from gated.ids import new_event_id
from gated.snapshots import SnapshotStore

DAY = 1_718_000_000.0  # 2024-06-10 UTC


def jpeg(seed: int = 0, size: int = 64) -> bytes:
    """A real JPEG encoded by OpenCV."""
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def test_save_writes_atomically_and_returns_path_and_sha256(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "snaps", quota_bytes=10**6)
    data = jpeg()
    event_id = new_event_id()
    rel, digest = store.save(event_id, data, DAY)
    assert rel == f"2024/06/10/{event_id}.jpg"
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "snaps" / rel).read_bytes() == data
    assert not list((tmp_path / "snaps").rglob("*.tmp"))
    assert cv2.imdecode(np.frombuffer(store.path_of(rel).read_bytes(), np.uint8), 1) is not None
    assert store.used_bytes() == len(data)


async def test_save_async(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, quota_bytes=10**6)
    rel, _ = await store.save_async(new_event_id(), jpeg(), DAY)
    assert (tmp_path / rel).exists()


@pytest.mark.parametrize(
    ("event_id", "data", "match"),
    [
        ("e1", b"GIF89a....", "not a JPEG"),
        ("e1", b"", "not a JPEG"),
        ("e1", b"\xff\xd8\xff" + b"x" * 5000, "exceeds"),
        ("../../etc/cron.d/x", b"\xff\xd8\xff\xe0", "safe file name"),
        ("a/b", b"\xff\xd8\xff\xe0", "safe file name"),
        ("e1", "not bytes", "expected JPEG bytes"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(tmp_path: Path, event_id, data, match) -> None:
    store = SnapshotStore(tmp_path, quota_bytes=10**6, max_bytes=4096)
    with pytest.raises(PayloadError, match=match):
        store.save(event_id, data, DAY)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_path_of_refuses_escapes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s", quota_bytes=100)
    with pytest.raises(PayloadError):
        store.path_of("../outside.jpg")
    with pytest.raises(PayloadError):
        store.path_of("/etc/passwd")


def test_quota_removes_synced_oldest_first_then_unsynced_and_reports(tmp_path: Path) -> None:
    data = jpeg(size=32)
    ids = [new_event_id() for _ in range(6)]
    store = SnapshotStore(tmp_path, quota_bytes=len(data) * 6)
    for i, event_id in enumerate(ids):
        store.save(event_id, data, DAY + i * 86_400)
    assert store.enforce(set()) == []  # at quota: nothing to do
    store.quota_bytes = len(data) * 3
    synced = {ids[1], ids[4]}
    removed = store.enforce(synced)
    assert [(r.event_id, r.synced) for r in removed] == [(ids[1], True), (ids[4], True),
                                                         (ids[0], False)]
    assert store.used_bytes() == len(data) * 3
    remaining = sorted(p.stem for p in tmp_path.rglob("*.jpg"))
    assert remaining == sorted([ids[2], ids[3], ids[5]])
    # A predicate works as well as a set; under quota nothing more goes.
    assert store.enforce(lambda _event_id: True) == []


def test_stale_temp_files_are_cleaned_and_remove_frees_bytes(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, quota_bytes=10**6)
    rel, _ = store.save(new_event_id(), jpeg(), DAY)
    stale = tmp_path / "2024" / "06" / "10" / "crashed.jpg.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (DAY - 3600, DAY - 3600))  # left by a crash an hour before
    in_flight = tmp_path / "2024" / "06" / "10" / "saving.jpg.tmp"
    in_flight.write_bytes(b"being written by another thread right now")
    fresh = SnapshotStore(tmp_path, quota_bytes=10**6)
    assert fresh.used_bytes() == os.path.getsize(tmp_path / rel)
    assert not stale.exists()
    assert in_flight.exists()  # a save in progress is never pulled from under its rename
    assert fresh.remove([rel, "2020/01/01/gone.jpg", "../x.jpg"]) > 0
    assert fresh.used_bytes() == 0


def test_disk_refusal_is_a_journal_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    store = SnapshotStore(blocker, quota_bytes=10**6)
    with pytest.raises(JournalError, match="cannot store snapshot"):
        store.save(new_event_id(), jpeg(), DAY)
