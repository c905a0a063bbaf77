"""Batched events on the MQTT uplink (docs/protocol.md, section 5): a backlog goes as JSON
arrays of at most `mqtt_batch_max_events` events and `mqtt_batch_max_bytes` bytes, in seq
order, each event valid on its own; a live event goes alone as the plain event; `1` keeps
one event per message; broker-ack mode settles every id of a message on its PUBACK.

A tap subscribed on the real broker sees what the device published, message by message."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.config import parse_config
from gated.errors import ConfigError
from gated.journal import Journal
from gated.model import SiteIdentity
from gated.mqttlink import MqttLink
from gated.sync.envelope import access_or_audit, encode, source_of
from gated.sync.mqtt import MAX_BATCH_BYTES, MqttUplink
from gated.sync.service import SyncService
from tests.support.broker import mosquitto_broker
from tests.support.receiver import Receiver
from tests.support.schemas import validate_event
from tests.sync.conftest import (
    DEVICE,
    SITE,
    TENANT,
    KillableBroker,
    access_event,
    all_synced,
    auditor_for,
    eventually,
    journal_ids,
    stop_service,
    sync_config,
)

SHIPPED_BROKER_CONF = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "gated.conf"


class Tap:
    """A subscriber on the broker keeping every message published on a device's events."""

    def __init__(self, host: str, port: int, topic: str = f"gated/v1/{TENANT}/{DEVICE}/events"
                 ) -> None:
        self.messages: list[Any] = []  # each payload decoded: a dict or a list of dicts
        self.sizes: list[int] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="batch-tap")
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert ready.wait(10), "the tap did not subscribe"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(message.payload))
            self.sizes.append(len(message.payload))

    def events(self) -> list[dict[str, Any]]:
        """Every event seen, in arrival order (arrays flattened)."""
        with self._lock:
            return [e for m in self.messages for e in (m if isinstance(m, list) else [m])]

    def arrays(self) -> list[list[dict[str, Any]]]:
        """The batch messages seen."""
        with self._lock:
            return [m for m in self.messages if isinstance(m, list)]

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tap(broker: KillableBroker) -> Iterator[Tap]:
    t = Tap(broker.host, broker.port)
    yield t
    t.close()


def _check_messages(tap: Tap, max_events: int, max_bytes: int) -> None:
    """Every array within the bounds, in seq order; every event valid against its schema."""
    for message, size in zip(tap.messages, tap.sizes, strict=True):
        if isinstance(message, list):
            assert 2 <= len(message) <= max_events  # one event goes plain, never as [e]
            assert size <= max_bytes
            seqs = [e["gatedseq"] for e in message]
            assert seqs == sorted(seqs)
        else:
            assert isinstance(message, dict)
    for event in tap.events():
        validate_event(event)


async def test_a_backlog_goes_in_arrays_of_100_and_a_live_event_alone(
    tmp_path: Path, broker: KillableBroker, tap: Tap,
    receiver_factory: Callable[..., Receiver], journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    # ack_timeout_s long: a re-send would show up at the tap as a duplicate
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                      ack_timeout_s=60.0)
    n = 1000
    await journal.append_many([access_event(i) for i in range(n)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    backlog = await journal_ids(journal)
    await eventually(lambda: all_synced(journal), what="the backlog synced")
    await eventually(lambda: len(tap.events()) >= n, what="the backlog at the tap")
    seen = [e["id"] for e in tap.events()]
    assert len(seen) == len(set(seen)) == n  # nothing duplicated …
    assert set(seen) == backlog  # … nothing lost or foreign
    # the outbox hands batches of up to 500 rows, each packed into arrays of 100
    assert len(tap.messages) <= math.ceil(n / 100) + 2, [len(m) for m in tap.messages]
    assert len(tap.arrays()) >= math.ceil(n / 100) - 1
    _check_messages(tap, 100, 256 * 1024)
    assert service.transport.published == n
    assert service.transport.messages == len(tap.messages)

    before = len(tap.messages)
    await journal.append(access_event(n))  # a passage that just committed
    await eventually(lambda: len(tap.messages) > before, what="the live event")
    await eventually(lambda: all_synced(journal), what="the live event synced")
    await stop_service(service, task)
    live = tap.messages[before]
    assert isinstance(live, dict)  # the plain event, not an array of one
    validate_event(live)
    assert live["gatedseq"] == n + 1
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []


async def test_batch_max_events_1_sends_one_plain_event_per_message(
    tmp_path: Path, broker: KillableBroker, tap: Tap,
    receiver_factory: Callable[..., Receiver], journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                      ack_timeout_s=60.0, mqtt_batch_max_events=1)
    await journal.append_many([access_event(i) for i in range(150)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="every row synced")
    await eventually(lambda: len(tap.messages) >= 150, what="150 messages at the tap")
    await stop_service(service, task)
    assert len(tap.messages) == 150
    assert all(isinstance(m, dict) for m in tap.messages)  # a service without arrays copes
    _check_messages(tap, 1, 256 * 1024)
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.invalid == []


async def test_the_byte_bound_splits_and_a_larger_event_goes_alone(
    tmp_path: Path, broker: KillableBroker, tap: Tap,
    receiver_factory: Callable[..., Receiver], journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    bound = 8192
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                      ack_timeout_s=60.0, mqtt_batch_max_bytes=bound)
    rows = [access_event(i) for i in range(200)]
    big = access_event(999, metadata={"note": "x" * (bound + 100)})  # over the bound alone
    rows.insert(100, big)
    await journal.append_many(rows)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="every row synced")
    await eventually(lambda: len(tap.events()) >= 201, what="201 events at the tap")
    await stop_service(service, task)
    _check_messages(tap, 100, bound)
    arrays = tap.arrays()
    assert arrays and all(len(a) < 100 for a in arrays)  # the bytes bound, not the count
    alone = [m for m in tap.messages if isinstance(m, dict)]
    assert [m["id"] for m in alone if m["id"] == big.event_id] == [big.event_id]
    assert len(tap.events()) == 201
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.invalid == []


async def test_broker_ack_mode_settles_every_id_of_a_batch_on_its_puback(
    tmp_path: Path, broker: KillableBroker, tap: Tap,
    receiver_factory: Callable[..., Receiver], journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    receiver.ack_enabled = False  # only the broker's PUBACK can settle anything
    cfg = sync_config(tmp_path, broker=broker, ack="broker", ack_timeout_s=60.0)
    await journal.append_many([access_event(i) for i in range(450)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="PUBACKs")
    await stop_service(service, task)
    await eventually(lambda: len(tap.events()) >= 450, what="450 events at the tap")
    assert len(tap.messages) <= 7  # 450 rows in arrays of 100 (one outbox batch may split)
    assert len(tap.events()) == 450  # settled without a single re-send
    assert service.outbox.resent == 0
    expected = await journal_ids(journal)
    await eventually(lambda: receiver.ids(DEVICE) == expected, what="the receiver's copy")


class _Link:
    """An MqttLink stand-in recording what is published (for the exact byte arithmetic)."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def subscribe(self, *_args: Any, **_kwargs: Any) -> None:
        """Nothing to subscribe to."""

    def publish_nowait(self, _topic: str, payload: bytes, **_kwargs: Any) -> int:
        """Keep the payload."""
        self.payloads.append(payload)
        return len(self.payloads)


class _Outbox:
    batch_max_events = 500


def _rows(n: int) -> list[dict[str, Any]]:
    """Rows whose events all encode to the same length (fixed times, two-digit numbers)."""
    rows = []
    for i in range(10, 10 + n):
        event = access_event(i, created_at=1_800_000_000.25, captured_at=1_800_000_000.0)
        row = dataclasses.asdict(event)
        row.update(stream="access", seq=i, prev_hash="0" * 64, row_hash="1" * 64)
        rows.append(row)
    return rows


async def test_an_array_is_the_encoded_events_joined_and_fills_the_byte_bound() -> None:
    identity = SiteIdentity(TENANT, SITE, DEVICE)
    rows = _rows(30)
    alone = [encode(access_or_audit(r, source_of(identity))) for r in rows]
    assert len({len(a) for a in alone}) == 1
    bound = len(alone[0]) * 7 + 8  # exactly seven events: 7 parts, 6 commas, 2 brackets
    link = _Link()
    uplink = MqttUplink(link, _Outbox(), identity, batch_max_bytes=bound)  # type: ignore[arg-type]
    await uplink._send(rows)
    assert [len(json.loads(p)) for p in link.payloads] == [7, 7, 7, 7, 2]
    assert b"".join(link.payloads) == b"".join(
        b"[" + b",".join(alone[i:i + 7]) + b"]" for i in range(0, 30, 7))
    assert max(len(p) for p in link.payloads) == bound
    # one more byte of any event and it no longer fits: six to a message
    link.payloads.clear()
    uplink.batch_max_bytes = bound - 1
    await uplink._send(rows)
    assert [len(json.loads(p)) for p in link.payloads] == [6] * 5
    assert uplink.published == 60 and uplink.messages == 10


def _padded_row(seq: int, pad: int, identity: SiteIdentity) -> dict[str, Any]:
    event = access_event(seq, tenant_id=identity.tenant_id, device_id=identity.device_id,
                         metadata={"note": "x" * pad}, created_at=1_800_000_000.25,
                         captured_at=1_800_000_000.0)  # fixed: equal rows encode equally long
    row = dataclasses.asdict(event)
    row.update(stream="access", seq=seq, prev_hash="0" * 64, row_hash="1" * 64)
    return row


async def test_the_largest_batch_message_fits_the_shipped_brokers_packet_limit(
    tmp_path: Path
) -> None:
    # The shipped broker refuses a packet over max_packet_size by dropping the connection;
    # the device would send the same message again after every reconnect, for ever. So a
    # message at the top of mqtt_batch_max_bytes, on the longest topic, must fit the packet.
    limit = next(int(line.split()[1]) for line in SHIPPED_BROKER_CONF.read_text().splitlines()
                 if line.startswith("max_packet_size "))
    site = {"tenant_id": "t" * 64, "site_id": SITE, "device_id": "d" * 64}
    top = parse_config({"site": site, "sync": {"mqtt_batch_max_bytes": MAX_BATCH_BYTES}})
    with pytest.raises(ConfigError):
        parse_config({"site": site, "sync": {"mqtt_batch_max_bytes": MAX_BATCH_BYTES + 1}})
    identity = top.site.identity
    source = source_of(identity)
    # two events whose array is exactly MAX_BATCH_BYTES long: "[" e1 "," e2 "]"
    base = len(encode(access_or_audit(_padded_row(1, 0, identity), source)))
    first = _padded_row(1, (MAX_BATCH_BYTES - 3) // 2 - base, identity)
    rest = MAX_BATCH_BYTES - 3 - len(encode(access_or_audit(first, source)))
    second = _padded_row(2, rest - base, identity)
    with mosquitto_broker(tmp_path, f"max_packet_size {limit}") as broker:
        cfg = parse_config({"site": site, "sync": {"mqtt_batch_max_bytes": MAX_BATCH_BYTES},
                            "mqtt": {"host": broker.host, "port": broker.port,
                                     "reconnect_min_s": 0.05, "reconnect_max_s": 0.3}})
        assert cfg.mqtt is not None
        link = MqttLink(cfg.mqtt, "batch-device", name="sync")
        uplink = MqttUplink(link, _Outbox(), identity,  # type: ignore[arg-type]
                            batch_max_bytes=cfg.sync.mqtt_batch_max_bytes)
        tap = Tap(broker.host, broker.port, "gated/v1/+/+/events")
        task = asyncio.create_task(link.run())
        try:
            await eventually(link.subscribed.is_set, 10, "the link up")
            await uplink._send([first, second])
            assert uplink.messages == 1
            await eventually(lambda: tap.messages, 10, "the message at the tap")
            assert tap.sizes == [MAX_BATCH_BYTES]
            await asyncio.sleep(0.5)
            assert link.stats.disconnects == 0
            assert [e["id"] for e in tap.events()] == [first["event_id"], second["event_id"]]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            tap.close()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("mqtt_batch_max_events", 0, "sync.mqtt_batch_max_events: expected int >= 1"),
    ("mqtt_batch_max_events", 501, "sync.mqtt_batch_max_events: expected int <= 500"),
    ("mqtt_batch_max_bytes", 4095, "sync.mqtt_batch_max_bytes: expected int >= 4096"),
    ("mqtt_batch_max_bytes", MAX_BATCH_BYTES + 1,
     f"sync.mqtt_batch_max_bytes: expected int <= {MAX_BATCH_BYTES}"),
    ("mqtt_batch_max_events", "many", "sync.mqtt_batch_max_events: expected int, got str"),
])
def test_batch_bounds_outside_their_range_are_refused(key: str, value: Any,
                                                      message: str) -> None:
    site = {"tenant_id": TENANT, "site_id": SITE, "device_id": DEVICE}
    with pytest.raises(ConfigError) as err:
        parse_config({"site": site, "sync": {key: value}})
    assert message in str(err.value)
    cfg = parse_config({"site": site})
    assert (cfg.sync.mqtt_batch_max_events, cfg.sync.mqtt_batch_max_bytes) == (100, 262_144)
    top = parse_config({"site": site, "sync": {"mqtt_batch_max_events": 500,
                                               "mqtt_batch_max_bytes": MAX_BATCH_BYTES}})
    assert top.sync.mqtt_batch_max_events == 500
