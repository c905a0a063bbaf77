"""Alerts through the real daemon: `gated run` with a deny list, plate reads pushed to its
camera listener, alerts delivered to a webhook receiver on loopback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.alerts.receiver import Receiver
from tests.daemon.harness import (
    CAMERA_PATH,
    DaemonProcess,
    PtyPort,
    Site,
    generic_lane,
    lcus_relay,
    post_generic,
    wait_audit,
    wait_until,
)

pytestmark = pytest.mark.slow

RULES = {
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"}],
    "deny_list": [{"id": "d-1", "plate": "XX000X", "reason": "stolen"},
                  {"id": "d-2", "plate": "YY111Y", "reason": "stolen"},
                  {"id": "d-3", "plate": "ZZ222Z", "reason": "stolen"}],
}


def make_site(tmp_path: Path, receiver: Receiver, interval_s: float = 300.0) -> Site:
    secret = tmp_path / "hook.secret"
    secret.write_bytes(receiver.secret)
    site = Site(tmp_path)
    site.write_config(generic_lane('kind = "fake"\npulse_ms = 200', dedup_window_s=0), f"""
[alerts]
retry_min_s = 0.1
retry_max_s = 0.5
late_after_s = 1.0

[alerts.rules.deny_listed]
interval_s = {interval_s}

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "{receiver.url}"
secret_file = "{secret}"
rules = ["deny_listed"]
timeout_s = 2.0
""")
    site.import_rules(RULES)
    return site


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def push(site: Site, plate: str, client: httpx.Client | None = None) -> None:
    assert post_generic(site.listener_port, CAMERA_PATH, plate, client=client) == 200


def raised(site: Site) -> list[dict[str, object]]:
    rows = wait_audit(site, "alert_raised", 0, 0)
    return [json.loads(str(row["metadata"])) for row in rows]


def test_a_deny_listed_read_while_the_receiver_is_down_is_delivered_once_when_it_returns(
        tmp_path: Path, receiver: Receiver) -> None:
    site = make_site(tmp_path, receiver)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        push(site, "XX000X")
        push(site, "AB123CD")  # a resident: no alert
        [row] = wait_audit(site, "alert_raised", 1)
        meta = json.loads(row["metadata"])
        assert meta["rule"] == "deny_listed" and meta["subject"] == "{plate}"
        time.sleep(2.0)  # refused connections, retried with back-off
        receiver.start()
        assert receiver.wait_for(1)
        time.sleep(1.5)  # time for a wrong second delivery to show
        assert dict(receiver.seen) == {meta["alert_id"]: 1}
        doc = receiver.alerts[meta["alert_id"]]
        assert doc["event_type"] == "deny_listed" and doc["subject"] == "XX000X"
        assert doc["age_s"] >= 1.5  # marked with its age
        assert receiver.bad_signatures == 0
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    # The secret is in no journal row and no log line; the plate is in no audit row.
    secret = receiver.secret.decode()
    audit_rows = json.dumps(site.rows("audit_logs"), default=str)
    assert secret not in audit_rows and "XX000X" not in audit_rows
    assert secret not in daemon.log()


def test_an_alarm_storm_is_one_alert_then_one_summary_per_interval(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    interval = 6.0
    site = make_site(tmp_path, receiver, interval_s=interval)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        started = time.monotonic()
        with httpx.Client() as client:
            for _ in range(50):
                push(site, "XX000X", client)
        storm_s = time.monotonic() - started
        assert storm_s < interval, "the storm must fit in one interval for this test"
        denied = [r for r in site.rows() if r["decision_reason"] == "deny_listed"]
        assert len(denied) == 50
        assert receiver.wait_for(1)
        time.sleep(1.0)
        assert len(receiver.alerts) == 1  # one alert while the storm lasts
        assert receiver.wait_for(2, timeout_s=interval + 10)
        docs = sorted(receiver.alerts.values(), key=lambda d: d["raised_at"])
        assert [d["count"] for d in docs] == [1, 49]
        assert docs[1]["folded"] == 48 and "49 times" in docs[1]["title"]
        time.sleep(interval + 1.5)
        assert len(receiver.alerts) == 2  # quiet since: nothing more
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_a_restart_mid_delivery_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, receiver: Receiver) -> None:
    # The first alert is acknowledged; the others meet a failing receiver until the restart.
    receiver.faults[:] = ["ok"] + ["500"] * 10_000
    receiver.start()
    site = make_site(tmp_path, receiver)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        for plate in ("XX000X", "YY111Y", "ZZ222Z"):
            push(site, plate)
        rows = wait_audit(site, "alert_raised", 3)
        ids = [json.loads(row["metadata"])["alert_id"] for row in rows]
        assert receiver.wait_for(1)
        assert wait_until(lambda: receiver.requests >= 4)  # the second is being retried
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    receiver.faults.clear()
    (site.root / "notify.sock").unlink(missing_ok=True)  # the next daemon's systemd socket
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        assert receiver.wait_for(3)
        time.sleep(1.5)
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    assert set(receiver.alerts) == set(ids)
    assert set(receiver.acked.values()) == {1}  # no id acknowledged twice
    # Still exactly three alert rows: the restart raised nothing again.
    assert len(wait_audit(site, "alert_raised", 3)) == 3


def test_a_lasting_relay_fault_and_a_full_disk_alert_through_the_daemon(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    secret = tmp_path / "hook.secret"
    secret.write_bytes(receiver.secret)
    board = PtyPort(tmp_path / "relay-board")
    site = Site(tmp_path)
    site.write_config(generic_lane(lcus_relay(board)), f"""
[alerts.rules]
relay_fault = {{ fault_after_s = 1.0 }}
disk_full = {{ disk_percent = 1.0 }}      # any disk in use is "full": the sampled path runs

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "{receiver.url}"
secret_file = "{secret}"
rules = ["relay_fault", "disk_full"]
""")
    site.import_rules(RULES)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        assert receiver.wait_for(1)  # disk_full, at its first sample
        board.unplug()
        post_generic(site.listener_port, CAMERA_PATH, "AB123CD")
        wait_audit(site, "relay_fault")
        fault_at = time.monotonic()
        assert receiver.wait_for(2)
        assert time.monotonic() - fault_at >= 0.5  # it had to last first
        rules = sorted(d["event_type"] for d in receiver.alerts.values())
        assert rules == ["disk_full", "relay_fault"]
        relay = next(d for d in receiver.alerts.values() if d["event_type"] == "relay_fault")
        assert relay["subject"] == "main-in-relay" and relay["severity"] == "critical"
        assert relay["details"]["lasted_s"] >= 1.0
        assert daemon.terminate() == 0
    finally:
        daemon.close()
        board.close()


def test_a_read_at_a_lane_in_lockdown_alerts_with_its_plate(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    secret = tmp_path / "hook.secret"
    secret.write_bytes(receiver.secret)
    site = Site(tmp_path)
    site.write_config(generic_lane('kind = "fake"\npulse_ms = 200', extra='mode = "lockdown"'),
                      f"""
[[alerts.channels]]
name = "hook"
type = "webhook"
format = "json"
url = "{receiver.url}"
secret_file = "{secret}"
rules = ["lockdown_read", "deny_listed"]
""")
    site.import_rules(RULES)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        push(site, "AB123CD")  # a resident, refused: the lane is in lockdown
        assert receiver.wait_for(1)
        [doc] = receiver.alerts.values()
        assert doc["event_type"] == "lockdown_read" and doc["subject"] == "main-in"
        assert doc["message"] == "Plate AB123CD was read at main-in, which is in lockdown."
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_a_flood_of_refused_camera_pushes_from_one_address_alerts(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    secret = tmp_path / "hook.secret"
    secret.write_bytes(receiver.secret)
    site = Site(tmp_path)
    lane = generic_lane('kind = "fake"\npulse_ms = 200').replace(
        'allowed_ips = ["127.0.0.1/32"]', 'token = "camera-token-123456"')
    site.write_config(lane, f"""
[alerts.rules]
refusal_flood = {{ flood_count = 15, flood_window_s = 60.0 }}

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "{receiver.url}"
secret_file = "{secret}"
rules = ["refusal_flood"]
""")
    # Refusals are summarised per address each second (one audit row, with its count).
    site.config.write_text(site.config.read_text().replace(
        "[cameras_listener]\n", "[cameras_listener]\nrefusal_audit_interval_s = 1.0\n", 1))
    site.import_rules(RULES)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
        with httpx.Client() as client:
            statuses = {client.post(url, json={"plate": "AB123CD"},
                                    headers={"Authorization": "Bearer wrong"}).status_code
                        for _ in range(20)}
        assert statuses <= {401, 403, 429}
        assert receiver.wait_for(1)
        [doc] = receiver.alerts.values()
        assert doc["event_type"] == "refusal_flood" and doc["subject"] == "127.0.0.1"
        assert doc["details"]["refusals"] >= 15 and doc["details"]["address"] == "127.0.0.1"
        assert not site.rows()  # nothing refused reached a lane
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_an_ntfy_notification_for_a_deny_listed_plate_says_it_is_late(
        tmp_path: Path, receiver: Receiver) -> None:
    site = make_site(tmp_path, receiver)
    site.config.write_text(site.config.read_text().replace(
        'type = "webhook"\n', 'type = "webhook"\nformat = "ntfy"\n', 1))
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        push(site, "XX000X")
        wait_audit(site, "alert_raised", 1)
        time.sleep(2.0)  # the phone's server is unreachable for a while
        receiver.start()
        assert receiver.wait_for(1)
        [(headers, body)] = [(h, b) for h, b in receiver.bodies if b]
        assert headers["Title"] == "Deny-listed plate XX000X at main-in"
        assert headers["Priority"] == "5"
        text = body.decode()
        assert text.startswith("A deny-listed plate, XX000X, was read at main-in")
        late = re.search(r"\(raised (\d+) s ago\)$", text)
        assert late is not None and int(late.group(1)) >= 2, text
        assert daemon.terminate() == 0
    finally:
        daemon.close()
