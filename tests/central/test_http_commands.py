"""Remote commands over HTTP (docs/protocol.md 11.8), the service side, against a real
PostgreSQL and the real HttpIngest app on a loopback port: `GET …/commands` serves a device
only its own signed, unexpired, unanswered commands, oldest first; a held poll returns as soon
as a command is issued (NOTIFY; within a second when notifications do not arrive), holds no
pooled connection while it waits, and is answered at a stop; results POSTed are kept only when
the device's key signed them; hostile requests get clear 4xx answers and the service keeps
serving."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central import downlink
from gated.central.admin import enrol_device
from gated.central.ingest_http import HttpIngest, serve
from gated.central.snapshots import LocalSnapshotStore
from gated.central.store import Store
from gated.sync.envelope import encode
from gated.sync.signing import kid_of, sign, verify
from tests.daemon.harness import wait_until
from tests.support.broker import free_port
from tests.support.device_sim import SimDevice
from tests.support.postgres import SERVICE, PgServer

RESULT = {"Content-Type": "application/cloudevents+json"}


class Serving:
    """One instance's HttpIngest on a loopback port, in its own thread and event loop."""

    def __init__(self, store: Store, tmp: Path) -> None:
        self.ingest = HttpIngest(store, LocalSnapshotStore(tmp / "pictures"))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.runner: list[web.AppRunner] = []

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            port = int(self.url.rsplit(":", 1)[1])
            self.runner.append(self.loop.run_until_complete(
                serve(self.ingest, "127.0.0.1", port)))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        """Clean the runner up (held polls answered) and stop the loop."""
        if self.runner:
            asyncio.run_coroutine_threadsafe(self.runner.pop().cleanup(), self.loop).result(20)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture
def serving(store: Store, tmp_path: Path) -> Iterator[Serving]:
    """The HTTP ingest on loopback."""
    running = Serving(store, tmp_path)
    yield running
    running.stop()


def _poll(url: str, device: str, token: str | None, wait: Any = None,
          timeout: float = 40) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    params = {} if wait is None else {"wait": str(wait)}
    return httpx.get(f"{url}/v1/devices/{device}/commands", params=params, headers=headers,
                     timeout=timeout)


def _issue(pg_server: PgServer, pg_db: str, key: Ed25519PrivateKey, device: str,
           action: str = "lockdown_on", ttl_s: float = 60.0,
           tenant: str = "acme") -> dict[str, Any]:
    with pg_server.connect(pg_db, SERVICE) as conn:
        args = {"lane": "main-in"} if action == "open" else {}
        return downlink.issue_command(conn, key, tenant, device, action, args, "unix:ann", ttl_s)


def _result(device: SimDevice, command_id: str, key: Ed25519PrivateKey | None,
            **data: Any) -> dict[str, Any]:
    body = {"command_id": command_id, "tenant_id": device.tenant_id,
            "device_id": device.device_id, "action": "lockdown_on", "outcome": "success",
            "reason": None, "message": "lockdown on", "data": {},
            "at": "2026-06-01T08:00:00.412345Z", **data}
    signed = sign(body, key) if key is not None else body
    return {"specversion": "1.0", "id": f"0193a000-0000-7000-8000-{time.time_ns() % 10**12:012d}",
            "source": device.source, "type": "io.gated.command.result.v1",
            "time": body["at"], "datacontenttype": "application/json", "subject": command_id,
            "data": signed}


def _post_result(url: str, device: str, token: str | None, event: Any,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{url}/v1/devices/{device}/commands/result",
                      content=encode(event) if not isinstance(event, bytes) else event,
                      headers={**RESULT, **auth, **(headers or {})}, timeout=10)


def test_a_device_is_served_only_its_own_unexpired_unanswered_commands_oldest_first(
        serving: Serving, store: Store, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    gate1, gate2 = SimDevice("acme", "hq", "gate-1"), SimDevice("acme", "hq", "gate-2")
    rival = SimDevice("globex", "hq", "gate-1")
    tokens = {d.device_id + "@" + d.tenant_id: enrol_device(owner, d.tenant_id, d.device_id,
                                                            "hq", d.public_b64)
              for d in (gate1, gate2, rival)}
    mine, theirs, other = tokens["gate-1@acme"], tokens["gate-2@acme"], tokens["gate-1@globex"]
    url = serving.url
    key = store.key
    assert _poll(url, "gate-1", mine).json() == []

    expired = _issue(pg_server, pg_db, key, "gate-1", ttl_s=0.5)
    first = _issue(pg_server, pg_db, key, "gate-1", "open")
    for_gate2 = _issue(pg_server, pg_db, key, "gate-2")
    second = _issue(pg_server, pg_db, key, "gate-1", "lockdown_off")
    time.sleep(0.6)  # `expired` is now past its expires_at

    answer = _poll(url, "gate-1", mine)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/cloudevents-batch+json")
    served = answer.json()
    assert [c["id"] for c in served] == [first["id"], second["id"]]  # oldest first
    assert served[0] == first  # the CloudEvent exactly as issued (and published on P/commands)
    public = key.public_key()
    for command in served:
        verify(command["data"], {kid_of(public): public})
        assert command["data"]["device_id"] == "gate-1"
    # never another device's: not on gate-1's list, its path forbidden to gate-1's token, and
    # the same device id of another tenant has a list of its own
    assert _poll(url, "gate-2", mine).status_code == 403
    assert [c["id"] for c in _poll(url, "gate-2", theirs).json()] == [for_gate2["id"]]
    assert _poll(url, "gate-1", other).json() == []
    assert expired["id"] not in str(_poll(url, "gate-1", mine).json())

    # answered: not served any more; a result the device key did not sign is refused and
    # not kept (as on P/commands/result), so that command is still served
    kept = _post_result(url, "gate-1", mine, _result(gate1, first["id"], gate1.key))
    assert kept.status_code == 200, kept.text
    assert kept.json() == {"kept": True}
    forged = _post_result(url, "gate-1", mine,
                          _result(gate1, second["id"], Ed25519PrivateKey.generate()))
    assert forged.status_code == 422 and "signed" in forged.json()["error"]
    unsigned = _post_result(url, "gate-1", mine, _result(gate1, second["id"], None))
    assert unsigned.status_code == 422
    assert [c["id"] for c in _poll(url, "gate-1", mine).json()] == [second["id"]]
    with pg_server.connect(pg_db, SERVICE) as conn:
        [result] = downlink.results_for(conn, "acme", first["id"])
        assert (result["outcome"], result["signature_verified"]) == ("success", True)
        assert downlink.results_for(conn, "acme", second["id"]) == []
    # a refusal answers too (the device's replay cache refusing a command served again)
    refusal = _result(gate1, second["id"], gate1.key, outcome="refused", reason="replayed",
                      message="refused: replayed: this command id or nonce was seen before")
    assert _post_result(url, "gate-1", mine, refusal).status_code == 200
    assert _poll(url, "gate-1", mine).json() == []

    # results another device's token cannot bring, nor name another device
    assert _post_result(url, "gate-1", theirs,
                        _result(gate1, first["id"], gate1.key)).status_code == 403
    assert _post_result(url, "gate-2", theirs,
                        _result(gate1, for_gate2["id"], gate1.key)).status_code == 403
    posing = _result(gate1, for_gate2["id"], gate1.key)
    posing["source"] = gate2.source  # the envelope says gate-2, data says gate-1
    assert _post_result(url, "gate-2", theirs, posing).status_code == 422
    assert [c["id"] for c in _poll(url, "gate-2", theirs).json()] == [for_gate2["id"]]


def test_a_held_poll_returns_when_a_command_is_issued_and_holds_no_connection(
        serving: Serving, store: Store, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    devices = [f"gate-{i}" for i in range(12)]  # more held polls than the pool's 8 connections
    tokens = {d: enrol_device(owner, "acme", d, "hq", SimDevice("acme", "hq", d).public_b64)
              for d in devices}
    url = serving.url
    with ThreadPoolExecutor(len(devices) + 2) as pool:
        started = time.monotonic()
        held = {d: pool.submit(_poll, url, d, tokens[d], 20) for d in devices}
        assert wait_until(lambda: serving.ingest.waiters._count == len(devices), 10)
        assert wait_until(lambda: serving.ingest.waiters.listening, 10)
        # every pooled connection is free: another request is answered at once
        quick = time.monotonic()
        assert _poll(url, "gate-0", tokens["gate-0"], 0).json() == []
        assert time.monotonic() - quick < 2
        assert not any(f.done() for f in held.values())

        time.sleep(1.0)
        issued_at = time.monotonic()
        command = _issue(pg_server, pg_db, store.key, "gate-5")
        answer = held["gate-5"].result(10)
        took = time.monotonic() - issued_at
        assert answer.status_code == 200 and [c["id"] for c in answer.json()] == [command["id"]]
        assert took < 1.5, took  # woken by the notification, not at the wait's end
        time.sleep(0.5)
        assert not any(f.done() for d, f in held.items() if d != "gate-5")

        # a third poll of one device answers its oldest held one ([]), never refuses the gate
        extra = [pool.submit(_poll, url, "gate-1", tokens["gate-1"], 20) for _ in range(2)]
        assert held["gate-1"].result(5).json() == []
        assert not any(f.done() for f in extra)

        # the wait's end: 200 with []
        short = _poll(url, "gate-2", tokens["gate-2"], 1.5)
        assert short.status_code == 200 and short.json() == []
        # a stop answers every held poll at once
        serving.stop()
        for future in [*held.values(), *extra]:
            response = future.result(10)
            assert response.status_code == 200
        assert time.monotonic() - started < 19


def test_hostile_requests_get_clear_answers_and_the_service_keeps_serving(
        serving: Serving, store: Store, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    gate1 = SimDevice("acme", "hq", "gate-1")
    mine = enrol_device(owner, "acme", "gate-1", "hq", gate1.public_b64)
    theirs = enrol_device(owner, "acme", "gate-2", "hq", None)
    url = serving.url
    command = _issue(pg_server, pg_db, store.key, "gate-1")
    for bad in ("abc", "-1", "31", "30.5", "1e3", "nan", "inf", "", " 1", "0x10", "1.2345",
                "9" * 40):
        answer = _poll(url, "gate-1", mine, bad)
        assert answer.status_code == 400, bad
        assert "wait must be" in answer.json()["error"]
    assert _poll(url, "gate-1", None).status_code == 401
    assert _poll(url, "gate-1", "not-a-token").status_code == 401
    assert _poll(url, "gate-1", "x" * 600).status_code == 401
    assert _poll(url, "gate-1", theirs).status_code == 403
    assert _poll(url, "gate-1", theirs, 5).status_code == 403
    assert httpx.post(f"{url}/v1/devices/gate-1/commands",
                      headers={"Authorization": f"Bearer {mine}"}).status_code == 405

    result = _result(gate1, command["id"], gate1.key)
    assert _post_result(url, "gate-1", None, result).status_code == 401
    assert _post_result(url, "gate-1", theirs, result).status_code == 403
    assert _post_result(url, "gate-1", mine, b"{not json").status_code == 400
    assert _post_result(url, "gate-1", mine, result,
                        {"Content-Type": "application/json"}).status_code == 415
    assert _post_result(url, "gate-1", mine, [result]).status_code == 422
    assert _post_result(url, "gate-1", mine, {**result, "type": "io.gated.head.v1"}
                        ).status_code == 422
    assert _post_result(url, "gate-1", mine, b"[" * 100_000).status_code == 413
    missing = dict(result, data={k: v for k, v in result["data"].items() if k != "outcome"})
    assert _post_result(url, "gate-1", mine, missing).status_code == 422

    # after all of it: the command is still served and the answer still kept
    assert [c["id"] for c in _poll(url, "gate-1", mine, 0.5).json()] == [command["id"]]
    assert _post_result(url, "gate-1", mine, result).status_code == 200
    assert _poll(url, "gate-1", mine).json() == []
    assert httpx.get(f"{url}/healthz").json() == {"ok": True}


def test_without_notifications_a_held_poll_still_gets_a_command_within_seconds(
        serving: Serving, store: Store, pg_server: PgServer, pg_db: str,
        owner: psycopg.Connection[Any]) -> None:
    # What a transaction pooler does to LISTEN: the probe's notification never arrives
    serving.ingest.waiters._probe = lambda _payload: None
    gate = SimDevice("acme", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", gate.public_b64)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(_poll, serving.url, "gate-1", token, 20)
        assert wait_until(lambda: serving.ingest.waiters._count == 1, 10)
        time.sleep(serving.ingest.waiters.PROBE_S + 0.5)  # the probe has failed by now
        assert not serving.ingest.waiters.listening and not held.done()
        issued_at = time.monotonic()
        command = _issue(pg_server, pg_db, store.key, "gate-1")
        answer = held.result(10)
    assert [c["id"] for c in answer.json()] == [command["id"]]
    assert time.monotonic() - issued_at < 2.5  # read again every FALLBACK_S (1 s)
