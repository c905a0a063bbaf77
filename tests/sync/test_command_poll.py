"""The HTTP command poller of an HTTP-only gate (docs/protocol.md 11.5), in the real Downlink
with its real CommandReceiver and replay cache on disk, against a service on a loopback port
that misbehaves on purpose: a 503 with Retry-After, a 401 and an unreadable answer are retried
with back-off (and shown to health) before a signed command is handed on once and its signed
result POSTed; the same command served again is refused `replayed` and acts nowhere; a service
that keeps serving a command whose result it does not keep is not polled in a tight loop."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.control import Actor, ActorType, Outcome, Result
from gated.errors import ConfigError
from gated.sync.downlink import Downlink
from gated.sync.envelope import rfc3339
from gated.sync.signing import kid_of, public_raw, sign, verify
from tests.support.broker import free_port
from tests.sync.conftest import DEVICE, TENANT, eventually, sync_config


def _command(key: Ed25519PrivateKey, action: str = "open") -> dict[str, Any]:
    now = time.time()
    data = sign({"command_id": str(uuid.uuid4()), "tenant_id": TENANT, "device_id": DEVICE,
                 "action": action, "args": {"lane": "main-in"}, "issuer": "ops:ann",
                 "issued_at": rfc3339(now), "expires_at": rfc3339(now + 60),
                 "nonce": uuid.uuid4().hex}, key)
    return {"specversion": "1.0", "id": data["command_id"],
            "source": f"gated-service://{TENANT}", "type": "io.gated.command.v1",
            "time": data["issued_at"], "datacontenttype": "application/json", "data": data}


@dataclass
class Service:
    """The service's command endpoints, answering GETs from a script, then holding briefly."""

    script: list[Any] = field(default_factory=list)
    forever: list[dict[str, Any]] | None = None  # served on every GET once the script is done
    result_status: int = 200
    gets: list[tuple[float, Mapping[str, str]]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def get_commands(self, request: web.Request) -> web.Response:
        self.gets.append((time.monotonic(), dict(request.query) | {
            "auth": request.headers.get("Authorization", "")}))
        if self.script:
            step = self.script.pop(0)
            if step == 503:
                return web.json_response({"error": "busy"}, status=503,
                                         headers={"Retry-After": "1"})
            if step == 401:
                return web.json_response({"error": "unknown token"}, status=401)
            if step == "garbage":
                return web.Response(body=b"<html>proxy error</html>", status=200)
            return web.json_response(step, content_type="application/cloudevents-batch+json")
        if self.forever is not None:
            return web.json_response(self.forever)
        await asyncio.sleep(0.3)  # a held poll that ends empty
        return web.json_response([])

    async def post_result(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/cloudevents+json"
        self.results.append(json.loads(await request.read()))
        return web.json_response({"kept": self.result_status == 200},
                                 status=self.result_status)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    """The scripted service on a loopback port."""
    svc = Service()
    app = web.Application()
    app.router.add_get(f"/v1/devices/{DEVICE}/commands", svc.get_commands)
    app.router.add_post(f"/v1/devices/{DEVICE}/commands/result", svc.post_result)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    svc.url = f"http://127.0.0.1:{port}"
    yield svc
    await runner.cleanup()


class Gate:
    """The downlink of an HTTP-only gate with a recording control plane and auditor."""

    def __init__(self, tmp: Path, url: str, service_key: Ed25519PrivateKey, **sync: Any) -> None:
        self.device_key = Ed25519PrivateKey.generate()
        self.performed: list[tuple[str, Actor, Mapping[str, Any]]] = []
        self.audited: list[tuple[str, dict[str, Any]]] = []
        self.health: list[tuple[str, bool, str]] = []
        public = base64.b64encode(public_raw(service_key.public_key())).decode()
        sync.setdefault("retry_min_s", 0.05)
        sync.setdefault("retry_max_s", 0.5)
        cfg = sync_config(tmp, http_url="" if "http" in sync else url, service_key=public,
                          rules_poll_s=0,
                          commands_need_synchronised_clock=False, **sync)
        self.downlink = Downlink(cfg, perform=self.perform, audit=self.audit,
                                 apply_rules=self.apply_rules, device_key=self.device_key,
                                 health=lambda *a: self.health.append(a))

    async def perform(self, action: str, actor: Actor, args: Mapping[str, Any]) -> Result:
        self.performed.append((action, actor, args))
        return Result(Outcome.SUCCESS, f"{args.get('lane')} opened", {"lane": args.get("lane")})

    async def audit(self, action: str, resource_type: str, **fields: Any) -> int:
        self.audited.append((action, fields))
        return len(self.audited)

    def apply_rules(self, *_: Any) -> Any:
        raise AssertionError("no bundle is published in these tests")


async def test_errors_are_retried_with_back_off_then_a_command_acts_once_and_is_answered(
        tmp_path: Path, service: Service) -> None:
    service_key = Ed25519PrivateKey.generate()
    command = _command(service_key)
    service.script = [503, 401, "garbage", [command], [command]]  # the last: served again
    gate = Gate(tmp_path, service.url, service_key)
    assert gate.downlink.poller is not None and gate.downlink.commands is not None
    task = asyncio.create_task(gate.downlink.run())
    try:
        await eventually(lambda: len(service.results) == 2, timeout_s=15)
        await eventually(lambda: len(service.gets) >= 7, timeout_s=10)  # holding again
        status = gate.downlink.status()["commands_poll"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gate.downlink.close()

    times = [t for t, _ in service.gets]
    assert times[1] - times[0] >= 0.95  # Retry-After: 1 is a floor under the back-off
    assert all(q["wait"] == "25" and q["auth"] == "Bearer device-secret" for _, q in service.gets)
    # acted once, as a remote actor, through the control plane's perform
    [(action, actor, args)] = gate.performed
    assert (action, actor.type, actor.id, actor.request_id, dict(args)) == (
        "open", ActorType.REMOTE, "ops:ann", command["id"], {"lane": "main-in"})
    first, second = service.results
    public = gate.device_key.public_key()
    for result in (first, second):
        verify(result["data"], {kid_of(public): public})
        assert result["type"] == "io.gated.command.result.v1"
        assert result["subject"] == result["data"]["command_id"] == command["id"]
    assert (first["data"]["outcome"], first["data"]["reason"]) == ("success", None)
    assert (second["data"]["outcome"], second["data"]["reason"]) == ("refused", "replayed")
    [(_, fields)] = [a for a in gate.audited if a[0] == "remote_command_refused"]
    assert fields["metadata"]["reason"] == "replayed" and fields["request_id"] == command["id"]
    # health saw each failure and the recovery, once per change
    assert [(name, ok) for name, ok, _ in gate.health] == [
        ("sync-commands", False), ("sync-commands", False), ("sync-commands", False),
        ("sync-commands", True)]
    assert "503" in gate.health[0][2] and "401" in gate.health[1][2]
    assert "unreadable" in gate.health[2][2]
    assert status["state"] == "ok" and status["results_sent"] == 2
    assert status["last_error"].startswith("unreadable answer")


async def test_a_command_whose_result_is_never_kept_is_not_polled_in_a_tight_loop(
        tmp_path: Path, service: Service) -> None:
    service_key = Ed25519PrivateKey.generate()
    command = _command(service_key, "lockdown_on")
    service.forever = [command]  # the service never keeps the answer: it serves it again
    service.result_status = 422
    gate = Gate(tmp_path, service.url, service_key, retry_min_s=0.2, retry_max_s=1.0)
    task = asyncio.create_task(gate.downlink.run())
    try:
        await asyncio.sleep(3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gate.downlink.close()
    assert 2 <= len(service.gets) <= 10, len(service.gets)  # a tight loop would be hundreds
    assert [a for a, _, _ in gate.performed] == ["lockdown_on"]  # once, whatever came again
    assert gate.downlink.status()["commands_poll"]["results_failed"] == len(service.results)


def test_the_poller_runs_only_for_http_sync_with_remote_commands(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    url = "http://127.0.0.1:9"

    def built(**sync: Any) -> tuple[Any, Any]:
        gate = Gate(tmp_path / uuid.uuid4().hex, url, key, **sync)
        gate.downlink.close()
        return gate.downlink.poller, gate.downlink.commands

    poller, receiver = built()  # [sync.http] commands defaults to true
    assert poller is not None and receiver is not None
    assert poller.url == f"{url}/v1/devices/{DEVICE}/commands"
    assert poller.result_url == f"{url}/v1/devices/{DEVICE}/commands/result"
    assert built(remote_commands=False) == (None, None)  # no remote commands at all
    assert built(http={"url": url, "commands": False}) == (None, None)
    # an MQTT site without its link (it could not be built) does not fall back to polling
    assert built(transport="mqtt", mqtt={"host": "127.0.0.1", "port": 9}) == (None, None)
    with pytest.raises(ConfigError, match="commands"):
        sync_config(tmp_path, http={"url": url, "commands": "yes"})
