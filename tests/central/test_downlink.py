"""The central downlink against a real PostgreSQL and a real `gated central run`: rule sets
published by `gated central rules publish`, served as signed full and delta bundles at
`GET /v1/devices/{id}/rules` only to the device they are for; operator mistakes (an unknown
device, an invalid rule file, a bad action) refused with a clear error and nothing stored;
command results kept only when the device's key signed them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central import downlink
from gated.central.admin import enrol_device
from gated.central.store import Store
from gated.sync.signing import kid_of, load_or_create_key, sign, verify
from tests.central.viewer_support import running_viewer
from tests.daemon.harness import wait_until
from tests.support.broker import free_port
from tests.support.device_sim import SimDevice
from tests.support.postgres import SERVICE, PgServer

RULES: dict[str, Any] = {
    "format": "gated-rules", "format_version": 1,
    "residents": [{"id": "r-1", "name": "Ann", "access_points": "*"},
                  {"id": "r-2", "name": "Bob"}],
    "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"},
                 {"id": "v-2", "plate": "XY999ZZ", "resident_id": "r-2"}],
}


def central_config(root: Path, conninfo: str, *, http_port: int = 0, mqtt: str = "",
                   downlink_user: str = "gated-service-2", password: str = "") -> Path:
    """A central.toml; MQTT off unless `mqtt` holds its [mqtt] body."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "central.toml"
    mqtt_part = f"[mqtt]\n{mqtt}\n" if mqtt else "[mqtt]\nenabled = false\n"
    path.write_text(f"""
[database]
url = "{conninfo}"

[service]
key_file = "{root / 'service-ed25519.key'}"
instance = "central-test"

{mqtt_part}
[downlink]
mqtt_username = "{downlink_user}"
mqtt_password = "{password}"

[http]
enabled = {"true" if http_port else "false"}
listen = "127.0.0.1"
port = {http_port or 8080}
""")
    return path


def central(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `gated central …`."""
    return subprocess.run([sys.executable, "-m", "gated", "central", *args],
                          capture_output=True, text=True, timeout=timeout)


def rule_file(root: Path, rules: dict[str, Any], name: str = "rules.json") -> Path:
    """A rule document written to a file."""
    path = root / name
    path.write_text(json.dumps(rules))
    return path


class Running:
    """`gated central run` as a child process, until stop()."""

    def __init__(self, config: Path) -> None:
        self.log = config.with_suffix(".log")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gated", "central", "run", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT)
        assert wait_until(lambda: b"ready" in self.log.read_bytes(), 30), self.log.read_text()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _service_keys(root: Path) -> dict[str, Any]:
    public = load_or_create_key(root / "service-ed25519.key").public_key()
    return {kid_of(public): public}


def _get(url: str, device: str, token: str, since: Any = 0, etag: str = "") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if etag:
        headers["If-None-Match"] = etag
    return httpx.get(f"{url}/v1/devices/{device}/rules", params={"since": str(since)},
                     headers=headers, timeout=10)


def test_bundles_are_signed_full_or_delta_and_served_only_to_their_device(
        tmp_path: Path, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    tokens = {(t, d): enrol_device(owner, t, d, "hq", SimDevice(t, "hq", d).public_b64)
              for t, d in (("acme", "gate-1"), ("acme", "gate-2"), ("globex", "gate-1"))}
    port = free_port()
    config = central_config(tmp_path, pg_server.conninfo(pg_db, SERVICE), http_port=port)
    url = f"http://127.0.0.1:{port}"
    keys = _service_keys(tmp_path)

    first = central("rules", "publish", "--config", str(config), "--tenant", "acme",
                    "--device", "gate-1", str(rule_file(tmp_path, RULES)))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"tenant_id": "acme", "scope": "device",
                                        "scope_id": "gate-1", "rule_set_version": 1,
                                        "devices": {"gate-1": 1}, "announced": False}
    # the whole site: both acme gates get their next version (gate-2 its first)
    second_rules = {**RULES, "vehicles": [RULES["vehicles"][0],
                                          {"id": "v-3", "plate": "NW111AA", "resident_id": "r-1"}]}
    second = central("rules", "publish", "--config", str(config), "--tenant", "acme",
                     "--site", "hq", str(rule_file(tmp_path, second_rules, "second.json")))
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["devices"] == {"gate-1": 2, "gate-2": 1}

    service = Running(config)
    try:
        token = tokens[("acme", "gate-1")]
        full = _get(url, "gate-1", token, 0)
        assert full.status_code == 200, full.text
        bundle = full.json()
        verify(bundle, keys)
        assert (bundle["tenant_id"], bundle["device_id"], bundle["version"], bundle["mode"],
                bundle["base_version"], bundle["delete"]) == ("acme", "gate-1", 2, "full", None, {})
        assert [v["id"] for v in bundle["rules"]["vehicles"]] == ["v-1", "v-3"]
        assert bundle["rules"]["schedules"] == [] and bundle["issuer"].startswith("unix:")

        delta = _get(url, "gate-1", token, 1)
        assert delta.status_code == 200
        body = delta.json()
        verify(body, keys)
        assert (body["mode"], body["base_version"], body["version"]) == ("delta", 1, 2)
        assert [v["id"] for v in body["rules"]["vehicles"]] == ["v-3"]
        assert body["delete"] == {"vehicles": ["v-2"]} and "residents" not in body["rules"]

        current = _get(url, "gate-1", token, 2)
        assert current.status_code == 304
        same = _get(url, "gate-1", token, 1, etag=delta.headers["ETag"])
        assert same.status_code == 304 and same.headers["ETag"] == delta.headers["ETag"]

        # only its own: another device's path is forbidden, the same device id of another
        # tenant gets its own (none), a made-up token nothing
        assert _get(url, "gate-1", tokens[("acme", "gate-2")]).status_code == 403
        assert _get(url, "gate-1", tokens[("globex", "gate-1")]).status_code == 404
        assert _get(url, "gate-1", "not-a-token").status_code == 401
        own = _get(url, "gate-2", tokens[("acme", "gate-2")])
        assert own.status_code == 200 and own.json()["device_id"] == "gate-2"
        assert own.json()["version"] == 1 and own.json()["mode"] == "full"
        for bad in ("-1", "abc", "1e3", ""):
            assert _get(url, "gate-1", token, bad).status_code == 400, bad
    finally:
        service.stop()

    with pg_server.connect(pg_db) as conn:
        audited = conn.execute(
            "SELECT actor_id, actor_type, new_values->'devices' FROM audit_logs WHERE "
            "action = 'rules_published' AND origin = 'service' ORDER BY created_at").fetchall()
    assert [row[2] for row in audited] == [{"gate-1": 1}, {"gate-1": 2, "gate-2": 1}]
    assert all(row[0].startswith("unix:") and row[1] == "user" for row in audited)


def test_the_service_role_cannot_rewrite_a_version_nor_reach_another_tenant(
        tmp_path: Path, pg_server: PgServer, pg_db: str, owner: psycopg.Connection[Any]) -> None:
    enrol_device(owner, "acme", "gate-1", "hq", None)
    key = Ed25519PrivateKey.generate()
    with pg_server.connect(pg_db, SERVICE) as conn:
        downlink.publish_rules(conn, key, "acme", "device", "gate-1", RULES, "unix:ann")
        for statement in ("UPDATE rule_bundles SET full_bundle = '{}'",
                          "DELETE FROM rule_sets", "UPDATE commands SET action = 'open'",
                          "DELETE FROM command_results"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
                conn.execute(statement)
        downlink.issue_command(conn, key, "acme", "gate-1", "lockdown_on", {}, "unix:ann", 60)
        # without a tenant set, nothing is visible; another tenant sees none of acme's rows and
        # cannot write rows naming acme
        for table in ("rule_sets", "rule_bundles", "commands"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            with conn.transaction():
                conn.execute("SELECT set_config('gated.tenant_id', 'globex', true)")
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            with conn.transaction():
                conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', 'globex', true)")
            conn.execute("INSERT INTO rule_sets (tenant_id, scope, scope_id, version, document,"
                         " sha256, published_by) VALUES ('acme', 'site', 'hq', 9, '{}', %s,"
                         " 'x')", ("0" * 64,))


def test_operator_mistakes_are_refused_clearly_and_store_nothing(
        tmp_path: Path, pg_server: PgServer, pg_db: str, owner: psycopg.Connection[Any]) -> None:
    enrol_device(owner, "acme", "gate-1", "hq", None)
    # an MQTT broker that is not there: every mistake must be caught before it is needed
    config = central_config(tmp_path, pg_server.conninfo(pg_db, SERVICE),
                            mqtt=f'host = "127.0.0.1"\nport = {free_port()}\n'
                                 'username = "gated-service"\npassword = "x"')
    base = ("--config", str(config), "--tenant", "acme")

    unknown = central("rules", "publish", *base, "--device", "gate-9",
                      str(rule_file(tmp_path, RULES)))
    assert unknown.returncode == 1 and "has no device 'gate-9'" in unknown.stderr
    no_site = central("rules", "publish", *base, "--site", "nowhere",
                      str(rule_file(tmp_path, RULES)))
    assert no_site.returncode == 1 and "has no site 'nowhere'" in no_site.stderr
    broken = {**RULES, "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-404"}]}
    invalid = central("rules", "publish", *base, "--device", "gate-1",
                      str(rule_file(tmp_path, broken, "broken.json")))
    assert invalid.returncode == 1 and "r-404" in invalid.stderr, invalid.stderr
    missing = central("rules", "publish", *base, "--device", "gate-1",
                      str(tmp_path / "absent.json"))
    assert missing.returncode == 1 and "no such file" in missing.stderr

    bad_action = central("command", *base, "--device", "gate-1", "self_destruct")
    assert bad_action.returncode == 1 and "unknown action 'self_destruct'" in bad_action.stderr
    relay_test = central("command", *base, "--device", "gate-1", "relay_test")
    assert relay_test.returncode == 1 and "unknown action" in relay_test.stderr
    no_lane = central("command", *base, "--device", "gate-1", "open")
    assert no_lane.returncode == 1 and "open needs --lane" in no_lane.stderr
    long_ttl = central("command", *base, "--device", "gate-1", "lockdown_on", "--ttl", "3600")
    assert long_ttl.returncode == 1 and "--ttl must be 1-300" in long_ttl.stderr
    no_device = central("command", *base, "--device", "gate-9", "open", "--lane", "main-in")
    assert no_device.returncode == 1 and "has no device 'gate-9'" in no_device.stderr

    # the operator commands never share the running instances' broker account
    shared = central_config(tmp_path / "shared", pg_server.conninfo(pg_db, SERVICE),
                            mqtt='username = "gated-service"', downlink_user="gated-service")
    same = central("command", "--config", str(shared), "--tenant", "acme", "--device",
                   "gate-1", "lockdown_on")
    assert same.returncode == 1 and "account of their own" in same.stderr

    # the broker is away: the command is recorded and audited, then the error says so
    away = central("command", *base, "--device", "gate-1", "lockdown_on")
    assert away.returncode == 1 and "broker" in away.stderr, away.stderr
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM rule_sets").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM rule_bundles").fetchone() == (0,)
        assert conn.execute("SELECT action FROM commands").fetchall() == [("lockdown_on",)]
        assert conn.execute("SELECT count(*) FROM audit_logs WHERE action = "
                            "'remote_command_issued'").fetchone() == (1,)


def _result(device: SimDevice, key: Ed25519PrivateKey | None, **data: Any) -> dict[str, Any]:
    body = {"command_id": "6f1c0000-0000-4000-8000-000000000001", "tenant_id": device.tenant_id,
            "device_id": device.device_id, "action": "open", "outcome": "success",
            "reason": None, "message": "main-in opened", "data": {"lane": "main-in"},
            "at": "2026-06-01T08:00:00.412345Z", **data}
    signed = sign(body, key) if key is not None else body
    return {"specversion": "1.0", "id": "0193a000-0000-7000-8000-000000000001",
            "source": device.source, "type": "io.gated.command.result.v1",
            "time": body["at"], "subject": body["command_id"], "data": signed}


def test_a_result_is_kept_only_when_the_device_key_signed_it_and_only_once(
        pg_server: PgServer, pg_db: str, owner: psycopg.Connection[Any]) -> None:
    device = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", device.public_b64)
    with pg_server.connect(pg_db, SERVICE) as conn:
        assert downlink.record_result(conn, "acme", "gate-1", _result(device, device.key))
        assert downlink.record_result(conn, "acme", "gate-1", _result(device, device.key))
        forged = Ed25519PrivateKey.generate()
        assert not downlink.record_result(conn, "acme", "gate-1", _result(device, forged))
        assert not downlink.record_result(conn, "acme", "gate-1", _result(device, None))
        other = SimDevice("acme", "hq", "gate-2", key=device.key)
        assert not downlink.record_result(conn, "acme", "gate-1", _result(other, device.key))
        [kept] = downlink.results_for(conn, "acme", "6f1c0000-0000-4000-8000-000000000001")
    assert (kept["outcome"], kept["signature_verified"], kept["data"]) == (
        "success", True, {"lane": "main-in"})


async def test_the_viewer_shows_which_published_bundle_a_gate_runs(
        tmp_path: Path, pg_server: PgServer, pg_db: str, store: Store,
        owner: psycopg.Connection[Any]) -> None:
    for device in ("gate-1", "gate-2"):
        enrol_device(owner, "acme", device, "hq", None)
    with pg_server.connect(pg_db, SERVICE) as conn:
        for _ in range(2):
            downlink.publish_rules(conn, store.key, "acme", "site", "hq", RULES, "unix:ann")
    # gate-1 installed the newest; gate-2 still runs version 1 and refused the next
    store.heartbeat("acme", "gate-1", {"rules_version": 5, "rules_bundle": {
        "rules_bundle_version": 2, "rules_last_error": None}})
    store.heartbeat("acme", "gate-2", {"rules_version": 4, "rules_bundle": {
        "rules_bundle_version": 1, "rules_last_error": "bundle refused: <b>invalid_rules</b>"}})
    async with running_viewer(pg_server, pg_db, tmp_path) as viewer:
        await viewer.add_user("acme", "ada", "viewer")
        page = (await (await viewer.login("acme", "ada")).get("/devices")).text
    one = page.split('id="device-gate-1"', 1)[1].split("</tr>", 1)[0]
    two = page.split('id="device-gate-2"', 1)[1].split("</tr>", 1)[0]
    assert '<small class="bundle ok">bundle 2 of 2</small>' in one and "refused" not in one
    assert '<small class="bundle bad">bundle 1 of 2</small>' in two
    assert "refused" in two and "<b>" not in two  # the device's text is escaped
