"""The downlink end to end: `gated central rules publish` and `gated central command` -> Mosquitto
(the shipped ACL) and `gated central run`'s HTTP -> a real `gated run` daemon with an LCUS relay
on a pty. A published rule set is fetched, installed and reported, and a plate in it opens the
gate; a delta removes one; a command opens the relay through the control plane and its signed
result is stored; an expired and a tampered command are refused by the device and their
refusals stored too. A viewer admin sends a command through the same path; others cannot."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gated.central import downlink
from gated.central.admin import enrol_device
from gated.sync.signing import load_or_create_key, public_raw, sign
from tests.central.conftest import USERS, AclBroker
from tests.central.test_downlink import Running, central, central_config, rule_file
from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_ON,
    RESIDENT_RULES,
    DaemonProcess,
    PtyPort,
    Site,
    audit,
    generic_lane,
    lcus_frames,
    lcus_relay,
    post_until_accepted,
    wait_audit,
    wait_until,
)
from tests.support.broker import free_port
from tests.support.postgres import SERVICE, PgServer

pytestmark = pytest.mark.slow

TENANT, DEVICE = "acme", "gate-1"


@dataclass
class World:
    """The service (PostgreSQL, broker, one central instance) and one gate."""

    site: Site
    daemon: DaemonProcess
    relay: PtyPort
    config: Path
    pg_server: PgServer
    pg_db: str
    broker_port: int

    def db(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a query as the superuser (across tenants)."""
        with self.pg_server.connect(self.pg_db) as conn:
            return conn.execute(sql, params).fetchall()

    def push(self, plate: str) -> dict[str, Any]:
        """A camera read of this plate; its access row once journaled."""
        before = len([r for r in self.site.rows() if r["vehicle_plate"] == plate])
        assert post_until_accepted(self.site.listener_port, CAMERA_PATH, plate) == 200
        assert wait_until(lambda: len([r for r in self.site.rows()
                                       if r["vehicle_plate"] == plate]) > before)
        return [r for r in self.site.rows() if r["vehicle_plate"] == plate][-1]

    def publish(self, rules: dict[str, Any], name: str) -> dict[str, Any]:
        """`gated central rules publish` for the gate; its JSON answer."""
        done = central("rules", "publish", "--config", str(self.config), "--tenant", TENANT,
                       "--device", DEVICE, str(rule_file(self.site.root, rules, name)))
        assert done.returncode == 0, done.stdout + done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer


@pytest.fixture
def world(tmp_path: Path, acl_broker: AclBroker, pg_server: PgServer, pg_db: str,
          owner: psycopg.Connection[Any]) -> Iterator[World]:
    http_port = free_port()
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
    user = f"{TENANT}/{DEVICE}"
    site.write_config(generic_lane(lcus_relay(relay), dedup_window_s=0.01), extra=f"""
[mqtt]
host = "127.0.0.1"
port = {acl_broker.port}
username = "{user}"
password = "{USERS[user]}"
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
ack_timeout_s = 2.0
retry_min_s = 0.05
retry_max_s = 0.5
heartbeat_interval_s = 1
head_interval_s = 3600
rules_poll_s = 0
# This machine's kernel may not call its clock synchronised; expiry is still checked.
commands_need_synchronised_clock = false
service_public_keys = ["{service_public}"]

[sync.http]
url = "http://127.0.0.1:{http_port}"
token = "{token}"
timeout_s = 2.0
""")
    text = site.config.read_text().replace('tenant_id = "t-test"', f'tenant_id = "{TENANT}"')
    site.config.write_text(text.replace('device_id = "d-test"', f'device_id = "{DEVICE}"'))
    site.import_rules(RESIDENT_RULES)
    service = Running(config)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        world = World(site, daemon, relay, config, pg_server, pg_db, acl_broker.port)
        # a heartbeat stored: the gate's link is up and its downlink subscribed
        assert wait_until(lambda: world.db("SELECT 1 FROM devices WHERE last_heartbeat_at "
                                           "IS NOT NULL"), 30), daemon.log()
        relay.drain()
        yield world
        assert daemon.terminate() == 0
    finally:
        daemon.close()
        service.stop()
        relay.close()


def test_a_published_rule_set_is_installed_reported_and_opens_and_a_delta_follows(
        world: World) -> None:
    site = world.site
    assert world.push("NW111AA")["event_type"] == "denied"  # not in the installer's rules
    world.relay.drain()
    vehicles = [*RESIDENT_RULES["vehicles"],
                {"id": "v-9", "plate": "NW111AA", "resident_id": "r-1"}]
    answer = world.publish({"format": "gated-rules", "format_version": 1,
                            "residents": RESIDENT_RULES["residents"], "vehicles": vehicles},
                           "v1.json")
    assert answer["devices"] == {DEVICE: 1} and answer["announced"] is True

    [applied] = wait_audit(site, "rules_bundle_applied", timeout_s=30)
    assert (applied["resource_id"], applied["actor_type"]) == ("1", "remote"), applied
    assert applied["actor_id"].startswith("unix:")
    installed = json.loads(applied["new_values"])
    assert installed["mode"] == "full" and installed["rules_version"] == 2
    row = world.push("NW111AA")
    assert (row["event_type"], row["decision_reason"], row["gate_opened"]) == (
        "entry", "resident", 1)
    assert LCUS_ON in lcus_frames(world.relay.read(8, timeout_s=5))

    def reported(version: int) -> Any:
        return world.db("SELECT rules_version FROM devices WHERE (rules_bundle->>"
                        "'rules_bundle_version')::int = %s", version)

    assert wait_until(lambda: reported(1), 20) == [(2,)]

    # a delta: v-2 goes, the rest stays; one new rule-store version on the gate
    answer = world.publish({"format": "gated-rules", "format_version": 1,
                            "residents": RESIDENT_RULES["residents"],
                            "vehicles": [v for v in vehicles if v["id"] != "v-2"]}, "v2.json")
    assert answer["devices"] == {DEVICE: 2}
    applied_rows = wait_audit(site, "rules_bundle_applied", 2, timeout_s=30)
    assert len(applied_rows) == 2, world.daemon.log()[-3000:]
    second = json.loads(applied_rows[1]["new_values"])
    assert (second["mode"], second["base_version"], second["deleted"]["vehicles"]) == (
        "delta", 1, 1)
    assert world.push("GH456JK")["event_type"] == "denied"
    assert world.push("AB123CD")["event_type"] == "entry"
    assert wait_until(lambda: reported(2), 20) == [(3,)]
    assert audit(site, "rules_bundle_refused") == []


def _signed_command(key: Any, *, issued: float, ttl: float = 60.0,
                    **changes: Any) -> dict[str, Any]:
    """A command signed with the service key, issued at `issued`; `changes` after signing."""
    data = sign({"command_id": str(uuid.uuid4()), "tenant_id": TENANT,
                 "device_id": DEVICE, "action": "open", "args": {"lane": "main-in"},
                 "issuer": "unix:mallory", "issued_at": downlink.witness.rfc3339(issued),
                 "expires_at": downlink.witness.rfc3339(issued + ttl),
                 "nonce": "n" * 12 + str(int(issued * 1000))}, key)
    data.update(changes)
    return {"specversion": "1.0", "id": data["command_id"],
            "source": f"gated-service://{TENANT}", "type": "io.gated.command.v1",
            "time": data["issued_at"], "datacontenttype": "application/json", "data": data}


def test_a_command_opens_the_relay_its_result_is_stored_and_bad_ones_are_refused(
        world: World) -> None:
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
    assert world.db("SELECT action, args, issued_by FROM commands WHERE command_id = %s",
                    command_id) == [("open", {"lane": "main-in", "reason": "courier"},
                                     opened["actor_id"])]
    assert world.db("SELECT actor_id, actor_type, device_id, request_id FROM audit_logs "
                    "WHERE action = 'remote_command_issued'") == [
        (opened["actor_id"], "user", DEVICE, command_id)]

    # an expired and a tampered command, sent through the same broker account
    key = load_or_create_key(world.config.parent / "service-ed25519.key")
    expired = _signed_command(key, issued=time.time() - 600)
    tampered = _signed_command(key, issued=time.time(), args={"lane": "main-in",
                                                              "reason": "changed"})
    account = downlink.broker_account(world.config, {
        "host": "127.0.0.1", "port": world.broker_port, "username": "gated-service"})
    topic = downlink.topic(TENANT, DEVICE, "commands")
    downlink.mqtt_publish(account, [(topic, downlink.dumps(expired), False),
                                    (topic, downlink.dumps(tampered), False)])

    def stored(command: dict[str, Any]) -> Any:
        return world.db("SELECT outcome, reason, signature_verified FROM command_results "
                        "WHERE command_id = %s", command["id"])

    assert wait_until(lambda: stored(expired), 20) == [("refused", "expired", True)]
    assert wait_until(lambda: stored(tampered), 20) == [("refused", "bad_signature", True)]
    refused = wait_audit(site, "remote_command_refused", 2)
    assert sorted(json.loads(r["metadata"])["reason"] for r in refused) == [
        "bad_signature", "expired"]
    assert len(audit(site, "gate_open")) == 1
    assert LCUS_ON not in lcus_frames(world.relay.drain(0.5))


class _Gate:
    """A device's own MQTT account, subscribed to its P/commands (what the gate would get)."""

    def __init__(self, broker: AclBroker) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        user = f"{TENANT}/{DEVICE}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_connect = lambda c, *_: c.subscribe(downlink.topic(TENANT, DEVICE,
                                                                          "commands"), 1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_an_admin_sends_a_command_from_the_viewer_and_others_cannot(
        tmp_path: Path, acl_broker: AclBroker, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    from gated.sync.signing import kid_of, verify
    from tests.central.viewer_support import csrf_of, running_viewer

    enrol_device(owner, TENANT, DEVICE, "hq", None)
    key = load_or_create_key(tmp_path / "service-ed25519.key")
    account = downlink.BrokerAccount("127.0.0.1", acl_broker.port, "gated-service-2",
                                     USERS["gated-service-2"], "gated-service-2", "")
    issue = downlink.command_issuer(pg_server.conninfo(pg_db, SERVICE), key, account)
    gate = _Gate(acl_broker)
    try:
        async with running_viewer(pg_server, pg_db, tmp_path, issue_command=issue) as viewer:
            await viewer.add_user(TENANT, "ada", "admin")
            await viewer.add_user(TENANT, "otto", "viewer")
            ada = await viewer.login(TENANT, "ada")
            csrf = await csrf_of(ada, "/devices")
            url = f"/devices/{DEVICE}/commands"
            sent = await ada.post(url, data={"csrf": csrf, "action": "open", "lane": "main-in",
                                             "reason": "delivery"})
            assert sent.status_code == 303, sent.text  # post/redirect/get
            shown = await ada.get(sent.headers["location"])
            assert shown.status_code == 200 and "open sent to gate-1" in shown.text, shown.text
            assert wait_until(lambda: gate.received, 10)
            [command] = gate.received
            verify(command["data"], {kid_of(key.public_key()): key.public_key()})
            assert (command["data"]["issuer"], command["data"]["args"]) == (
                "viewer:ada", {"lane": "main-in", "reason": "delivery"})

            bad = await ada.post(url, data={"csrf": csrf, "action": "relay_test"})
            assert bad.status_code == 400 and "unknown action" in bad.text
            no_lane = await ada.post(url, data={"csrf": csrf, "action": "hold"})
            assert no_lane.status_code == 400 and "hold needs --lane" in no_lane.text
            unknown = await ada.post("/devices/gate-9/commands",
                                     data={"csrf": csrf, "action": "lockdown_on"})
            assert unknown.status_code == 400 and "has no device" in unknown.text
            forged = await ada.post(url, data={"csrf": "wrong", "action": "lockdown_on"})
            assert forged.status_code == 403
            otto = await viewer.login(TENANT, "otto")
            assert "/commands" not in (await otto.get("/devices")).text
            refused = await otto.post(url, data={"csrf": await csrf_of(otto, "/devices"),
                                                 "action": "lockdown_on"})
            assert refused.status_code == 403
        async with running_viewer(pg_server, pg_db, tmp_path) as plain:
            await plain.add_user(TENANT, "eve", "admin")
            eve = await plain.login(TENANT, "eve")
            off = await eve.post(url, data={"csrf": await csrf_of(eve, "/devices"),
                                            "action": "lockdown_on"})
            assert off.status_code == 503 and "[downlink]" in off.text
    finally:
        gate.stop()
    assert len(gate.received) == 1  # nothing refused went out
    with pg_server.connect(pg_db) as conn:
        rows = conn.execute("SELECT actor_id, metadata->>'via', request_id FROM audit_logs "
                            "WHERE action = 'remote_command_issued'").fetchall()
    assert rows == [("viewer:ada", "viewer", command["id"])]
