"""A reference receiver implementing the service side of docs/protocol.md, on loopback.

It is what the tests sync against: an aiohttp server (its own thread and event loop)
and a paho subscriber, storing events in SQLite keyed by id (duplicates counted,
never stored twice), checking the chain (seq contiguity, prev_hash links, row_hash
recomputed from the data as the protocol describes, forks), countersigning signed
heads with its service key, acking over MQTT only after its commit and over HTTP
in the 2xx body. Every message it receives is validated against the JSON Schemas;
failures are kept in `invalid` (tests assert it stays empty).

Hooks for other tests: `http_faults` (answers to inject), `routes` (extra aiohttp
handlers, e.g. GET rules / commands), `publish()` (publish to a device topic: commands,
retained rule announcements), `messages` (everything received, by topic).

Run as a process (for bench.sync): `python -m tests.support.receiver --mqtt-port N --db F`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import queue
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gated.sync.signing import canonical_json, kid_of, public_raw, sign, verify
from tests.support.schemas import validate, validate_event

GENESIS = "0" * 64
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]
Stored = tuple[list[str], list[str], list[dict[str, Any]]]
PERSONAL = {"access": ("vehicle_plate", "visitor_name"), "audit": ("ip_address", "user_agent")}
JSON_COLUMNS = ("metadata", "old_values", "new_values")
ADDED = {"access": ("captured_at", "gate_opened"), "audit": ()}


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recompute_row_hash(stream: str, data: dict[str, Any]) -> str:
    """row_hash from an event's data, exactly as docs/protocol.md section 8 says."""
    content: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("row_hash", "synced_at", "pii_salt") or key in PERSONAL[stream]:
            continue
        if key in JSON_COLUMNS and value is not None:
            value = canonical_json(value).decode("utf-8")
        content[key] = value
    if all(content.get(name) is None for name in ADDED[stream]):
        for name in ADDED[stream]:
            content.pop(name, None)
    content["stream"] = stream
    return hashlib.sha256(canonical_json(content)).hexdigest()


@dataclass
class Fault:
    """One injected HTTP answer, taken by the next request to a matching path."""

    kind: str  # "status", "hang", "close", "store_then", "reject"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    path: str = "/events"  # substring of the request path it applies to
    ids: frozenset[str] = frozenset()  # for "reject": refuse (422) a batch holding any of these


class Receiver:
    """The reference central service (one SQLite file, one service key)."""

    def __init__(self, db_path: Path | str, *, mqtt_host: str | None = None,
                 mqtt_port: int | None = None, http: bool = True,
                 service_key: Ed25519PrivateKey | None = None,
                 ack_batch: int = 500, validate_schemas: bool = True) -> None:
        self.db_path = Path(db_path)
        self.service_key = service_key or Ed25519PrivateKey.generate()
        self.device_keys: dict[str, Ed25519PublicKey] = {}
        self.mqtt_host, self.mqtt_port, self.http_enabled = mqtt_host, mqtt_port, http
        self.ack_batch = ack_batch
        # Off only for bench.sync, where a central service's throughput is not measured.
        self.validate_schemas = validate_schemas
        self.lock = threading.RLock()
        self.db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, device_id TEXT,"
            " seq INTEGER, stream TEXT, prev_hash TEXT, row_hash TEXT, data TEXT,"
            " received_at REAL);"
            "CREATE INDEX IF NOT EXISTS events_seq ON events (device_id, seq);"
            "CREATE TABLE IF NOT EXISTS snapshots (sha256 TEXT PRIMARY KEY, size INTEGER);"
            "CREATE TABLE IF NOT EXISTS heads (device_id TEXT PRIMARY KEY, seq INTEGER,"
            " row_hash TEXT, countersignature TEXT);")
        self.seen: Counter[str] = Counter()  # copies received of each event id
        self.invalid: list[str] = []  # schema or protocol violations seen
        self.forks: list[str] = []
        self.messages: defaultdict[str, list[bytes]] = defaultdict(list)
        self.statuses: list[tuple[str, dict[str, Any], bool]] = []  # (topic, body, retained)
        self.heartbeats: list[dict[str, Any]] = []
        self.heads_answered: list[dict[str, Any]] = []
        self.http_faults: list[Fault] = []
        self.http_requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.routes: list[tuple[str, str, Route]] = []  # added before start()
        self.on_message: list[Callable[[str, bytes, bool], None]] = []
        self.picture_states: dict[str, str | None] = {}  # event id -> gatedsnapshot
        self.arrivals: dict[str, float] = {}  # event id -> monotonic time first stored
        self.ack_enabled = True  # False: store but never ack over MQTT (a silent service)
        self._client: mqtt.Client | None = None
        self._work: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._http_thread: threading.Thread | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.http_port = 0
        self.connected = threading.Event()

    # --- keys -------------------------------------------------------------------------

    @property
    def service_public_b64(self) -> str:
        """The service public key as `[sync] service_public_keys` takes it."""
        return base64.b64encode(public_raw(self.service_key)).decode()

    def register_device(self, public: bytes | Ed25519PublicKey) -> None:
        """Accept heads signed by this device key."""
        key = public if isinstance(public, Ed25519PublicKey) else (
            Ed25519PublicKey.from_public_bytes(public))
        self.device_keys[kid_of(key)] = key

    # --- life ---------------------------------------------------------------------------

    def start(self) -> Receiver:
        self._worker = threading.Thread(target=self._work_loop, name="receiver-store",
                                        daemon=True)
        self._worker.start()
        if self.mqtt_port is not None:
            client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                 client_id=f"receiver-{uuid.uuid4().hex[:8]}",
                                 protocol=MQTTProtocolVersion.MQTTv5)
            client.max_inflight_messages_set(1000)
            client.on_connect = self._on_connect
            client.on_message = self._on_mqtt
            client.on_disconnect = lambda *a: self.connected.clear()
            client.reconnect_delay_set(0.1, 0.5)
            client.connect_async(self.mqtt_host or "127.0.0.1", self.mqtt_port, keepalive=10)
            client.loop_start()
            self._client = client
            if not self.connected.wait(10):
                raise RuntimeError("receiver could not connect to the broker")
        if self.http_enabled:
            started = threading.Event()
            self._http_thread = threading.Thread(target=self._http_main, args=(started,),
                                                 name="receiver-http", daemon=True)
            self._http_thread.start()
            if not started.wait(10):
                raise RuntimeError("receiver HTTP server did not start")
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
        if self._http_loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._http_loop).result(10)
            self._http_loop.call_soon_threadsafe(self._http_loop.stop)
            assert self._http_thread is not None
            self._http_thread.join(10)
        self._work.put(None)
        if self._worker is not None:
            self._worker.join(10)
        self.db.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    # --- what tests ask -------------------------------------------------------------------

    def ids(self, device_id: str | None = None) -> set[str]:
        with self.lock:
            if device_id is None:
                rows = self.db.execute("SELECT event_id FROM events").fetchall()
            else:
                rows = self.db.execute("SELECT event_id FROM events WHERE device_id = ?",
                                       (device_id,)).fetchall()
        return {r[0] for r in rows}

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    @property
    def duplicates_seen(self) -> int:
        return sum(self.seen.values()) - len(self.seen)

    def chain_problems(self, device_id: str) -> list[str]:
        """Everything wrong with the device's chain as stored (empty: intact from seq 1)."""
        problems: list[str] = []
        expect_seq, expect_prev = 1, GENESIS
        with self.lock:
            rows = self.db.execute("SELECT seq, stream, prev_hash, row_hash, data FROM events "
                                   "WHERE device_id = ? ORDER BY seq", (device_id,)).fetchall()
        for seq, stream, prev_hash, row_hash, data in rows:
            if seq != expect_seq:
                problems.append(f"seq {expect_seq}: missing (next stored is {seq})")
            elif prev_hash != expect_prev:
                problems.append(f"seq {seq}: prev_hash does not link")
            if recompute_row_hash(stream, json.loads(data)) != row_hash:
                problems.append(f"seq {seq}: row_hash does not recompute")
            expect_seq, expect_prev = seq + 1, row_hash
        return problems + self.forks

    def snapshot_hashes(self) -> set[str]:
        with self.lock:
            return {r[0] for r in self.db.execute("SELECT sha256 FROM snapshots")}

    def picture_state(self, event_id: str) -> str | None:
        """The event's picture as the service knows it (docs/protocol.md, section 7).

        "uploaded" once a PUT of the event's snapshot_sha256 was kept, whenever it came;
        otherwise the event's `gatedsnapshot` as sent (None: no picture).
        """
        with self.lock:
            row = self.db.execute("SELECT data FROM events WHERE event_id = ?",
                                  (event_id,)).fetchone()
        sha = json.loads(row[0]).get("snapshot_sha256") if row is not None else None
        if sha and sha in self.snapshot_hashes():
            return "uploaded"
        return self.picture_states.get(event_id)

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                qos: int = 1) -> None:
        """Publish on the broker as the service (commands, rule announcements)."""
        assert self._client is not None, "receiver has no MQTT connection"
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    # --- storing (one thread: the store worker) ----------------------------------------------

    def store(self, events: list[dict[str, Any]]) -> Stored:
        """Store access/audit events; (stored, duplicate, rejected) ids after the commit."""
        stored: list[str] = []
        duplicate: list[str] = []
        rejected: list[dict[str, Any]] = []
        now = time.monotonic()
        with self.lock:
            self.db.execute("BEGIN")
            for event in events:
                event_id = event["id"]
                self.seen[event_id] += 1
                self.picture_states[event_id] = event.get("gatedsnapshot")
                data = event["data"]
                device_id = event["source"].rsplit("/", 1)[-1]
                if data.get("event_id") != event_id or data.get("seq") != event.get("gatedseq"):
                    rejected.append({"id": event_id, "reason": "id or seq differs from data",
                                     "retryable": False})
                    continue
                try:
                    self.db.execute(
                        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (event_id, device_id, data["seq"], event["gatedstream"],
                         data["prev_hash"], data["row_hash"], json.dumps(data), time.time()))
                except sqlite3.IntegrityError:
                    duplicate.append(event_id)
                    continue
                other = self.db.execute(
                    "SELECT event_id FROM events WHERE device_id = ? AND seq = ? AND "
                    "event_id != ?", (device_id, data["seq"], event_id)).fetchone()
                if other is not None:
                    self.forks.append(f"seq {data['seq']}: two events ({other[0]}, {event_id})")
                stored.append(event_id)
                self.arrivals.setdefault(event_id, now)
            self.db.execute("COMMIT")
        return stored, duplicate, rejected

    def answer_head(self, head_event: dict[str, Any]) -> dict[str, Any]:
        """Check a signed head (section 8) and answer: countersigned, pending or refused."""
        head = head_event["data"]
        device_id = head["device_id"]
        answer: dict[str, Any] = {"head": None, "head_seq": head["seq"], "head_reason": None}
        try:
            verify(head, self.device_keys)
        except Exception as err:
            answer.update(head_status="refused", head_reason=f"signature: {err}")
            self.heads_answered.append(answer)
            return answer
        with self.lock:
            row = self.db.execute("SELECT row_hash FROM events WHERE device_id = ? AND seq = ?",
                                  (device_id, head["seq"])).fetchone()
            count = self.db.execute("SELECT count(DISTINCT seq) FROM events WHERE device_id = ?"
                                    " AND seq <= ?", (device_id, head["seq"])).fetchone()[0]
        if row is not None and row[0] != head["row_hash"]:
            answer.update(head_status="refused", head_reason="fork: row_hash differs at seq")
        elif count < head["seq"]:
            answer.update(head_status="pending", head_reason=f"{head['seq'] - count} rows missing")
        else:
            problems = [p for p in self.chain_problems(device_id)
                        if int(p.split()[1].rstrip(":")) <= head["seq"]]
            if problems:
                answer.update(head_status="refused", head_reason=problems[0])
            else:
                counter = sign({k: head[k] for k in ("device_id", "seq", "row_hash", "at")}
                               | {"countersigned_at": rfc3339(time.time())}, self.service_key)
                validate("countersignature", counter)
                with self.lock:
                    self.db.execute("INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
                                    (device_id, head["seq"], head["row_hash"],
                                     json.dumps(counter)))
                answer.update(head=counter, head_status="countersigned")
        self.heads_answered.append(answer)
        return answer

    def _check(self, event: dict[str, Any]) -> bool:
        if not self.validate_schemas:
            return True
        try:
            validate_event(event)
        except Exception as err:
            self.invalid.append(f"{event.get('type')}: {str(err)[:300]}")
            return False
        return True

    # --- MQTT -------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe([("gated/v1/+/+/events", 1), ("gated/v1/+/+/heads", 1),
                          ("gated/v1/+/+/heartbeat", 1), ("gated/v1/+/+/status", 1),
                          ("gated/v1/+/+/commands/result", 1)])
        self.connected.set()

    def _on_mqtt(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        self.messages[message.topic].append(payload)
        for hook in list(self.on_message):
            hook(message.topic, payload, bool(message.retain))
        if message.topic.endswith("/status"):
            try:
                body = json.loads(payload)
                validate("status", body)
                self.statuses.append((message.topic, body, bool(message.retain)))
            except Exception as err:
                self.invalid.append(f"status: {str(err)[:300]}")
            return
        if message.topic.endswith(("/events", "/heads", "/heartbeat")):
            self._work.put((message.topic, payload))

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            items = [item]
            while len(items) < self.ack_batch:
                try:
                    more = self._work.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._work.put(None)
                    break
                items.append(more)
            self._handle_mqtt_batch(items)

    def _handle_mqtt_batch(self, items: list[tuple[str, bytes]]) -> None:
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for topic, payload in items:
            prefix = topic.rsplit("/", 1)[0] + "/"
            try:
                body = json.loads(payload)
            except ValueError:
                self.invalid.append(f"{topic}: not JSON")
                continue
            # …/events may carry a batch: a JSON array of 1 to 500 events (protocol, 5)
            batch = body if topic.endswith("/events") and isinstance(body, list) else [body]
            if not 0 < len(batch) <= 500:
                self.invalid.append(f"{topic}: a batch of {len(batch)} events")
                continue
            for event in batch:
                if not isinstance(event, dict):
                    self.invalid.append(f"{topic}: not a JSON object")
                    continue
                if not self._check(event):
                    continue
                if topic.endswith("/events"):
                    events[prefix].append(event)
                elif topic.endswith("/heads"):
                    answers[prefix].append(event)
                else:
                    self.heartbeats.append(event)
        for prefix in set(events) | set(answers):
            stored, duplicate, rejected = self.store(events.get(prefix, []))
            head_answer: dict[str, Any] = {}
            for head in answers.get(prefix, []):
                head_answer = self.answer_head(head)
            if not self.ack_enabled:
                continue
            self._ack(prefix, {"stored": stored, "duplicate": duplicate, "rejected": rejected,
                               **head_answer})

    def _ack(self, prefix: str, data: dict[str, Any]) -> None:
        tenant = prefix.split("/")[2]
        ack = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": f"gated-service://{tenant}",
               "type": "io.gated.ack.v1", "time": rfc3339(time.time()),
               "datacontenttype": "application/json", "data": data}
        if self.validate_schemas:
            validate_event(ack)
        if self._client is not None:
            self._client.publish(prefix + "acks", json.dumps(ack), qos=1)

    # --- HTTP -------------------------------------------------------------------------------

    def _http_main(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._http_loop = loop
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/devices/{device_id}/events", self._post_events)
        app.router.add_post("/v1/devices/{device_id}/heads", self._post_heads)
        app.router.add_put("/v1/snapshots/{sha256}", self._put_snapshot)
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.http_port or 0)
        loop.run_until_complete(site.start())
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        loop.run_forever()
        loop.close()

    async def _fault(self, request: web.Request) -> tuple[Fault | None, web.StreamResponse | None]:
        self.http_requests.append((request.method, request.path, dict(request.headers)))
        for i, fault in enumerate(self.http_faults):
            if fault.path in request.path and fault.kind != "reject":
                del self.http_faults[i]
                break
        else:
            return None, None
        if fault.kind == "status":
            await request.read()
            return fault, web.Response(status=fault.status, headers=fault.headers,
                                       text="injected")
        if fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return fault, web.Response(status=503, text="hung")
        if fault.kind == "close":
            await request.content.read(10)
            assert request.transport is not None
            request.transport.close()  # connection closed mid-body, no answer
            return fault, web.Response(status=500)
        return fault, None  # store_then: handled by the caller

    async def _post_events(self, request: web.Request) -> web.StreamResponse:
        fault, early = await self._fault(request)
        if early is not None:
            return early
        if request.content_type != "application/cloudevents-batch+json":
            return web.json_response({"error": "content type"}, status=415)
        if not request.headers.get("Idempotency-Key"):
            self.invalid.append("POST events without Idempotency-Key")
        batch = json.loads(await request.read())
        try:
            validate("batch", batch)
        except Exception as err:
            self.invalid.append(f"batch: {str(err)[:300]}")
            return web.json_response({"error": "schema"}, status=422)
        if batch[0]["id"] != request.headers.get("Idempotency-Key"):
            self.invalid.append("Idempotency-Key is not the first event id")
        rejects = [f for f in self.http_faults if f.kind == "reject" and f.path in request.path]
        for reject in rejects:
            if any(e["id"] in reject.ids for e in batch):
                return web.json_response({"error": "refused"}, status=reject.status)
        events = [e for e in batch if e["type"] != "io.gated.head.v1"]
        heads = [e for e in batch if e["type"] == "io.gated.head.v1"]
        stored, duplicate, rejected = await asyncio.to_thread(self.store, events)
        body: dict[str, Any] = {"stored": stored, "duplicate": duplicate, "rejected": rejected}
        for head in heads:
            body.update(await asyncio.to_thread(self.answer_head, head))
        validate("batch_response", body)
        if fault is not None and fault.kind == "store_then":
            return web.Response(status=fault.status, text="stored, then failed")
        return web.json_response(body)

    async def _post_heads(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._fault(request)
        if early is not None:
            return early
        event = json.loads(await request.read())
        if not self._check(event):
            return web.json_response({"error": "schema"}, status=422)
        body = {"stored": [], **(await asyncio.to_thread(self.answer_head, event))}
        validate("batch_response", body)
        return web.json_response(body)

    async def _put_snapshot(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._fault(request)
        if early is not None:
            return early
        digest = request.match_info["sha256"]
        body = await request.read()
        if hashlib.sha256(body).hexdigest() != digest:
            return web.json_response({"error": "hash mismatch"}, status=422)
        with self.lock:
            known = self.db.execute("SELECT 1 FROM snapshots WHERE sha256 = ?",
                                    (digest,)).fetchone()
            if known is None:
                self.db.execute("INSERT INTO snapshots VALUES (?, ?)", (digest, len(body)))
        if known is not None and request.headers.get("If-None-Match") == "*":
            return web.Response(status=412)
        return web.Response(status=201 if known is None else 200)


def main() -> None:
    """Run a receiver process until SIGTERM (bench.sync's service)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--stats", help="write {events, duplicates_seen} here at SIGTERM")
    parser.add_argument("--no-validate", action="store_true", help="skip JSON Schema checks")
    args = parser.parse_args()
    receiver = Receiver(args.db, mqtt_port=args.mqtt_port, http=False,
                        validate_schemas=not args.no_validate).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    if args.stats:
        Path(args.stats).write_text(json.dumps(
            {"events": len(receiver.seen), "duplicates_seen": receiver.duplicates_seen,
             "invalid": receiver.invalid[:10]}))
    with contextlib.suppress(Exception):
        receiver.stop()


if __name__ == "__main__":
    main()
