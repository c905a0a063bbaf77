"""HTTP ingest: bearer tokens per device, batches stored once, snapshots content-addressed."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from gated.central.admin import enrol_device
from gated.central.ingest_http import HttpIngest, serve
from gated.central.snapshots import LocalSnapshotStore
from gated.central.store import Store
from gated.sync.envelope import encode
from tests.support.broker import free_port
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer

BATCH = {"Content-Type": "application/cloudevents-batch+json"}


@pytest.fixture
def http_url(store: Store, tmp_path: Path) -> Iterator[str]:
    """The HTTP ingest of one instance on a loopback port, in its own thread and loop."""
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: list[web.AppRunner] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner.append(loop.run_until_complete(
            serve(HttpIngest(store, LocalSnapshotStore(tmp_path / "pictures")), "127.0.0.1", port)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _post(url: str, device: str, token: str, events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}/v1/devices/{device}/events", content=encode(events),
                      headers={**BATCH, "Authorization": f"Bearer {token}",
                               "Idempotency-Key": events[0]["id"]}, timeout=10)


def test_a_batch_is_stored_once_and_its_head_countersigned(
        http_url: str, owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    events = [sim.event("access" if i % 2 else "audit") for i in range(12)]
    answer = _post(http_url, "gate-1", token, [*events, sim.signed_head()])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert sorted(body["stored"]) == sorted(e["id"] for e in events)
    assert body["head_status"] == "countersigned"
    again = _post(http_url, "gate-1", token, events).json()
    assert again["stored"] == [] and len(again["duplicate"]) == 12
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM event_ids").fetchone() == (12,)


def test_a_token_writes_only_its_own_device(http_url: str, owner: psycopg.Connection[Any],
                                            pg_server: PgServer, pg_db: str) -> None:
    mine = SimDevice("acme", "hq", "gate-1")
    victim = SimDevice("globex", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", mine.public_b64)
    enrol_device(owner, "globex", "gate-1", "hq", victim.public_b64)
    no_token = httpx.post(f"{http_url}/v1/devices/gate-1/events", content=b"[]", headers=BATCH)
    assert no_token.status_code == 401
    assert _post(http_url, "gate-1", "not-a-token", [mine.event()]).status_code == 401
    assert _post(http_url, "gate-2", token, [mine.event()]).status_code == 403
    # the path is its own, the events are another tenant's: refused for good, nothing stored
    body = _post(http_url, "gate-1", token, [victim.event(), victim.event()]).json()
    assert body["stored"] == [] and {r["retryable"] for r in body["rejected"]} == {False}
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM event_ids").fetchone() == (0,)


def test_malformed_batches_are_refused_with_the_protocol_statuses(
        http_url: str, owner: psycopg.Connection[Any]) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{http_url}/v1/devices/gate-1/events"
    assert httpx.post(url, content=b"{", headers={**BATCH, **auth}).status_code == 400
    assert httpx.post(url, content=b"[]", headers={"Content-Type": "text/plain", **auth}
                      ).status_code == 415
    wrong = sim.event()
    wrong["data"]["seq"] = "one"
    assert _post(http_url, "gate-1", token, [wrong]).status_code == 422
    huge = b"[" + b" " * (5 * 1024 * 1024) + b"]"
    assert httpx.post(url, content=huge, headers={**BATCH, **auth}).status_code == 413


def test_snapshots_are_kept_by_hash_once(http_url: str, owner: psycopg.Connection[Any],
                                         tmp_path: Path, pg_server: PgServer,
                                         pg_db: str) -> None:
    token = enrol_device(owner, "acme", "gate-1", "hq", None)
    picture = b"\xff\xd8\xff" + b"jpeg" * 1000
    sha = hashlib.sha256(picture).hexdigest()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg",
               "If-None-Match": "*"}
    url = f"{http_url}/v1/snapshots/{sha}"
    assert httpx.put(url, content=picture, headers=headers).status_code == 201
    assert httpx.put(url, content=picture, headers=headers).status_code == 412
    assert httpx.put(f"{http_url}/v1/snapshots/{'0' * 64}", content=picture,
                     headers=headers).status_code == 422
    assert (tmp_path / "pictures" / sha[:2] / sha[2:4] / sha).read_bytes() == picture
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT tenant_id, size FROM snapshots").fetchall() == [
            ("acme", len(picture))]
