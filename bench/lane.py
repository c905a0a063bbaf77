"""Read → relay latency through the real daemon.

Starts the gated Daemon (the same composition root `gated run` uses) with two
lanes on simulated relays and the camera HTTP listener on 127.0.0.1, imports a
rule set, and has a separate client process push camera reads (generic JSON,
one connection per lane, as cameras do). The latency is measured inside the
daemon from the moment the listener received a read to the moment the relay
was commanded; journal lag is from receipt to the durable commit of its row.
Every read must be journaled.

    python -m bench.lane [--reads 2000] [--residents 5000]

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


def _config(base: Path, port: int) -> str:
    lanes = ""
    for lane, direction in (("lane-in", "in"), ("lane-out", "out")):
        lanes += f"""
[[lanes]]
id = "{lane}"
direction = "{direction}"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
pulse_ms = 200
[[lanes.sources]]
kind = "anpr_http"
name = "cam-{lane}"
format = "generic"
path = "/anpr/{lane}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""
    return f"""
[site]
tenant_id = "bench"
site_id = "bench"
device_id = "bench-1"
[journal]
path = "{base / "journal.sqlite3"}"
snapshot_dir = "{base / "snapshots"}"
[rules]
path = "{base / "rules.sqlite3"}"
[cameras_listener]
host = "127.0.0.1"
port = {port}
[log]
level = "warning"
{lanes}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plate(i: int) -> str:
    a = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return f"{a[i % 23]}{a[(i // 23) % 23]}{i % 1000:03d}{a[(i // 529) % 23]}{a[(i // 7) % 23]}"


async def _run(reads: int, residents: int) -> dict[str, object]:
    from gated.app import Daemon
    from gated.config import load_config
    from gated.rules.files import import_rules
    from gated.rules.store import RuleStore

    base = Path(tempfile.mkdtemp(prefix="gated-bench-lane-"))
    port = _free_port()
    (base / "gated.toml").write_text(_config(base, port))
    cfg = load_config(base / "gated.toml")
    known = sorted({_plate(i) for i in range(residents)})
    rules = {
        "format": "gated-rules",
        "format_version": 1,
        "residents": [
            {"id": f"r{i}", "name": f"Resident {i}", "access_points": "*"}
            for i in range(len(known))
        ],
        "vehicles": [
            {"id": f"v{i}", "plate": p, "resident_id": f"r{i}"} for i, p in enumerate(known)
        ],
    }
    (base / "rules.json").write_text(json.dumps(rules))
    with RuleStore(cfg.rules.path) as store:
        import_rules(store, base / "rules.json")

    # Three in four reads are residents (open), the rest unknown (deny); all distinct in sequence.
    pushed = [known[i % len(known)] if i % 4 else f"Q{i:06d}Q" for i in range(reads)]
    daemon = Daemon(cfg)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 60)
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
    deadline = time.monotonic() + 60
    journaled = 0
    while time.monotonic() < deadline:
        with sqlite3.connect(cfg.journal.path) as conn:
            journaled = conn.execute("SELECT count(*) FROM access_logs").fetchone()[0]
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
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--residents", type=int, default=5000)
    args = parser.parse_args()
    result = asyncio.run(_run(args.reads, args.residents))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
