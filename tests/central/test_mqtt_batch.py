"""MQTT ingest of batch messages (docs/protocol.md, section 5): a JSON array of events on
`…/events` is stored once and acked like single events, each event judged on its own, and
a malformed batch is refused without stopping the service."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gated.central.admin import enrol_device
from gated.central.ingest_mqtt import MqttIngest, MqttSettings
from gated.central.store import Store
from gated.sync.envelope import encode
from tests.central.conftest import USERS, AclBroker
from tests.central.test_mqtt_ingest import Gate, eventually
from tests.support.broker import mosquitto_broker
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer


def _start(store: Store, host: str, port: int, username: str = "",
           password: str = "") -> MqttIngest:
    running = MqttIngest(store, MqttSettings(
        host=host, port=port, username=username, password=password,
        client_id=f"gated-service-{uuid.uuid4().hex[:6]}")).start()
    assert running.connected.wait(10)
    time.sleep(0.2)  # the SUBACK
    return running


@pytest.fixture
def ingest(store: Store, acl_broker: AclBroker) -> Iterator[MqttIngest]:
    """One service instance on the shipped broker, as the gated-service account."""
    running = _start(store, acl_broker.host, acl_broker.port, username="gated-service",
                     password=USERS["gated-service"])
    yield running
    running.stop()


def batch(*events: dict[str, Any]) -> bytes:
    """A batch message as the device builds it: the encoded events joined."""
    return b"[" + b",".join(encode(e) for e in events) + b"]"


def _count(server: PgServer, db: str, sql: str) -> int:
    with server.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def _named(gate: Gate) -> set[str]:
    """Every id the service named in an ack, in any list."""
    return gate.acked("stored") | gate.acked("duplicate") | {
        r["id"] for ack in gate.acks for r in ack.get("rejected", [])}


def test_a_batch_message_is_stored_once_and_acked_and_redelivery_changes_nothing(
        ingest: MqttIngest, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    gate = Gate(acl_broker, sim)
    events = [sim.event("access" if i % 4 else "audit") for i in range(40)]
    message = batch(*events)
    gate.send(message)
    ids = {e["id"] for e in events}
    eventually(lambda: ids <= gate.acked())
    assert ingest.stats.received == 1 and ingest.stats.stored == 40
    gate.send(sim.signed_head(), sim.prefix + "heads")  # the chain checks out across it
    assert eventually(lambda: [a for a in gate.acks if a.get("head_status") == "countersigned"])
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 40
    assert _count(pg_server, pg_db, "SELECT count(*) FROM access_logs") == 30
    assert _count(pg_server, pg_db, "SELECT count(*) FROM audit_logs") == 10
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 40
    # redelivered (twice at once, as a broker may after a reconnect): answered duplicate
    first = gate.client.publish(sim.prefix + "events", message, qos=1)
    second = gate.client.publish(sim.prefix + "events", message, qos=1)
    first.wait_for_publish(5)
    second.wait_for_publish(5)
    eventually(lambda: ids <= gate.acked("duplicate"))
    assert ingest.stats.stored == 40
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 40
    assert _count(pg_server, pg_db, "SELECT count(*) FROM access_logs") == 30
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 40
    assert not [r for a in gate.acks for r in a.get("rejected", [])]
    gate.close()


def test_bad_events_in_a_batch_are_rejected_alone_and_the_rest_stored(
        ingest: MqttIngest, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    mine = SimDevice("acme", "hq", "gate-1")
    neighbour = SimDevice("acme", "hq", "gate-2")
    for sim in (mine, neighbour):
        enrol_device(owner, sim.tenant_id, sim.device_id, sim.site_id, sim.public_b64)
    gate = Gate(acl_broker, mine)
    stray = SimDevice("acme", "hq", "gate-1", key=mine.key, seq=500)  # off mine's chain
    wrong = stray.event()
    del wrong["data"]["row_hash"]  # fails the schema
    foreign = neighbour.event()  # another device's event on this device's topic
    head = mine.signed_head()  # valid, but not an access or audit event
    good = [mine.event(), mine.event("audit"), mine.event()]
    gate.send(batch(good[0], wrong, good[1], foreign, head, good[2]))
    good_ids = {e["id"] for e in good}
    eventually(lambda: good_ids <= gate.acked())
    refused = {r["id"]: r for a in gate.acks for r in a.get("rejected", [])}
    assert set(refused) == {wrong["id"], foreign["id"], head["id"]}
    assert all(r["retryable"] is False and r["reason"] for r in refused.values())
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 3
    assert _count(pg_server, pg_db,
                  "SELECT count(*) FROM event_ids WHERE device_id = 'gate-2'") == 0
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices WHERE device_id = 'gate-1'"
                  ) == 3
    assert ingest.stats.refused == 3
    gate.close()


def test_malformed_batches_are_refused_and_the_service_keeps_running(
        ingest: MqttIngest, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    mine = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", mine.public_b64)
    gate = Gate(acl_broker, mine)
    waste = SimDevice("acme", "hq", "gate-1", key=mine.key, seq=10_000)  # valid events
    too_many = [waste.event() for _ in range(501)]
    nested = [waste.event(), waste.event()]
    gate.send(b"[]")
    gate.send(batch(*too_many))
    gate.send(b"[1, 2, 3]")
    gate.send(b'["text", null, true]')
    gate.send(b"[" + batch(*nested) + b"]")
    good = [mine.event() for _ in range(5)]
    gate.send(batch(*good))
    eventually(lambda: {e["id"] for e in good} <= gate.acked())
    # refused as a whole (no event named), or each element for want of an id
    assert _named(gate) == {e["id"] for e in good}
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 5
    assert ingest.stats.received == 6
    assert ingest.stats.refused >= 5
    # still taking single events too
    single = mine.event()
    gate.send(single)
    eventually(lambda: single["id"] in gate.acked())
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 6
    gate.close()


def test_a_batch_over_1_mib_is_refused_by_the_service_itself(
        store: Store, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str,
        tmp_path: Path) -> None:
    # The shipped broker refuses such a packet before the service sees it (max_packet_size);
    # a broker configured without that limit hands it over, and the service must refuse it.
    mine = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", mine.public_b64)
    with mosquitto_broker(tmp_path / "plain") as broker:
        running = _start(store, broker.host, broker.port)
        try:
            gate = Gate(broker, mine)  # type: ignore[arg-type]
            waste = SimDevice("acme", "hq", "gate-1", key=mine.key, seq=10_000)
            big = [waste.event(metadata={"pad": "x" * 4000}) for _ in range(300)]
            message = batch(*big)
            assert len(message) > 1024 * 1024 and len(big) <= 500
            gate.send(message)
            good = [mine.event() for _ in range(3)]
            gate.send(batch(*good))
            eventually(lambda: {e["id"] for e in good} <= gate.acked())
            assert _named(gate) == {e["id"] for e in good}
            assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 3
            assert any("is over 1048576" in r for r in running.stats.refusals)
            gate.close()
        finally:
            running.stop()


def test_a_backlog_larger_than_the_queue_bound_waits_at_the_broker(
        store: Store, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    """With room for about one message, 30 batch messages are all stored, in order."""
    sim = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    messages = [batch(*(sim.event() for _ in range(10))) for _ in range(30)]
    running = MqttIngest(store, MqttSettings(
        host=acl_broker.host, port=acl_broker.port, username="gated-service",
        password=USERS["gated-service"], client_id=f"gated-service-{uuid.uuid4().hex[:6]}",
        queue_max_bytes=len(messages[0]) + 1)).start()
    try:
        assert running.connected.wait(10)
        time.sleep(0.2)  # the SUBACK
        seen = [0]
        done = threading.Event()

        def sample() -> None:  # the bytes held in the instance, as often as it can look
            while not done.is_set():
                seen[0] = max(seen[0], running._queued_bytes)
                time.sleep(0.0005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        gate = Gate(acl_broker, sim)
        for message in messages:
            gate.client.publish(sim.prefix + "events", message, qos=1)
        eventually(lambda: running.stats.stored == 300)
        done.set()
        sampler.join(5)
        assert seen[0] <= max(map(len, messages))  # never a second message beside the first
        assert running._queued_bytes == 0
        assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 300
        gate.close()
    finally:
        running.stop()
