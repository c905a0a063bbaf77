"""End to end: two `gated run` daemons of two tenants -> Mosquitto (shipped ACL) -> two
`gated central run` instances sharing the subscription -> PostgreSQL. One instance is killed
and the broker restarted mid-stream; every journaled event arrives exactly once, each
device's chain is witnessed, and each tenant sees only its own rows. A journal backlog
found at start drains through batch messages (protocol section 5), stored exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gated.central.admin import enrol_device
from gated.ids import new_event_id
from gated.journal import Journal
from gated.model import AccessEvent
from gated.sync.signing import load_or_create_key
from tests.central.conftest import USERS, AclBroker
from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    DaemonProcess,
    Site,
    generic_lane,
    post_until_accepted,
    wait_until,
)
from tests.support.device_sim import SimDevice
from tests.support.postgres import SERVICE, PgServer

pytestmark = pytest.mark.slow


def _journal(site: Site, sql: str) -> set[str]:
    conn = sqlite3.connect(site.journal)
    try:
        return {r[0] for t in ("access_logs", "audit_logs")
                for r in conn.execute(sql.format(t=t))}
    finally:
        conn.close()


def _site(root: Path, tenant: str, broker: AclBroker, service_public: str) -> Site:
    site = Site(root)
    site.root.mkdir(parents=True)
    user = f"{tenant}/gate-1"
    site.write_config(generic_lane('kind = "fake"', dedup_window_s=0.01), extra=f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
username = "{user}"
password = "{USERS[user]}"
reconnect_min_s = 0.05
reconnect_max_s = 0.3
keepalive_s = 5

[sync]
enabled = true
ack_timeout_s = 2.0
retry_min_s = 0.05
retry_max_s = 0.5
head_interval_s = 1
heartbeat_interval_s = 1
service_public_keys = ["{service_public}"]
""")
    text = site.config.read_text().replace('tenant_id = "t-test"', f'tenant_id = "{tenant}"')
    site.config.write_text(text.replace('device_id = "d-test"', 'device_id = "gate-1"'))
    site.import_rules(RESIDENT_RULES)
    return site


class Central:
    """`gated central run` as a child process."""

    def __init__(self, root: Path, name: str, conninfo: str, broker: AclBroker, user: str,
                 key_file: Path) -> None:
        self.config = root / f"{name}.toml"
        self.config.write_text(f"""
[database]
url = "{conninfo}"

[service]
key_file = "{key_file}"
instance = "{name}"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
username = "{user}"
password = "{USERS[user]}"
client_id = "{user}"

[http]
enabled = false
""")
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Central:
        """Start and wait until it says ready."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gated", "central", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(lambda: b"ready" in self.log.read_bytes(), 30), self.log.read_text()
        return self

    def kill(self) -> None:
        """SIGKILL: whatever it had not committed is redelivered or re-sent."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_two_gates_two_tenants_two_instances_exactly_once_through_faults(
        tmp_path: Path, acl_broker: AclBroker, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    key_file = tmp_path / "service-ed25519.key"
    service_public = SimDevice("x", "x", "x", key=load_or_create_key(key_file)).public_b64
    sites = {tenant: _site(tmp_path / tenant, tenant, acl_broker, service_public)
             for tenant in ("acme", "globex")}
    for tenant, site in sites.items():
        device_key = load_or_create_key(site.root / "device-ed25519.key")
        enrol_device(owner, tenant, "gate-1", "s-test",
                     SimDevice(tenant, "s-test", "gate-1", key=device_key).public_b64)
    conninfo = pg_server.conninfo(pg_db, SERVICE)
    centrals = [Central(tmp_path, f"central-{i}", conninfo, acl_broker, user, key_file).start()
                for i, user in enumerate(("gated-service", "gated-service-2"), 1)]
    daemons = {tenant: DaemonProcess(site) for tenant, site in sites.items()}
    try:
        for daemon in daemons.values():
            daemon.wait_ready()

        def push(n: int, prefix: str) -> None:
            for i in range(n):
                for tenant, site in sites.items():
                    plate = f"{prefix}{tenant[:2].upper()}{i:03d}"
                    assert post_until_accepted(site.listener_port, CAMERA_PATH, plate) == 200
                time.sleep(0.03)

        push(15, "A")
        centrals[0].kill()  # mid-stream: its uncommitted messages come again
        push(15, "B")
        acl_broker.stop()  # the broker goes away mid-stream and comes back on its port
        time.sleep(1.0)
        acl_broker.start()
        push(15, "C")
        centrals[0].start()

        def all_stored() -> bool:
            with pg_server.connect(pg_db) as conn:
                stored = {str(r[0]) for r in conn.execute("SELECT event_id FROM event_ids")}
            return all(_journal(s, "SELECT event_id FROM {t}") <= stored for s in sites.values())

        assert wait_until(all_stored, 90), [c.log.read_text()[-2000:] for c in centrals]
        # every row acked back to the gates (marked synced), bar the newest heartbeat-era rows
        assert wait_until(lambda: all(
            len(_journal(s, "SELECT event_id FROM {t} WHERE synced_at IS NULL")) <= 1
            for s in sites.values()), 60)
    finally:
        for daemon in daemons.values():
            daemon.terminate()
        for central in centrals:
            central.stop()
    with pg_server.connect(pg_db) as conn:
        for tenant, site in sites.items():
            journal_ids = _journal(site, "SELECT event_id FROM {t}")
            stored = [str(r[0]) for r in conn.execute(
                "SELECT event_id FROM event_ids WHERE tenant_id = %s", (tenant,))]
            assert len(stored) == len(set(stored))  # exactly once
            assert set(stored) - journal_ids == set()  # nothing foreign
            assert journal_ids - set(stored) <= _journal(
                site, "SELECT event_id FROM {t} WHERE synced_at IS NULL")  # only the stop row
            rows = conn.execute(
                "SELECT (SELECT count(*) FROM access_logs WHERE tenant_id = %s) + "
                "(SELECT count(*) FROM audit_logs WHERE tenant_id = %s AND origin = 'device')",
                (tenant, tenant)).fetchone()
            assert rows == (len(stored),)
            chain = conn.execute("SELECT chain_seq, forked FROM devices WHERE tenant_id = %s",
                                 (tenant,)).fetchone()
            assert chain is not None and chain[1] is False and chain[0] >= 45
            health = conn.execute("SELECT last_heartbeat_at IS NOT NULL, status FROM devices "
                                  "WHERE tenant_id = %s", (tenant,)).fetchone()
            assert health is not None and health[0] is True and health[1] in ("online",
                                                                                "offline")
            assert conn.execute("SELECT count(*) FROM audit_logs WHERE tenant_id = %s AND "
                                "origin = 'service'", (tenant,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM chain_heads WHERE status = 'countersigned'"
                            ).fetchone()[0] >= 2  # type: ignore[index]
    with pg_server.connect(pg_db, SERVICE) as conn, conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
        assert conn.execute("SELECT DISTINCT tenant_id FROM access_logs").fetchall() == [
            ("acme",)]


async def _journal_backlog(path: Path, tenant: str, n: int) -> None:
    """Journal n passages as the lanes would have while the sync was away."""
    journal = await Journal.open(path)
    try:
        now = time.time()
        await journal.append_many([AccessEvent(
            event_id=new_event_id(), tenant_id=tenant, site_id="s-test", device_id="gate-1",
            created_at=now - n + i, event_type="entry", access_point="main-in",
            authorization_method="auto_plate", decision_reason="resident", rules_version=1,
            direction="in", vehicle_plate=f"BL{i:05d}", confidence_score=0.9,
            metadata={"backlog": i}, gate_opened=True) for i in range(n)])
    finally:
        await journal.close()


def test_a_journal_backlog_drains_through_batch_messages_exactly_once(
        tmp_path: Path, acl_broker: AclBroker, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    key_file = tmp_path / "service-ed25519.key"
    service_public = SimDevice("x", "x", "x", key=load_or_create_key(key_file)).public_b64
    site = _site(tmp_path / "acme", "acme", acl_broker, service_public)
    device_key = load_or_create_key(site.root / "device-ed25519.key")
    enrol_device(owner, "acme", "gate-1", "s-test",
                 SimDevice("acme", "s-test", "gate-1", key=device_key).public_b64)
    backlog = 1200
    asyncio.run(_journal_backlog(site.journal, "acme", backlog))  # before the sync starts
    # what goes over the broker, message by message (the second service account may read)
    tap: list[Any] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gated-service-2",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.username_pw_set("gated-service-2", USERS["gated-service-2"])
    client.on_connect = lambda c, *a: c.subscribe("gated/v1/acme/gate-1/events", qos=1)
    client.on_message = lambda c, u, m: tap.append(json.loads(m.payload))
    client.connect(acl_broker.host, acl_broker.port)
    client.loop_start()
    central = Central(tmp_path, "central-1", pg_server.conninfo(pg_db, SERVICE), acl_broker,
                      "gated-service", key_file).start()
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        for i in range(5):  # live passages while the backlog drains
            assert post_until_accepted(site.listener_port, CAMERA_PATH, f"LV{i:03d}AB") == 200

        def all_stored() -> bool:
            with pg_server.connect(pg_db) as conn:
                stored = {str(r[0]) for r in conn.execute("SELECT event_id FROM event_ids")}
            return _journal(site, "SELECT event_id FROM {t}") <= stored

        assert wait_until(all_stored, 120), central.log.read_text()[-2000:]
        # every row acked back and marked synced, bar the newest countersignature row
        assert wait_until(lambda: len(
            _journal(site, "SELECT event_id FROM {t} WHERE synced_at IS NULL")) <= 1, 60)
    finally:
        daemon.terminate()
        central.stop()
        client.disconnect()
        client.loop_stop()
    journal_ids = _journal(site, "SELECT event_id FROM {t}")
    with pg_server.connect(pg_db) as conn:
        stored = [str(r[0]) for r in conn.execute("SELECT event_id FROM event_ids")]
        chain = conn.execute("SELECT chain_seq, forked FROM devices").fetchone()
    assert len(stored) == len(set(stored))  # exactly once
    assert set(stored) <= journal_ids  # nothing foreign
    assert journal_ids - set(stored) <= _journal(
        site, "SELECT event_id FROM {t} WHERE synced_at IS NULL")  # only the stop row
    assert chain is not None and chain[1] is False and chain[0] >= backlog
    # the backlog went as arrays of at most 100 events; the broker carried far fewer
    # messages than events (a re-send after ack_timeout_s may add some)
    arrays = [m for m in tap if isinstance(m, list)]
    assert arrays and max(len(a) for a in arrays) <= 100
    carried = sum(len(m) if isinstance(m, list) else 1 for m in tap)
    assert carried >= backlog
    assert len(tap) <= carried // 20, (len(tap), carried)
