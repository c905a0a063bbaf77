"""verify() against an attacker editing the file with plain sqlite3; export and stats."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.export import export, stats
from gated.journal.rows import row_hash
from gated.journal.schema import migration_files
from gated.journal.verify import verify
from tests.journal.journal_child import access_event, audit_event


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A closed journal of 10 rows: odd seqs access, even seqs audit."""
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    for i in range(10):
        await j.append(access_event(created_at=1000.0 + i, vehicle_plate=f"=HYPERLINK{i}")
                       if i % 2 == 0 else audit_event(created_at=1000.0 + i))
    await j.close()
    return path


def tamper(path: Path, *sql: str | tuple[str, tuple]) -> None:
    """Edit the file as a careful attacker would: drop the triggers, change rows, put the
    triggers back as they were (dropped triggers alone fail verify: test_anchor_and_triggers).
    """
    conn = sqlite3.connect(path)
    saved = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in saved:
        conn.execute(f"DROP TRIGGER {name}")
    for statement in sql:
        if isinstance(statement, tuple):
            conn.execute(*statement)
        else:
            conn.execute(statement)
    for _, text in saved:
        conn.execute(text)
    conn.commit()
    conn.close()


def test_intact_journal_verifies(db: Path) -> None:
    result = verify(db)
    assert result.ok and result.exit_code == 0
    assert (result.rows, result.head_seq, result.first_bad_seq) == (10, 10, None)
    assert "intact: 10 rows" in result.message and not result.warnings


def test_sync_state_may_change(db: Path) -> None:
    tamper(db, "UPDATE access_logs SET synced_at = 123.0")
    result = verify(db)
    assert result.ok and not result.warnings


@pytest.mark.parametrize(
    ("sql", "bad_seq", "what"),
    [
        ("UPDATE access_logs SET access_point = 'side-gate' WHERE seq = 5", 5, "edited"),
        ("UPDATE access_logs SET created_at = 1004.5 WHERE seq = 5", 5, "edited"),
        ("UPDATE access_logs SET rules_version = 4 WHERE seq = 3", 3, "edited"),
        ("UPDATE audit_logs SET status = 'failure' WHERE seq = 6", 6, "edited"),
        ("UPDATE audit_logs SET metadata = '{\"x\":1}' WHERE seq = 4", 4, "edited"),
        ("UPDATE access_logs SET vehicle_plate = 'ZZ999' WHERE seq = 7", 7, "digest"),
        ("UPDATE audit_logs SET ip_address = '10.0.0.1' WHERE seq = 8", 8, "digest"),
        ("UPDATE access_logs SET vehicle_plate = NULL WHERE seq = 7", 7, "cleared"),
        ("UPDATE access_logs SET row_hash = prev_hash WHERE seq = 9", 9, "edited"),
        ("UPDATE audit_logs SET prev_hash = row_hash WHERE seq = 2", 2, "prev_hash"),
        ("DELETE FROM audit_logs WHERE seq = 4", 4, "deleted"),
        ("DELETE FROM access_logs WHERE seq = 1", 1, "deleted"),
    ],
)
def test_edits_and_deletions_are_found_at_the_first_bad_seq(db: Path, sql: str, bad_seq: int,
                                                              what: str) -> None:
    tamper(db, sql)
    result = verify(db)
    assert not result.ok and result.exit_code == 1
    assert result.first_bad_seq == bad_seq, result.message
    assert what in result.problem
    assert f"seq {bad_seq}" in result.message


def test_erasure_without_a_chained_record_is_tampering(db: Path) -> None:
    tamper(db, "UPDATE access_logs SET vehicle_plate = NULL, pii_salt = NULL WHERE seq = 3")
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3
    assert "erasure record" in result.problem


def test_reordering_two_rows_is_found(db: Path) -> None:
    tamper(db, "UPDATE access_logs SET seq = -1 WHERE seq = 3",
           "UPDATE access_logs SET seq = 3 WHERE seq = 5",
           "UPDATE access_logs SET seq = 5 WHERE seq = -1")
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 3


def test_insertion_in_the_middle_is_found(db: Path) -> None:
    # The attacker renumbers the later rows and inserts a well-formed, self-consistent row.
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    template = dict(conn.execute("SELECT * FROM access_logs WHERE seq = 5").fetchone())
    prev = conn.execute("SELECT row_hash FROM audit_logs WHERE seq = 4").fetchone()[0]
    conn.close()
    del template["created_at_utc"]
    forged = dict(template, seq=5, event_id="01890000-0000-7000-8000-000000000000",
                  access_point="forged", prev_hash=prev)
    forged["row_hash"] = row_hash("access", forged)
    cols = ", ".join(forged)
    marks = ", ".join("?" * len(forged))
    tamper(db, "UPDATE access_logs SET seq = seq + 100 WHERE seq >= 5",
           "UPDATE audit_logs SET seq = seq + 100 WHERE seq >= 5",
           "UPDATE access_logs SET seq = seq - 99 WHERE seq >= 100",
           "UPDATE audit_logs SET seq = seq - 99 WHERE seq >= 100",
           (f"INSERT INTO access_logs ({cols}) VALUES ({marks})", tuple(forged.values())))
    result = verify(db)
    assert not result.ok
    assert result.first_bad_seq == 6, result.message  # the old seq 5, now 6: content changed


def test_forged_row_appended_with_a_wrong_hash_is_found(db: Path) -> None:
    tamper(db, "INSERT INTO audit_logs (seq, event_id, tenant_id, site_id, device_id, created_at,"
               " clock_unsynced, action, resource_type, actor_type, status, metadata, prev_hash,"
               " row_hash) SELECT 11, 'e', 't1', 's1', 'd1', 1.0, 0, 'x', 'y', 'z', 'success',"
               " '{}', row_hash, 'f00' FROM audit_logs WHERE seq = 10")
    result = verify(db)
    assert not result.ok and result.first_bad_seq == 11


def test_rebuilt_or_truncated_tail_is_found_against_an_anchor(db: Path) -> None:
    conn = sqlite3.connect(db)
    anchor = (8, conn.execute("SELECT row_hash FROM audit_logs WHERE seq = 8").fetchone()[0])
    conn.close()
    assert verify(db, anchor=anchor).ok
    tamper(db, "DELETE FROM audit_logs WHERE seq >= 8", "DELETE FROM access_logs WHERE seq >= 8")
    assert verify(db).ok  # a plain chain cannot see a cut tail …
    result = verify(db, anchor=anchor)  # … the upstream's acknowledged hash can
    assert not result.ok and result.first_bad_seq == 8 and "truncated" in result.problem


def test_deleting_the_oldest_rows_with_a_forged_checkpoint_is_found(db: Path) -> None:
    conn = sqlite3.connect(db)
    h = conn.execute("SELECT row_hash FROM audit_logs WHERE seq = 2").fetchone()[0]
    conn.close()
    tamper(db, "DELETE FROM access_logs WHERE seq = 1", "DELETE FROM audit_logs WHERE seq = 2",
           ("UPDATE journal_checkpoint SET seq = 2, row_hash = ?", (h,)))
    result = verify(db)
    assert not result.ok and "checkpoint" in result.problem and result.first_bad_seq == 3


def test_missing_or_garbage_file(tmp_path: Path) -> None:
    assert not verify(tmp_path / "none.sqlite3").ok
    garbage = tmp_path / "g.sqlite3"
    garbage.write_bytes(b"\0garbage" * 1000)
    result = verify(garbage)
    assert not result.ok and "journal" in result.message
    empty = tmp_path / "e.sqlite3"
    sqlite3.connect(empty).close()
    assert not verify(empty).ok  # no schema: not a journal


async def test_empty_journal_verifies(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "j.sqlite3")
    await j.close()
    result = verify(tmp_path / "j.sqlite3")
    assert result.ok and result.rows == 0 and "empty" in result.message


# --- export and stats -------------------------------------------------------------------------


def test_export_jsonl_all_streams_in_seq_order(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert export(db, out) == 10
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, 11))
    assert lines[0]["stream"] == "access" and lines[1]["stream"] == "audit"
    assert lines[0]["created_at_utc"] == "1970-01-01T00:16:40.000Z"
    assert isinstance(lines[0]["metadata"], dict) and "pii_salt" not in lines[0]


def test_export_since_and_stream_filters(db: Path) -> None:
    buf = io.StringIO()
    assert export(db, buf, since=1005.0, stream="audit") == 3  # seqs 6, 8, 10
    assert [json.loads(x)["seq"] for x in buf.getvalue().splitlines()] == [6, 8, 10]


def test_export_csv_neutralises_formulas(db: Path) -> None:
    buf = io.StringIO()
    assert export(db, buf, fmt="csv", stream="access") == 5
    table = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert table[0]["vehicle_plate"] == "'=HYPERLINK0"
    assert table[0]["stream"] == "access" and "pii_salt" not in table[0]


def test_export_rejects_bad_arguments(db: Path, tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="format"):
        export(db, io.StringIO(), fmt="xml")  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="stream"):
        export(db, io.StringIO(), stream="both")  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="no journal"):
        export(tmp_path / "missing", io.StringIO())
    with pytest.raises(JournalError, match="cannot write"):
        export(db, tmp_path / "no" / "such" / "dir" / "x.jsonl")


def test_stats(db: Path, tmp_path: Path) -> None:
    snaps = tmp_path / "snaps" / "2024" / "01"
    snaps.mkdir(parents=True)
    (snaps / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 97)
    s = stats(db, tmp_path / "snaps", now=2000.0)
    assert s["access"]["rows"] == 5 and s["audit"]["rows"] == 5
    assert s["access"]["by_event_type"] == {"entry": 5}
    assert s["audit"]["by_action"] == {"relay_pulse": 5}
    assert s["access"]["oldest_unsynced_seq"] == 1
    assert s["access"]["oldest_unsynced_age_s"] == 1000.0
    assert s["db_bytes"] > 0 and s["wal_bytes"] >= 0
    assert s["schema_version"] == len(migration_files())
    assert s["snapshots"] == {"files": 1, "bytes": 100}


