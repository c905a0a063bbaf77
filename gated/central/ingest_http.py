"""HTTP ingest (docs/protocol.md section 6): batched events, heads, and snapshot uploads.

A device authenticates with its bearer token (stored hashed); the path's device id, every
event's source and data must be that device's. Answers follow the protocol so the edge's
retry and quarantine logic does the right thing: 2xx with stored/duplicate/rejected after
the commit, 422 for a batch that can never be taken, 503 with Retry-After while PostgreSQL
is unavailable (the device retries; nothing is lost).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from gated.central.schemas import SchemaError, parse_json, validate, validate_event
from gated.central.snapshots import SHA256, SnapshotStore
from gated.central.store import Device, Store

log = logging.getLogger("gated.central.http")

MAX_BATCH_BYTES = 4 * 1024 * 1024  # the device's default batch_max_bytes is 1 MB
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024  # [journal] snapshot_max_kb is 2 MB by default
DEVICE = web.RequestKey("device", Device)


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers)


class HttpIngest:
    """The aiohttp application of one service instance."""

    def __init__(self, store: Store, snapshots: SnapshotStore) -> None:
        self.store = store
        self.snapshots = snapshots

    def app(self) -> web.Application:
        """The routes, with the bearer-token check in front of them."""
        app = web.Application(client_max_size=MAX_SNAPSHOT_BYTES,
                              middlewares=[self._authenticate])
        app.router.add_post("/v1/devices/{device_id}/events", self.post_events)
        app.router.add_post("/v1/devices/{device_id}/heads", self.post_heads)
        app.router.add_put("/v1/snapshots/{sha256}", self.put_snapshot)
        app.router.add_get("/v1/devices/{device_id}/rules", self.get_rules)
        app.router.add_get("/healthz", self.health)
        return app

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


async def serve(ingest: HttpIngest, host: str, port: int) -> web.AppRunner:
    """Start listening; the caller cleans the runner up."""
    # a client holding a connection open must not hold a shutdown up for a minute
    runner = web.AppRunner(ingest.app(), shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
