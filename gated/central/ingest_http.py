"""HTTP ingest (docs/protocol.md section 6): batched events, heads, and snapshot uploads.

A device authenticates with its bearer token (stored hashed); the path's device id, every
event's source and data must be that device's. Answers follow the protocol so the edge's
retry and quarantine logic does the right thing: 2xx with stored/duplicate/rejected after
the commit, 422 for a batch that can never be taken, 503 with Retry-After while PostgreSQL
is unavailable (the device retries; nothing is lost).

The downlink of a gate that syncs over HTTP only (protocol 11.8): `GET …/commands?wait=S`
long-polls for the signed commands issued to it, `POST …/commands/result` brings its signed
answers back; `GET …/rules` serves its rule bundles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
from aiohttp import web

from gated.central.schemas import SchemaError, parse_json, validate, validate_event
from gated.central.snapshots import SHA256, SnapshotStore
from gated.central.store import Device, Store

log = logging.getLogger("gated.central.http")

MAX_BATCH_BYTES = 4 * 1024 * 1024  # the device's default batch_max_bytes is 1 MB
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024  # [journal] snapshot_max_kb is 2 MB by default
MAX_RESULT_BYTES = 64 * 1024  # a command result is a few hundred bytes
DEVICE = web.RequestKey("device", Device)
WAIT_MAX_S = 30.0  # longest a GET …/commands is held: below the usual proxies' idle timeouts
_WAIT = re.compile(r"[0-9]{1,2}(\.[0-9]{1,3})?")
COMMANDS_CONTENT_TYPE = "application/cloudevents-batch+json"


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


class _Waiter:
    """One held GET …/commands."""

    __slots__ = ("event", "evicted")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.evicted = False


class CommandWaiters:
    """Held long-polls, woken when a command is issued for their device.

    Why LISTEN/NOTIFY rather than each held request polling the database: a held request
    must not hold a pooled connection (a fleet long-polling would take all of them), and a
    query per waiting gate per second is a load that grows with the fleet for nothing. One
    connection per instance LISTENs on COMMANDS_CHANNEL; `issue_command` NOTIFYs on commit
    from whatever process issued it (the CLI, the viewer), and only that device's waiters
    read the database again. Notifications are lost while the listening connection is down,
    and never arrive through a transaction pooler (found by a probe at connect), so waiters
    also read again every FALLBACK_S while the listener is not known good (and everyone is
    woken when it comes back), and every SAFETY_S while it is.
    """

    FALLBACK_S = 1.0
    SAFETY_S = 15.0
    PROBE_S = 3.0
    RELISTEN_S = 300.0  # after a failed probe: a pooler does not go away by itself
    PER_DEVICE = 2  # held polls per device: a newer one answers the oldest (a reconnect)
    MAX_HELD = 20_000  # held polls per instance; beyond, 503 with Retry-After

    def __init__(self, conninfo: str, probe: Callable[[str], None]) -> None:
        self.conninfo = conninfo
        self._probe = probe  # NOTIFYs through another connection (the pool), in a thread
        self._held: dict[str, list[_Waiter]] = {}
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self.listening = False  # notifications known to arrive
        self.closing = False

    @property
    def recheck_s(self) -> float:
        """How long a held poll waits for a notification before it reads the database anyway."""
        return self.SAFETY_S if self.listening else self.FALLBACK_S

    def hold(self, key: str) -> _Waiter | None:
        """Register a held poll for a device (key: downlink.command_key); None when full."""
        if self._count >= self.MAX_HELD:
            return None
        if self._task is None and not self.closing:
            # Started at the first long-poll: an instance whose gates all use MQTT keeps no
            # listening connection.
            self._task = asyncio.get_running_loop().create_task(self._listen(),
                                                                name="commands-listen")
        waiters = self._held.setdefault(key, [])
        while len(waiters) >= self.PER_DEVICE:
            # The oldest is most likely a poll whose gate already gave up on it (a cut
            # connection): answer it now rather than refuse the gate's new one.
            oldest = waiters.pop(0)
            oldest.evicted = True
            oldest.event.set()
            self._count -= 1
        waiter = _Waiter()
        waiters.append(waiter)
        self._count += 1
        return waiter

    def release(self, key: str, waiter: _Waiter) -> None:
        """Forget a held poll (answered)."""
        waiters = self._held.get(key)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            self._count -= 1
            if not waiters:
                del self._held[key]

    def wake(self, key: str | None = None) -> None:
        """Wake a device's held polls (every one when key is None)."""
        groups = self._held.values() if key is None else [self._held.get(key, [])]
        for waiters in groups:
            for waiter in waiters:
                waiter.event.set()

    async def close(self) -> None:
        """Answer every held poll and stop listening."""
        self.closing = True
        self.wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        from gated.central.downlink import COMMANDS_CHANNEL

        delay = 1.0
        while not self.closing:
            pause = delay
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {COMMANDS_CHANNEL}")
                    if await self._probed(conn):
                        self.listening, delay = True, 1.0
                        log.info("commands: listening for issued commands")
                        self.wake()  # what was issued while nobody listened
                        async for note in conn.notifies():
                            self.wake(note.payload)
                    else:
                        log.warning("commands: notifications do not arrive on this database "
                                    "connection (a transaction pooler?): held polls read the "
                                    "database every %.0f s instead", self.FALLBACK_S)
                        pause = self.RELISTEN_S
            except (psycopg.Error, OSError) as err:
                log.warning("commands: listening connection lost (%s); held polls read the "
                            "database every %.0f s until it is back", err, self.FALLBACK_S)
                delay = min(delay * 2, 30.0)
            finally:
                self.listening = False
            self.wake()
            await asyncio.sleep(pause)

    async def _probed(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """NOTIFY through another connection and see it arrive on this one."""
        probe = "probe:" + secrets.token_hex(8)
        await asyncio.to_thread(self._probe, probe)
        async for note in conn.notifies(timeout=self.PROBE_S):
            if note.payload == probe:
                return True
            self.wake(note.payload)
        return False


class HttpIngest:
    """The aiohttp application of one service instance."""

    def __init__(self, store: Store, snapshots: SnapshotStore) -> None:
        self.store = store
        self.snapshots = snapshots
        conninfo = store.pool.conninfo
        self.waiters = CommandWaiters(conninfo() if callable(conninfo) else conninfo,
                                      self._notify)

    def app(self) -> web.Application:
        """The routes, with the bearer-token check in front of them."""
        app = web.Application(client_max_size=MAX_SNAPSHOT_BYTES,
                              middlewares=[self._authenticate])
        app.router.add_post("/v1/devices/{device_id}/events", self.post_events)
        app.router.add_post("/v1/devices/{device_id}/heads", self.post_heads)
        app.router.add_put("/v1/snapshots/{sha256}", self.put_snapshot)
        app.router.add_get("/v1/devices/{device_id}/rules", self.get_rules)
        app.router.add_get("/v1/devices/{device_id}/commands", self.get_commands)
        app.router.add_post("/v1/devices/{device_id}/commands/result", self.post_command_result)
        app.router.add_get("/healthz", self.health)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, _app: web.Application) -> None:
        # Held polls are answered [] at once: a stopping instance does not keep its gates
        # (nor its own shutdown) waiting for up to WAIT_MAX_S.
        await self.waiters.close()

    def _notify(self, payload: str) -> None:
        from gated.central.downlink import COMMANDS_CHANNEL

        with self.store.pool.connection() as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL, payload))

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) > 512:
            return _error(401, "bearer token required", **{"WWW-Authenticate": "Bearer"})
        try:
            device = await asyncio.to_thread(self.store.device_by_token, auth[7:].strip())
        except Exception as err:  # the database is away: the device retries later
            log.warning("token lookup failed: %s", err)
            return _error(503, "storage unavailable", **{"Retry-After": "5"})
        if device is None:
            return _error(401, "unknown token", **{"WWW-Authenticate": "Bearer"})
        wanted = request.match_info.get("device_id")
        if wanted is not None and wanted != device.device_id:
            return _error(403, "the token is not this device's")
        request[DEVICE] = device
        return await handler(request)

    async def health(self, _request: web.Request) -> web.Response:
        """Liveness for a load balancer."""
        return web.json_response({"ok": True})

    async def _json(self, request: web.Request, kind: str) -> Any:
        if request.content_type != kind:
            raise web.HTTPUnsupportedMediaType(text=f"expected {kind}")
        if request.content_length is not None and request.content_length > MAX_BATCH_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BATCH_BYTES,
                                                actual_size=request.content_length)
        body = await request.content.read(MAX_BATCH_BYTES + 1)
        if len(body) > MAX_BATCH_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BATCH_BYTES,
                                                actual_size=len(body))
        try:
            return parse_json(body)
        except ValueError as err:
            raise web.HTTPBadRequest(text="not JSON") from err

    async def post_events(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{id}/events: a CloudEvents batch, answered after the commit."""
        device: Device = request[DEVICE]
        batch = await self._json(request, "application/cloudevents-batch+json")
        try:
            validate("batch", batch)
        except SchemaError as err:
            return _error(422, str(err))
        # the batch schema validated every event against its type's schema
        events = [e for e in batch if e["type"] != "io.gated.head.v1"]
        heads = [e for e in batch if e["type"] == "io.gated.head.v1"]
        return await self._store(device, events, heads)

    async def post_heads(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{id}/heads: one signed head."""
        device: Device = request[DEVICE]
        event = await self._json(request, "application/cloudevents+json")
        try:
            validate_event(event)
            if event["type"] != "io.gated.head.v1":
                raise SchemaError("not an io.gated.head.v1 event")
        except SchemaError as err:
            return _error(422, str(err))
        return await self._store(device, [], [event])

    async def _store(self, device: Device, events: list[dict[str, Any]],
                     heads: list[dict[str, Any]]) -> web.Response:
        for head in heads:
            source = head.get("source", "")
            if not (source.startswith(f"gated://{device.tenant_id}/")
                    and source.endswith(f"/{device.device_id}")):
                return _error(403, "head source is not the authenticated device")
        try:
            outcome = await asyncio.to_thread(self.store.ingest, device.tenant_id,
                                              device.device_id, events, heads[-1:])
        except Exception as err:
            log.warning("storing a batch of %s/%s failed: %s", device.tenant_id,
                        device.device_id, err)
            return _error(503, "storage unavailable", **{"Retry-After": "5"})
        body = outcome.answer()
        body.setdefault("head", None)
        return web.json_response(body)

    async def get_rules(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{id}/rules?since=V: the device's newest signed bundle (protocol 11.2)."""
        from gated.central.downlink import bundle_answer

        device: Device = request[DEVICE]
        since_text = request.query.get("since", "0")
        if not since_text.isdigit() or len(since_text) > 18:
            return _error(400, "since must be a whole number from 0")
        wanted = request.headers.get("If-None-Match", "")[:100]

        def answer() -> Any:
            with self.store.pool.connection() as conn:
                return bundle_answer(conn, device.tenant_id, device.device_id, int(since_text),
                                     wanted)

        try:
            found = await asyncio.to_thread(answer)
        except Exception as err:
            log.warning("rule bundle for %s/%s failed: %s", device.tenant_id, device.device_id,
                        err)
            return _error(503, "storage unavailable", **{"Retry-After": "5"})
        if found.status == 404:
            return _error(404, "no rule set was published for this device")
        headers = {"ETag": found.etag} if found.etag else {}
        if found.status == 304:
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, content_type="application/json", headers=headers)

    async def get_commands(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{id}/commands?wait=S: the device's unanswered commands (protocol 11.8).

        Held up to `wait` seconds until a command is issued for the device; a pooled
        connection is taken only for each read, never while waiting.
        """
        from gated.central.downlink import command_key, pending_commands

        device: Device = request[DEVICE]
        wait_text = request.query.get("wait", "0")
        if not _WAIT.fullmatch(wait_text) or float(wait_text) > WAIT_MAX_S:
            return _error(400, f"wait must be a number of seconds from 0 to {WAIT_MAX_S:g}")
        wait = float(wait_text)

        def read() -> list[dict[str, Any]]:
            with self.store.pool.connection() as conn:
                return pending_commands(conn, device.tenant_id, device.device_id)

        key = command_key(device.tenant_id, device.device_id)
        waiter = self.waiters.hold(key) if wait > 0 and not self.waiters.closing else None
        if wait > 0 and waiter is None and not self.waiters.closing:
            return _error(503, "too many held polls", **{"Retry-After": "5"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while True:
                if waiter is not None:
                    # cleared before the read: a command issued during it wakes the next wait
                    waiter.event.clear()
                try:
                    commands = await asyncio.to_thread(read)
                except Exception as err:
                    log.warning("commands for %s/%s failed: %s", device.tenant_id,
                                device.device_id, err)
                    return _error(503, "storage unavailable", **{"Retry-After": "5"})
                left = deadline - loop.time()
                if (commands or waiter is None or left <= 0 or waiter.evicted
                        or self.waiters.closing):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.event.wait(),
                                           min(left, self.waiters.recheck_s))
        finally:
            if waiter is not None:
                self.waiters.release(key, waiter)
        return web.json_response(commands, content_type=COMMANDS_CONTENT_TYPE,
                                 dumps=_dumps)

    async def post_command_result(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{id}/commands/result: one signed result, kept as over MQTT."""
        from gated.central.downlink import record_result

        device: Device = request[DEVICE]
        if request.content_length is not None and request.content_length > MAX_RESULT_BYTES:
            return _error(413, f"a command result is at most {MAX_RESULT_BYTES} bytes")
        event = await self._json(request, "application/cloudevents+json")
        try:
            validate_event(event)
            if event["type"] != "io.gated.command.result.v1":
                raise SchemaError("not an io.gated.command.result.v1 event")
        except SchemaError as err:
            return _error(422, str(err))
        source = event["source"]
        if not (source.startswith(f"gated://{device.tenant_id}/")
                and source.endswith(f"/{device.device_id}")):
            return _error(403, "result source is not the authenticated device")

        def keep() -> bool:
            with self.store.pool.connection() as conn:
                return record_result(conn, device.tenant_id, device.device_id, event)

        try:
            kept = await asyncio.to_thread(keep)
        except Exception as err:
            log.warning("keeping a command result of %s/%s failed: %s", device.tenant_id,
                        device.device_id, err)
            return _error(503, "storage unavailable", **{"Retry-After": "5"})
        if not kept:
            # as on P/commands/result: not this device's, or not signed by its enrolled key
            return _error(422, "command result refused: it names another device or is not "
                               "signed by this device's enrolled key")
        return web.json_response({"kept": True})

    async def put_snapshot(self, request: web.Request) -> web.Response:
        """PUT /v1/snapshots/{sha256}: keep a picture content-addressed (412: already kept)."""
        device: Device = request[DEVICE]
        sha256 = request.match_info["sha256"]
        if not SHA256.match(sha256):
            return _error(422, "the name is not a lower-case hex SHA-256")
        body = await request.read()
        try:
            path, _ = await asyncio.to_thread(self.snapshots.put, sha256, body)
        except ValueError as err:
            return _error(422, str(err))
        except OSError as err:  # the store (a disk, an S3 endpoint) is away: the device retries
            log.warning("keeping snapshot %s failed: %s", sha256, err)
            return _error(503, "snapshot storage unavailable", **{"Retry-After": "5"})
        try:
            new = await asyncio.to_thread(self.store.snapshot_kept, device.tenant_id,
                                          device.device_id, sha256, path, len(body))
        except Exception as err:
            log.warning("listing snapshot %s failed: %s", sha256, err)
            return _error(503, "storage unavailable", **{"Retry-After": "5"})
        if not new and request.headers.get("If-None-Match") == "*":
            return web.Response(status=412)
        return web.Response(status=201 if new else 200)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def serve(ingest: HttpIngest, host: str, port: int) -> web.AppRunner:
    """Start listening; the caller cleans the runner up."""
    # a client holding a connection open must not hold a shutdown up for a minute
    runner = web.AppRunner(ingest.app(), shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
