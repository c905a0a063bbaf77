"""Soak: `gated run` under a steady mixed load with periodic upstream outages.

The real daemon (a child process, fake relay, generic JSON camera push, control socket)
syncs over a local Mosquitto to the reference receiver. For `--duration` seconds a
client pushes `--rate` reads a second (half residents' cars that open the gate, half
unknown plates, each read its own event) and sends a control-socket `open` every 2 s;
every `--outage-every` seconds the broker is killed for `--outage-s` seconds. Every 5 s
the daemon's RSS and the journal's WAL size are sampled.

At the end the broker stays up until the daemon has drained its backlog, the daemon is
stopped, and `lost` counts acknowledged reads without a journal row plus journaled
events the receiver never stored. RSS "start" is the first sample after the warm-up
(a tenth of the run, at most 60 s), "end" the last one.

    python -m bench.soak [--duration 600] [--rate 10] [--outage-every 60] [--outage-s 15]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._site import lane_toml, rss_mb

SAMPLE_S = 5.0
OPEN_EVERY_S = 2.0
VEHICLES = 200


def _mb(path: Path) -> float:
    try:
        return path.stat().st_size / 2**20
    except FileNotFoundError:
        return 0.0


def _open(sock: Path, rid: str) -> bool:
    """One control-socket open; True when the daemon answered ok."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(json.dumps({"action": "open", "lane": "main-in", "id": rid}).encode()
                      + b"\n")
            answer = s.makefile("rb").readline()
        return bool(answer) and bool(json.loads(answer).get("ok"))
    except (OSError, ValueError):
        return False


def _journal(path: Path) -> tuple[set[str], set[str], int, list[float]]:
    """Plates, event ids (both streams), unsynced rows and read-to-relay latencies."""
    conn = sqlite3.connect(path)
    try:
        plates = {p for (p,) in conn.execute("SELECT vehicle_plate FROM access_logs") if p}
        ids = {e for (e,) in conn.execute(
            "SELECT event_id FROM access_logs UNION ALL SELECT event_id FROM audit_logs")}
        unsynced = conn.execute(
            "SELECT (SELECT count(*) FROM access_logs WHERE synced_at IS NULL)"
            " + (SELECT count(*) FROM audit_logs WHERE synced_at IS NULL)").fetchone()[0]
        relay = [float(v) for (v,) in conn.execute(
            "SELECT read_to_relay_ms FROM access_logs WHERE read_to_relay_ms IS NOT NULL"
            " AND authorization_method = 'auto_plate'")]
        return plates, ids, int(unsynced), relay
    finally:
        conn.close()


def run(duration_s: float, rate: float, outage_every_s: float, outage_s: float,
        work: Path) -> dict[str, Any]:
    """Run the soak in `work`; the figures."""
    from tests.daemon.harness import CAMERA_PATH, DaemonProcess, Site
    from tests.support.receiver import Receiver
    from tests.sync.conftest import KillableBroker

    broker = KillableBroker(work)
    broker.start()
    receiver = Receiver(work / "service.sqlite3", mqtt_port=broker.port, http=False,
                        validate_schemas=False)
    receiver.start()
    site = Site(work / "site")
    site.root.mkdir()
    sock = site.root / "control.sock"
    site.write_config(lane_toml("main-in", "in", CAMERA_PATH, source="cam-main-in",
                                pulse_ms=50), extra=f"""
[log]
level = "warning"

[control]
socket = "{sock}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[sync]
enabled = true
ack_timeout_s = 5.0
retry_min_s = 0.2
retry_max_s = 5.0
heartbeat_interval_s = 30
rules_poll_s = 0
commands_need_synchronised_clock = false
service_public_keys = ["{receiver.service_public_b64}"]
""")
    known = [f"SK{i:04d}A" for i in range(VEHICLES)]
    site.import_rules({
        "residents": [{"id": "r-1", "name": "Soak Resident", "access_points": "*"}],
        "vehicles": [{"id": f"v-{i}", "plate": p, "resident_id": "r-1"}
                     for i, p in enumerate(known)],
    })
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    pid = daemon.proc.pid
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
    wal = Path(f"{site.journal}-wal")
    warm_up_s = min(60.0, duration_s / 10)
    acked: set[str] = set()
    opens = 0
    samples: list[tuple[float, float]] = []  # (elapsed s, rss MB)
    wal_max = 0.0
    outages = 0
    started = time.monotonic()
    next_read = next_sample = next_open = started
    next_outage = started + outage_every_s
    outage_ends: float | None = None
    n = 0
    try:
        with httpx.Client(timeout=10) as client:
            while (now := time.monotonic()) - started < duration_s:
                if now >= next_sample:
                    samples.append((now - started, rss_mb(pid)))
                    wal_max = max(wal_max, _mb(wal))
                    next_sample += SAMPLE_S
                if outage_ends is None and now >= next_outage:
                    broker.kill()
                    outages += 1
                    outage_ends = now + outage_s
                elif outage_ends is not None and now >= outage_ends:
                    broker.start()
                    outage_ends = None
                    next_outage = now + outage_every_s
                if now >= next_open:
                    opens += _open(sock, f"soak-{n}")
                    next_open += OPEN_EVERY_S
                if now >= next_read:
                    # Half residents' cars (the relay fires), half unknown; each its own event.
                    plate = known[n % VEHICLES] if n % 2 else f"UK{n:07d}"
                    n += 1
                    try:
                        answer = client.post(url, json={"plate": plate, "confidence": 0.95})
                        if answer.status_code == 200 and plate.startswith("UK"):
                            acked.add(plate)
                    except httpx.HTTPError as err:
                        print(f"soak: read not taken: {err}", file=sys.stderr)
                    next_read += 1.0 / rate
                time.sleep(max(0.0, min(next_read, next_sample, next_open) - time.monotonic()))
        if outage_ends is not None:
            broker.start()
        samples.append((time.monotonic() - started, rss_mb(pid)))
        wal_max = max(wal_max, _mb(wal))
        deadline = time.monotonic() + 300
        while _journal(site.journal)[2] and time.monotonic() < deadline:
            time.sleep(1)
        # Read while the drained daemon still runs: its stop record is written after this.
        plates, ids, unsynced, relay = _journal(site.journal)
        stored = receiver.ids()
    finally:
        daemon.terminate()
        receiver.stop()
        broker.stop()
    lost = len(acked - plates) + len(ids - stored)
    after = [rss for t, rss in samples if t >= warm_up_s] or [samples[-1][1]]
    relay.sort()
    p99 = relay[min(len(relay) - 1, int(0.99 * len(relay)))] if relay else None
    return {
        "events": len(ids),
        "reads": n,
        "opens_ok": opens,
        "duration_s": round(duration_s),
        "outages": outages,
        "rss_start_mb": round(after[0], 1),
        "rss_end_mb": round(samples[-1][1], 1),
        "rss_max_mb": round(max(rss for _, rss in samples), 1),
        # After the warm-up, at a quarter, half and three quarters of the rest: the trend.
        "rss_quarters_mb": [round(after[int(len(after) * q)], 1) for q in (0.25, 0.5, 0.75)],
        "lost": lost,
        "unsynced_at_end": unsynced,
        "wal_max_mb": round(wal_max, 2),
        "read_to_relay_p99_ms": round(p99, 2) if p99 is not None else None,
    }


def main() -> None:
    """Command line: run the soak, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=10.0, help="camera reads per second")
    parser.add_argument("--outage-every", type=float, default=60.0,
                        help="seconds between broker outages")
    parser.add_argument("--outage-s", type=float, default=15.0, help="length of each outage")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        figures = run(args.duration, args.rate, args.outage_every, args.outage_s, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="gated-soak-") as tmp:
            figures = run(args.duration, args.rate, args.outage_every, args.outage_s, Path(tmp))
    print(json.dumps(figures))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
