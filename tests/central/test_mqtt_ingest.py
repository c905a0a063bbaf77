"""MQTT ingest through the shipped broker ACL: stored once, acked after the commit, hostile
messages refused without stopping the service, a device confined to its own identity."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gated.central.admin import enrol_device
from gated.central.ingest_mqtt import MqttIngest, MqttSettings
from gated.central.store import Store
from gated.sync.envelope import encode
from tests.central.conftest import USERS, AclBroker
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until check() is truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"not reached in {timeout} s: {value!r}"
            return value
        time.sleep(0.05)


class Gate:
    """A device's MQTT client (its own broker account), collecting the acks it gets."""

    def __init__(self, broker: AclBroker, sim: SimDevice) -> None:
        self.sim = sim
        self.acks: list[dict[str, Any]] = []
        self.ready = threading.Event()
        user = f"{sim.tenant_id}/{sim.device_id}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_connect = lambda c, *a: c.subscribe(sim.prefix + "acks", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload)["data"])
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def send(self, event: Any, topic: str | None = None) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        payload = event if isinstance(event, bytes) else encode(event)
        self.client.publish(topic or self.sim.prefix + "events", payload, qos=1).wait_for_publish(5)

    def acked(self, key: str = "stored") -> set[str]:
        """Every id the service listed under `key` so far."""
        return {i for ack in self.acks for i in ack.get(key, [])}

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ingest(store: Store, acl_broker: AclBroker) -> Iterator[MqttIngest]:
    """One service instance on the broker, as the gated-service account."""
    running = MqttIngest(store, MqttSettings(
        host=acl_broker.host, port=acl_broker.port, username="gated-service",
        password=USERS["gated-service"], client_id=f"gated-service-{uuid.uuid4().hex[:6]}")
    ).start()
    assert running.connected.wait(10)
    time.sleep(0.2)  # the SUBACK
    yield running
    running.stop()


def _count(server: PgServer, db: str, sql: str) -> int:
    with server.connect(db) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def test_events_are_stored_once_and_acked_after_the_commit(
        ingest: MqttIngest, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    gate = Gate(acl_broker, sim)
    events = [sim.event("access" if i % 4 else "audit") for i in range(40)]
    for event in events:
        gate.send(event)
    gate.send(sim.signed_head(), sim.prefix + "heads")
    ids = {e["id"] for e in events}
    eventually(lambda: ids <= gate.acked())
    assert eventually(lambda: [a for a in gate.acks if a.get("head_status") == "countersigned"])
    # redelivery: answered duplicate, nothing changes
    for event in events[:10]:
        gate.send(event)
    eventually(lambda: {e["id"] for e in events[:10]} <= gate.acked("duplicate"))
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 40
    assert _count(pg_server, pg_db, "SELECT count(*) FROM access_logs") == 30
    assert _count(pg_server, pg_db, "SELECT chain_seq FROM devices") == 40
    gate.close()


def test_hostile_messages_are_refused_and_the_service_keeps_running(
        ingest: MqttIngest, acl_broker: AclBroker, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    mine = SimDevice("acme", "hq", "gate-1")
    victim = SimDevice("globex", "hq", "gate-1")
    neighbour = SimDevice("acme", "hq", "gate-2")
    for sim in (mine, victim, neighbour):
        enrol_device(owner, sim.tenant_id, sim.device_id, sim.site_id, sim.public_b64)
    gate = Gate(acl_broker, mine)
    # the ACL: another tenant's and another device's topics are not this account's to write
    gate.send(victim.event(), victim.prefix + "events")
    gate.send(neighbour.event(), neighbour.prefix + "events")
    # on its own topic: other identities, garbage, wrong schema, oversized, forged head
    as_victim = victim.event()
    gate.send(as_victim)
    as_neighbour = neighbour.event()
    gate.send(as_neighbour)
    gate.send(b"\xff not json")
    gate.send(b"[1, 2, 3]")
    wrong = mine.event()
    del wrong["data"]["row_hash"]
    gate.send(wrong)
    gate.send(b'{"id": "x", "pad": "' + b"A" * 300_000 + b'"}')
    good = SimDevice("acme", "hq", "gate-1", key=mine.key)
    poisoned = good.event(vehicle_plate="AB\u0000CD")  # valid JSON no text column can hold
    gate.send(poisoned)
    valid = good.event()
    gate.send(valid)
    eventually(lambda: valid["id"] in gate.acked())
    refused = {r["id"]: r for a in gate.acks for r in a.get("rejected", [])}
    assert refused[as_victim["id"]]["retryable"] is False
    assert refused[as_neighbour["id"]]["retryable"] is False
    assert refused[wrong["id"]]["retryable"] is False
    assert refused[poisoned["id"]]["retryable"] is False
    assert _count(pg_server, pg_db, "SELECT count(*) FROM event_ids") == 1
    assert _count(pg_server, pg_db,
                  "SELECT count(*) FROM event_ids WHERE tenant_id = 'globex'") == 0
    assert ingest.stats.refused >= 6
    gate.close()
