"""Remote commands for an HTTP-only gate, end to end: `gated central command` (and
downlink.issue_command) -> PostgreSQL -> `gated central run`'s `GET …/commands` long-poll -> a
real `gated run` daemon syncing over HTTP only, with an LCUS relay on a pty. The command opens
the relay through the control plane, is audited as remote, and its signed result comes back by
`POST …/commands/result`; a command issued mid-wait arrives at once; a command for another
gate and an expired one never reach this gate."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from gated.central import downlink, witness
from gated.central.admin import enrol_device
from gated.sync.signing import load_or_create_key, public_raw, sign
from tests.central.conftest import USERS, AclBroker
from tests.central.test_downlink import Running, central, central_config
from tests.daemon.harness import (
    LCUS_ON,
    RESIDENT_RULES,
    DaemonProcess,
    PtyPort,
    Site,
    audit,
    generic_lane,
    lcus_frames,
    lcus_relay,
    wait_audit,
    wait_until,
)
from tests.support.broker import free_port
from tests.support.postgres import SERVICE, PgServer

pytestmark = pytest.mark.slow

TENANT, DEVICE = "acme", "gate-1"


@dataclass
class World:
    """The service (PostgreSQL, one central instance; a broker only for the CLI) and a gate
    that has no MQTT at all."""

    site: Site
    daemon: DaemonProcess
    relay: PtyPort
    config: Path
    pg_server: PgServer
    pg_db: str
    http_log: Path

    def db(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a query as the superuser (across tenants)."""
        with self.pg_server.connect(self.pg_db) as conn:
            return conn.execute(sql, params).fetchall()

    def issue(self, action: str, device: str = DEVICE, ttl_s: float = 60.0) -> dict[str, Any]:
        """downlink.issue_command as the service role, signed with the service key."""
        key = load_or_create_key(self.config.parent / "service-ed25519.key")
        args = {"lane": "main-in"} if action == "open" else {}
        with self.pg_server.connect(self.pg_db, SERVICE) as conn:
            return downlink.issue_command(conn, key, TENANT, device, action, args,
                                          "unix:test", ttl_s)

    def expired(self, action: str) -> dict[str, Any]:
        """A command recorded as issued 10 minutes ago for 60 s (as a gate offline then left
        it), with the notification an issue sends."""
        key = load_or_create_key(self.config.parent / "service-ed25519.key")
        issued = time.time() - 600
        data = sign({"command_id": str(uuid.uuid4()), "tenant_id": TENANT, "device_id": DEVICE,
                     "action": action, "args": {}, "issuer": "unix:test",
                     "issued_at": witness.rfc3339(issued),
                     "expires_at": witness.rfc3339(issued + 60),
                     "nonce": secrets.token_urlsafe(16)}, key)
        event = {"specversion": "1.0", "id": data["command_id"],
                 "source": f"gated-service://{TENANT}", "type": "io.gated.command.v1",
                 "time": data["issued_at"], "datacontenttype": "application/json", "data": data}
        with self.pg_server.connect(self.pg_db) as conn:
            conn.execute(
                "INSERT INTO commands (tenant_id, command_id, device_id, action, args, issued_by,"
                " issued_at, expires_at, nonce, kid, envelope) VALUES (%s, %s, %s, %s, '{}', %s,"
                " %s, %s, %s, %s, %s)",
                (TENANT, data["command_id"], DEVICE, action, data["issuer"], data["issued_at"],
                 data["expires_at"], data["nonce"], data["kid"], Jsonb(event)))
            conn.execute("SELECT pg_notify(%s, %s)", (downlink.COMMANDS_CHANNEL,
                                                      downlink.command_key(TENANT, DEVICE)))
        return event


@pytest.fixture
def world(tmp_path: Path, acl_broker: AclBroker, pg_server: PgServer, pg_db: str,
          owner: psycopg.Connection[Any]) -> Iterator[World]:
    http_port = free_port()
    # The central side has its broker (the CLI publishes every command on P/commands too);
    # the gate has none: it only has the service's HTTP API.
    config = central_config(
        tmp_path / "central", pg_server.conninfo(pg_db, SERVICE), http_port=http_port,
        mqtt=f'host = "127.0.0.1"\nport = {acl_broker.port}\nusername = "gated-service"\n'
             f'password = "{USERS["gated-service"]}"\nclient_id = "gated-service"',
        downlink_user="gated-service-2", password=USERS["gated-service-2"])
    service_key = load_or_create_key(tmp_path / "central" / "service-ed25519.key")
    service_public = base64.b64encode(public_raw(service_key)).decode()
    relay = PtyPort(tmp_path / "relay-board")
    site = Site(tmp_path / "site")
    site.root.mkdir()
    device_key = load_or_create_key(site.root / "device-ed25519.key")
    token = enrol_device(owner, TENANT, DEVICE, "s-test",
                         base64.b64encode(public_raw(device_key)).decode())
    enrol_device(owner, TENANT, "gate-2", "s-test", None)
    site.write_config(generic_lane(lcus_relay(relay), dedup_window_s=0.01), extra=f"""
[sync]
enabled = true
transport = "http"
ack_timeout_s = 2.0
retry_min_s = 0.05
retry_max_s = 0.5
head_interval_s = 3600
rules_poll_s = 0
# This machine's kernel may not call its clock synchronised; expiry is still checked.
commands_need_synchronised_clock = false
service_public_keys = ["{service_public}"]

[sync.http]
url = "http://127.0.0.1:{http_port}"
token = "{token}"
timeout_s = 5.0
""")
    text = site.config.read_text().replace('tenant_id = "t-test"', f'tenant_id = "{TENANT}"')
    site.config.write_text(text.replace('device_id = "d-test"', f'device_id = "{DEVICE}"'))
    site.import_rules(RESIDENT_RULES)
    service = Running(config)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        world = World(site, daemon, relay, config, pg_server, pg_db, service.log)
        # the gate's start-up audit rows arrived over HTTP: its sync runs
        assert wait_until(lambda: world.db("SELECT 1 FROM audit_logs WHERE device_id = %s",
                                           DEVICE), 30), daemon.log()
        relay.drain()
        yield world
        assert daemon.terminate() == 0
        assert "Traceback" not in daemon.log()
    finally:
        daemon.close()
        service.stop()
        relay.close()


def test_an_http_only_gate_takes_a_command_from_the_cli_and_answers_it(world: World) -> None:
    site = world.site
    done = central("command", "--config", str(world.config), "--tenant", TENANT, "--device",
                   DEVICE, "open", "--lane", "main-in", "--reason", "courier", "--wait", "30")
    assert done.returncode == 0, done.stdout + done.stderr + world.daemon.log()[-3000:]
    out = json.loads(done.stdout)
    command_id = out["command_id"]
    assert out["result"]["outcome"] == "success" and out["result"]["signature_verified"] is True
    assert out["result"]["data"]["lane"] == "main-in"
    assert LCUS_ON in lcus_frames(world.relay.read(8, timeout_s=5))
    [opened] = wait_audit(site, "gate_open")
    assert (opened["actor_type"], opened["request_id"]) == ("remote", command_id)
    assert opened["actor_id"].startswith("unix:")
    [access] = [r for r in site.rows() if r["authorization_method"] == "remote"]
    assert access["gate_opened"] == 1 and access["authorized_by"] == opened["actor_id"]
    with world.pg_server.connect(world.pg_db, SERVICE) as conn:
        [result] = downlink.results_for(conn, TENANT, command_id)
    assert (result["outcome"], result["signature_verified"]) == ("success", True)
    # the gate's audit row reaches the service like every row
    assert wait_until(lambda: world.db(
        "SELECT actor_type FROM audit_logs WHERE action = 'gate_open' AND request_id = %s",
        command_id), 20) == [("remote",)]
    # answered once: not served again, not refused as a replay
    time.sleep(1.0)
    assert audit(site, "remote_command_refused") == []
    assert len(world.db("SELECT 1 FROM command_results WHERE command_id = %s",
                        command_id)) == 1


def test_a_command_issued_mid_wait_arrives_at_once_and_others_never_do(world: World) -> None:
    site = world.site
    # another gate's command and an expired one: this gate never sees either (each NOTIFY
    # wakes the gate's held poll, so the service reads and must leave them out)
    for_other = world.issue("lockdown_on", device="gate-2")
    expired = world.expired("lockdown_on")
    time.sleep(3.0)  # the gate's poll is held now (it asks for 25 s)
    command = world.issue("open")
    issued = time.monotonic()
    assert wait_until(lambda: audit(site, "gate_open"), 10), world.daemon.log()[-3000:]
    took = time.monotonic() - issued
    assert took < 3.0, took
    assert LCUS_ON in lcus_frames(world.relay.read(8, timeout_s=5))
    [opened] = audit(site, "gate_open")
    assert (opened["actor_type"], opened["request_id"]) == ("remote", command["id"])
    assert wait_until(lambda: world.db("SELECT outcome, signature_verified FROM command_results"
                                       " WHERE command_id = %s", command["id"]), 10) == [
        ("success", True)]

    time.sleep(1.5)
    journal = json.dumps([*site.rows("audit_logs"), *site.rows()], default=str)
    assert for_other["id"] not in journal and expired["id"] not in journal
    assert audit(site, "lockdown_on") == [] and audit(site, "remote_command_refused") == []
    assert world.db("SELECT 1 FROM command_results WHERE command_id IN (%s, %s)",
                    for_other["id"], expired["id"]) == []
