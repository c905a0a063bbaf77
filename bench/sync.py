"""Sync benchmark: drain a journal backlog over MQTT with application acks, against raw paho.

`python -m bench.sync [--events N] [--dir DIR]` prints one JSON object as its last line:

* events: the backlog journaled before the sync starts (100,000 by default), built by a
  child process so this process's peak RSS is the sync's, not the builder's;
* drain_events_per_s: backlog rows delivered and marked synced per second, through a local
  Mosquitto to the reference receiver running as its own process (it stores each event
  in SQLite, then acks over MQTT: acknowledgements of record, not PUBACKs; it skips
  the JSON Schema checks the tests make, which would make it the bottleneck);
* raw_paho_events_per_s: the same payloads published by a bare paho-mqtt QoS 1 loop to a
  topic nobody reads, waiting only for PUBACKs, the better of two in-flight windows (the
  sync's PUBACK window and 256; raw_paho_window says which);
* peak_rss_mb: this process's peak resident set at the end of the first drain (journal,
  outbox, transport, paho; the ack-only drain and the raw loop come after);
* lost: journal ids missing at the receiver; duplicates_seen_by_receiver: copies it got
  more than once (it stores each id once);
* live_event_latency_p99_ms: a live event appended every 50 ms while the backlog drains,
  from its commit to the receiver's commit of it (same machine, wall clock);
* cpu_s: CPU seconds the receiver, the broker and this process used during the drain:
  on a 2-core machine the three share the cores, so this says which one caps the rate;
  raw_paho_cpu_s: this process's CPU seconds in the raw loop, for comparison;
* ack_only_*: the same drain of a fresh copy of the backlog against a service that acks
  each event as it comes, storing nothing (`--ack-only-receiver`): the device side's
  ceiling, with the reference receiver's own per-event cost left out.

What caps the drain (2-core x86_64, 100,000 events, shared with other work): per event
the reference receiver spends ~95 us of CPU (JSON, SQLite insert, chain check), the
broker ~16 us (it forwards each event and each ack), the device ~95 us against ~56 us
for the raw loop, of which paho takes ~70 us (publish, and on its network thread the
PUBACK and the acks), the rest the journal read, the envelope, the outbox and the
marking. Receiver plus broker fill one core at ~8,800 events/s, the device another
at ~10,500: the drain cannot reach 0.8x a raw loop of ~16,000/s on two cores; against
the ack-only service the device side's own ceiling is ~0.6x.

`--window N` sets `[sync] mqtt_window` (events awaiting the service's ack). The broker
here queues up to 10,000 messages for a busy client, as config/mosquitto/gated.conf
does: Mosquitto's default, 1,000, would drop what a window wider than that puts in
front of a slow service (the device would re-send it only after ack_timeout_s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

WINDOW = 1000  # [sync] mqtt_window's default; --window changes it
DEVICE = ("bench-t", "bench-s", "bench-d")


def _event(i: int) -> Any:
    from gated.ids import new_event_id
    from gated.model import AccessEvent

    now = time.time()
    return AccessEvent(
        event_id=new_event_id(), tenant_id=DEVICE[0], site_id=DEVICE[1], device_id=DEVICE[2],
        created_at=now, event_type="entry" if i % 3 else "denied", access_point="main-in",
        authorization_method="auto_plate", decision_reason="resident" if i % 3 else
        "unknown_plate", rules_version=12, direction="in", vehicle_plate=f"AB{i % 99999:05d}",
        confidence_score=0.91, resident_id=f"r{i % 500}", read_to_relay_ms=1.4,
        captured_at=now - 0.3, gate_opened=bool(i % 3),
        metadata={"match": {"kind": "exact", "list": "resident"}, "source": "cam-1"})


async def _build(path: str, events: int) -> None:
    from gated.journal import Journal

    async with await Journal.open(path, max_batch=1000) as journal:
        for start in range(0, events, 1000):
            await journal.append_many([_event(i) for i in range(start, min(events, start + 1000))])


def _config(tmp: Path, port: int, window: int) -> Any:
    from gated.config import parse_config

    return parse_config({
        "site": dict(zip(("tenant_id", "site_id", "device_id"), DEVICE, strict=True)),
        "journal": {"path": str(tmp / "journal.sqlite3"), "snapshot_dir": str(tmp / "snaps")},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "sync": {"enabled": True, "mqtt_window": window, "batch_max_events": 500,
                 "ack_timeout_s": 60, "head_interval_s": 86400, "heartbeat_interval_s": 86400},
    })


async def _drain(tmp: Path, port: int, events: int, window: int = WINDOW) -> dict[str, Any]:
    from gated.audit import Auditor
    from gated.journal import Journal
    from gated.sync.service import SyncService

    cfg = _config(tmp, port, window)
    journal = await Journal.open(tmp / "journal.sqlite3")  # a copy of the built backlog
    auditor = Auditor(journal.append, cfg.site.identity)
    service = SyncService(cfg, journal, audit=auditor.record)
    live: dict[str, float] = {}
    started = time.monotonic()
    task = asyncio.create_task(service.run())

    async def live_events() -> None:
        i = 0
        while True:
            event = _event(10_000_000 + i)
            await journal.append(event)
            live[event.event_id] = time.time()
            i += 1
            await asyncio.sleep(0.05)

    feeder = asyncio.create_task(live_events())
    backlog_head = events
    # The backlog is drained when the oldest unsynced row is a live one (poll: a benchmark).
    while await _oldest_unsynced(journal) <= backlog_head:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    feeder.cancel()
    await asyncio.gather(feeder, return_exceptions=True)
    # A cancelled append may still commit: one more, awaited, puts every row the feeder
    # started in the journal before the wait below (else the last could be left unsent).
    last = _event(9_999_999)
    await journal.append(last)
    live[last.event_id] = time.time()
    deadline = time.monotonic() + 30
    while await _oldest_unsynced(journal) < 2**62 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)  # the last live events
    await service.stop(2.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ids = set()
    for table in ("access_logs", "audit_logs"):
        async with journal._reader.execute(f"SELECT event_id FROM {table}") as cur:
            ids |= {r[0] for r in await cur.fetchall()}
    await journal.close()
    return {"elapsed": elapsed, "ids": ids, "live": live, "drained": events + len(live)}


async def _oldest_unsynced(journal: Any) -> int:
    seqs = [rows[0]["seq"] for s in ("access", "audit") if (rows := await journal.unsynced(s, 1))]
    return min(seqs, default=2**62)


def _raw_paho(tmp: Path, port: int, window: int) -> tuple[float, float]:
    """The same payloads through a bare paho QoS 1 loop, PUBACKs only: (rate, CPU s)."""
    from gated.model import SiteIdentity
    from gated.sync.envelope import access_or_audit, encode, source_of

    source = source_of(SiteIdentity(*DEVICE))
    conn = sqlite3.connect(tmp / "journal.sqlite3")
    from gated.journal.rows import COLUMNS, public_row

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(window)
    client.connect("127.0.0.1", port)
    client.loop_start()
    count = 0
    started, cpu = time.monotonic(), time.process_time()
    infos = []
    cols = ", ".join(COLUMNS["access"])
    for values in conn.execute(f"SELECT {cols} FROM access_logs ORDER BY seq"):
        payload = encode(access_or_audit(public_row("access", values), source))
        while True:
            info = client.publish("bench/raw", payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                break
            time.sleep(0.0005)  # queue full: wait for PUBACKs
        infos.append(info)
        if len(infos) >= window:
            infos.pop(0).wait_for_publish(30)
        count += 1
    for info in infos:
        info.wait_for_publish(30)
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    client.loop_stop()
    client.disconnect()
    conn.close()
    return count / elapsed, cpu


def _ack_only_receiver(port: int, stats: str) -> None:
    """A service that acks every event at once, storing nothing (the device side's ceiling).

    It decodes only the id, remembers when each id first came (for lost, duplicates and
    the live latency) and acks in one message per device once 100 ids wait or the
    oldest has waited 5 ms (a service batches its acks as it batches its commits):
    the per-event cost of a real service (JSON decoding, a SQLite insert, the chain
    check) is left out, so what caps the drain here is the device, the broker and paho.
    """
    import signal
    import uuid

    import msgspec

    decode_id = msgspec.json.Decoder(type=dict[str, Any]).decode
    first: dict[str, float] = {}
    copies = 0
    waiting: dict[str, list[str]] = {}

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal copies, oldest
        event_id = decode_id(message.payload)["id"]
        if event_id in first:
            copies += 1
        else:
            first[event_id] = time.time()
        if not waiting:
            oldest = time.monotonic()
        waiting.setdefault(message.topic.rsplit("/", 1)[0] + "/", []).append(event_id)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ack-only",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("gated/v1/+/+/events", 1)
    stop = False
    oldest = 0.0

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while not stop:
        client.loop(0.002)
        if not waiting or (sum(map(len, waiting.values())) < 100
                           and time.monotonic() - oldest < 0.005):
            continue
        for prefix, ids in waiting.items():
            ack = {"specversion": "1.0", "id": str(uuid.uuid4()),
                   "source": f"gated-service://{prefix.split('/')[2]}",
                   "type": "io.gated.ack.v1", "time": "1970-01-01T00:00:00.000000Z",
                   "datacontenttype": "application/json", "data": {"stored": ids}}
            client.publish(prefix + "acks", msgspec.json.encode(ack), qos=1)
        waiting.clear()
    client.disconnect()
    Path(stats).write_text(json.dumps({"duplicates_seen": copies, "first": first}))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_drain(tmp: Path, broker: Any, events: int, window: int, receiver_cmd: list[str],
               stats: Path) -> dict[str, Any]:
    """One drain of a fresh copy of the backlog against one receiver process."""
    receiver = subprocess.Popen(receiver_cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        before = (_cpu_s(receiver.pid), _cpu_s(broker.process.pid), time.process_time())
        result = asyncio.run(_drain(tmp, broker.port, events, window))
        after = (_cpu_s(receiver.pid), _cpu_s(broker.process.pid), time.process_time())
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        receiver.terminate()
        receiver.wait(60)
    result["cpu_s"] = {name: round(b - a, 2) for name, a, b
                       in zip(("receiver", "broker", "device"), before, after, strict=True)}
    result["seen"] = json.loads(stats.read_text())
    return result


def main() -> None:
    """Run the benchmark and print one JSON line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--window", type=int, default=WINDOW, help="[sync] mqtt_window")
    parser.add_argument("--build-only", help=argparse.SUPPRESS)
    parser.add_argument("--ack-only-receiver", nargs=2, metavar=("PORT", "STATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        asyncio.run(_build(args.build_only, args.events))
        return
    if args.ack_only_receiver:
        _ack_only_receiver(int(args.ack_only_receiver[0]), args.ack_only_receiver[1])
        return
    from tests.support.broker import mosquitto_broker

    with tempfile.TemporaryDirectory(dir=args.dir) as name:
        tmp = Path(name)
        built = tmp / "journal.sqlite3"
        subprocess.run([sys.executable, "-m", "bench.sync", "--events", str(args.events),
                        "--build-only", str(built)], check=True)
        for run in ("reference", "ack-only"):
            (tmp / run).mkdir()
            shutil.copyfile(built, tmp / run / "journal.sqlite3")
        # The broker queues at most this many messages for the service while it is busy
        # (Mosquitto's default is 1000): more in flight than that would be dropped there.
        with mosquitto_broker(tmp / "broker", "max_queued_messages 10000") as broker:
            stats = tmp / "receiver-stats.json"
            reference = _run_drain(tmp / "reference", broker, args.events, args.window, [
                sys.executable, "-m", "tests.support.receiver", "--mqtt-port", str(broker.port),
                "--db", str(tmp / "service.sqlite3"), "--stats", str(stats), "--no-validate"],
                stats)
            service = sqlite3.connect(tmp / "service.sqlite3")
            stored = dict(service.execute("SELECT event_id, received_at FROM events"))
            service.close()
            ack_stats = tmp / "ack-only-stats.json"
            ack_only = _run_drain(tmp / "ack-only", broker, args.events, args.window, [
                sys.executable, "-m", "bench.sync", "--ack-only-receiver", str(broker.port),
                str(ack_stats)], ack_stats)
            # The baseline at its best of paho's in-flight windows: the drain's (PUBACK_WINDOW)
            # and the 256 the first measurement used.
            from gated.sync.mqtt import PUBACK_WINDOW

            raws = {w: _raw_paho(tmp, broker.port, w) for w in sorted({PUBACK_WINDOW, 256})}
            raw_window, (raw, raw_cpu) = max(raws.items(), key=lambda item: item[1][0])
    latencies = sorted((stored[i] - t) * 1000 for i, t in reference["live"].items()
                       if i in stored)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    drain = args.events / reference["elapsed"]
    drain_ack_only = args.events / ack_only["elapsed"]
    print(json.dumps({
        "events": args.events,
        "drain_events_per_s": round(drain),
        "raw_paho_events_per_s": round(raw),
        "drain_vs_raw": round(drain / raw, 2),
        "peak_rss_mb": reference["peak_rss_mb"],
        "lost": len(reference["ids"] - set(stored)),
        "duplicates_seen_by_receiver": reference["seen"]["duplicates_seen"],
        "live_events": len(reference["live"]),
        "live_event_latency_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "live_event_latency_p99_ms": round(p99, 1) if p99 is not None else None,
        "receiver_invalid": len(reference["seen"]["invalid"]),
        "cpu_s": reference["cpu_s"],
        "raw_paho_cpu_s": round(raw_cpu, 2),
        "ack_only_drain_events_per_s": round(drain_ack_only),
        "ack_only_drain_vs_raw": round(drain_ack_only / raw, 2),
        "ack_only_lost": len(ack_only["ids"] - set(ack_only["seen"]["first"])),
        "ack_only_duplicates": ack_only["seen"]["duplicates_seen"],
        "ack_only_cpu_s": ack_only["cpu_s"],
        "mqtt_window": args.window,
        "raw_paho_window": raw_window,
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
