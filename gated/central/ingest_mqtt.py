"""MQTT ingest: a shared subscription over every device's uplink, PUBACK only after the commit.

Several service instances join one shared-subscription group (`$share/{group}/…`), so the
broker spreads the devices' messages over them. Each instance keeps a persistent session
(clean_start false, a session expiry) and acknowledges manually: a message's PUBACK is
sent only after the PostgreSQL transaction that stored it committed, and the protocol's
`io.gated.ack.v1` (what the device marks rows synced by) is published at the same point.
A message that can never be stored (not JSON, wrong schema, another device's identity) is
refused in the ack with `retryable: false` when it has an id, logged, and PUBACKed so the
broker does not deliver it forever; the service keeps running.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg_pool import PoolTimeout

from gated.central.schemas import SchemaError, parse_json, validate, validate_event
from gated.central.store import DevicesBusy, Outcome, Store, Upload, dumps
from gated.central.witness import rfc3339

log = logging.getLogger("gated.central.mqtt")

UPLINK = ("events", "heads", "heartbeat", "status", "commands/result")
# an event is a few KiB and a batch message at most MAX_BATCH_EVENTS of them (the device's
# mqtt_batch_max_bytes is 256 KiB by default); anything near the broker's limit is hostile
MAX_MESSAGE = 1024 * 1024
MAX_BATCH_EVENTS = 500


@dataclass
class MqttSettings:
    """Where and how the service connects to the broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = ""
    client_id: str = "gated-central-1"
    group: str = "gated-central"
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    batch_max: int = 1000
    batch_wait_s: float = 0.02
    # a transaction's share of messages (a batch message carries up to 500 events): large
    # enough that a transaction's fixed cost (a dozen round trips, the commit) is small
    # beside its rows
    batch_max_bytes: int = 4 * 1024 * 1024
    # messages received and not yet stored, in bytes: beyond it the MQTT thread waits, so a
    # backlog stays queued at the broker instead of in this process's memory
    queue_max_bytes: int = 16 * 1024 * 1024
    # storing threads: while one waits for PostgreSQL another parses and validates the next
    # batch (psycopg releases the interpreter lock while it waits)
    workers: int = 2
    tls_ca_file: str = ""


@dataclass
class Stats:
    """Counters for tests, health and the benchmark."""

    received: int = 0
    refused: int = 0
    stored: int = 0
    duplicate: int = 0
    db_errors: int = 0
    refusals: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter (the storing threads share these)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class MqttIngest:
    """One service instance's MQTT consumer."""

    def __init__(self, store: Store, settings: MqttSettings) -> None:
        self.store = store
        self.settings = settings
        self.stats = Stats()
        self.connected = threading.Event()
        # one queue per storing thread; a device's messages always go to the same one, so
        # its events are stored in the order sent and a head after the events it covers
        self._queues: list[queue.Queue[mqtt.MQTTMessage | None]] = [
            queue.Queue() for _ in range(max(1, settings.workers))]
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._room = threading.Condition()
        self._queued_bytes = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if settings.tls_ca_file:
            client.tls_set(ca_certs=settings.tls_ca_file)
        # the device side's window is 1,000; let the broker hand us as many before PUBACKs
        client.max_inflight_messages_set(2000)
        client.max_queued_messages_set(0)
        # paho's hint says int; it computes with floats, and 0.2 s keeps a broker restart short
        client.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    # --- life ---------------------------------------------------------------------------

    def start(self) -> MqttIngest:
        """Connect (in the background) and start the storing worker."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        # how many unacknowledged QoS 1 messages the broker may have in flight to us: wide
        # enough to fill a batch, bounded so a backlog stays queued at the broker
        props.ReceiveMaximum = 2000
        self.client.connect_async(self.settings.host, self.settings.port,
                                  keepalive=self.settings.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        for n, inbox in enumerate(self._queues):
            worker = threading.Thread(target=self._work, args=(inbox,),
                                      name=f"central-mqtt-store-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        """Stop taking messages; what is not stored yet is not PUBACKed (the broker keeps it)."""
        self._stop.set()
        for inbox in self._queues:
            inbox.put(None)
        for worker in self._workers:
            worker.join(30)
        self.client.disconnect()
        self.client.loop_stop()

    # --- paho callbacks (paho's thread) -------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any,
                    _props: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        group = self.settings.group
        client.subscribe([(f"$share/{group}/gated/v1/+/+/{name}", 1) for name in UPLINK])
        self.connected.set()
        log.info("connected to %s:%s as %s", self.settings.host, self.settings.port,
                 self.settings.client_id)

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        size = len(message.payload)
        with self._room:
            # Back-pressure: the broker's window (ReceiveMaximum) counts messages, and a batch
            # message is ~100 times a single event. Waiting here stops reading the socket;
            # the broker keeps the rest. A few seconds at most while PostgreSQL is well.
            while (self._queued_bytes > 0 and self._queued_bytes + size
                   > self.settings.queue_max_bytes and not self._stop.is_set()):
                self._room.wait(0.5)
            self._queued_bytes += size
        # gated/v1/{tenant}/{device}/…: the device's part of the topic picks the queue
        device = message.topic.split("/", 4)[2:4]
        self._queues[zlib.crc32("/".join(device).encode()) % len(self._queues)].put(message)

    def _stored(self, batch: list[mqtt.MQTTMessage]) -> None:
        """A batch is done with: its bytes no longer count against the queue bound."""
        with self._room:
            self._queued_bytes -= sum(len(m.payload) for m in batch)
            self._room.notify_all()

    # --- the worker ---------------------------------------------------------------------

    def _work(self, inbox: queue.Queue[mqtt.MQTTMessage | None]) -> None:
        while not self._stop.is_set():
            first = inbox.get()
            if first is None:
                return
            batch = [first]
            size = len(first.payload)
            deadline = time.monotonic() + self.settings.batch_wait_s
            while len(batch) < self.settings.batch_max and size < self.settings.batch_max_bytes:
                left = deadline - time.monotonic()
                try:
                    more = inbox.get(timeout=max(left, 0)) if left > 0 else (
                        inbox.get_nowait())
                except queue.Empty:
                    break
                if more is None:
                    self._stop.set()
                    break
                batch.append(more)
                size += len(more.payload)
            try:
                self._handle(batch)
            finally:
                self._stored(batch)

    def _handle(self, batch: list[mqtt.MQTTMessage]) -> None:
        """Store one batch, then ack each device and PUBACK each message."""
        groups: dict[tuple[str, str], dict[str, list[Any]]] = defaultdict(
            lambda: {"events": [], "heads": [], "rejected": []})
        done: list[mqtt.MQTTMessage] = []
        for message in batch:
            self.stats.count("received")
            parts = message.topic.split("/")
            # gated/v1/{tenant}/{device}/{kind…}; the broker's ACL bound the topic to the
            # authenticated username, so the topic is the device's proven identity
            if len(parts) < 5 or parts[:2] != ["gated", "v1"]:
                self._refuse(message, None, "topic outside gated/v1")
                done.append(message)
                continue
            tenant_id, device_id, kind = parts[2], parts[3], "/".join(parts[4:])
            try:
                self._route(message, tenant_id, device_id, kind, groups)
            except _Refused as err:
                if err.event_id:
                    groups[(tenant_id, device_id)]["rejected"].append(
                        {"id": err.event_id, "reason": err.reason, "retryable": False})
                self._refuse(message, err.event_id, err.reason)
            done.append(message)
        # one transaction per tenant per batch (the tenant is set per transaction for RLS)
        tenants: dict[str, dict[str, Upload]] = defaultdict(dict)
        for (tenant_id, device_id), group in groups.items():
            if group["events"] or group["heads"]:
                tenants[tenant_id][device_id] = (group["events"], group["heads"][-1:])
        # Another instance storing the same devices holds their rows locked: store the tenants
        # that are free first, in an order of this instance's own, and wait only at the end.
        order = list(tenants)
        random.shuffle(order)
        outcomes: dict[tuple[str, str], Outcome] = {}
        for wait in (False, True):
            busy = []
            for tenant_id in order:
                stored = self._store(tenant_id, tenants[tenant_id], wait=wait)
                if stored is None:
                    busy.append(tenant_id)
                    continue
                outcomes.update({(tenant_id, d): outcome for d, outcome in stored.items()})
            order = busy
        for (tenant_id, device_id), group in groups.items():
            outcome = outcomes.get((tenant_id, device_id)) or Outcome()
            outcome.rejected.extend(group["rejected"])
            if group["events"] or group["heads"] or group["rejected"]:
                self._ack(tenant_id, device_id, outcome)
        for message in done:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)

    def _route(self, message: mqtt.MQTTMessage, tenant_id: str, device_id: str, kind: str,
               groups: dict[tuple[str, str], dict[str, list[Any]]]) -> None:
        payload = bytes(message.payload)
        if len(payload) > MAX_MESSAGE:
            raise _Refused(None, f"{len(payload)} bytes is over {MAX_MESSAGE}")
        try:
            body = parse_json(payload)
        except ValueError as err:
            raise _Refused(None, "not JSON") from err
        if kind == "events" and isinstance(body, list):
            self._route_batch(body, tenant_id, device_id, groups)
            return
        event_id = _event_id(body)
        if kind == "status":
            try:
                validate("status", body)
            except SchemaError as err:
                raise _Refused(None, str(err)) from err
            if body["device_id"] != device_id:
                raise _Refused(None, "status names another device")
            self._with_db(lambda: self.store.status(tenant_id, device_id, body["status"]))
            return
        try:
            validate_event(body)
        except SchemaError as err:
            raise _Refused(event_id if kind == "events" else None, str(err)) from err
        expected = {"events": ("io.gated.access.v1", "io.gated.audit.v1"),
                    "heads": ("io.gated.head.v1",), "heartbeat": ("io.gated.heartbeat.v1",),
                    "commands/result": ("io.gated.command.result.v1",)}.get(kind, ())
        if body["type"] not in expected:
            raise _Refused(event_id if kind == "events" else None,
                           f"type {body['type']} on …/{kind}")
        source = body["source"]
        if not (source.startswith(f"gated://{tenant_id}/") and source.endswith(f"/{device_id}")):
            raise _Refused(event_id if kind == "events" else None,
                           "source is not the topic's device")
        if kind == "events":
            groups[(tenant_id, device_id)]["events"].append(body)
        elif kind == "heads":
            groups[(tenant_id, device_id)]["heads"].append(body)
        elif kind == "heartbeat":
            self._with_db(lambda: self.store.heartbeat(tenant_id, device_id, body["data"]))
        else:  # a command result (protocol 11.5), kept beside the command it answers
            if not self._with_db(lambda: self._keep_result(tenant_id, device_id, body)):
                raise _Refused(None, "command result refused (see the log)")

    def _route_batch(self, batch: list[Any], tenant_id: str, device_id: str,
                     groups: dict[tuple[str, str], dict[str, list[Any]]]) -> None:
        """A batch of events in one message (protocol section 5): each judged on its own."""
        if not 0 < len(batch) <= MAX_BATCH_EVENTS:
            raise _Refused(None, f"a batch of {len(batch)} events (1 to {MAX_BATCH_EVENTS})")
        group = groups[(tenant_id, device_id)]
        prefix = f"gated://{tenant_id}/"
        suffix = f"/{device_id}"
        for body in batch:
            event_id = _event_id(body)
            try:
                validate_event(body)
            except SchemaError as err:
                if event_id:
                    group["rejected"].append(_refusal(event_id, str(err)))
                self._refused(f"gated/v1/{tenant_id}/{device_id}/events", str(err))
                continue
            source = body["source"]
            if body["type"] not in _EVENT_TYPES or not (
                    source.startswith(prefix) and source.endswith(suffix)):
                reason = "not an access or audit event of the topic's device"
                if event_id:
                    group["rejected"].append(_refusal(event_id, reason))
                self._refused(f"gated/v1/{tenant_id}/{device_id}/events", reason)
                continue
            group["events"].append(body)

    def _store(self, tenant_id: str, uploads: dict[str, Upload],
               wait: bool = True) -> dict[str, Outcome] | None:
        try:
            outcomes: dict[str, Outcome] = self._with_db(
                lambda: self.store.ingest_tenant(tenant_id, uploads, wait=wait))
        except DevicesBusy:
            return None
        except _Refused:
            return {}  # nothing acked: the devices send these again
        for outcome in outcomes.values():
            self.stats.count("stored", len(outcome.stored))
            self.stats.count("duplicate", len(outcome.duplicate))
        return outcomes

    def _keep_result(self, tenant_id: str, device_id: str, body: dict[str, Any]) -> bool:
        from gated.central.downlink import record_result

        with self.store.pool.connection() as conn:
            return record_result(conn, tenant_id, device_id, body)

    def _with_db(self, action: Callable[[], Any]) -> Any:
        """Run a database step, retrying with a capped back-off until it commits.

        Nothing is PUBACKed meanwhile, so the broker keeps every message of the batch.
        """
        delay = 0.2
        while True:
            try:
                return action()
            except DevicesBusy:
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as err:
                # the database is away: hold the batch (no PUBACK, no ack) and try again
                self.stats.count("db_errors")
                log.warning("database step failed (%s); retrying in %.1f s", err, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
            except Exception as err:
                # Anything else would fail again on every retry and stall the instance. The
                # message is let go unacknowledged by the protocol: the device still holds
                # the event and sends it again after its ack_timeout_s.
                self.stats.count("db_errors")
                log.exception("database step failed for good: %s", err)
                raise _Refused(None, f"storage failed: {type(err).__name__}") from err

    def _ack(self, tenant_id: str, device_id: str, outcome: Outcome) -> None:
        body = outcome.answer()
        # an ack lists at most 10,000 ids per list (ack.json); batches are smaller
        data = {k: v for k, v in body.items() if v is not None or k == "head"}
        if not outcome.head:
            for key in ("head", "head_status", "head_seq", "head_reason"):
                data.pop(key, None)
        ack = {"specversion": "1.0", "id": str(uuid.uuid4()),
               "source": f"gated-service://{tenant_id}", "type": "io.gated.ack.v1",
               "time": rfc3339(time.time()), "datacontenttype": "application/json",
               "data": data}
        self.client.publish(f"gated/v1/{tenant_id}/{device_id}/acks", dumps(ack), qos=1)

    def _refuse(self, message: mqtt.MQTTMessage, event_id: str | None, reason: str) -> None:
        self._refused(message.topic, reason)

    def _refused(self, topic: str, reason: str) -> None:
        self.stats.count("refused")
        text = f"{topic}: {reason}"[:500]
        if len(self.stats.refusals) < 100:
            self.stats.refusals.append(text)
        log.warning("refused %s", text)


_EVENT_TYPES = ("io.gated.access.v1", "io.gated.audit.v1")


def _event_id(body: Any) -> str | None:
    """The message's id when it has a plausible one (to name it in a refusal)."""
    if isinstance(body, dict) and isinstance(body.get("id"), str) and len(body["id"]) <= 64:
        return str(body["id"])
    return None


def _refusal(event_id: str, reason: str) -> dict[str, Any]:
    return {"id": event_id, "reason": reason, "retryable": False}


class _Refused(Exception):
    def __init__(self, event_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.event_id, self.reason = event_id, reason
