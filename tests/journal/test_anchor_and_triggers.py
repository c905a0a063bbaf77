"""What the chain alone proves, what needs an outside anchor, and what "cannot verify" means.

Through the real command (`python -m gated journal …`) where the exit status is the
interface: 0 intact, 1 verified and NOT intact, 66 cannot verify (no file, not a journal,
unreadable), 64 a malformed --anchor.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.rows import row_hash
from gated.journal.schema import iter_rows
from gated.journal.verify import parse_anchor, read_head, verify
from tests.journal.journal_child import access_event, audit_event

EX_NOT_INTACT, EX_USAGE, EX_CANNOT_VERIFY = 1, 64, 66


def gated(*args: str) -> subprocess.CompletedProcess[str]:
    """The `gated` command in a child process."""
    return subprocess.run([sys.executable, "-m", "gated", *args], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A closed journal of 10 rows (odd seqs access, even seqs audit), triggers intact."""
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    for i in range(10):
        await j.append(access_event(created_at=1000.0 + i) if i % 2 == 0
                       else audit_event(created_at=1000.0 + i))
    await j.close()
    return path


def sql(path: Path, *statements: str) -> None:
    """Run statements as someone with write access to the file would."""
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def triggers(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    found = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    conn.close()
    return found


# --- the append-only triggers are part of what verify checks --------------------------------


def test_every_trigger_dropped_alone_fails_verify(db: Path) -> None:
    names = sorted(triggers(db))
    assert len(names) >= 8  # append-only, seq-unique, checkpoint and pass-use triggers
    for name in names:
        copy = db.with_name(f"drop-{name}.sqlite3")
        src = sqlite3.connect(db)
        dst = sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.execute(f"DROP TRIGGER {name}")
        dst.commit()
        dst.close()
        result = verify(copy)
        assert not result.ok and result.exit_code == EX_NOT_INTACT, (name, result.message)
        assert name in result.message and "missing" in result.message


def test_a_trigger_rewritten_to_allow_edits_fails_verify(db: Path) -> None:
    sql(db, "DROP TRIGGER access_logs_append_only_update",
        "CREATE TRIGGER access_logs_append_only_update BEFORE UPDATE ON access_logs "
        "WHEN 0 BEGIN SELECT RAISE(ABORT, 'never'); END")
    result = verify(db)
    assert not result.ok and result.exit_code == EX_NOT_INTACT
    assert "access_logs_append_only_update" in result.message and "altered" in result.message


def test_an_added_trigger_that_swallows_inserts_fails_verify(db: Path) -> None:
    # Would silently drop the daemon's inserts of one plate while everything else verifies.
    sql(db, "CREATE TRIGGER hide_plate BEFORE INSERT ON access_logs "
            "WHEN NEW.vehicle_plate = 'AB123CD' BEGIN SELECT RAISE(IGNORE); END")
    result = verify(db)
    assert not result.ok and "hide_plate" in result.message


def test_whitespace_of_the_stored_triggers_does_not_matter(db: Path) -> None:
    name, text = next(iter(sorted(triggers(db).items())))
    sql(db, f"DROP TRIGGER {name}", text.replace("\n", "\n   ").replace(" ", "  ", 3))
    assert verify(db).ok


def test_command_fails_on_dropped_triggers_even_with_every_row_intact(db: Path) -> None:
    sql(db, "DROP TRIGGER access_logs_append_only_delete")
    done = gated("journal", "verify", "--db", str(db))
    assert done.returncode == EX_NOT_INTACT, done.stdout + done.stderr
    assert "access_logs_append_only_delete" in done.stdout
    assert "NOT intact" in done.stdout


# --- the head, and anchors -------------------------------------------------------------------


def test_head_prints_the_newest_seq_and_hash(db: Path) -> None:
    conn = sqlite3.connect(db)
    want = conn.execute("SELECT row_hash FROM audit_logs WHERE seq = 10").fetchone()[0]
    conn.close()
    text = gated("journal", "head", "--db", str(db))
    assert text.returncode == 0, text.stderr
    assert f"10:{want}" in text.stdout
    as_json = gated("journal", "head", "--db", str(db), "--json")
    assert as_json.returncode == 0, as_json.stderr
    head = json.loads(as_json.stdout)
    assert head["seq"] == 10 and head["row_hash"] == want and head["anchor"] == f"10:{want}"
    assert read_head(db) == (10, want)


async def test_head_of_an_empty_journal_is_the_genesis(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "e.sqlite3")
    await j.close()
    assert read_head(tmp_path / "e.sqlite3") == (0, "0" * 64)


async def test_daemon_head_matches_the_command(db: Path) -> None:
    j = await Journal.open(db)
    try:
        assert await j.head() == read_head(db)
        await j.append(audit_event())
        seq, digest = await j.head()
    finally:
        await j.close()
    assert seq == 11 and (seq, digest) == read_head(db)


def test_anchor_accepts_the_intact_chain_and_catches_a_cut_tail(db: Path) -> None:
    anchor = json.loads(gated("journal", "head", "--db", str(db), "--json").stdout)["anchor"]
    assert gated("journal", "verify", "--db", str(db), "--anchor", anchor).returncode == 0
    # Cut the last three rows off, the triggers restored afterwards as they were.
    saved = triggers(db)
    sql(db, *(f"DROP TRIGGER {n}" for n in saved),
        "DELETE FROM access_logs WHERE seq >= 8", "DELETE FROM audit_logs WHERE seq >= 8",
        *saved.values())
    plain = gated("journal", "verify", "--db", str(db))
    assert plain.returncode == 0, plain.stdout  # the chain alone cannot see a cut tail
    anchored = gated("journal", "verify", "--db", str(db), "--anchor", anchor)
    assert anchored.returncode == EX_NOT_INTACT
    assert "truncated" in anchored.stdout and "seq 10" in anchored.stdout


def rebuild_chain(path: Path, edit_seq: int) -> None:
    """Edit one row, then re-hash every row from there on with gated's own hash function."""
    saved = triggers(path)
    conn = sqlite3.connect(path)
    for name in saved:
        conn.execute(f"DROP TRIGGER {name}")
    rows = list(iter_rows(conn))
    prev = None
    for stream, row in rows:
        if row["seq"] >= edit_seq:
            if row["seq"] == edit_seq:
                row["created_at"] = row["created_at"] + 3600.0  # moved an hour: an alibi
            row["prev_hash"] = prev
            row["row_hash"] = row_hash(stream, row)
            table = "access_logs" if stream == "access" else "audit_logs"
            conn.execute(f"UPDATE {table} SET created_at = ?, prev_hash = ?, row_hash = ? "
                         "WHERE seq = ?", (row["created_at"], row["prev_hash"],
                                           row["row_hash"], row["seq"]))
        prev = row["row_hash"]
    for text in saved.values():
        conn.execute(text)
    conn.commit()
    conn.close()


def test_a_chain_rebuilt_with_gateds_own_hash_is_caught_only_by_an_earlier_anchor(
    db: Path,
) -> None:
    anchor_at_7 = "7:" + read_head_at(db, 7)
    head = json.loads(gated("journal", "head", "--db", str(db), "--json").stdout)["anchor"]
    rebuild_chain(db, edit_seq=5)
    assert gated("journal", "verify", "--db", str(db)).returncode == 0  # consistent rebuild
    for anchor in (anchor_at_7, head):
        done = gated("journal", "verify", "--db", str(db), "--anchor", anchor)
        assert done.returncode == EX_NOT_INTACT, (anchor, done.stdout)
        assert "rebuilt" in done.stdout


def read_head_at(path: Path, seq: int) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT row_hash FROM access_logs WHERE seq = ? UNION ALL "
                            "SELECT row_hash FROM audit_logs WHERE seq = ?",
                            (seq, seq)).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("anchor", ["", "10", "10:", ":abc", "x:" + "a" * 64, "10:" + "g" * 64,
                                    "-1:" + "a" * 64, "10:" + "a" * 63])
def test_malformed_anchor_is_a_usage_error(db: Path, anchor: str) -> None:
    done = gated("journal", "verify", "--db", str(db), f"--anchor={anchor}")
    assert done.returncode == EX_USAGE, done.stdout + done.stderr
    assert "--anchor" in done.stderr and "Traceback" not in done.stderr


@given(st.text(max_size=80))
def test_parse_anchor_refuses_anything_but_seq_colon_hash(text: str) -> None:
    try:
        seq, digest = parse_anchor(text)
    except JournalError:
        return
    assert text.strip().lower() == f"{seq}:{digest}"
    assert seq >= 0 and len(digest) == 64 and set(digest) <= set("0123456789abcdef")


@given(st.integers(min_value=0, max_value=2**63 - 1), st.binary(min_size=32, max_size=32))
def test_parse_anchor_reads_what_head_prints(seq: int, raw: bytes) -> None:
    assert parse_anchor(f"{seq}:{raw.hex()}") == (seq, raw.hex())


# --- cannot verify is not "not intact" -----------------------------------------------------


def _garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"\0garbage" * 1000)
    return path


def _not_a_journal(tmp_path: Path) -> Path:
    path = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    return path


def _empty_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "empty.sqlite3"
    sqlite3.connect(path).close()
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "a-directory"
    path.mkdir()
    return path


@pytest.mark.parametrize("make", [lambda p: p / "missing.sqlite3", _garbage, _not_a_journal,
                                  _empty_sqlite, _directory],
                         ids=["missing", "garbage", "other-database", "empty", "directory"])
def test_cannot_verify_has_its_own_exit_code_and_one_line(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    result = verify(path)
    assert not result.ok and result.cannot_verify and result.exit_code == EX_CANNOT_VERIFY
    done = gated("journal", "verify", "--db", str(path))
    assert done.returncode == EX_CANNOT_VERIFY, done.stdout + done.stderr
    out = done.stdout.strip()
    assert len(out.splitlines()) == 1 and "cannot verify" in out and str(path) in out
    assert "NOT intact" not in out and "Traceback" not in done.stderr
    head = gated("journal", "head", "--db", str(path))
    assert head.returncode == EX_CANNOT_VERIFY and "Traceback" not in head.stderr


def test_a_journal_from_a_newer_gated_cannot_be_verified(db: Path) -> None:
    sql(db, "PRAGMA user_version = 999")
    done = gated("journal", "verify", "--db", str(db))
    assert done.returncode == EX_CANNOT_VERIFY and "newer" in done.stdout + done.stderr


def test_tampering_is_still_not_intact_not_unverifiable(db: Path) -> None:
    saved = triggers(db)
    sql(db, *(f"DROP TRIGGER {n}" for n in saved),
        "UPDATE access_logs SET access_point = 'x' WHERE seq = 3", *saved.values())
    result = verify(db)
    assert not result.ok and not result.cannot_verify and result.exit_code == EX_NOT_INTACT
