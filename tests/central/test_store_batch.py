"""One ingest transaction over several devices of a tenant: each device judged as on its own."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from gated.central.admin import enrol_device
from gated.central.store import DevicesBusy, Store
from tests.support.device_sim import SimDevice
from tests.support.postgres import SERVICE, PgServer


def _rows(server: PgServer, db: str, sql: str) -> list[tuple[Any, ...]]:
    with server.connect(db) as conn:  # superuser: sees every tenant
        return conn.execute(sql).fetchall()


def test_devices_of_one_batch_are_linked_forked_and_refused_each_on_their_own(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    plain, gappy, poisoned_gate = (SimDevice("acme", "hq", f"gate-{i}") for i in (1, 2, 3))
    stranger = SimDevice("acme", "hq", "gate-7")  # enrolled, but under another tenant
    for d in (plain, gappy, poisoned_gate):
        enrol_device(owner, d.tenant_id, d.device_id, d.site_id, d.public_b64)
    enrol_device(owner, "globex", "gate-7", "hq", stranger.public_b64)
    plain_events = [plain.event("access" if i % 2 else "audit") for i in range(5)]
    gappy_first = [gappy.event() for _ in range(3)]
    gappy_bad = gappy.event(prev_hash="f" * 64)
    before = poisoned_gate.event()
    poisoned = poisoned_gate.event(vehicle_plate="AB\u0000CD")
    after = poisoned_gate.event()
    uploads = {
        "gate-1": (plain_events, []),
        "gate-2": ([*gappy_first[:2], gappy_bad], []),  # seq 3 missing: no verdict yet
        "gate-3": ([before, poisoned, after], []),
        "gate-7": ([stranger.event()], []),
    }
    out = store.ingest_tenant("acme", uploads)
    assert sorted(out["gate-1"].stored) == sorted(e["id"] for e in plain_events)
    assert len(out["gate-2"].stored) == 3
    assert sorted(out["gate-3"].stored) == sorted([before["id"], after["id"]])
    assert [r["id"] for r in out["gate-3"].rejected] == [poisoned["id"]]
    assert out["gate-3"].rejected[0]["retryable"] is False
    # row-level security hides the other tenant's device: answered as not enrolled, retryable
    assert out["gate-7"].stored == [] and out["gate-7"].rejected[0]["retryable"] is True
    assert dict(_rows(pg_server, pg_db, "SELECT device_id, chain_seq FROM devices "
                                        "WHERE tenant_id = 'acme'")) == {
        "gate-1": 5, "gate-2": 2, "gate-3": 1}

    late = store.ingest_tenant("acme", {"gate-2": (gappy_first[2:], []),
                                        "gate-1": (plain_events, [])})
    assert late["gate-1"].stored == [] and len(late["gate-1"].duplicate) == 5
    assert any("prev_hash does not link" in a for a in late["gate-2"].alerts)
    assert late["gate-1"].alerts == []
    assert sorted(_rows(pg_server, pg_db, "SELECT device_id, chain_seq, forked FROM devices "
                                          "WHERE tenant_id = 'acme'")) == [
        ("gate-1", 5, False), ("gate-2", 3, True), ("gate-3", 1, False)]
    assert _rows(pg_server, pg_db, "SELECT count(*) FROM event_ids WHERE tenant_id = 'globex'"
                 ) == [(0,)]
    assert _rows(pg_server, pg_db, "SELECT count(*), count(DISTINCT event_id) FROM event_ids"
                 ) == [(11, 11)]


def test_a_device_locked_elsewhere_is_busy_without_waiting_and_nothing_is_stored(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, gate.tenant_id, gate.device_id, gate.site_id, gate.public_b64)
    events = [gate.event() for _ in range(3)]
    with pg_server.connect(pg_db, SERVICE, autocommit=False) as other:
        other.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
        assert other.execute("SELECT 1 FROM devices WHERE device_id = 'gate-1' FOR UPDATE"
                             ).fetchall() == [(1,)]
        with pytest.raises(DevicesBusy):
            store.ingest_tenant("acme", {"gate-1": (events, [])}, wait=False)
        assert _rows(pg_server, pg_db, "SELECT count(*) FROM event_ids") == [(0,)]
        other.rollback()
    out = store.ingest_tenant("acme", {"gate-1": (events, [])}, wait=False)
    assert len(out["gate-1"].stored) == 3


def test_rows_in_order_are_linked_as_they_are_inserted(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", gate.public_b64)
    first = [gate.event("access" if i % 3 else "audit") for i in range(6)]
    out = store.ingest_tenant("acme", {"gate-1": (first, [])})
    assert sorted(out["gate-1"].stored) == sorted(e["id"] for e in first)
    second = [gate.event() for _ in range(4)]
    store.ingest_tenant("acme", {"gate-1": (second, [])})
    assert _rows(pg_server, pg_db, "SELECT chain, count(*) FROM event_ids GROUP BY chain") == [
        ("linked", 10)]
    assert _rows(pg_server, pg_db, "SELECT chain_seq, chain_hash FROM devices") == [
        (10, second[-1]["data"]["row_hash"])]
    # the staging tables are the session's own and empty after each commit
    with store.pool.connection() as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema() "
            "AND relname LIKE 'gated_stage_%'").fetchall()]
        assert len(tables) == 2
        for table in tables:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_a_row_reusing_a_stored_id_is_not_linked_past_the_prefix(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    """A re-used id is a duplicate, so the rows after it do not link to what it claimed."""
    gate = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", gate.public_b64)
    stored = [gate.event(), gate.event()]
    store.ingest_tenant("acme", {"gate-1": (stored, [])})
    reused = gate.event(event_id=stored[1]["id"])  # seq 3, claims seq 2's id
    after = gate.event()
    out = store.ingest_tenant("acme", {"gate-1": ([reused, after], [])})
    assert out["gate-1"].duplicate == [reused["id"]] and out["gate-1"].stored == [after["id"]]
    assert _rows(pg_server, pg_db, "SELECT seq, chain FROM event_ids ORDER BY seq") == [
        (1, "linked"), (2, "linked"), (4, "unlinked")]
    assert _rows(pg_server, pg_db, "SELECT chain_seq FROM devices") == [(2,)]
    assert _rows(pg_server, pg_db, "SELECT count(*) FROM access_logs") == [(3,)]


def test_two_devices_sending_one_id_store_it_once(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    one, two = SimDevice("acme", "hq", "gate-1"), SimDevice("acme", "hq", "gate-2")
    for gate in (one, two):
        enrol_device(owner, "acme", gate.device_id, "hq", gate.public_b64)
    event = one.event()
    copy = two.event(event_id=event["id"])
    out = store.ingest_tenant("acme", {"gate-1": ([event], []), "gate-2": ([copy], [])})
    assert len(out["gate-1"].stored + out["gate-2"].stored) == 1
    assert len(out["gate-1"].duplicate + out["gate-2"].duplicate) == 1
    assert _rows(pg_server, pg_db, "SELECT count(*) FROM access_logs") == [(1,)]
    assert _rows(pg_server, pg_db, "SELECT count(*) FROM event_ids") == [(1,)]


def test_an_impossible_time_is_refused_alone(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    """A schema-valid number no timestamp can hold refuses that event, not the batch."""
    gate = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", gate.public_b64)
    before = gate.event()
    far = gate.event(created_at=1e300)
    after = gate.event(captured_at=-1e300)
    last = gate.event()
    out = store.ingest_tenant("acme", {"gate-1": ([before, far, after, last], [])})["gate-1"]
    assert sorted(out.stored) == sorted([before["id"], last["id"]])
    assert sorted(r["id"] for r in out.rejected) == sorted([far["id"], after["id"]])
    assert all(not r["retryable"] for r in out.rejected)
    assert _rows(pg_server, pg_db, "SELECT count(*) FROM access_logs") == [(2,)]
