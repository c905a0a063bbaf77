"""`gated run` with the downlink: signed commands and rule bundles from the reference receiver
over a real Mosquitto, and `gated journal verify --countersigned` against the head the
receiver countersigned.

Each test runs the real daemon (an LCUS relay on a pty, a generic JSON camera push), the
receiver with its DownlinkPeer (the service's side of docs/protocol.md section 11), and a
Mosquitto on a free port.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gated.sync.signing import KEY_FILE_NAME, kid_of, load_or_create_key, verify
from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_ON,
    RESIDENT_RULES,
    DaemonProcess,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_frames,
    lcus_relay,
    post_until_accepted,
    wait_audit,
    wait_until,
)
from tests.support.broker import mosquitto_available
from tests.support.downlink_peer import DownlinkPeer
from tests.support.receiver import Receiver

pytestmark = pytest.mark.slow

TENANT, DEVICE = "t-test", "d-test"  # as tests.daemon.harness.Site writes them


@dataclass
class Service:
    """The central service's side: broker, reference receiver, its downlink."""

    receiver: Receiver
    peer: DownlinkPeer
    broker_port: int


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    from tests.sync.conftest import KillableBroker

    broker = KillableBroker(tmp_path)
    broker.start()
    receiver = Receiver(tmp_path / "service.sqlite3", mqtt_port=broker.port, http=True)
    peer = DownlinkPeer(receiver, TENANT)
    receiver.start()
    try:
        yield Service(receiver, peer, broker.port)
        assert receiver.invalid == [] and peer.invalid == []  # every message met its schema
    finally:
        receiver.stop()
        broker.stop()


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def sync_site(root: Path, service: Service, relay_port: PtyPort, *,
              head_interval_s: float = 3600) -> Site:
    """One lane on an LCUS relay, syncing over MQTT, bundles over the receiver's HTTP."""
    site = Site(root)
    site.root.mkdir()
    site.write_config(generic_lane(lcus_relay(relay_port), dedup_window_s=0.01), extra=f"""
[mqtt]
host = "127.0.0.1"
port = {service.broker_port}
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
ack_timeout_s = 2.0
retry_min_s = 0.05
retry_max_s = 0.5
heartbeat_interval_s = 1
head_interval_s = {head_interval_s}
rules_poll_s = 0
# This machine's kernel may not call its clock synchronised; expiry is still checked.
commands_need_synchronised_clock = false
service_public_keys = ["{service.receiver.service_public_b64}"]

[sync.http]
url = "{service.receiver.base_url}"
token = "device-secret"
timeout_s = 2.0
""")
    site.import_rules(RESIDENT_RULES)
    return site


def start(site: Site, service: Service) -> DaemonProcess:
    """A ready daemon whose downlink is subscribed (a heartbeat arrived since it started)."""
    seen = len(service.receiver.heartbeats)
    (site.root / "notify.sock").unlink(missing_ok=True)  # left bound by an earlier run
    daemon = DaemonProcess(site)
    daemon.wait_ready()
    # Heartbeats go out only on a connected link, after the subscriptions were made.
    assert wait_until(lambda: len(service.receiver.heartbeats) > seen, 20), daemon.log()
    return daemon


def push(site: Site, plate: str) -> dict[str, Any]:
    """A camera read of this plate; its access row once journaled."""
    before = len([r for r in site.rows() if r["vehicle_plate"] == plate])
    assert post_until_accepted(site.listener_port, CAMERA_PATH, plate) == 200
    assert wait_until(lambda: len([r for r in site.rows() if r["vehicle_plate"] == plate])
                      > before)
    return [r for r in site.rows() if r["vehicle_plate"] == plate][-1]


def device_keys(site: Site) -> dict[str, Any]:
    """The device's public key by kid (the daemon created it beside the journal)."""
    public = load_or_create_key(site.root / KEY_FILE_NAME).public_key()
    return {kid_of(public): public}


def test_a_signed_open_opens_the_relay_and_its_replay_after_a_restart_is_refused(
    tmp_path: Path, service: Service, relay_port: PtyPort
) -> None:
    site = sync_site(tmp_path / "site", service, relay_port)
    peer = service.peer
    daemon = start(site, service)
    try:
        relay_port.drain()
        command = peer.command(DEVICE, "open", lane="main-in", reason="courier")
        command_id = command["data"]["command_id"]
        peer.send(DEVICE, command)
        result = wait_until(lambda: peer.result_for(command_id), 20)
        assert result is not None, daemon.log()
        assert result["data"]["outcome"] == "success", result
        verify(result["data"], device_keys(site))  # signed by this device's key
        assert LCUS_ON in lcus_frames(relay_port.read(8, timeout_s=5))
        [opened] = wait_audit(site, "gate_open")
        assert (opened["actor_type"], opened["actor_id"], opened["request_id"]) == (
            "remote", "ops:ann@example.com", command_id)
        [row] = [r for r in site.rows() if r["authorization_method"] == "remote"]
        assert row["access_point"] == "main-in" and row["gate_opened"] == 1
        assert daemon.terminate() == 0
        relay_port.drain()

        daemon = start(site, service)
        peer.send(DEVICE, command)  # the very same signed command, captured and replayed
        [refused] = wait_audit(site, "remote_command_refused", timeout_s=20)
        assert refused["error_message"].startswith("refused: replayed"), refused
        assert json.loads(refused["metadata"])["reason"] == "replayed"
        assert refused["request_id"] == command_id
        answers = wait_until(lambda: [e for e in peer.results
                                      if e["data"]["command_id"] == command_id
                                      and e["data"]["outcome"] == "refused"], 20)
        assert answers and answers[0]["data"]["reason"] == "replayed"
        assert len(audit(site, "gate_open")) == 1
        assert LCUS_ON not in lcus_frames(relay_port.drain(0.5))
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_a_signed_bundle_is_applied_by_the_running_daemon_and_an_unsigned_one_is_not(
    tmp_path: Path, service: Service, relay_port: PtyPort
) -> None:
    site = sync_site(tmp_path / "site", service, relay_port)
    peer, receiver = service.peer, service.receiver
    residents = RESIDENT_RULES["residents"]
    vehicles = RESIDENT_RULES["vehicles"]
    daemon = start(site, service)
    try:
        assert push(site, "NW111AA")["event_type"] == "denied"  # unknown before the bundle
        relay_port.drain()
        peer.add_bundle(DEVICE, 5, {"residents": residents, "vehicles": [
            *vehicles, {"id": "v-9", "plate": "NW111AA", "resident_id": "r-1"}]})
        peer.announce(DEVICE, 5)
        [applied] = wait_audit(site, "rules_bundle_applied", timeout_s=20)
        assert applied["resource_id"] == "5" and applied["actor_type"] == "remote"
        rules_version = json.loads(applied["new_values"])["rules_version"]
        assert rules_version == 2  # the installer's import was 1

        def reported(version: int) -> dict[str, Any] | None:
            for beat in reversed(list(receiver.heartbeats)):
                data = beat.get("data", beat)
                bundle = data.get("rules_bundle") or {}
                if bundle.get("rules_bundle_version") == version:
                    return data
            return None

        beat = wait_until(lambda: reported(5), 20)
        assert beat is not None, receiver.heartbeats[-1:]
        assert beat["rules_version"] == rules_version
        assert beat["rules_bundle"]["rules_last_error"] is None
        row = push(site, "NW111AA")
        assert (row["event_type"], row["decision_reason"], row["gate_opened"]) == (
            "entry", "resident", 1)
        assert row["rules_version"] == rules_version
        assert LCUS_ON in lcus_frames(relay_port.read(8, timeout_s=5))

        # An unsigned bundle behind a signed announcement: refused, audited, nothing changes.
        bundle = peer.add_bundle(DEVICE, 6, {"residents": residents, "vehicles": [
            *vehicles, {"id": "v-10", "plate": "BD666XX", "resident_id": "r-1"}]},
            tampered=True)
        del bundle["sig"]
        peer.announce(DEVICE, 6)
        [refused] = wait_audit(site, "rules_bundle_refused", timeout_s=20)
        assert json.loads(refused["metadata"])["reason"] == "unsigned"
        assert push(site, "BD666XX")["event_type"] == "denied"
        seen = len(receiver.heartbeats)
        assert wait_until(lambda: len(receiver.heartbeats) > seen + 1, 20)
        last = receiver.heartbeats[-1].get("data", receiver.heartbeats[-1])
        assert last["rules_bundle"]["rules_bundle_version"] == 5
        assert last["rules_bundle"]["rules_announced_version"] == 6
        assert last["rules_version"] == rules_version
        assert last["rules_bundle"]["rules_last_error"].startswith("bundle refused")
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def _cut_tail(journal: Path, from_seq: int) -> None:
    """Delete every row from `from_seq` on, triggers put back as they were (a careful cut)."""
    conn = sqlite3.connect(journal)
    saved = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in saved:
        conn.execute(f"DROP TRIGGER {name}")
    for table in ("access_logs", "audit_logs"):
        conn.execute(f"DELETE FROM {table} WHERE seq >= ?", (from_seq,))
    for _, text in saved:
        conn.execute(text)
    conn.commit()
    conn.close()


def test_journal_verify_countersigned_passes_intact_and_fails_a_cut_tail(
    tmp_path: Path, service: Service, relay_port: PtyPort
) -> None:
    site = sync_site(tmp_path / "site", service, relay_port, head_interval_s=1)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        # The service accepts heads signed by this device once it is registered.
        for public in device_keys(site).values():
            service.receiver.register_device(public)
        for plate in ("AB123CD", "GH456JK", "NW222BB"):
            push(site, plate)
        assert wait_audit(site, "head_countersigned", timeout_s=30), daemon.log()
        copy = site.root / "countersigned-head.json"
        assert wait_until(copy.exists, 10)
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    newest = max(json.loads(r["new_values"])["seq"] for r in audit(site, "head_countersigned"))
    assert json.loads(copy.read_text())["seq"] == newest

    ok = gated("journal", "verify", "--countersigned", "--config", str(site.config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "journal intact" in ok.stdout and f"countersigned head seq {newest}" in ok.stdout
    assert "service signature checked" in ok.stdout

    # A copy whose hash was changed no longer carries the service's signature.
    saved = copy.read_text()
    forged = json.loads(saved) | {"row_hash": "0" * 64}
    copy.write_text(json.dumps(forged))
    bad = gated("journal", "verify", "--countersigned", "--config", str(site.config))
    assert bad.returncode == 1 and "does not verify" in bad.stdout, bad.stdout + bad.stderr
    copy.write_text(saved)

    # The tail cut at the countersigned seq, its countersignature rows with it: the plain
    # chain check passes, the countersigned head (kept beside the journal) does not.
    _cut_tail(site.journal, newest)
    plain = gated("journal", "verify", "--db", str(site.journal))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    cut = gated("journal", "verify", "--countersigned", "--config", str(site.config))
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "truncated" in cut.stdout


# --- gated demo with a broker ------------------------------------------------------------


def test_the_demo_syncs_to_a_broker_and_says_plainly_when_there_is_none(tmp_path: Path) -> None:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    from tests.support.broker import free_port, mosquitto_broker

    with mosquitto_broker(tmp_path / "broker") as broker:
        demo = gated("demo", "--dir", str(tmp_path / "demo"), "--duration", "8", "--interval",
                     "0.3", "--port", "0", "--mqtt", f"127.0.0.1:{broker.port}", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert f"sync    MQTT 127.0.0.1:{broker.port}" in out
    assert "stored and acknowledged by the demo service" in out
    *_, last = out.strip().splitlines()
    assert last.startswith("gated demo: synced "), last
    synced = int(last.split()[3])
    assert synced >= 5, last
    # Every row the device marked synced is in the demo service's own store: acks of record.
    journal = sqlite3.connect(tmp_path / "demo" / "journal.sqlite3")
    marked = {r[0] for t in ("access_logs", "audit_logs") for r in journal.execute(
        f"SELECT event_id FROM {t} WHERE synced_at IS NOT NULL")}
    journal.close()
    service = sqlite3.connect(tmp_path / "demo" / "service.sqlite3")
    kept = {r[0] for r in service.execute("SELECT event_id FROM events")}
    service.close()
    assert len(marked) == synced and marked <= kept

    port = free_port()  # nothing listens there
    alone = gated("demo", "--dir", str(tmp_path / "alone"), "--duration", "3", "--interval",
                  "0.3", "--port", "0", "--mqtt", f"127.0.0.1:{port}", timeout=120)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    said = [line for line in alone.stdout.splitlines() if "no MQTT broker" in line]
    assert len(said) == 1 and f"127.0.0.1:{port}" in said[0] and "sync is off" in said[0]
    assert " OPEN " in alone.stdout  # the demo kept deciding
    assert "synced" not in alone.stdout
