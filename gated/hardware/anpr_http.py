"""HTTP listener that ANPR cameras push plate reads to (Hikvision, Axis, Plate Recognizer, generic).

One AnprListener serves one TCP port; several cameras share it, each on its own
path with its own optional authentication. Each request is answered as soon as
its reads are emitted: the daemon decides and journals asynchronously, and a
camera that waits for a disk write would time out and retry.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gated.config import AnprHttpSourceConfig
from gated.errors import ConfigError, HardwareError, PayloadError
from gated.hardware.anpr_formats import ParsedRead, parse_payload
from gated.hardware.base import Emit
from gated.model import PlateRead

__all__ = ["COUNTER_KEYS", "AnprListener", "OnRefused"]

log = logging.getLogger(__name__)

# on_refused(camera_name, remote_ip, reason): the daemon audits refused pushes.
OnRefused = Callable[[str, str, str], None]

COUNTER_KEYS = (
    "requests",  # every request that reached a camera's path
    "reads",  # reads emitted
    "no_plate",  # valid messages without a plate (heartbeats, other events)
    "refused",  # 401: missing or wrong credentials; 403: address not allowed
    "bad_payload",  # 400: malformed, truncated or unknown payload
    "too_large",  # 413
    "wrong_method",  # 405
    "timeout",  # 408: the body did not arrive in time
    "emit_failed",  # 500: the daemon's emit raised
)
UNMATCHED = "*"  # counters key for requests to no configured path (not a valid camera name)

_BODY_TIMEOUT_S = 15.0  # a camera on a LAN sends a few hundred kB in well under a second
_ALLOWED_METHODS = ("POST", "PUT")  # ISAPI alarm servers and webhooks use POST; some firmware PUT


@dataclass(frozen=True, slots=True)
class _Camera:
    """One configured camera: where it pushes, how it authenticates, which lane it serves."""

    cfg: AnprHttpSourceConfig
    lane_id: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


class AnprListener:
    """An aiohttp server on one port turning camera pushes into PlateReads (a PlateSource)."""

    def __init__(
        self,
        host: str,
        port: int,
        max_body_kb: int,
        *,
        on_refused: OnRefused | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = f"anpr-http:{port}"
        self.host = host
        self.port = port
        self.max_body = max_body_kb * 1024
        self.on_refused = on_refused
        self._clock = clock
        self._monotonic = monotonic
        self._cameras: dict[str, _Camera] = {}
        self.counters: dict[str, dict[str, int]] = {UNMATCHED: {"not_found": 0}}
        self._logged: set[tuple[str, str]] = set()
        self._emit: Emit | None = None
        self._bound_port: int | None = None
        self.started = asyncio.Event()

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
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # No access log: a camera may put its token in the query string.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as err:
                raise HardwareError(
                    f"{self.name}: cannot listen on {self.host}:{self.port}: {err.strerror or err}"
                ) from err
            self._bound_port = _bound_port(runner, self.port)
            log.info("%s: listening on %s:%s", self.name, self.host, self._bound_port)
            self.started.set()
            await asyncio.Event().wait()  # serve until cancelled
        finally:
            self.started.clear()
            await runner.cleanup()

    # --- request path ----------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
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
            self._refuse(camera, remote, "address not allowed")
            return _reply(403, "not allowed from this address")
        refusal = _check_auth(camera.cfg, request)
        if refusal is not None:
            self._refuse(camera, remote, refusal)
            return _reply(401, "authentication required", headers=_challenge(camera.cfg))

        if request.content_length is not None and request.content_length > self.max_body:
            counts["too_large"] += 1
            self._log_once(name, "too_large", f"body of {request.content_length} bytes refused")
            return _reply(413, "body too large", close=True)
        try:
            async with asyncio.timeout(_BODY_TIMEOUT_S):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            counts["too_large"] += 1
            self._log_once(name, "too_large", "chunked body over the limit refused")
            return _reply(413, "body too large", close=True)
        except TimeoutError:
            counts["timeout"] += 1
            self._log_once(name, "timeout", "body did not arrive in time")
            return _reply(408, "body timeout", close=True)

        received_mono = self._monotonic()
        received_at = self._clock()
        content_type = request.headers.get("Content-Type", "")
        try:
            parsed = parse_payload(camera.cfg.format, body, content_type, received_at)
        except PayloadError as err:
            counts["bad_payload"] += 1
            self._log_once(name, "bad_payload", f"bad {camera.cfg.format} payload: {err}")
            return _reply(400, str(err))
        if not parsed:
            counts["no_plate"] += 1
            return _reply(200, "ok")
        try:
            for item in parsed:
                self._emit_read(camera, item, received_mono)
        except Exception:
            counts["emit_failed"] += 1
            log.exception("%s: emit failed", name)
            return _reply(500, "not accepted")
        counts["reads"] += len(parsed)
        return _reply(200, "ok")

    def _refuse(self, camera: _Camera, remote: str, reason: str) -> None:
        """Count, log once and report a refused push (the daemon audits it)."""
        name = camera.cfg.name
        self.counters[name]["refused"] += 1
        self._log_once(name, "refused", f"refused push from {remote}: {reason}")
        if self.on_refused is not None:
            try:
                self.on_refused(name, remote, reason)
            except Exception:  # the audit hook must not take the listener down
                log.exception("%s: on_refused callback failed", name)

    def _emit_read(self, camera: _Camera, item: ParsedRead, received_mono: float) -> None:
        assert self._emit is not None
        self._emit(
            PlateRead(
                access_point=camera.lane_id,
                text=item.text,
                source=camera.cfg.name,
                read_at=item.read_at,
                received_mono=received_mono,
                confidence=item.confidence,
                direction=item.direction,
                snapshot=item.snapshot,
                vendor=camera.cfg.format,
                extra=dict(item.extra),
            )
        )

    def _log_once(self, camera: str, kind: str, message: str) -> None:
        """Warn the first time a camera produces this kind of failure, then stay quiet."""
        if (camera, kind) in self._logged:
            log.debug("%s: %s", camera, message)
            return
        self._logged.add((camera, kind))
        log.warning("%s: %s (further ones are counted, not logged)", camera, message)


# --- helpers ---------------------------------------------------------------------------


def _reply(
    status: int, text: str, *, headers: dict[str, str] | None = None, close: bool = False
) -> web.Response:
    """A short plain-text answer; `close` drops the connection (its body was not read)."""
    response = web.Response(status=status, text=text + "\n", headers=headers)
    if close:
        response.force_close()
    return response


def _challenge(cfg: AnprHttpSourceConfig) -> dict[str, str]:
    """WWW-Authenticate for a 401: Basic when a user is configured, else Bearer."""
    if cfg.auth.username:
        return {"WWW-Authenticate": 'Basic realm="gated", charset="UTF-8"'}
    return {"WWW-Authenticate": 'Bearer realm="gated"'}


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


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


def _bound_port(runner: web.AppRunner, fallback: int) -> int:
    """The port the first server socket is bound to."""
    for site in runner.sites:
        server: Any = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    return fallback
