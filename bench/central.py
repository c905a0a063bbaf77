"""Central ingest benchmark: simulated devices -> Mosquitto -> `gated central run` -> PostgreSQL.

`python -m bench.central [--devices 50] [--events 2000]` prints one JSON object as its last
line:

* devices, events: simulated devices and the events each sends (access rows, chained and
  valid against the protocol's schemas, built by tests/support/device_sim.py);
* events_per_message: events per MQTT message, by default the device's
  `[sync] mqtt_batch_max_events` (a backlog goes up in batches: docs/protocol.md section 5);
* ingest_events_per_s_1 / _2: events stored per second by one and by two `gated central run`
  processes sharing the subscription, each on a fresh migrated database. The backlog is
  published first into the instances' persistent sessions (queued at the broker), then
  the instances start; the clock runs from the first stored event to the last, so it
  measures ingest (JSON, schema validation, identity and hash checks, the witness, the
  PostgreSQL transaction, the ack and the PUBACK), not the publishers;
* ingest_single_events_per_s_1: one instance when every event is a message of its own (the
  live lane's form, and a device with mqtt_batch_max_events = 1);
* raw_pg_events_per_s: the same rows written by a bare `COPY` into the tables the ingest
  writes, event_ids and access_logs with all their indexes, as the superuser (no
  validation, no row-level security, no witness): the baseline; raw_pg_access_only_events_per_s
  the same into access_logs alone;
* publish_events_per_s: the simulated devices' publisher alone into the broker (queued for
  a persistent session): it has to be well above the ingest rates for them to mean anything;
* central_cpu_us_per_event_1, pg_cpu_us_per_event_1: CPU time of the one instance, and of
  every PostgreSQL process, per event stored (from the first stored event on, start-up left
  out); central_cpu_us_per_event_single the same for one event a message;
  central_peak_rss_mb_1: the one instance's peak resident memory;
* lost: events not stored at the end; duplicates_stored: rows stored more than once.

PostgreSQL runs with fsync off (a throw-away cluster, tests/support/postgres.py); the
broker is a local Mosquitto without TLS. On a 2-core machine the instances, the broker and
PostgreSQL share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gated.central.admin import enrol_device
from gated.central.store import ACCESS_COLUMNS
from gated.config import SyncConfig
from gated.sync.envelope import encode
from gated.sync.signing import load_or_create_key
from tests.support.broker import HOST, MOSQUITTO, free_port, wait_until_accepting
from tests.support.device_sim import SimDevice
from tests.support.postgres import OWNER, SERVICE, PgServer, postgres_cluster


def _broker(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = tmp / "mosquitto.conf"
    config.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n"
                      "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 1000\n"
                      "log_dest none\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if not wait_until_accepting(HOST, port):
        raise RuntimeError("mosquitto did not start")
    return proc, port


def _subscribe_sessions(port: int, client_ids: list[str]) -> None:
    """Create the instances' persistent sessions and shared subscriptions, then leave."""
    for client_id in client_ids:
        done = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTProtocolVersion.MQTTv5)
        client.on_subscribe = lambda *a, d=done: d.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect(HOST, port, clean_start=False, properties=props)
        client.subscribe("$share/gated-central/gated/v1/+/+/events", qos=1)
        client.loop_start()
        assert done.wait(10)
        client.disconnect()
        client.loop_stop()


def _publish(port: int, payloads: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(500)
    client.connect(HOST, port)
    client.loop_start()
    window: deque[mqtt.MQTTMessageInfo] = deque()
    for topic, payload in payloads:
        if len(window) >= 500:
            window.popleft().wait_for_publish(60)
        window.append(client.publish(topic, payload, qos=1))
    for info in window:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _postgres_ticks() -> int:
    """CPU ticks of every PostgreSQL process on the machine (the bench's cluster alone)."""
    total = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
        except OSError:
            continue
        total += _cpu_ticks(int(pid))
    return total


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _count(server: PgServer, db: str) -> int:
    with server.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM event_ids").fetchone()[0])  # type: ignore[index]


def _run(server: PgServer, tmp: Path, sims: list[SimDevice],
         payloads: list[tuple[str, bytes]], total_events: int, instances: int,
         key_file: Path, timeout_s: float) -> dict[str, float]:
    db = server.create_database(template="gated_bench_template")
    with server.connect(db, OWNER) as conn:
        for sim in sims:
            enrol_device(conn, sim.tenant_id, sim.device_id, sim.site_id, sim.public_b64)
    broker, port = _broker(tmp)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ids = [f"central-{instances}-{i}" for i in range(instances)]
        _subscribe_sessions(port, ids)
        _publish(port, payloads)
        for client_id in ids:
            config = tmp / f"{client_id}.toml"
            config.write_text(
                f'[database]\nurl = "{server.conninfo(db, SERVICE)}"\n'
                f'[service]\nkey_file = "{key_file}"\ninstance = "{client_id}"\n'
                f'[mqtt]\nhost = "{HOST}"\nport = {port}\nclient_id = "{client_id}"\n'
                f'[http]\nenabled = false\n')
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gated", "central", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=(tmp / f"{client_id}.log").open("wb")))
        total = total_events
        deadline = time.monotonic() + timeout_s
        first = None
        stored = 0
        while time.monotonic() < deadline:
            stored = _count(server, db)
            if stored and first is None:
                first = (time.monotonic(), stored)
                # CPU from the first stored event on (the instances' start-up left out)
                ticks = (sum(_cpu_ticks(p.pid) for p in procs), _postgres_ticks())
            if stored >= total:
                break
            # count(*) scans event_ids on PostgreSQL's cores: seldom while far from done, often
            # near the end (where the clock stops)
            time.sleep(0.02 if stored >= 0.9 * total or not stored else 0.25)
        end = time.monotonic()
        assert first is not None, "nothing was stored"
        counted = max(stored - first[1], 1)
        per_event = 1e6 / os.sysconf("SC_CLK_TCK") / counted
        figures = {
            "rate": (stored - first[1]) / max(end - first[0], 1e-6),
            "central_cpu_us": (sum(_cpu_ticks(p.pid) for p in procs) - ticks[0]) * per_event,
            "pg_cpu_us": (_postgres_ticks() - ticks[1]) * per_event,
            "rss_mb": max(_peak_rss_mb(p.pid) for p in procs),
        }
        with server.connect(db) as conn:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM access_logs").fetchone()  # type: ignore[misc]
        figures["lost"] = total - stored
        figures["duplicates"] = rows - distinct
        return figures
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.terminate()
        broker.wait(10)
        server.drop_database(db)


_EVENT_ID_COLUMNS = ("tenant_id", "event_id", "device_id", "stream", "seq", "prev_hash",
                     "row_hash", "created_at")


def _raw_copy(server: PgServer, sims: list[SimDevice], events: list[dict[str, Any]], *,
              with_ids: bool) -> float:
    """Rows per second of a bare COPY of the events' rows as the superuser.

    with_ids: the idempotency rows into event_ids too, so the baseline writes the same rows
    into the same tables (with their indexes) as the ingest does.
    """
    db = server.create_database(template="gated_bench_template")
    with server.connect(db, OWNER) as conn:
        for sim in sims:
            enrol_device(conn, sim.tenant_id, sim.device_id, sim.site_id, sim.public_b64)
    rows = []
    ids = []
    for event in events:
        data = event["data"]
        row = [data.get(c) for c in ACCESS_COLUMNS]
        rows.append(row)
        ids.append(["access" if name == "stream" else data[name] for name in _EVENT_ID_COLUMNS])
    created = ACCESS_COLUMNS.index("created_at")
    captured = ACCESS_COLUMNS.index("captured_at")
    metadata = ACCESS_COLUMNS.index("metadata")
    import datetime as dt

    for row in rows:
        row[created] = dt.datetime.fromtimestamp(row[created], dt.UTC)
        row[captured] = dt.datetime.fromtimestamp(row[captured], dt.UTC)
        row[metadata] = json.dumps(row[metadata])
    for id_row in ids:
        id_row[-1] = dt.datetime.fromtimestamp(id_row[-1], dt.UTC)
    try:
        with server.connect(db, autocommit=False) as conn:
            start = time.monotonic()
            with conn.cursor() as cur:
                if with_ids:
                    with cur.copy(f"COPY event_ids ({', '.join(_EVENT_ID_COLUMNS)}) "
                                  "FROM STDIN") as copy:
                        for id_row in ids:
                            copy.write_row(id_row)
                with cur.copy(f"COPY access_logs ({', '.join(ACCESS_COLUMNS)}) "
                              "FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            conn.commit()
            elapsed = time.monotonic() - start
        return len(rows) / elapsed
    finally:
        server.drop_database(db)


def _publish_rate(tmp: Path, payloads: list[tuple[str, bytes]], total_events: int) -> float:
    """Events per second the simulated devices' publisher gets into the broker alone."""
    broker, port = _broker(tmp)
    try:
        _subscribe_sessions(port, ["central-publish-only"])
        start = time.monotonic()
        _publish(port, payloads)
        return total_events / (time.monotonic() - start)
    finally:
        broker.terminate()
        broker.wait(10)


def _payloads(sims: list[SimDevice], events_per_device: int, per_message: int
              ) -> tuple[list[dict[str, Any]], list[tuple[str, bytes]]]:
    """The devices' events, and their MQTT messages of `per_message` events each.

    Built as the device's uplink builds them (gated/sync/mqtt.py): each event encoded once,
    a batch the events' bytes joined into a JSON array; one event alone is a plain object.
    """
    events: list[dict[str, Any]] = []
    payloads: list[tuple[str, bytes]] = []
    for start in range(0, events_per_device, per_message):
        for sim in sims:
            batch = [sim.event("access") for _ in range(min(per_message,
                                                           events_per_device - start))]
            events += batch
            parts = [encode(event) for event in batch]
            payloads.append((sim.prefix + "events",
                             parts[0] if per_message == 1 else b"[" + b",".join(parts) + b"]"))
    return events, payloads


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--events", type=int, default=2000, help="events per device")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--per-message", type=int, default=SyncConfig().mqtt_batch_max_events,
                        help="events per MQTT message (the device's mqtt_batch_max_events)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gated-bench-central-") as tmp_name:
        tmp = Path(tmp_name)
        key_file = tmp / "service.key"
        load_or_create_key(key_file)
        sims = [SimDevice(f"tenant-{i % 10}", "hq", f"gate-{i}") for i in range(args.devices)]
        events, payloads = _payloads(sims, args.events, args.per_message)
        with postgres_cluster() as server:
            server.create_database("gated_bench_template")
            raw = _raw_copy(server, sims, events, with_ids=True)
            raw_access = _raw_copy(server, sims, events, with_ids=False)
            published = _publish_rate(tmp, payloads, len(events))
            result: dict[str, Any] = {"devices": args.devices, "events": len(events),
                                      "events_per_message": args.per_message}
            lost = dups = 0
            for instances in (1, 2):
                run = _run(server, tmp, sims, payloads, len(events), instances, key_file,
                           args.timeout)
                result[f"ingest_events_per_s_{instances}"] = round(run["rate"])
                if instances == 1:
                    one = run
                lost, dups = lost + int(run["lost"]), dups + int(run["duplicates"])
            # the live lane's form, one event a message, on fresh devices (their own chains)
            singles = [SimDevice(s.tenant_id, s.site_id, s.device_id) for s in sims]
            single_events, single_payloads = _payloads(singles, args.events, 1)
            single = _run(server, tmp, singles, single_payloads, len(single_events), 1,
                          key_file, args.timeout)
            lost, dups = lost + int(single["lost"]), dups + int(single["duplicates"])
            result["raw_pg_events_per_s"] = round(raw)
            result["raw_pg_access_only_events_per_s"] = round(raw_access)
            result["publish_events_per_s"] = round(published)
            result["ingest_single_events_per_s_1"] = round(single["rate"])
            result["central_cpu_us_per_event_1"] = round(one["central_cpu_us"], 1)
            result["pg_cpu_us_per_event_1"] = round(one["pg_cpu_us"], 1)
            result["central_cpu_us_per_event_single"] = round(single["central_cpu_us"], 1)
            result["central_peak_rss_mb_1"] = round(one["rss_mb"], 1)
            result["ingest_vs_raw_1"] = round(result["ingest_events_per_s_1"] / raw, 3)
            result["lost"] = lost
            result["duplicates_stored"] = dups
        print(json.dumps(result))


if __name__ == "__main__":
    main()
