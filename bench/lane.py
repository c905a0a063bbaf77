"""Read → relay latency through the real daemon.

Starts the gated Daemon (the same composition root `gated run` uses) with two
lanes on simulated relays and the camera HTTP listener on 127.0.0.1, imports a
rule set, and has a separate client process push camera reads (generic JSON,
one connection per lane, as cameras do). The latency is measured inside the
daemon from the moment the listener received a read to the moment the relay
was commanded; journal lag is from receipt to the durable commit of its row.
Every read must be journaled.

With `--with-sync-backlog N` the journal starts with N unsynced events and the daemon's
upstream sync drains them over a local Mosquitto to the reference receiver (its own
process, acking after it stored each event) while the reads are pushed: the gate must
not notice. The line then also says how much of the backlog was still unsynced when
the reads began and ended (the drain overlapped the measurement) and the drain's rate.

    python -m bench.lane [--reads 2000] [--residents 5000] [--with-sync-backlog N]

On a 2-core machine the receiver and the broker run beside the daemon and take about
one core while the drain lasts: read->relay p99 was 0.4-1.0 ms plain, 8.8-10 ms with a
100,000-event drain to the reference receiver and 5.2 ms with bench.sync's ack-only
service in its place. The rest is the daemon's own GIL: the event loop shares it with
paho's network thread (PUBACKs, acks) and the journal's reader and writer threads.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench._site import free_port, import_residents, lane_toml, plate, site_toml

CLIENT = r"""
import sys, time, httpx, threading
port, n, lanes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
plates = [line.strip() for line in sys.stdin]
ok = [0]
def push(lane, mine):
    with httpx.Client(timeout=10) as client:
        for plate in mine:
            body = {"plate": plate, "confidence": 0.95}
            r = client.post(f"http://127.0.0.1:{port}/anpr/{lane}", json=body)
            ok[0] += r.status_code == 200
threads = [threading.Thread(target=push, args=(lane, plates[i::len(lanes)]))
           for i, lane in enumerate(lanes)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(ok[0], time.monotonic() - start)
"""


def _config(base: Path, port: int, broker_port: int | None = None) -> str:
    lanes = "".join(lane_toml(lane, direction, f"/anpr/{lane}", source=f"cam-{lane}")
                    for lane, direction in (("lane-in", "in"), ("lane-out", "out")))
    return site_toml(base, port, "bench-1",
                     lanes + (_sync_config(broker_port) if broker_port is not None else ""))


def _sync_config(broker_port: int) -> str:
    return f"""
[mqtt]
host = "127.0.0.1"
port = {broker_port}
[sync]
enabled = true
head_interval_s = 86400
heartbeat_interval_s = 86400
"""


def _unsynced(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(
            "SELECT (SELECT count(*) FROM access_logs WHERE synced_at IS NULL)"
            " + (SELECT count(*) FROM audit_logs WHERE synced_at IS NULL)").fetchone()[0])


async def _run(reads: int, residents: int, backlog: int = 0,
               broker_port: int | None = None) -> dict[str, object]:
    from gated.app import Daemon
    from gated.config import load_config

    base = Path(tempfile.mkdtemp(prefix="gated-bench-lane-"))
    port = free_port()
    (base / "gated.toml").write_text(_config(base, port, broker_port))
    cfg = load_config(base / "gated.toml")
    if backlog:  # built by a child process, as bench.sync does
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sync", "--events", str(backlog), "--build-only",
            cfg.journal.path)
        assert await proc.wait() == 0
    known = sorted({plate(i) for i in range(residents)})
    import_residents(base, cfg.rules.path, known)

    # Three in four reads are residents (open), the rest unknown (deny); all distinct in sequence.
    pushed = [known[i % len(known)] if i % 4 else f"Q{i:06d}Q" for i in range(reads)]
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 60)
    sync: dict[str, object] = {}
    left_at_start, reads_began = 0, time.monotonic()
    if backlog:
        while _unsynced(cfg.journal.path) >= backlog:  # noqa: ASYNC110 - a benchmark polls
            await asyncio.sleep(0.05)  # the drain has begun: measure while it runs
        left_at_start, reads_began = _unsynced(cfg.journal.path), time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        str(port),
        str(reads),
        "lane-in,lane-out",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate("\n".join(pushed).encode())
    accepted, client_s = out.decode().split()
    if backlog:
        left = _unsynced(cfg.journal.path)
        sync = {"backlog_unsynced_when_reads_began": left_at_start,
                "backlog_unsynced_when_reads_ended": left,
                "drain_events_per_s_during_reads": round(
                    (left_at_start - left) / (time.monotonic() - reads_began))}
    deadline = time.monotonic() + 60
    journaled = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(cfg.journal.path) as conn:
            journaled = conn.execute("SELECT count(*) FROM access_logs").fetchone()[0]
        journaled -= backlog  # the reads' rows, after the backlog's
        if journaled >= reads:
            break
        await asyncio.sleep(0.1)
    lanes = daemon.generation.lanes.values() if daemon.generation else []
    relay = sorted(v for lane in lanes for v in lane.metrics.read_to_relay_ms.recent)
    lag = sorted(v for lane in lanes for v in lane.metrics.journal_lag_ms.recent)
    opened = sum(lane.metrics.decisions["resident"] for lane in lanes)
    daemon.request_stop()
    status = await task

    def q(values: list[float], p: float) -> float | None:
        return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None

    return {
        "reads": reads,
        "accepted_http_200": int(accepted),
        "journaled": journaled,
        "opened": opened,
        "read_to_relay_p50_ms": q(relay, 0.50),
        "read_to_relay_p99_ms": q(relay, 0.99),
        "read_to_relay_max_ms": q(relay, 1.0),
        "journal_lag_p50_ms": q(lag, 0.50),
        "journal_lag_p99_ms": q(lag, 0.99),
        "client_reads_per_s": round(reads / float(client_s), 1),
        "residents": len(known),
        "daemon_exit": status,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        **({"sync_backlog": backlog, **sync} if backlog else {}),
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--residents", type=int, default=5000)
    parser.add_argument("--with-sync-backlog", type=int, default=0, metavar="N",
                        help="drain N unsynced events upstream while measuring")
    args = parser.parse_args()
    if not args.with_sync_backlog:
        print(json.dumps(asyncio.run(_run(args.reads, args.residents))))
        return
    import subprocess

    from tests.support.broker import mosquitto_broker

    with tempfile.TemporaryDirectory() as name, mosquitto_broker(
            Path(name) / "broker", "max_queued_messages 10000") as broker:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "tests.support.receiver", "--mqtt-port", str(broker.port),
             "--db", str(Path(name) / "service.sqlite3"), "--no-validate"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            result = asyncio.run(_run(args.reads, args.residents, args.with_sync_backlog,
                                      broker.port))
        finally:
            receiver.terminate()
            receiver.wait(60)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
