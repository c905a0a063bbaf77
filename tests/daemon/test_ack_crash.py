"""Acknowledged means kept: SIGKILL `gated run` under camera pushes, at random moments.

A client process pushes reads (each with its own plate) to the daemon's camera
listener as fast as the daemon answers, and writes down every plate answered 200.
The daemon is killed with SIGKILL at a random moment, over and over, on one journal
file. After every kill each acknowledged plate has its row and the chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gated.journal.verify import verify
from tests.daemon.harness import CAMERA_PATH, RESIDENT_RULES, DaemonProcess, Site, gated

KILLS = 50
ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import sys, threading, httpx
url, prefix, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()

def push(t):
    i = 0
    with httpx.Client(timeout=10) as client:
        while True:
            plate = f"{prefix}T{t}N{i:05d}"
            i += 1
            try:
                answer = client.post(url, json={"plate": plate, "confidence": 0.9})
            except httpx.HTTPError:
                return  # the daemon is gone
            if answer.status_code == 200:
                with lock:
                    sys.stdout.write(plate + "\n")
                    sys.stdout.flush()

workers = [threading.Thread(target=push, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
"""

LANE = f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
pulse_ms = 200
[[lanes.sources]]
kind = "anpr_http"
name = "cam-main-in"
format = "generic"
path = "{CAMERA_PATH}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def journaled_plates(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {p for (p,) in conn.execute("SELECT vehicle_plate FROM access_logs") if p}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_no_read_answered_200_is_lost_when_the_daemon_is_killed(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write_config(LANE)
    site.import_rules(RESIDENT_RULES)
    rng = random.Random(6)
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    acknowledged: set[str] = set()
    lost: set[str] = set()
    pushing_s = 0.0
    for kill in range(KILLS):
        (site.root / "notify.sock").unlink(missing_ok=True)
        daemon = DaemonProcess(site)
        client = None
        try:
            daemon.wait_ready()
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, url, f"K{kill:02d}", "4"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
            )
            started = time.monotonic()
            time.sleep(rng.uniform(0.1, 1.0))  # pushes in flight, commits in flight
            os.kill(daemon.proc.pid, signal.SIGKILL)
            daemon.proc.wait(10)
            pushing_s += time.monotonic() - started
            out, _ = client.communicate(timeout=30)
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait(10)
            daemon.close()
        answered = set(out.split())
        acknowledged |= answered
        lost |= answered - journaled_plates(site.journal)
        result = verify(site.journal)
        assert result.ok, result.message
    reads_per_s = len(acknowledged) / pushing_s
    print(f"\nacknowledged {len(acknowledged)} reads over {KILLS} kills "
          f"({reads_per_s:.0f} reads/s answered 200), lost after acknowledgement: {len(lost)}")
    assert acknowledged  # the test pushed something the daemon took
    assert not lost, sorted(lost)[:10]
    assert gated("journal", "verify", "--db", str(site.journal)).returncode == 0
