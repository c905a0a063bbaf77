"""File modes of what the journal, rule store and snapshot store create, under any umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.file_modes import FILE_MODE, prepare_sqlite_file, replace_private, restrict
from gated.journal import Journal
from gated.rules.store import RuleStore
from gated.snapshots import SnapshotStore
from tests.journal.journal_child import audit_event

JPEG = b"\xff\xd8\xff\xe0" + b"x" * 100


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


async def test_journal_and_its_wal_are_0640_in_0750_folders(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "new" / "state" / "journal.sqlite3"
    journal = await Journal.open(path)
    try:
        await journal.append(audit_event())
        wal = path.with_name(path.name + "-wal")
        shm = path.with_name(path.name + "-shm")
        assert {p.name: oct(mode(p)) for p in (path, wal, shm)} == {
            p.name: oct(0o640) for p in (path, wal, shm)}
    finally:
        await journal.close()
    assert mode(path.parent) == 0o750 and mode(path.parent.parent) == 0o750


def test_rule_store_is_0640(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "rules.sqlite3"
    with RuleStore(path):
        assert mode(path) == 0o640


def test_snapshot_files_and_day_folders(tmp_path: Path, umask: int) -> None:
    store = SnapshotStore(tmp_path / "snaps", 10_000_000)
    relative, _ = store.save("01890000-0000-7000-8000-000000000001", JPEG, 1_700_000_000.0)
    file = store.path_of(relative)
    assert mode(file) == 0o640
    for folder in (file.parent, file.parent.parent, file.parent.parent.parent):
        assert mode(folder) == 0o750, folder


async def test_an_older_world_readable_journal_is_tightened_at_open(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = await Journal.open(path)
    await journal.close()
    os.chmod(path, 0o666)
    journal = await Journal.open(path)
    await journal.close()
    assert mode(path) == 0o640


@given(st.integers(min_value=0, max_value=0o777))
def test_restrict_only_ever_takes_bits_away(tmp_path_factory: pytest.TempPathFactory,
                                            before: int) -> None:
    path = tmp_path_factory.mktemp("m") / "f"
    path.write_bytes(b"")
    os.chmod(path, before)
    restrict(path)
    assert mode(path) == before & FILE_MODE


def test_prepare_keeps_an_existing_database_content(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    path.write_bytes(b"content")
    prepare_sqlite_file(path)
    assert path.read_bytes() == b"content"


def test_replace_private_swaps_content_0640_and_leaves_no_temp_file(tmp_path: Path,
                                                                    umask: int) -> None:
    target = tmp_path / "head.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    replace_private(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o640
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # a file cannot replace a folder
        replace_private(tmp_path / "folder", b"x", tmp_suffix=".partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "head.json"]
