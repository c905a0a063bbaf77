"""Migration 002 (captured_at, gate_opened): old chains still verify, new columns are guarded."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.rows import ADDED, HASHED, prepare
from gated.journal.schema import migration_files
from gated.journal.verify import verify
from tests.journal.journal_child import access_event


def write_version_1_journal(path: Path, events: int) -> None:
    """A journal as gated wrote it before migration 002: schema 1, rows hashed without
    the new columns (the canonical form as first specified: sorted-key JSON)."""
    conn = sqlite3.connect(path)
    conn.executescript(migration_files()[0][2] + "\nPRAGMA user_version = 1;")
    prev = "0" * 64
    for seq in range(1, events + 1):
        _, row = prepare(access_event())
        for name in ADDED["access"]:
            del row[name]
        row.update(seq=seq, prev_hash=prev)
        content = {k: row[k] for k in HASHED["access"] if k not in ADDED["access"]}
        content["stream"] = "access"
        row["row_hash"] = prev = hashlib.sha256(
            msgspec.json.encode(content, order="sorted")).hexdigest()
        cols = ", ".join(row)
        conn.execute(f"INSERT INTO access_logs ({cols}) VALUES ({', '.join('?' * len(row))})",
                     tuple(row.values()))
    conn.commit()
    conn.close()


async def test_a_version_1_journal_migrates_and_its_chain_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    write_version_1_journal(path, 3)
    assert verify(path).ok
    async with await Journal.open(path) as journal:  # migrates to the latest version
        await journal.append(access_event(captured_at=1_700_000_000.5, gate_opened=False))
        await journal.append(access_event(gate_opened=True))
    result = verify(path)
    assert result.ok, result.message
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT captured_at, gate_opened FROM access_logs ORDER BY seq").fetchall()
    assert rows == [(None, None)] * 3 + [(1_700_000_000.5, 0), (None, 1)]


@pytest.mark.parametrize("column", ["captured_at", "gate_opened"])
async def test_the_new_columns_are_hashed_and_append_only(tmp_path: Path, column: str) -> None:
    path = tmp_path / "journal.sqlite3"
    async with await Journal.open(path) as journal:
        await journal.append(access_event(captured_at=1_700_000_000.0, gate_opened=True))
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(f"UPDATE access_logs SET {column} = 0")
    conn.close()
    edited = tmp_path / "edited.sqlite3"
    shutil.copy(path, edited)
    conn = sqlite3.connect(edited)
    saved = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in saved:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(f"UPDATE access_logs SET {column} = NULL")  # as if it had never been set
    for _, text in saved:
        conn.execute(text)
    conn.commit()
    conn.close()
    result = verify(edited)
    assert not result.ok and result.first_bad_seq == 1


async def test_a_relay_failure_is_no_pass_use(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
        await journal.append(access_event(pass_id="p-1", event_type="visitor_entry",
                                          gate_opened=False))
        await journal.append(access_event(pass_id="p-2", event_type="visitor_entry",
                                          gate_opened=True))
        assert await journal.pass_uses() == {"p-2": 1}


async def test_gate_opened_must_be_a_flag(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "journal.sqlite3") as journal:
        with pytest.raises(JournalError, match="gate_opened"):
            await journal.append(access_event(gate_opened="yes"))
