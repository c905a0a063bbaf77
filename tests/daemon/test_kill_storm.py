"""SIGKILL storm: `gated run` killed 200 times at random moments under a mixed load.

Load, all running for the whole test and across every kill: two threads push camera
reads (each a fresh plate) to the HTTP listener, one thread sends `open` requests on the
control socket, and the daemon syncs to a real Mosquitto and the reference receiver.
Each thread writes down what the daemon acknowledged: a read answered 200, an `open`
answered ok. After every kill the daemon is started again and must be READY within 5 s.

Afterwards: every acknowledged read has its access row, every ok `open` has its audit
row (by request id) and its access row (by the answer's event id), the journal passes
`PRAGMA integrity_check` and `gated journal verify`, and once the last daemon has
drained, the receiver holds every journaled event with an intact chain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon.harness import CAMERA_PATH, RESIDENT_RULES, DaemonProcess, Site, gated
from tests.support.broker import mosquitto_available
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("GATED_KILLS", "200"))  # fewer while developing
READY_WITHIN_S = 5.0
DEVICE = "d-test"

LANE = f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
pulse_ms = 50
[[lanes.sources]]
kind = "anpr_http"
name = "cam-main-in"
format = "generic"
path = "{CAMERA_PATH}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


class Load:
    """Camera pushes and control-socket opens that survive the daemon's deaths."""

    def __init__(self, url: str, sock: Path) -> None:
        self.url, self.sock = url, sock
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.reads: set[str] = set()  # plates answered 200
        self.opens: dict[str, str] = {}  # request id -> access_event_id of an ok open
        self.threads = [threading.Thread(target=self._push, args=(t,)) for t in range(2)]
        self.threads.append(threading.Thread(target=self._open))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _push(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                plate = f"KS{worker}N{n:06d}"
                n += 1
                try:
                    answer = client.post(self.url, json={"plate": plate, "confidence": 0.9})
                except httpx.HTTPError:
                    time.sleep(0.02)  # the daemon is down or starting
                    continue
                if answer.status_code == 200:
                    with self.lock:
                        self.reads.add(plate)

    def _open(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(str(self.sock))
                    stream = s.makefile("rwb")
                    while not self.stop.is_set():
                        rid = f"ks-{n}"
                        n += 1
                        stream.write(json.dumps({"action": "open", "lane": "main-in",
                                                 "id": rid}).encode() + b"\n")
                        stream.flush()
                        line = stream.readline()
                        if not line:
                            break  # killed mid-request: not acknowledged
                        answer = json.loads(line)
                        if answer.get("ok"):
                            with self.lock:
                                self.opens[rid] = answer["data"]["access_event_id"]
                        time.sleep(0.05)
            except (OSError, ValueError):
                time.sleep(0.02)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[int, Receiver]]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    from tests.sync.conftest import KillableBroker

    broker = KillableBroker(tmp_path)
    broker.start()
    receiver = Receiver(tmp_path / "service.sqlite3", mqtt_port=broker.port, http=False)
    receiver.start()
    try:
        yield broker.port, receiver
    finally:
        receiver.stop()
        broker.stop()


def start(site: Site) -> tuple[DaemonProcess, float]:
    """A daemon and how long it took from exec to READY=1."""
    (site.root / "notify.sock").unlink(missing_ok=True)  # left bound by the killed run
    began = time.monotonic()
    daemon = DaemonProcess(site)
    daemon.wait_ready(timeout_s=30)
    return daemon, time.monotonic() - began


def journal_facts(path: Path) -> tuple[set[str], set[str], set[str], int]:
    """Plates and event ids of access rows, request ids of gate_open rows, all rows."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        access = conn.execute("SELECT vehicle_plate, event_id FROM access_logs").fetchall()
        opens = {r for (r,) in conn.execute(
            "SELECT request_id FROM audit_logs WHERE action = 'gate_open' AND status = 'success'")
            if r}
        rows = conn.execute("SELECT (SELECT count(*) FROM access_logs)"
                            " + (SELECT count(*) FROM audit_logs)").fetchone()[0]
        return {p for p, _ in access if p}, {e for _, e in access}, opens, int(rows)
    finally:
        conn.close()


def unsynced(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(
            "SELECT (SELECT count(*) FROM access_logs WHERE synced_at IS NULL)"
            " + (SELECT count(*) FROM audit_logs WHERE synced_at IS NULL)").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_200_sigkills_under_reads_opens_and_sync_lose_nothing_acknowledged(
    tmp_path: Path, service: tuple[int, Receiver]
) -> None:
    broker_port, receiver = service
    site = Site(tmp_path / "site")
    site.root.mkdir()
    sock = site.root / "control.sock"
    site.write_config(LANE, extra=f"""
[control]
socket = "{sock}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
ack_timeout_s = 2.0
retry_min_s = 0.05
retry_max_s = 0.5
heartbeat_interval_s = 1
rules_poll_s = 0
commands_need_synchronised_clock = false
service_public_keys = ["{receiver.service_public_b64}"]
""")
    site.import_rules(RESIDENT_RULES)
    rng = random.Random(10)
    ready_s: list[float] = []
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
    with Load(url, sock) as load:
        for _ in range(KILLS):
            daemon, took = start(site)
            ready_s.append(took)
            try:
                time.sleep(rng.uniform(0.05, 0.8))  # reads, opens, commits, acks in flight
                os.kill(daemon.proc.pid, signal.SIGKILL)
                daemon.proc.wait(10)
            finally:
                daemon.close()
    plates, event_ids, open_ids, rows = journal_facts(site.journal)
    lost_reads = load.reads - plates
    lost_opens = {rid for rid in load.opens if rid not in open_ids}
    lost_open_rows = {e for e in load.opens.values() if e not in event_ids}
    print(f"\n{KILLS} kills: {len(load.reads)} reads and {len(load.opens)} opens acknowledged, "
          f"{rows} rows; restart to READY max {max(ready_s):.2f} s, "
          f"mean {sum(ready_s) / len(ready_s):.2f} s; lost reads {len(lost_reads)}, "
          f"lost opens {len(lost_opens) + len(lost_open_rows)}")
    assert len(load.reads) > KILLS and len(load.opens) > KILLS // 4  # the load ran
    assert not lost_reads, sorted(lost_reads)[:10]
    assert not lost_opens, sorted(lost_opens)[:10]
    assert not lost_open_rows, sorted(lost_open_rows)[:10]
    assert max(ready_s) < READY_WITHIN_S, ready_s
    verified = gated("journal", "verify", "--db", str(site.journal))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # One more life: the backlog left by the kills drains to the service, chain intact.
    daemon, _ = start(site)
    try:
        deadline = time.monotonic() + 120
        while unsynced(site.journal) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert unsynced(site.journal) == 0
    finally:
        daemon.terminate()
    _, event_ids, _, _ = journal_facts(site.journal)
    assert event_ids <= receiver.ids(DEVICE)
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []
