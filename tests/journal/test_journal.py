"""Journal runtime: append, group commit, chain, queries, sync state, erasure, retention."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gated.errors import JournalError
from gated.journal import Journal
from gated.journal.rows import ACCESS_COLUMNS, AUDIT_COLUMNS, GENESIS, row_hash
from gated.journal.schema import migrate, migration_files
from gated.journal.verify import verify
from tests.journal.journal_child import access_event, audit_event


@pytest.fixture
async def journal(tmp_path: Path):
    j = await Journal.open(tmp_path / "sub" / "journal.sqlite3")
    yield j
    await j.close()


def rows(path: Path, table: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY seq").fetchall()
    finally:
        conn.close()


async def test_open_creates_dirs_schema_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "j.sqlite3"
    j = await Journal.open(path)
    await j.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migration_files())
    info = {r[1] for r in conn.execute("PRAGMA table_info(access_logs)")}
    assert info == set(ACCESS_COLUMNS)
    assert {r[1] for r in conn.execute("PRAGMA table_info(audit_logs)")} == set(AUDIT_COLUMNS)
    conn.close()


async def test_append_returns_gap_free_seq_across_both_tables(journal: Journal) -> None:
    seqs = [
        await journal.append(access_event()),
        await journal.append(audit_event()),
        await journal.append(access_event()),
    ]
    assert seqs == [1, 2, 3]
    access = rows(journal.path, "access_logs")
    audit = rows(journal.path, "audit_logs")
    assert [r["seq"] for r in access] == [1, 3] and [r["seq"] for r in audit] == [2]
    assert access[0]["prev_hash"] == GENESIS
    assert audit[0]["prev_hash"] == access[0]["row_hash"]
    assert access[1]["prev_hash"] == audit[0]["row_hash"]


async def test_concurrent_appends_are_group_committed_and_chained(journal: Journal) -> None:
    events = [access_event() if i % 3 else audit_event() for i in range(300)]
    seqs = await asyncio.gather(*(journal.append(e) for e in events))
    assert sorted(seqs) == list(range(1, 301))
    # Each caller got the seq of its own event.
    by_id = {r["event_id"]: r["seq"] for r in rows(journal.path, "access_logs")}
    by_id |= {r["event_id"]: r["seq"] for r in rows(journal.path, "audit_logs")}
    assert [by_id[e.event_id] for e in events] == seqs
    await journal.close()
    result = verify(journal.path)
    assert result.ok, result.message
    assert result.rows == 300 and result.head_seq == 300


async def test_row_hash_covers_content_and_stored_times_are_epoch_and_iso(journal: Journal) -> None:
    await journal.append(access_event(created_at=1_700_000_000, metadata={"b": 1, "a": [2]}))
    (row,) = rows(journal.path, "access_logs")
    assert row["created_at"] == 1_700_000_000.0
    assert row["created_at_utc"] == "2023-11-14T22:13:20.000Z"
    assert row["metadata"] == '{"a":[2],"b":1}'
    assert row["row_hash"] == row_hash("access", dict(row))


async def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    await j.append(access_event())
    await j.close()
    j = await Journal.open(path)
    assert j.head_seq == 1 and j.tail_problem is None
    assert await j.append(audit_event()) == 2
    await j.close()
    assert verify(path).ok


async def test_append_after_close_is_refused(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "j.sqlite3")
    await j.close()
    with pytest.raises(JournalError, match="closed"):
        await j.append(access_event())


async def test_close_drains_pending_appends(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "j.sqlite3")
    tasks = [asyncio.create_task(j.append(access_event())) for _ in range(50)]
    await asyncio.sleep(0)
    await j.close()
    assert sorted([t.result() for t in tasks]) == list(range(1, 51))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: access_event(event_type="teleport"), "event_type"),
        (lambda: access_event(direction="up"), "direction"),
        (lambda: access_event(event_id="not-a-uuid"), "event_id"),
        (lambda: access_event(tenant_id=""), "tenant_id"),
        (lambda: access_event(created_at=float("nan")), "created_at"),
        (lambda: access_event(confidence_score="high"), "confidence_score"),
        (lambda: access_event(rules_version=True), "rules_version"),
        (lambda: access_event(vehicle_plate="X" * 5000), "vehicle_plate"),
        (lambda: access_event(vehicle_plate="\ud800"), "vehicle_plate"),
        (lambda: access_event(metadata={"x": object()}), "metadata"),
        (lambda: access_event(metadata={"x": "y" * 70_000}), "metadata"),
        (lambda: access_event(snapshot_path="../../etc/passwd"), "snapshot_path"),
        (lambda: audit_event(status="meh"), "status"),
        (lambda: audit_event(actor_type=None), "actor_type"),
        (lambda: "not an event", "cannot journal"),
    ],
)
async def test_bad_events_get_a_clear_error_and_write_nothing(
    journal: Journal, make, match
) -> None:
    good = asyncio.create_task(journal.append(access_event()))
    with pytest.raises(JournalError, match=match):
        await journal.append(make())
    assert await good == 1
    assert await journal.append(audit_event()) == 2


async def test_duplicate_event_id_fails_alone_inside_a_batch(journal: Journal) -> None:
    first = access_event()
    await journal.append(first)
    again = access_event(event_id=first.event_id)
    results = await asyncio.gather(
        journal.append(access_event()),
        journal.append(again),
        journal.append(audit_event()),
        return_exceptions=True,
    )
    assert isinstance(results[1], JournalError) and "already in the journal" in str(results[1])
    assert sorted(r for r in results if isinstance(r, int)) == [2, 3]
    await journal.close()
    assert verify(journal.path).ok


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    plate=st.text(max_size=40),
    name=st.one_of(st.none(), st.text(max_size=20)),
    meta=st.dictionaries(
        st.text(max_size=8),
        st.one_of(
            st.integers(-(2**60), 2**60),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=8),
            st.booleans(),
            st.none(),
        ),
        max_size=4,
    ),
)
def test_any_text_either_journals_and_verifies_or_is_refused(
    tmp_path_factory, plate, name, meta
) -> None:
    path = tmp_path_factory.mktemp("h") / "j.sqlite3"

    async def run() -> None:
        j = await Journal.open(path)
        with contextlib.suppress(JournalError):
            await j.append(access_event(vehicle_plate=plate, visitor_name=name, metadata=meta))
        await j.append(audit_event())
        await j.close()

    asyncio.run(run())
    assert verify(path).ok


# --- queries --------------------------------------------------------------------------------


async def test_recent_newest_first_per_stream_and_all(journal: Journal) -> None:
    for i in range(5):
        await journal.append(access_event() if i % 2 else audit_event())
    everything = await journal.recent("all", 3)
    assert [r["seq"] for r in everything] == [5, 4, 3]
    assert [r["stream"] for r in everything] == ["audit", "access", "audit"]
    assert [r["seq"] for r in await journal.recent("access", 10)] == [4, 2]
    assert "pii_salt" not in everything[0]
    with pytest.raises(JournalError, match="stream"):
        await journal.recent("bogus")


async def test_pass_uses_counts_entries_and_survives_retention(journal: Journal) -> None:
    await journal.append(access_event(pass_id="p1", event_type="visitor_entry"))
    await journal.append(access_event(pass_id="p1", event_type="exit", direction="out"))
    await journal.append(access_event(pass_id="p1", event_type="denied"))
    await journal.append(access_event(pass_id="p1", event_type="entry"))
    await journal.append(access_event(pass_id="p2", event_type="visitor_entry"))
    # exits and denials never use a pass up
    assert await journal.pass_uses() == {"p1": 2, "p2": 1}
    synced = [r["event_id"] for r in await journal.unsynced("access", 10)]
    await journal.mark_synced("access", synced)
    pruned = await journal.prune(older_than=2e9)
    assert pruned.rows == 4  # the newest row always stays
    assert await journal.pass_uses() == {"p1": 2, "p2": 1}


async def test_last_passages_by_seq_not_timestamp(journal: Journal) -> None:
    await journal.append(
        access_event(resident_id="r1", vehicle_id="v1", direction="in", created_at=2000.0)
    )
    # Clock stepped back: the later event has an older timestamp but is still the last.
    await journal.append(
        access_event(
            resident_id="r1", vehicle_id="v1", direction="out", event_type="exit", created_at=1500.0
        )
    )
    await journal.append(
        access_event(resident_id="r1", direction="in", event_type="denied", created_at=2500.0)
    )
    await journal.append(
        access_event(resident_id="r2", vehicle_id=None, direction="in", created_at=100.0)
    )
    await journal.append(
        access_event(resident_id="host", vehicle_id=None, pass_id="p9", direction="in",
                     event_type="visitor_entry", created_at=3000.0)
    )
    await journal.append(
        access_event(resident_id="r3", vehicle_id=None, direction="in", created_at=3001.0)
    )
    passages = await journal.last_passages(since=1000.0)
    # subjects as policy.subject_for picks them: vehicle, else pass, else resident
    assert passages == {"v1": ("out", 1500.0), "p9": ("in", 3000.0), "r3": ("in", 3001.0)}


async def test_unsynced_and_mark_synced(journal: Journal) -> None:
    events = [access_event() if i % 2 else audit_event() for i in range(6)]
    for e in events:
        await journal.append(e)
    access = await journal.unsynced("access", 10)
    assert [r["seq"] for r in access] == [2, 4, 6]
    assert [r["seq"] for r in await journal.unsynced("access", 10, after_seq=2)] == [4, 6]
    assert await journal.mark_synced("access", [access[0]["event_id"], "unknown-id"]) == 1
    assert await journal.mark_synced("access", [access[0]["event_id"]]) == 0
    assert [r["seq"] for r in await journal.unsynced("access", 10)] == [4, 6]
    assert [r["seq"] for r in await journal.unsynced("audit", 2)] == [1, 3]
    await journal.close()
    assert verify(journal.path).ok  # sync state is outside the hash


# --- erasure ----------------------------------------------------------------------------------


async def test_lawful_erasure_keeps_the_chain_verifiable(journal: Journal) -> None:
    await journal.append(access_event(vehicle_plate="XX-99-YY", visitor_name="Ann"))
    await journal.append(access_event(vehicle_plate="OTHER1"))
    await journal.append(audit_event(ip_address="198.51.100.4"))
    await journal.append(access_event(vehicle_plate="XX-99-YY"))
    request = audit_event(
        action="erase_personal",
        resource_type="person",
        actor_type="guard",
        actor_id="admin",
        ip_address=None,
        user_agent=None,
        metadata={"reason": "data subject request"},
    )
    erasure = await journal.erase_personal(request, plate="XX-99-YY", ip_address="198.51.100.4")
    assert erasure.erased_seqs == (1, 3, 4) and erasure.audit_seq == 5
    access = rows(journal.path, "access_logs")
    assert [r["vehicle_plate"] for r in access] == [None, "OTHER1", None]
    assert access[0]["visitor_name"] is None and access[0]["vehicle_plate_digest"] is not None
    assert access[0]["pii_salt"] is None
    (record,) = [r for r in await journal.recent("audit", 5) if r["seq"] == 5]
    assert record["metadata"]["journal.erased_seqs"] == [1, 3, 4]
    await journal.close()
    result = verify(journal.path)
    assert result.ok, result.message
    assert result.erased_rows == 3


async def test_erasure_needs_a_request_and_a_selector(journal: Journal) -> None:
    with pytest.raises(JournalError):
        await journal.erase_personal(
            audit_event(),
        )
    with pytest.raises(JournalError):
        await journal.erase_personal("please", plate="X")  # type: ignore[arg-type]


# --- retention ---------------------------------------------------------------------------------


async def test_prune_deletes_oldest_synced_first_and_stops_at_unsynced(journal: Journal) -> None:
    for i in range(10):
        await journal.append(access_event(created_at=1000.0 + i, snapshot_path=f"x/{i}.jpg"))
    ids = [r["event_id"] for r in await journal.unsynced("access", 10)]
    await journal.mark_synced("access", ids[:4] + ids[5:])  # seq 5 stays unsynced
    pruned = await journal.prune(older_than=1008.0)
    assert (pruned.rows, pruned.through_seq, pruned.unsynced_rows) == (4, 4, 0)
    assert pruned.snapshot_paths == tuple(f"x/{i}.jpg" for i in range(4))
    assert pruned.audit_seqs == (11,)
    assert rows(journal.path, "access_logs")[0]["seq"] == 5
    # Nothing more can go while seq 5 is unsynced (oldest first, contiguous).
    assert (await journal.prune(older_than=1008.0)).rows == 0
    forced = await journal.prune(older_than=1008.0, keep_unsynced=False)
    assert (forced.rows, forced.through_seq, forced.unsynced_rows) == (4, 8, 1)
    await journal.close()
    result = verify(journal.path)
    assert result.ok, result.message
    assert result.checkpoint_seq == 8


async def test_prune_in_small_batches_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    for _ in range(30):
        await j.append(audit_event(created_at=10.0))
    await j.mark_synced("audit", [r["event_id"] for r in await j.unsynced("audit", 100)])
    pruned = await j.prune(older_than=20.0, batch=7, now=5000.0)
    # The first pass chains a newer record, so even the last old row can go afterwards.
    assert pruned.rows == 30 and len(pruned.audit_seqs) == 5
    await j.close()
    j = await Journal.open(path)
    assert j.tail_problem is None
    await j.append(access_event())
    await j.close()
    assert verify(path).ok


# --- triggers and migrations -----------------------------------------------------------------


async def test_triggers_refuse_updates_and_deletes_outside_the_journal(journal: Journal) -> None:
    await journal.append(access_event())
    await journal.append(audit_event())
    conn = sqlite3.connect(journal.path)
    attempts = [
        "UPDATE access_logs SET vehicle_plate = 'NEW' WHERE seq = 1",
        "UPDATE access_logs SET vehicle_plate = NULL, visitor_name = NULL, pii_salt = NULL",
        "UPDATE access_logs SET event_type = 'denied'",
        "UPDATE audit_logs SET status = 'failure'",
        "DELETE FROM access_logs",
        "DELETE FROM audit_logs",
        "UPDATE journal_checkpoint SET seq = 5",
        "DELETE FROM journal_checkpoint",
        "INSERT INTO audit_logs SELECT * FROM audit_logs WHERE 0",  # harmless, allowed
    ]
    for sql in attempts[:-1]:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(sql)
    conn.execute("UPDATE access_logs SET synced_at = 1.0")  # sync state may change
    conn.commit()
    # Synced but no retention pass running: still refused.
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM access_logs")
    conn.close()


def test_migrations_apply_in_order_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    mig = tmp_path / "mig"
    mig.mkdir()
    (mig / "001_init.sql").write_text("CREATE TABLE a (x INTEGER);")
    (mig / "002_more.sql").write_text("ALTER TABLE a ADD COLUMN y TEXT;")
    (mig / "README").write_text("not a migration")
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    assert migrate(conn, mig) == 2
    assert migrate(conn, mig) == 2  # idempotent
    assert [r[1] for r in conn.execute("PRAGMA table_info(a)")] == ["x", "y"]
    (mig / "003_bad.sql").write_text("ALTER TABLE nope ADD COLUMN z;")
    with pytest.raises(JournalError, match=r"003_bad\.sql"):
        migrate(conn, mig)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.execute("PRAGMA user_version = 9")
    with pytest.raises(JournalError, match="newer"):
        migrate(conn, mig)
    (mig / "005_gap.sql").write_text("SELECT 1;")
    with pytest.raises(JournalError, match="numbered"):
        migrate(conn, mig)


async def test_open_refuses_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="cannot open journal"):
        await Journal.open(path)


async def test_tail_problem_is_reported_at_open(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    for _ in range(3):
        await j.append(access_event())
    await j.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER access_logs_append_only_update")
    conn.execute("UPDATE access_logs SET access_point = 'side' WHERE seq = 3")
    conn.commit()
    conn.close()
    j = await Journal.open(path)
    assert j.tail_problem is not None and "seq 3" in j.tail_problem
    await j.close()


async def test_cancelled_append_is_still_journaled(journal: Journal) -> None:
    event = access_event()
    task = asyncio.create_task(journal.append(event))
    await asyncio.sleep(0)
    task.cancel()
    assert await journal.append(audit_event()) == 2
    assert [r["event_id"] for r in await journal.recent("access", 5)] == [event.event_id]


async def test_append_many_returns_seqs_in_order_across_chunks(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "j.sqlite3", max_batch=4)
    events = [access_event() if i % 2 else audit_event() for i in range(11)]
    assert await j.append_many(events) == list(range(1, 12))
    with pytest.raises(JournalError, match="event_type"):
        await j.append_many([access_event(), access_event(event_type="bogus")])
    assert j.head_seq == 11  # validated before anything was queued
    await j.close()
    assert verify(tmp_path / "j.sqlite3").ok


async def test_erasure_by_event_id_and_visitor_name(journal: Journal) -> None:
    target = access_event(vehicle_plate=None, visitor_name="Bob")
    await journal.append(target)
    audit = audit_event()
    await journal.append(audit)
    await journal.append(access_event(visitor_name="Carol"))
    request = audit_event(action="erase_personal", actor_type="installer")
    erasure = await journal.erase_personal(request, visitor_name="Bob", event_ids=[audit.event_id])
    assert erasure.erased_seqs == (1, 2)
    recent = {r["seq"]: r for r in await journal.recent("all", 10)}
    assert recent[1]["visitor_name"] is None and recent[2]["ip_address"] is None
    assert recent[3]["visitor_name"] == "Carol"
    await journal.close()
    assert verify(journal.path).ok


async def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    await j.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(JournalError, match="newer"):
        await Journal.open(path)
