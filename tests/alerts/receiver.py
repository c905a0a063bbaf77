"""A webhook receiver on loopback, as an installer's would be: it checks the signature and
de-duplicates by alert id. Runs an aiohttp server on its own thread and event loop; it can be
taken down and brought back on the same port, and told how to answer the next requests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.broker import free_port


def verify(secret: bytes, headers: Any, body: bytes, max_skew_s: float = 300.0) -> bool:
    """The check docs/alerts.md tells receivers to make (signature and timestamp)."""
    timestamp = headers.get("X-Gated-Timestamp", "")
    signature = headers.get("X-Gated-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_skew_s:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@dataclass
class Receiver:
    """Alerts received, by id; answers to inject (`faults`): 500, hang, garbage, huge, 404."""

    secret: bytes = b"receiver-secret-0123456789"
    port: int = field(default_factory=free_port)
    faults: list[str] = field(default_factory=list)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # first copy, by id
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)  # deliveries per id (duplicates > 1)
    acked: Counter[str] = field(default_factory=Counter)  # answered 2xx, per id
    bad_signatures: int = 0
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self.requests += 1
            self.bodies.append((dict(request.headers), body))
            fault = self.faults.pop(0) if self.faults else ""
        if fault == "hang":
            await asyncio.sleep(30)
        if fault == "500":
            return web.Response(status=500, text="boom")
        if fault == "404":
            return web.Response(status=404, text="no such hook")
        if not verify(self.secret, request.headers, body):
            with self._lock:
                self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            doc = json.loads(body)
            alert_id = str(doc.get("id") or request.headers.get("X-Gated-Alert-Id"))
        else:
            doc = {"text": body.decode(), "headers": dict(request.headers)}
            alert_id = request.headers["X-Gated-Alert-Id"]
        with self._lock:
            self.seen[alert_id] += 1
            self.alerts.setdefault(alert_id, doc)
            self.acked[alert_id] += 1
        if fault == "garbage":
            return web.Response(status=200, body=b"\xff\xfe\x00not json{{{")
        if fault == "huge":
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            chunk = b"x" * 65536
            for _ in range(16 * 64):  # 64 MiB offered; the sender reads a few KB
                try:
                    await response.write(chunk)
                except (ConnectionError, RuntimeError):
                    break
            return response
        return web.json_response({"ok": True})

    def start(self) -> Receiver:
        """Listen (again) on the port."""
        ready = threading.Event()
        self._stopped.clear()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_post("/hook", self._handle)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            self._runner = runner
            ready.set()
            loop.run_forever()
            for task in asyncio.all_tasks(loop):  # a handler told to hang ends with the server
                task.cancel()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._stopped.set()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10), "receiver did not start"
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until start())."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def wait_for(self, count: int, timeout_s: float = 20.0) -> bool:
        """True once `count` distinct alerts were received."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.alerts) >= count:
                    return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
