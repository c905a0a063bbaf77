"""`gated run` with [sync] over MQTT: camera reads are decided and journaled while the sync
drains, every row reaches the receiver, and a SIGKILL between send and ack loses nothing and
keeps nothing twice (the re-send after the restart is deduplicated)."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    DaemonProcess,
    Site,
    generic_lane,
    post_until_accepted,
    wait_until,
)
from tests.support.receiver import Receiver
from tests.sync.conftest import KillableBroker

pytestmark = pytest.mark.slow


def _journal_ids(site: Site) -> set[str]:
    conn = sqlite3.connect(site.journal)
    try:
        return {r[0] for t in ("access_logs", "audit_logs")
                for r in conn.execute(f"SELECT event_id FROM {t}")}
    finally:
        conn.close()


def _unsynced(site: Site) -> int:
    conn = sqlite3.connect(site.journal)
    try:
        return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE synced_at IS NULL").fetchone()[0]
                   for t in ("access_logs", "audit_logs"))
    finally:
        conn.close()


def test_gated_run_syncs_and_survives_sigkill_between_send_and_ack(
    tmp_path: Path, broker: KillableBroker, receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    site = Site(tmp_path / "site")
    site.root.mkdir()
    site.write_config(generic_lane('kind = "fake"', dedup_window_s=0.01), extra=f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
ack_timeout_s = 2.0
service_public_keys = ["{receiver.service_public_b64}"]
""")
    site.import_rules(RESIDENT_RULES)
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    answers = [_push(site, plate)
               for plate in ["AB123CD", "GH456JK"] + [f"ZZ{i:03d}XY" for i in range(13)]]
    assert answers == [200] * 15  # the gate decided every read while sync ran
    assert wait_until(lambda: receiver.ids("d-test") >= _journal_ids(site), 30)
    assert wait_until(lambda: _unsynced(site) == 0, 30)
    # Now the service stores but does not ack: kill gated between send and ack.
    receiver.ack_enabled = False
    for plate in ["MN789PQ"] + [f"QQ{i:03d}XY" for i in range(9)]:
        assert _push(site, plate) == 200
    assert wait_until(lambda: receiver.ids("d-test") >= _journal_ids(site), 30)
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)
    daemon.close()
    assert _unsynced(site) >= 10  # sent and stored upstream, never acked
    receiver.ack_enabled = True
    (site.root / "notify.sock").unlink(missing_ok=True)
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    assert wait_until(lambda: _unsynced(site) <= 1, 30)  # (the new start row may be in flight)
    assert daemon.terminate() == 0
    assert receiver.ids("d-test") == _journal_ids(site) - _unsent_tail(site, receiver)
    assert receiver.count() == len(receiver.ids())  # re-sends deduplicated: kept once
    assert receiver.duplicates_seen >= 10
    assert receiver.chain_problems("d-test") == []
    assert receiver.invalid == []
    heartbeat_or_status = [json.loads(p) for t, ps in receiver.messages.items()
                           if t.endswith("/status") for p in ps]
    assert heartbeat_or_status and heartbeat_or_status[-1]["status"] == "offline"


def _push(site: Site, plate: str) -> int:
    time.sleep(0.05)  # apart from the last read: each is its own vehicle, not a better read
    return post_until_accepted(site.listener_port, CAMERA_PATH, plate)


def _unsent_tail(site: Site, receiver: Receiver) -> set[str]:
    # Rows journaled after the sync stopped (the stop record) go at the next start.
    conn = sqlite3.connect(site.journal)
    try:
        return {r[0] for t in ("access_logs", "audit_logs")
                for r in conn.execute(f"SELECT event_id FROM {t} WHERE synced_at IS NULL")}
    finally:
        conn.close()
