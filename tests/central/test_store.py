"""Ingest into PostgreSQL: idempotency, identity checks, and the witness (forks, heads)."""

from __future__ import annotations

from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central.admin import enrol_device
from gated.central.store import Store
from gated.sync.signing import kid_of, verify
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer


def _enrol(owner: psycopg.Connection[Any], *devices: SimDevice) -> None:
    for d in devices:
        enrol_device(owner, d.tenant_id, d.device_id, d.site_id, d.public_b64)


def _count(server: PgServer, db: str, sql: str, *args: Any) -> int:
    with server.connect(db) as conn:  # superuser: sees every tenant
        return int(conn.execute(sql, args).fetchone()[0])  # type: ignore[index]


def test_a_redelivered_event_changes_nothing(store: Store, owner: psycopg.Connection[Any],
                                             pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    events = [gate.event("access"), gate.event("audit"), gate.event("access")]
    first = store.ingest("acme", "gate-1", events)
    assert sorted(first.stored) == sorted(e["id"] for e in events)
    assert first.rejected == [] and first.duplicate == []
    again = store.ingest("acme", "gate-1", events + events[:1])
    assert again.stored == [] and sorted(again.duplicate) == sorted(
        [e["id"] for e in events] + [events[0]["id"]])
    assert _count(pg_server, pg_db, "SELECT count(*) FROM access_logs") == 2
    assert _count(pg_server, pg_db, "SELECT count(*) FROM audit_logs") == 1
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 3


def test_events_naming_another_tenant_or_device_are_refused(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    mine = SimDevice("acme", "hq", "gate-1")
    other_device = SimDevice("acme", "hq", "gate-2")
    other_tenant = SimDevice("globex", "hq", "gate-1")
    _enrol(owner, mine, other_device, other_tenant)
    forged_data = mine.event()
    forged_data["data"]["tenant_id"] = "globex"
    outcome = store.ingest("acme", "gate-1",
                           [other_device.event(), other_tenant.event(), forged_data])
    assert outcome.stored == []
    assert [r["retryable"] for r in outcome.rejected] == [False, False, False]
    assert "source" in outcome.rejected[0]["reason"]
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 0


def test_a_tampered_row_is_refused(store: Store, owner: psycopg.Connection[Any]) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    event = gate.event()
    event["data"]["decision_reason"] = "rewritten"
    outcome = store.ingest("acme", "gate-1", [event])
    assert outcome.rejected[0]["reason"] == "row_hash does not recompute from the data"


def test_out_of_order_rows_link_and_a_head_is_countersigned(
        store: Store, owner: psycopg.Connection[Any], service_key: Ed25519PrivateKey) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    events = [gate.event("access" if i % 3 else "audit") for i in range(10)]
    head = gate.signed_head()
    early = store.ingest("acme", "gate-1", events[5:], [head])  # live lane first: a gap
    assert early.head["head_status"] == "pending"
    late = store.ingest("acme", "gate-1", events[:5], [head])
    assert late.head["head_status"] == "countersigned", late.head
    counter = late.head["head"]
    assert counter["seq"] == 10 and counter["row_hash"] == gate.head
    assert verify(counter, {kid_of(service_key): service_key.public_key()})


def test_a_rewritten_history_is_refused_alerted_and_provable(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    honest = [gate.event() for _ in range(5)]
    assert store.ingest("acme", "gate-1", honest, [gate.signed_head()]).head[
        "head_status"] == "countersigned"
    # the device's history is rebuilt from seq 3 on: new rows, re-signed by the device key
    forger = SimDevice("acme", "hq", "gate-1", key=gate.key, seq=2,
                       head=honest[1]["data"]["row_hash"])
    rewritten = [forger.event() for _ in range(4)]
    outcome = store.ingest("acme", "gate-1", rewritten, [forger.signed_head()])
    assert outcome.head["head_status"] == "refused"
    assert outcome.alerts, "the fork must be alerted"
    # kept as evidence, never linked; the witness stays at the honest head
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids WHERE chain = 'fork'") >= 3
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 5
    assert _count(pg_server, pg_db, "SELECT count(*) FROM audit_logs WHERE action = "
                  "'chain_fork_refused' AND origin = 'service' AND tenant_id = 'acme'") >= 1
    # two device-signed heads, one countersigned and one refused: the rewrite is provable
    assert _count(pg_server, pg_db, "SELECT count(DISTINCT status) FROM chain_heads") == 2


def test_a_gap_then_a_non_linking_row_is_a_fork(store: Store, owner: psycopg.Connection[Any],
                                                pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    first = [gate.event() for _ in range(3)]
    bad = gate.event(prev_hash="f" * 64)
    store.ingest("acme", "gate-1", [*first[:2], bad])  # seq 3 missing: no verdict yet
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 2
    outcome = store.ingest("acme", "gate-1", first[2:])
    assert any("prev_hash does not link" in a for a in outcome.alerts)
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 3
    assert _count(pg_server, pg_db, "SELECT count(*) FROM devices WHERE forked") == 1


def test_a_head_signed_by_another_key_is_refused(store: Store,
                                                 owner: psycopg.Connection[Any]) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    events = [gate.event() for _ in range(2)]
    forged = gate.signed_head(key=Ed25519PrivateKey.generate())
    outcome = store.ingest("acme", "gate-1", events, [forged])
    assert outcome.head["head_status"] == "refused"
    assert "signature" in outcome.head["head_reason"]


def test_an_unenrolled_device_is_answered_retryable(store: Store) -> None:
    gate = SimDevice("acme", "hq", "gate-9")
    outcome = store.ingest("acme", "gate-9", [gate.event()])
    assert outcome.stored == [] and outcome.rejected[0]["retryable"] is True


def test_an_event_postgresql_cannot_hold_is_refused_alone(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    gate = SimDevice("acme", "hq", "gate-1")
    _enrol(owner, gate)
    before = gate.event()
    poisoned = gate.event(vehicle_plate="AB\u0000CD", metadata={"k": "\u0000"})
    after = gate.event()
    outcome = store.ingest("acme", "gate-1", [before, poisoned, after])
    assert sorted(outcome.stored) == sorted([before["id"], after["id"]])
    assert [r["id"] for r in outcome.rejected] == [poisoned["id"]]
    assert outcome.rejected[0]["retryable"] is False
    assert _count(pg_server, pg_db, "SELECT count(*) FROM access_logs") == 2
