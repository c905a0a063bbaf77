"""HTTP listener that ANPR cameras push plate reads to (Hikvision, Axis, Plate Recognizer, generic).

One AnprListener serves one TCP port; several cameras share it, each on its own
path with its own authentication. A push is answered 200 only once the journal
row that keeps each of its reads has committed (the relay never waits for that:
the lane acts first); when the commit does not come within `ack_timeout_s` the
answer is 503 and the camera sends again (the lane merges the repeat).

Against hostile clients (see docs/cameras.md): every connection passes an
admission check before aiohttp sees a byte (caps in total and per address, a
lock-out after repeated refusals, answered with a canned reply); request headers
must arrive within `header_timeout_s` and the body within `body_timeout_s`; one
request per connection; request bodies share a byte budget and are parsed on a
small thread pool, never on the event loop; refusals are audited as one summary
per address and interval; aiohttp's own log lines, which quote raw request
bytes (credentials included), are rewritten before they reach a handler.

Exercised only against loopback test clients sending payloads built from the
vendors' published formats; not against a real camera.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import resource
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gated.config import AnprHttpSourceConfig, ListenerConfig
from gated.errors import ConfigError, HardwareError, PayloadError
from gated.hardware.anpr_formats import ParsedRead, parse_payload
from gated.hardware.anpr_limits import (
    LOCKED_OUT,
    AddressBook,
    BodyBudget,
    RefusalSummary,
    address_key,
)
from gated.hardware.base import Emit
from gated.model import PlateRead

__all__ = ["COUNTER_KEYS", "INLINE_PARSE_MAX", "AnprListener", "OnRefused", "RefusalSummary"]

log = logging.getLogger(__name__)

# Bodies up to this size without multipart parts are parsed on the event loop (a plain
# JSON or XML read, ~10-100 µs here); anything larger, and every multipart body with its
# pictures, goes to the parser threads. The hostile-input tests measure the loop's stalls.
INLINE_PARSE_MAX = 8 * 1024

# on_refused(summary): the daemon audits refused pushes, one row per address and interval.
OnRefused = Callable[[RefusalSummary], None]
Parse = Callable[[str, bytes, str, float], list[ParsedRead]]

COUNTER_KEYS = (
    "requests",  # every request that reached a camera's path
    "reads",  # reads emitted (a vehicle without a readable plate included)
    "no_plate",  # valid messages about no vehicle (heartbeats, other events)
    "refused",  # 401: missing or wrong credentials; 403: address not allowed
    "bad_payload",  # 400: malformed, truncated or unknown payload
    "too_large",  # 413
    "wrong_method",  # 405
    "timeout",  # 408: the body did not arrive in time
    "busy",  # 503: the body budget stayed full for the whole body timeout
    "not_kept",  # 503: the journal did not confirm the reads within ack_timeout_s
    "emit_failed",  # 500: the daemon's emit raised
)
UNMATCHED = "*"  # counters key for what is not about one camera (not a valid camera name)
LISTENER_KEYS = (
    "not_found",  # 404: no camera on that path
    "locked_out",  # answered 429 because the address is locked out
    "over_address_cap",  # connection refused: too many open from one address
    "over_total_cap",  # connection refused: too many open in total
    "header_timeout",  # closed: request headers did not arrive in time
    "malformed",  # refused by the HTTP parser itself (aiohttp answered 400)
    "accept_errors",  # accept() failed (out of file descriptors or memory)
)

_ALLOWED_METHODS = ("POST", "PUT")  # ISAPI alarm servers and webhooks use POST; some firmware PUT
_MIB = 1024 * 1024
_FD_RESERVE = 128  # descriptors kept for the journal, relays, serial ports and the rest
_MAX_REFUSING = 64  # refused connections answered at once; beyond, they are reset
_PARSE_SLACK_S = 30.0  # on top of the timeouts: a connection never lives longer than this

# Answers written straight to the socket, without reading the request at all.
_CANNED = {
    "busy": b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n",
    "address": b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n",
    "locked": b"HTTP/1.1 429 Too Many Requests\r\n",
}
_CANNED_TAIL = b"Connection: close\r\nContent-Length: 0\r\n\r\n"
_VERDICT_KEYS = {"busy": "over_total_cap", "address": "over_address_cap", "locked": "locked_out"}


@dataclass(frozen=True, slots=True)
class _Camera:
    """One configured camera: where it pushes, how it authenticates, which lane it serves."""

    cfg: AnprHttpSourceConfig
    lane_id: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class _Connection(asyncio.Protocol):
    """One accepted TCP connection: admitted or answered at once, then handed to aiohttp."""

    def __init__(self, listener: AnprListener) -> None:
        self.listener = listener
        self.key = ""
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.refusal: bytes | None = None  # the canned answer still to write
        self.refusing = False  # counted in the listener's refused connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit (and pass on to aiohttp) or answer with a canned refusal and close."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inner = self.listener._admit(self, transport)

    def refuse(self, answer: bytes, wait_s: float) -> None:
        """Answer `answer` once the request's first bytes arrived (unread, they are dropped).

        Closing before the request arrived would reset the connection (unread data)
        and the client would see an error instead of the answer.
        """
        assert self.transport is not None
        self.refusal = answer
        self.refusing = True
        self.listener._refusing += 1
        self.timers = [asyncio.get_running_loop().call_later(wait_s, self.transport.abort)]

    def data_received(self, data: bytes) -> None:
        """Bytes for aiohttp's parser; a refused connection gets its answer now."""
        if self.inner is not None:
            self.inner.data_received(data)
        elif self.refusal is not None and self.transport is not None:
            self.transport.write(self.refusal)
            self.refusal = None
            self.transport.close()

    def eof_received(self) -> bool | None:
        """The client closed its side."""
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        """Flow control, passed on."""
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Flow control, passed on."""
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Free the connection's slot and tell aiohttp."""
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.refusing:
            self.refusing = False
            self.listener._refusing -= 1
        if self.inner is not None:
            self.listener._release(self)
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)

    def headers_arrived(self) -> None:
        """The request reached a handler: the header deadline is met."""
        if self.timers:
            self.timers[0].cancel()

    def expire(self, counter: str) -> None:
        """A deadline passed: count it and drop the connection."""
        self.listener.counters[UNMATCHED][counter] += 1
        if self.transport is not None:
            self.transport.abort()


class _RedactedServerLog(logging.Filter):
    """Rewrites aiohttp's log records so no request bytes (credentials) reach a log.

    aiohttp logs a malformed request with the parser's message, which quotes the
    raw request line or header (an Authorization header, a `?token=` query), plus
    a traceback for each one. What remains: the exception type and status, once a
    minute at most, with the count of those left out.
    """

    def __init__(self, counters: dict[str, int] | None = None, every_s: float = 60.0) -> None:
        super().__init__()
        self.counters = counters
        self.every_s = every_s
        self._last = -1e9
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and record.levelno < logging.WARNING:
            return True  # aiohttp's debug chatter carries no request bytes
        parse_error = isinstance(exc, HttpProcessingError)
        if parse_error and self.counters is not None:
            self.counters["malformed"] += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return False
        self._last = now
        kind = type(exc).__name__ if exc is not None else "error"
        status = getattr(exc, "code", None) if exc is not None else None
        detail = ""
        if exc is not None and not parse_error:
            # a fault of gated's own: keep where it happened, never the message
            detail = "\n" + "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        more = f"; {self._suppressed} more not logged" if self._suppressed else ""
        self._suppressed = 0
        record.msg = "camera listener: HTTP request failed: %s%s (request bytes not logged%s)%s"
        record.args = (kind, f" {status}" if status else "", more, detail)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if parse_error:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _redact_aiohttp_loggers() -> None:
    """Put the redaction on aiohttp's own loggers too (once per process)."""
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactedServerLog) for f in logger.filters):
            logger.addFilter(_RedactedServerLog())


class AnprListener:
    """An aiohttp server on one port turning camera pushes into PlateReads (a PlateSource)."""

    def __init__(
        self,
        host: str,
        port: int,
        max_body_kb: int,
        *,
        settings: ListenerConfig | None = None,
        on_refused: OnRefused | None = None,
        parse: Parse = parse_payload,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = f"anpr-http:{port}"
        self.host = host
        self.port = port
        self.max_body = max_body_kb * 1024
        self.settings = settings or ListenerConfig()
        self.on_refused = on_refused
        self._parse = parse
        self._clock = clock
        self._monotonic = monotonic
        self._cameras: dict[str, _Camera] = {}
        self.counters: dict[str, dict[str, int]] = {UNMATCHED: dict.fromkeys(LISTENER_KEYS, 0)}
        self._logged: set[tuple[str, str]] = set()
        self._emit: Emit | None = None
        self._bound_port: int | None = None
        self.started = asyncio.Event()
        s = self.settings
        self.addresses = AddressBook(
            max_connections=s.max_connections,
            max_per_address=s.max_connections_per_address,
            lockout_after=s.lockout_after,
            lockout_window_s=s.lockout_window_s,
            lockout_s=s.lockout_s,
        )
        self._budget: BodyBudget | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._aiohttp: Any = None  # aiohttp's Server: makes one protocol per connection
        self._connections: dict[asyncio.BaseTransport, _Connection] = {}
        self._sockets: set[int] = set()
        self._accept_failing = 0  # accept() errors since the last good accept
        self._refusing = 0  # refused connections waiting to be answered
        # aiohttp logs through this logger (not registered: one per listener, own counter)
        self._server_log = logging.Logger(f"{__name__}.server")
        self._server_log.parent = log
        self._server_log.addFilter(_RedactedServerLog(self.counters[UNMATCHED]))

    # --- configuration ---------------------------------------------------------------

    def add_camera(self, cfg: AnprHttpSourceConfig, lane_id: str) -> None:
        """Serve `cfg.path` for this camera; reads carry `lane_id` as their access point."""
        if cfg.path in self._cameras:
            raise ConfigError(f"sources.{cfg.name}.path: {cfg.path!r} is already used on this port")
        networks = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.auth.allowed_ips)
        self._cameras[cfg.path] = _Camera(cfg, lane_id, networks)
        self.counters[cfg.name] = dict.fromkeys(COUNTER_KEYS, 0)

    @property
    def bound_port(self) -> int | None:
        """The TCP port actually bound (useful with port 0), None before start."""
        return self._bound_port

    # --- service ---------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        """Serve until cancelled; raises HardwareError when the port cannot be bound."""
        self._emit = emit
        s = self.settings
        _redact_aiohttp_loggers()
        self._clamp_to_fd_limit()
        self._budget = BodyBudget(s.max_inflight_mb * _MIB)
        self._executor = ThreadPoolExecutor(
            max_workers=s.max_parsers, thread_name_prefix=f"anpr-parse-{self.port}"
        )
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # No access log: a camera may put its token in the query string. The keep-alive
        # timeout also closes a connection whose first request never completes.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            logger=self._server_log,
            keepalive_timeout=s.header_timeout_s,
            # read (and drop) the rest of a refused upload for a moment, so the camera
            # sees the answer rather than a reset connection
            lingering_time=2.0,
        )
        await runner.setup()
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        server: asyncio.Server | None = None
        flusher: asyncio.Task[None] | None = None
        try:
            self._aiohttp = runner.server
            try:
                server = await loop.create_server(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    reuse_address=True,
                    backlog=min(1024, s.max_connections),
                )
            except OSError as err:
                raise HardwareError(
                    f"{self.name}: cannot listen on {self.host}:{self.port}: {err.strerror or err}"
                ) from err
            self._sockets = {sock.fileno() for sock in server.sockets}
            self._bound_port = int(server.sockets[0].getsockname()[1])
            loop.set_exception_handler(self._on_loop_exception(previous_handler))
            log.info("%s: listening on %s:%s", self.name, self.host, self._bound_port)
            flusher = asyncio.create_task(self._flush_refusals_every(s.refusal_audit_interval_s))
            self.started.set()
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            self.started.clear()
            if flusher is not None:
                flusher.cancel()
            if server is not None:
                server.close()
            if loop.get_exception_handler() is not previous_handler:
                loop.set_exception_handler(previous_handler)
            await runner.cleanup()
            for transport in list(self._connections):
                transport.abort()
            self.flush_refusals()
            self._executor.shutdown(wait=False, cancel_futures=True)

    def flush_refusals(self) -> None:
        """Report the refusal summaries of the interval that ends now (also done at stop)."""
        for summary in self.addresses.take_summaries(self._monotonic()):
            self._report(summary)

    async def _flush_refusals_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.flush_refusals()

    def _clamp_to_fd_limit(self) -> None:
        """Keep the connection cap under the process's file descriptor limit."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return
        room = max(16, soft - _FD_RESERVE)
        if self.addresses.max_connections > room:
            log.warning(
                "%s: max_connections %d is above what %d file descriptors allow; using %d "
                "(raise LimitNOFILE in the unit)",
                self.name,
                self.addresses.max_connections,
                soft,
                room,
            )
            self.addresses.max_connections = room

    # --- connections -------------------------------------------------------------------

    def _admit(self, conn: _Connection, transport: asyncio.Transport) -> asyncio.Protocol | None:
        """aiohttp's protocol for an admitted connection; None after a canned refusal."""
        if self._accept_failing:
            log.warning(
                "%s: accepting connections again (%d accept errors)",
                self.name,
                self._accept_failing,
            )
            self._accept_failing = 0
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        key = address_key(remote)
        mono = self._monotonic()
        verdict = self.addresses.open(key, mono, camera=self._is_camera_address(remote))
        if verdict is not None:
            self.counters[UNMATCHED][_VERDICT_KEYS[verdict]] += 1
            if verdict == "locked":
                self._count_refusal(key, "", LOCKED_OUT)
            elif verdict == "busy":
                self._log_once(UNMATCHED, "busy", "connection limit reached; refusing more")
            else:
                self._log_once(UNMATCHED, "address", f"too many connections from {key}")
            if self._refusing >= _MAX_REFUSING:
                transport.abort()  # a flood: no courtesy answer, no descriptor held
            else:
                conn.refuse(
                    _CANNED[verdict] + _CANNED_TAIL, min(1.0, self.settings.header_timeout_s)
                )
            return None
        conn.key = key
        s = self.settings
        loop = asyncio.get_running_loop()
        conn.timers = [
            loop.call_later(s.header_timeout_s, conn.expire, "header_timeout"),
            loop.call_later(
                s.header_timeout_s + s.body_timeout_s + s.ack_timeout_s + _PARSE_SLACK_S,
                conn.expire,
                "header_timeout",
            ),
        ]
        self._connections[transport] = conn
        inner: asyncio.Protocol = self._aiohttp()
        inner.connection_made(transport)
        return inner

    def _is_camera_address(self, remote: str) -> bool:
        """True when some camera on this port lists the peer in its allowed_ips."""
        return any(
            camera.networks and _address_allowed(camera.networks, remote)
            for camera in self._cameras.values()
        )

    def _release(self, conn: _Connection) -> None:
        self.addresses.close(conn.key)
        if conn.transport is not None:
            self._connections.pop(conn.transport, None)

    def _on_loop_exception(
        self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]:
        """An exception handler that logs this listener's accept errors once per outage."""

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            sock = context.get("socket")
            fileno = sock.fileno() if sock is not None and hasattr(sock, "fileno") else None
            if fileno in self._sockets and "accept" in str(context.get("message", "")):
                self.counters[UNMATCHED]["accept_errors"] += 1
                if not self._accept_failing:
                    err = context.get("exception")
                    log.error(
                        "%s: cannot accept connections: %s (retrying; logged again on recovery)",
                        self.name,
                        getattr(err, "strerror", None) or type(err).__name__,
                    )
                self._accept_failing += 1
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        return handler

    # --- request path ----------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        conn = self._connections.get(request.transport) if request.transport else None
        if conn is not None:
            conn.headers_arrived()
        key = conn.key if conn is not None else address_key(request.remote or "")
        response = await self._answer(request, key)
        # One request per connection: every deadline above is per connection, and a
        # camera opens a new one per event anyway.
        response.force_close()
        return response

    async def _answer(self, request: web.Request, key: str) -> web.StreamResponse:
        if self.addresses.locked(key, self._monotonic()):
            self.counters[UNMATCHED]["locked_out"] += 1
            self._count_refusal(key, "", LOCKED_OUT)
            return _reply(429, "too many refused attempts from this address")
        camera = self._cameras.get(request.path)
        if camera is None:
            self.counters[UNMATCHED]["not_found"] += 1
            self._log_once(UNMATCHED, "not_found", "request to an unconfigured path")
            return _reply(404, "unknown path")
        name = camera.cfg.name
        counts = self.counters[name]
        counts["requests"] += 1
        if request.method not in _ALLOWED_METHODS:
            counts["wrong_method"] += 1
            self._log_once(name, "wrong_method", f"method {request.method} not allowed")
            return _reply(405, "use POST", headers={"Allow": ", ".join(_ALLOWED_METHODS)})

        remote = request.remote or ""
        if not _address_allowed(camera.networks, remote):
            self._refuse(camera, key, "address not allowed")
            return _reply(403, "not allowed from this address")
        refusal = _check_auth(camera.cfg, request)
        if refusal is not None:
            self._refuse(camera, key, refusal)
            return _reply(401, "authentication required", headers=_challenge(camera.cfg))

        if request.content_length is not None and request.content_length > self.max_body:
            counts["too_large"] += 1
            self._log_once(name, "too_large", f"body of {request.content_length} bytes refused")
            return _reply(413, "body too large")
        assert self._budget is not None
        held = 0
        try:
            try:
                async with asyncio.timeout(self.settings.body_timeout_s):
                    held = await self._budget.acquire(
                        max(1, request.content_length or self.max_body)
                    )
                    body = await _read_body(request, self.max_body)
            except _TooLarge:
                counts["too_large"] += 1
                self._log_once(name, "too_large", "chunked body over the limit refused")
                return _reply(413, "body too large")
            except TimeoutError:
                if not held:
                    counts["busy"] += 1
                    self._log_once(name, "busy", "too many bodies in flight; answered 503")
                    return _reply(503, "busy, send again", headers={"Retry-After": "1"})
                counts["timeout"] += 1
                self._log_once(name, "timeout", "body did not arrive in time")
                return _reply(408, "body timeout")
            # The budget stays held until the answer: the reads carry the body's pictures
            # until the lane has them journaled, so they are memory in flight too.
            return await self._take(camera, request, body)
        finally:
            if held:
                await self._budget.release(held)

    async def _take(self, camera: _Camera, request: web.Request, body: bytes) -> web.Response:
        """Parse a body off the loop, hand its reads to the lane, answer once they are kept."""
        name = camera.cfg.name
        counts = self.counters[name]
        received_mono = self._monotonic()
        received_at = self._clock()
        content_type = request.headers.get("Content-Type", "")
        try:
            if len(body) <= INLINE_PARSE_MAX and "multipart" not in content_type.lower():
                # A small JSON/XML read parses in tens of microseconds: a thread hop would
                # cost more than it protects (bench.lane's read→relay). Bounded by size.
                parsed = self._parse(camera.cfg.format, body, content_type, received_at)
            else:
                # off the event loop: a large or many-part body must not delay relays
                parsed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._parse, camera.cfg.format, body, content_type,
                    received_at,
                )
        except PayloadError as err:
            counts["bad_payload"] += 1
            self._log_once(name, "bad_payload", f"bad {camera.cfg.format} payload: {err}")
            return _reply(400, str(err))
        finally:
            del body
        if not parsed:
            counts["no_plate"] += 1
            return _reply(200, "ok")
        try:
            kept = [self._emit_read(camera, item, received_mono) for item in parsed]
        except Exception:
            counts["emit_failed"] += 1
            log.exception("%s: emit failed", name)
            return _reply(500, "not accepted")
        del parsed
        counts["reads"] += len(kept)
        # An emit that returns no future (an older daemon) has nothing to wait for.
        waiting = [f for f in kept if f is not None]
        if waiting:
            done, pending = await asyncio.wait(waiting, timeout=self.settings.ack_timeout_s)
            failed = [f for f in done if f.cancelled() or f.exception() is not None]
            if pending or failed:
                counts["not_kept"] += 1
                why = (
                    "the journal did not confirm in time"
                    if pending
                    else "the lane did not keep it"
                    if failed[0].cancelled()
                    else f"the lane failed ({type(failed[0].exception()).__name__})"
                )
                self._log_once(name, "not_kept", f"read not kept: {why}; answered 503")
                return _reply(503, "not kept yet, send again", headers={"Retry-After": "1"})
        return _reply(200, "ok")

    def _refuse(self, camera: _Camera, key: str, reason: str) -> None:
        """Count and log once a refused push; it is audited in the address's summary."""
        name = camera.cfg.name
        self.counters[name]["refused"] += 1
        self._log_once(name, "refused", f"refused push from {key}: {reason}")
        self._count_refusal(key, name, reason)

    def _count_refusal(self, key: str, camera: str, reason: str) -> None:
        was_locked = self.addresses.locked(key, self._monotonic())
        summary = self.addresses.refuse(key, camera, reason, self._clock(), self._monotonic())
        if not was_locked and self.addresses.locked(key, self._monotonic()):
            log.warning(
                "%s: %s locked out for %.0f s after %d refused pushes",
                self.name,
                key,
                self.settings.lockout_s,
                self.settings.lockout_after,
            )
        if summary is not None:
            self._report(summary)

    def _report(self, summary: RefusalSummary) -> None:
        if self.on_refused is None:
            return
        try:
            self.on_refused(summary)
        except Exception:  # the audit hook must not take the listener down
            log.exception("%s: on_refused callback failed", self.name)

    def _emit_read(
        self, camera: _Camera, item: ParsedRead, received_mono: float
    ) -> asyncio.Future[int | None] | None:
        assert self._emit is not None
        return self._emit(
            PlateRead(
                access_point=camera.lane_id,
                text=item.text,
                source=camera.cfg.name,
                read_at=item.read_at,
                received_mono=received_mono,
                confidence=item.confidence,
                snapshot=item.snapshot,
                vendor=camera.cfg.format,
                extra=dict(item.extra),
                captured_at=item.captured_at,
                camera_direction=item.camera_direction,
            )
        )

    def _log_once(self, camera: str, kind: str, message: str) -> None:
        """Warn the first time a camera produces this kind of failure, then stay quiet."""
        if (camera, kind) in self._logged:
            log.debug("%s: %s", camera, message)
            return
        self._logged.add((camera, kind))
        log.warning("%s: %s (further ones are counted, not logged)", camera, message)


class _TooLarge(Exception):
    """A chunked body grew past the limit."""


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (_TooLarge beyond)."""
    buf = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        if len(buf) + len(chunk) > limit:
            raise _TooLarge
        buf += chunk
    return bytes(buf)


# --- helpers ---------------------------------------------------------------------------


def _reply(status: int, text: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """A short plain-text answer (the connection closes after it)."""
    return web.Response(status=status, text=text + "\n", headers=headers)


def _challenge(cfg: AnprHttpSourceConfig) -> dict[str, str]:
    """WWW-Authenticate for a 401: Basic when a user is configured, else Bearer."""
    if cfg.auth.username:
        return {"WWW-Authenticate": 'Basic realm="gated", charset="UTF-8"'}
    return {"WWW-Authenticate": 'Bearer realm="gated"'}


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets; any bytes a client sent compare, never raise.

    aiohttp decodes header bytes that are not UTF-8 as lone surrogates, which plain
    UTF-8 encoding refuses (it was a 500 with a traceback): surrogatepass keeps them.
    """
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _address_allowed(
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], remote: str
) -> bool:
    """True when no address list is configured, or the peer is in it."""
    if not networks:
        return True
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in net for net in networks)


def _check_auth(cfg: AnprHttpSourceConfig, request: web.Request) -> str | None:
    """None when the request may push, else a short reason (never containing a secret).

    With both a user and a token configured, either is accepted: a camera can
    usually do only one of them.
    """
    auth = cfg.auth
    if not auth.username and not auth.token:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    offered = False
    if auth.token:
        candidates = []
        if scheme == "bearer":
            candidates.append(value.strip())
        candidates.extend(request.query.getall("token", []))
        for candidate in candidates:
            offered = True
            if _same(candidate, auth.token):
                return None
    if auth.username and scheme == "basic":
        offered = True
        user, password = _basic_credentials(value)
        # evaluate both comparisons so timing does not reveal which one failed
        user_ok = _same(user, auth.username)
        password_ok = _same(password, auth.password)
        if user_ok and password_ok:
            return None
    return "wrong credentials" if offered else "missing credentials"


def _basic_credentials(value: str) -> tuple[str, str]:
    """(user, password) from a Basic credential, ('', '') when undecodable."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password
