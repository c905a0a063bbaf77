"""The central log viewer: every gate of a tenant, behind the status page's login rules.

One aiohttp application (`make_viewer_app`), served on its own listener beside ingest.
A user belongs to one tenant; the session cookie names the tenant and the token, and
every database statement a request makes runs in a transaction that set that tenant
with set_config(…, true), so row-level security — not this code — decides which rows
exist. Lists filter by whitelisted columns with bound values (gated.central.viewer.query).

Status codes: 400 a query string or form the viewer cannot take (the message says
which key), 401 no session, 403 wrong role / CSRF / origin, 404 nothing visible by that
name, 429 locked out. Roles: viewer (access events, event pages, pictures, devices and
the commands sent to each, CSV) < auditor (+ audit events) < admin (+ the tenant's users,
sending remote commands).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import re
import time
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import psycopg
from aiohttp import web
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout

from gated.central.viewer import accounts
from gated.central.viewer.accounts import RANK, ROLES, AccountError, Connect, ViewerSession
from gated.central.viewer.lists import (
    ACCESS,
    AUDIT,
    COMMANDS,
    CSV_ACCESS,
    CSV_AUDIT,
    EVENT_TYPES,
    STATUSES,
)
from gated.central.viewer.query import (
    FilterError,
    Filters,
    Listing,
    cursor,
    parse_filters,
    select_page,
)
from gated.web.auth import LoginLimiter, csrf_ok
from gated.web.common import csv_cell, foreign_origin, local_path, security_headers
from gated.web.words import MATCHES, explain, reason_words

__all__ = ["ViewerConfig", "make_viewer_app"]

log = logging.getLogger(__name__)

COOKIE = "gated_viewer"
CSV_MAX = 100_000
CSV_BATCH = 500
MAX_BODY = 64 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEVICE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # as the devices table checks
_ACTIONS = ("open", "hold", "release", "lockdown_on", "lockdown_off", "reload_rules",
            "sync_rules")
_HERE = Path(__file__).resolve().parent
_WEB = _HERE.parent.parent / "web"

CONFIG_KEY = web.AppKey("viewer", object)
# aiohttp 3.12 added typed request keys; plain strings still work (with a warning) before it
SESSION: Any = web.RequestKey("session", object) if hasattr(web, "RequestKey") else "session"


@dataclass(frozen=True, slots=True)
class ViewerConfig:
    """The viewer's settings (login rules default to the status page's)."""

    snapshot_dir: str = ""  # the content-addressed snapshot store (snapshots.path is under it)
    # the service's SnapshotStore (local or S3); when set, pictures are read through it
    snapshot_store: Any = field(default=None, compare=False, repr=False)
    timezone: str = "UTC"
    tls: bool = False  # served over TLS: Secure cookies and HSTS
    session_idle_s: float = 3600.0
    session_max_s: float = 43_200.0
    login_max_failures: int = 5  # per tenant+user and (x4) per address
    login_window_s: float = 300.0
    lockout_s: float = 300.0
    online_after_s: float = 180.0  # a device is online when its last heartbeat is this recent
    # remote commands (docs/central.md section 9): async (tenant, device, action, args, issuer)
    # -> command id; set by `gated central run` when [downlink] is configured, else None
    issue_command: Any = field(default=None, compare=False, repr=False)


class _Problem(Exception):
    """An HTTP error with a status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_viewer_app(connect: Any, cfg: ViewerConfig) -> web.Application:
    """The viewer's aiohttp application over a pool (or any tenant-less connection factory).

    `connect` is a psycopg AsyncConnectionPool or a callable returning an async context
    manager of an AsyncConnection, logged in as the service role (gated_service).
    """
    factory: Connect = connect.connection if hasattr(connect, "connection") else connect
    viewer = _Viewer(factory, cfg)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[viewer.middleware])
    app[CONFIG_KEY] = viewer
    r = app.router
    r.add_get("/healthz", viewer.healthz)
    r.add_get("/login", viewer.login_page)
    r.add_post("/login", viewer.login)
    r.add_post("/logout", viewer.logout)
    r.add_static("/static/", _WEB / "static", follow_symlinks=False)
    r.add_get("/", viewer.home)
    r.add_get("/events", viewer.events)
    r.add_get("/events.csv", viewer.events_csv)
    r.add_get("/events/{event_id}", viewer.event_page)
    r.add_get("/snapshots/{name}", viewer.snapshot)
    r.add_get("/audit", viewer.audit)
    r.add_get("/audit.csv", viewer.audit_csv)
    r.add_get("/audit/{event_id}", viewer.audit_row)
    r.add_get("/devices", viewer.devices)
    r.add_get("/devices/{device_id}", viewer.device_page)
    r.add_post("/devices/{device_id}/commands", viewer.device_command)
    r.add_get("/users", viewer.users)
    r.add_post("/users", viewer.user_add)
    r.add_post("/users/{name}", viewer.user_change)
    r.add_post("/users/{name}/remove", viewer.user_remove)
    return app


class _Viewer:
    """Handlers and their shared state (limiters, templates); one per application."""

    def __init__(self, connect: Connect, cfg: ViewerConfig) -> None:
        self.connect = connect
        self.cfg = cfg
        self.tz = zoneinfo.ZoneInfo(cfg.timezone)
        self.by_user = LoginLimiter(cfg.login_max_failures, cfg.login_window_s, cfg.lockout_s)
        self.by_address = LoginLimiter(cfg.login_max_failures * 4, cfg.login_window_s,
                                       cfg.lockout_s)
        # The viewer's templates first, then the status page's (base.html, problem.html,
        # audit_row.html are shared); autoescaped whatever the name: plates are hostile.
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(_HERE / "templates")),
                                        jinja2.FileSystemLoader(str(_WEB / "templates"))]),
            autoescape=True)
        self.env.filters["when"] = self._when
        self.env.filters["reason_words"] = reason_words

    # --- plumbing ----------------------------------------------------------------------

    def tx(self, tenant_id: str) -> Any:
        """A transaction scoped to one tenant."""
        return accounts.tenant_tx(self.connect, tenant_id)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Session from the cookie; problems rendered as pages (or JSON); security headers."""
        try:
            # Static files, the health check and the login form need no session (no
            # database round trip; the form shows even while the database is away).
            public = request.path.startswith("/static/") or request.path in ("/healthz",
                                                                             "/login")
            request[SESSION] = (None if public
                                  else await self._session(request.cookies.get(COOKIE)))
            response = await handler(request)
        except _Problem as problem:
            response = self._problem(request, problem.status, str(problem))
        except FilterError as err:
            response = self._problem(request, 400, str(err))
        except (psycopg.OperationalError, PoolTimeout):
            # The database or the pool is gone or saturated: say so, keep serving, log once
            # per request without the connection string.
            log.warning("viewer: database unavailable for %s", request.path)
            response = self._problem(request, 503, "the database is not answering: try again")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = self._problem(request, exc.status, exc.reason)
        if not response.prepared:
            security_headers(response, self.cfg.tls)
        return response

    async def _session(self, cookie: str | None) -> ViewerSession | None:
        if not cookie or len(cookie) > 256:
            return None
        token, _, tenant = cookie.partition(".")
        if not token or not accounts.TENANT_RE.match(tenant):
            return None
        async with self.tx(tenant) as conn:
            return await accounts.find_session(conn, tenant, token, self.cfg.session_idle_s,
                                               self.cfg.session_max_s)

    def _problem(self, request: web.Request, status: int, message: str) -> web.Response:
        if request.path.endswith(".csv") or request.path.startswith("/snapshots/"):
            return web.json_response({"ok": False, "error": message}, status=status)
        if status == 401:
            return self._render(request, "viewer_login.html", http_status=401,
                                next=local_path(request.path_qs), error="", tenant="")
        return self._render(request, "problem.html", http_status=status, status_code=status,
                            message=message)

    def _render(self, request: web.Request, template: str, *, http_status: int = 200,
                **context: Any) -> web.Response:
        session: ViewerSession | None = request.get(SESSION)
        text = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.path,
            roles=ROLES, **context)
        return web.Response(text=text, status=http_status, content_type="text/html",
                            charset="utf-8")

    def _when(self, value: Any) -> str:
        if isinstance(value, dt.datetime):
            return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, self.tz).strftime("%Y-%m-%d %H:%M:%S")
        return ""

    def _need(self, request: web.Request, role: str) -> ViewerSession:
        session: ViewerSession | None = request[SESSION]
        if session is None:
            raise _Problem(401, "log in first")
        if RANK.get(session.role, -1) < RANK[role]:
            raise _Problem(403, f"this needs the {role} role")
        return session

    async def _need_post(self, request: web.Request,
                         role: str) -> tuple[ViewerSession, dict[str, str]]:
        """A state-changing request: session, role, same origin, CSRF token; the form."""
        session = self._need(request, role)
        if foreign_origin(request):
            raise _Problem(403, "cross-origin request refused")
        posted = await request.post()
        form = {k: v for k, v in posted.items() if isinstance(v, str)}
        if not csrf_ok(session, request.headers.get("X-CSRF-Token") or form.get("csrf")):  # type: ignore[arg-type]
            raise _Problem(403, "missing or wrong CSRF token: reload the page")
        return session, form

    def _filters(self, request: web.Request, listing: Listing) -> Filters:
        # items(), not keys(): a key given twice must be seen twice
        return parse_filters(request.query, listing, self.tz,
                             [key for key, _ in request.query.items()])

    # --- login ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Unauthenticated liveness: the database answers (no tenant, no details)."""
        try:
            async with self.connect() as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, PoolTimeout) as err:
            log.warning("viewer health check: database unreachable (%s)", type(err).__name__)
            return web.json_response({"ok": False}, status=503)
        return web.json_response({"ok": True})

    async def login_page(self, request: web.Request) -> web.Response:
        """The login form (tenant, user, password)."""
        return self._render(request, "viewer_login.html",
                            next=local_path(request.query.get("next")), error="", tenant="")

    async def login(self, request: web.Request) -> web.Response:
        """Check tenant, name and password; a new session, or a counted failure."""
        if foreign_origin(request):
            raise _Problem(403, "cross-origin request refused")
        form = await request.post()
        tenant = str(form.get("tenant", "")).strip()[:128]
        name = str(form.get("user", ""))[:128]
        password = str(form.get("password", ""))[:4096]
        target = local_path(str(form.get("next", "/")))
        address = str(request.remote or "unknown")[:64]
        now = time.monotonic()
        key = f"u:{tenant}/{name}"
        wait = max(self.by_user.locked(key, now), self.by_address.locked(address, now))
        if wait > 0:
            response = self._render(request, "viewer_login.html", http_status=429, next=target,
                                    tenant=tenant, error="Too many failed logins: try again later.")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        user = None
        if accounts.TENANT_RE.match(tenant):
            async with self.tx(tenant) as conn:
                user = await accounts.authenticate(conn, tenant, name, password)
                if user is not None:
                    token, _ = await accounts.create_session(conn, user)
                    await accounts.record(conn, tenant, "login", actor=user.name,
                                          address=address, detail={"role": user.role})
                else:
                    await self._login_failed(conn, tenant, name, address)
        if user is None:
            locked = self.by_user.failed(key, now) | self.by_address.failed(address, now)
            return self._render(request, "viewer_login.html", http_status=401, next=target,
                                tenant=tenant,
                                error="Too many failed logins: try again later." if locked
                                else "Wrong tenant, user name or password.")
        self.by_user.succeeded(key)
        self.by_address.succeeded(address)
        response = web.HTTPSeeOther(target)
        response.set_cookie(COOKIE, f"{token}.{tenant}", httponly=True, samesite="Strict",
                            secure=self.cfg.tls, path="/")
        security_headers(response, self.cfg.tls)
        raise response

    async def _login_failed(self, conn: AsyncConnection[Any], tenant: str, name: str,
                            address: str) -> None:
        # Recorded only for a tenant that exists (its row is visible once the tenant is set):
        # guessed tenant names leave no rows behind.
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", [tenant])
            if await cur.fetchone() is None:
                return
        await accounts.record(conn, tenant, "login_failed", actor=name[:64] or None,
                              address=address, status="failure")

    async def logout(self, request: web.Request) -> web.Response:
        """End the session."""
        session, _ = await self._need_post(request, "viewer")
        async with self.tx(session.tenant_id) as conn:
            await accounts.end_session(conn, session)
            await accounts.record(conn, session.tenant_id, "logout", actor=session.user,
                                  address=str(request.remote or "")[:64])
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        security_headers(response, self.cfg.tls)
        raise response

    async def home(self, request: web.Request) -> web.Response:
        """The access events are the start page."""
        self._need(request, "viewer")
        raise web.HTTPSeeOther("/events")

    # --- lists -----------------------------------------------------------------------------

    async def _page(self, session: ViewerSession, listing: Listing,
                    filters: Filters) -> tuple[list[dict[str, Any]], str | None]:
        statement, params = select_page(listing, filters, session.tenant_id,
                                        limit=filters.limit + 1)
        async with self.tx(session.tenant_id) as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(statement, params)
            rows = await cur.fetchall()
        more = len(rows) > filters.limit
        rows = rows[:filters.limit]
        next_query = None
        if more:
            next_query = urlencode({**filters.shown, "before": cursor(rows[-1], listing)})
        return rows, next_query

    async def events(self, request: web.Request) -> web.Response:
        """Access events of every gate of the tenant: filters, keyset paging."""
        session = self._need(request, "viewer")
        filters = self._filters(request, ACCESS)
        rows, next_query = await self._page(session, ACCESS, filters)
        return self._render(request, "viewer_events.html", rows=rows, filters=filters.shown,
                            types=EVENT_TYPES, next_url=next_query and "/events?" + next_query,
                            csv_url="/events.csv?" + urlencode(_without_paging(filters.shown)))

    async def audit(self, request: web.Request) -> web.Response:
        """Audit events of every gate of the tenant (and the service's own)."""
        session = self._need(request, "auditor")
        filters = self._filters(request, AUDIT)
        rows, next_query = await self._page(session, AUDIT, filters)
        return self._render(request, "viewer_audit.html", rows=rows, filters=filters.shown,
                            statuses=STATUSES, next_url=next_query and "/audit?" + next_query,
                            csv_url="/audit.csv?" + urlencode(_without_paging(filters.shown)))

    async def events_csv(self, request: web.Request) -> web.StreamResponse:
        """The filtered access events as CSV, streamed, safe to open in a spreadsheet."""
        session = self._need(request, "viewer")
        return await self._csv(request, session, ACCESS, CSV_ACCESS, "gated-access.csv")

    async def audit_csv(self, request: web.Request) -> web.StreamResponse:
        """The filtered audit events as CSV."""
        session = self._need(request, "auditor")
        return await self._csv(request, session, AUDIT, CSV_AUDIT, "gated-audit.csv")

    async def _csv(self, request: web.Request, session: ViewerSession, listing: Listing,
                   columns: tuple[tuple[str, str], ...], filename: str) -> web.StreamResponse:
        filters = self._filters(request, listing)  # a bad filter is a 400 before any byte
        response = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"'})
        security_headers(response, self.cfg.tls)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([header for header, _ in columns])
        sent = 0
        # One transaction for the whole file; keyset batches keep memory flat however
        # many rows match.
        async with self.tx(session.tenant_id) as conn, conn.cursor(row_factory=dict_row) as cur:
            await response.prepare(request)
            while sent < CSV_MAX:
                statement, params = select_page(listing, filters, session.tenant_id,
                                                limit=min(CSV_BATCH, CSV_MAX - sent))
                await cur.execute(statement, params)
                rows = await cur.fetchall()
                if not rows:
                    break
                for row in rows:
                    writer.writerow([csv_cell(self._csv_value(row.get(column)))
                                     for _, column in columns])
                sent += len(rows)
                filters.before = (rows[-1][listing.time_column],
                                  str(rows[-1][listing.key_column]))
                await response.write(out.getvalue().encode())
                out.seek(0)
                out.truncate()
        await response.write(out.getvalue().encode())
        await response.write_eof()
        return response

    def _csv_value(self, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value.astimezone(self.tz).isoformat(timespec="seconds")
        return value

    # --- one event ----------------------------------------------------------------------

    async def _row(self, conn: AsyncConnection[Any], table: str, tenant: str,
                   event_id: str) -> dict[str, Any] | None:
        """One event row of the transaction's tenant, by id (partition found via event_ids)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT created_at, chain FROM event_ids "
                              "WHERE tenant_id = %s AND event_id = %s", [tenant, event_id])
            known = await cur.fetchone()
            # The table is one of two constants chosen by the caller, never the request.
            name = sql.Identifier(table)
            if known is not None:  # the time lets PostgreSQL look in one partition only
                await cur.execute(sql.SQL("SELECT * FROM {} WHERE tenant_id = %s "
                                          "AND created_at = %s AND event_id = %s").format(name),
                                  [tenant, known["created_at"], event_id])
            else:  # the service's own audit rows have no event_ids entry
                await cur.execute(sql.SQL("SELECT * FROM {} WHERE tenant_id = %s "
                                          "AND event_id = %s").format(name), [tenant, event_id])
            row = await cur.fetchone()
        if row is not None:
            row["chain"] = known["chain"] if known else None
        return row

    def _event_id(self, request: web.Request) -> str:
        event_id = request.match_info["event_id"].lower()
        if not _UUID.match(event_id):
            raise _Problem(404, "no such event")
        return event_id

    async def event_page(self, request: web.Request) -> web.Response:
        """One access event: the picture, times, the device, the decision in words."""
        session = self._need(request, "viewer")
        event_id = self._event_id(request)
        async with self.tx(session.tenant_id) as conn:
            row = await self._row(conn, "access_logs", session.tenant_id, event_id)
            picture = False
            if row is not None and row.get("snapshot_sha256"):
                picture = await self._picture_path(conn, session.tenant_id,
                                                   str(row["snapshot_sha256"])) is not None
        if row is None:
            raise _Problem(404, "no such event")
        return self._render(request, "viewer_event.html", row=row, words=_explain(row),
                            picture=picture, match=_match(row))

    async def audit_row(self, request: web.Request) -> web.Response:
        """One audit row in full (the status page's template)."""
        session = self._need(request, "auditor")
        event_id = self._event_id(request)
        async with self.tx(session.tenant_id) as conn:
            row = await self._row(conn, "audit_logs", session.tenant_id, event_id)
        if row is None:
            raise _Problem(404, "no such audit record")
        return self._render(request, "audit_row.html", row=row, old=_pretty(row.get("old_values")),
                            new=_pretty(row.get("new_values")), meta=_pretty(row.get("metadata")))

    async def _picture_path(self, conn: AsyncConnection[Any], tenant: str,
                            sha256: str) -> str | None:
        """The picture's path in the store, if the tenant has it and one of its events names it."""
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT s.path FROM snapshots s WHERE s.tenant_id = %s AND s.sha256 = %s "
                "AND EXISTS (SELECT 1 FROM access_logs a WHERE a.tenant_id = s.tenant_id "
                "AND a.snapshot_sha256 = s.sha256)", [tenant, sha256])
            found = await cur.fetchone()
        return str(found[0]) if found else None

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        """A picture by its SHA-256, only when an event the tenant can see names it."""
        session = self._need(request, "viewer")
        name = request.match_info["name"]
        sha256 = name.removesuffix(".jpg")
        if not _SHA256.match(sha256):
            raise _Problem(404, "no such picture")
        async with self.tx(session.tenant_id) as conn:
            relative = await self._picture_path(conn, session.tenant_id, sha256)
        # One answer for "another tenant's", "no such hash" and "file gone": no oracle.
        path = None
        if relative is not None and self.cfg.snapshot_store is not None:
            try:
                body = await asyncio.to_thread(self.cfg.snapshot_store.get, relative)
            except OSError as err:
                raise _Problem(503, "the picture store is unavailable; try again") from err
            if body is None:
                raise _Problem(404, "no such picture")
            response = web.Response(body=body, headers={
                "Content-Type": "image/jpeg", "Cache-Control": "private, max-age=86400"})
            security_headers(response, self.cfg.tls)
            return response
        if relative is not None and self.cfg.snapshot_dir:
            path = await asyncio.to_thread(_inside, self.cfg.snapshot_dir, relative)
        if path is None:
            raise _Problem(404, "no such picture")
        sent = web.FileResponse(path, headers={"Content-Type": "image/jpeg",
                                               "Cache-Control": "private, max-age=86400"})
        security_headers(sent, self.cfg.tls)
        return sent

    # --- devices ------------------------------------------------------------------------

    async def devices(self, request: web.Request) -> web.Response:
        """Per-device health: online, last heartbeat, backlog, rule set, witnessed chain."""
        return await self._devices_view(request, self._need(request, "viewer"))

    async def device_page(self, request: web.Request) -> web.Response:
        """One device: its health and the commands issued to it with their outcomes."""
        session = self._need(request, "viewer")
        # `sent`: the command just sent from this page (see device_command), not a filter
        query = {k: v for k, v in request.query.items() if k != "sent"}
        filters = parse_filters(query, COMMANDS, self.tz, [k for k, _ in request.query.items()
                                                          if k != "sent"])
        device_id = request.match_info["device_id"]
        sent = request.query.get("sent", "")
        page = await self._device_view(request, session, device_id, filters,
                                       sent=sent if _UUID.fullmatch(sent) else "")
        if page is None:
            raise _Problem(404, "no such device")
        return page

    async def device_command(self, request: web.Request) -> web.Response:
        """An admin sends a signed remote command to one of the tenant's gates."""
        from gated.central.downlink import DownlinkError, check_command

        session, form = await self._need_post(request, "admin")
        if self.cfg.issue_command is None:
            raise _Problem(503, "remote commands are not configured on this service "
                                "([downlink] in central.toml)")
        device_id = request.match_info["device_id"]
        action = form.get("action", "")
        fresh = parse_filters({}, COMMANDS, self.tz)
        try:
            args = check_command(action, form.get("lane") or None, form.get("reason") or None,
                                 60.0)
            command_id = await self.cfg.issue_command(session.tenant_id, device_id, action,
                                                      args, f"viewer:{session.user}")
        except DownlinkError as err:
            # the device's page when the tenant has that device, else the list (unknown id)
            page = await self._device_view(request, session, device_id, fresh,
                                           error=str(err), http_status=400)
            return page or await self._devices_view(request, session, error=str(err),
                                                    http_status=400)
        # Post/redirect/get: the device's page, the command just sent at the top of its list;
        # reloading that page shows it again instead of sending a second command.
        response = web.HTTPSeeOther(f"/devices/{quote(device_id)}?sent={quote(str(command_id))}")
        security_headers(response, self.cfg.tls)
        raise response

    async def _device_rows(self, cur: Any, tenant_id: str,
                           device_id: str | None = None) -> list[dict[str, Any]]:
        """The health of the tenant's devices, or of one of them."""
        await cur.execute(
            "SELECT device_id, site_id, last_heartbeat_at, backlog, rules_version, status, "
            "status_at, chain_seq, head_seq, forked, "
            "coalesce(last_heartbeat_at > now() - %s, false) AS online, "
            "heartbeat->>'version' AS version, heartbeat->'healthy' AS healthy, "
            "heartbeat->'oldest_unsynced_age_s' AS oldest_unsynced_age_s, "
            # the downlink: the bundle version the gate runs against the newest published
            # for it, so a gate that was sent a rule set but did not install it shows
            "rules_bundle->>'rules_bundle_version' AS bundle_version, "
            "rules_bundle->>'rules_last_error' AS rules_error, "
            "(SELECT max(b.version) FROM rule_bundles b WHERE b.tenant_id = d.tenant_id "
            "AND b.device_id = d.device_id) AS published_version, "
            # A gate syncing over HTTP sends no heartbeat: its newest row's arrival is
            # the last sign of it (by the (tenant, device, seq) index, not a scan).
            "(SELECT e.received_at FROM event_ids e WHERE e.tenant_id = d.tenant_id "
            "AND e.device_id = d.device_id ORDER BY e.seq DESC LIMIT 1) AS last_upload_at "
            "FROM devices d WHERE tenant_id = %s AND (%s::text IS NULL OR device_id = %s) "
            "ORDER BY site_id NULLS LAST, device_id",
            [dt.timedelta(seconds=self.cfg.online_after_s), tenant_id, device_id, device_id])
        rows: list[dict[str, Any]] = await cur.fetchall()
        return rows

    def _command_context(self) -> dict[str, Any]:
        """What the device templates need to show the command form, or to leave it out."""
        return {"online_after_s": self.cfg.online_after_s,
                "commands": self.cfg.issue_command is not None, "actions": _ACTIONS}

    async def _devices_view(self, request: web.Request, session: ViewerSession, *,
                            message: str = "", error: str = "",
                            http_status: int = 200) -> web.Response:
        async with self.tx(session.tenant_id) as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = await self._device_rows(cur, session.tenant_id)
        return self._render(request, "viewer_devices.html", http_status=http_status, rows=rows,
                            message=message, error=error, **self._command_context())

    async def _device_view(self, request: web.Request, session: ViewerSession, device_id: str,
                           filters: Filters, *, message: str = "", error: str = "",
                           http_status: int = 200, sent: str = "") -> web.Response | None:
        """The device's page, or None when the tenant has no such device.

        `sent`: a command id just sent from the page; named in the message when it is one of
        this device's listed commands.
        """
        if not _DEVICE.match(device_id):
            return None
        # The device is named by the path: an equality on commands.device_id, bound.
        filters.equals["device_id"] = device_id
        page, params = select_page(COMMANDS, filters, session.tenant_id,
                                   limit=filters.limit + 1)
        # The outcome is the device's answer to *this* command: a result counts only when
        # the device it came from is the device the command went to (another gate of the
        # tenant may name any command id in its results; the ingest keeps those as
        # evidence). The first answer received is the outcome: a command delivered twice
        # (MQTT QoS 1) is answered again as a replay, which says nothing of the first.
        statement = sql.SQL(
            "SELECT p.*, p.expires_at <= now() AS expired, r.outcome, r.reason, r.message, "
            "r.at AS answered_at, r.signature_verified, r.answers FROM ({page}) p "
            "LEFT JOIN LATERAL (SELECT x.outcome, x.reason, x.message, x.at, "
            "x.signature_verified, count(*) OVER () AS answers FROM command_results x "
            "WHERE x.tenant_id = %s AND x.command_id = p.command_id::text "
            "AND x.device_id = p.device_id "
            "ORDER BY x.signature_verified DESC, x.received_at, x.result_id LIMIT 1) r ON true "
            "ORDER BY p.issued_at DESC, p.command_id::text DESC").format(page=page)
        async with self.tx(session.tenant_id) as conn, conn.cursor(row_factory=dict_row) as cur:
            found = await self._device_rows(cur, session.tenant_id, device_id)
            if not found:
                return None
            await cur.execute(statement, [*params, session.tenant_id])
            rows = await cur.fetchall()
        more = len(rows) > filters.limit
        rows = rows[:filters.limit]
        for row in rows:
            row["state"], row["state_words"] = _command_state(row)
            row["who"], row["via"] = _issuer(str(row["issued_by"]))
            if sent and str(row["command_id"]) == sent.lower() and not message:
                message = f"{row['action']} sent to {device_id} (command {sent.lower()})"
        next_url = None
        if more:
            next_url = (f"/devices/{quote(device_id)}?"
                        + urlencode({**filters.shown, "before": cursor(rows[-1], COMMANDS)}))
        return self._render(request, "viewer_device.html", http_status=http_status,
                            d=found[0], rows=rows, next_url=next_url, message=message,
                            error=error, **self._command_context())

    # --- users (admin) ------------------------------------------------------------------

    async def _users_view(self, request: web.Request, session: ViewerSession, *,
                          message: str = "", error: str = "",
                          http_status: int = 200) -> web.Response:
        async with self.tx(session.tenant_id) as conn:
            users = await accounts.list_users(conn, session.tenant_id)
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute("SELECT at, action, actor, address, status, detail "
                                  "FROM viewer_audit WHERE tenant_id = %s "
                                  "ORDER BY at DESC, id DESC LIMIT 50", [session.tenant_id])
                trail = await cur.fetchall()
        return self._render(request, "viewer_users.html", http_status=http_status, users=users,
                            trail=trail, message=message, error=error)

    async def users(self, request: web.Request) -> web.Response:
        """The tenant's users and the viewer's recent logins and changes."""
        session = self._need(request, "admin")
        return await self._users_view(request, session)

    async def user_add(self, request: web.Request) -> web.Response:
        """Add a user to the admin's tenant."""
        session, form = await self._need_post(request, "admin")
        name, role = form.get("name", "").strip(), form.get("role", "")
        try:
            async with self.tx(session.tenant_id) as conn:
                await accounts.add_user(conn, session.tenant_id, name, role,
                                        form.get("password", ""))
                await accounts.record(conn, session.tenant_id, "user_add", actor=session.user,
                                      address=str(request.remote or "")[:64],
                                      detail={"user": name, "role": role})
        except AccountError as err:
            return await self._users_view(request, session, error=str(err), http_status=400)
        return await self._users_view(request, session, message=f"user {name} added ({role})")

    async def user_change(self, request: web.Request) -> web.Response:
        """Change a user's role and/or password (their sessions end)."""
        session, form = await self._need_post(request, "admin")
        name = request.match_info["name"][:64]
        role = form.get("role") or None
        password = form.get("password") or None
        if role is None and password is None:
            raise _Problem(400, "give a role, a password or both")
        try:
            async with self.tx(session.tenant_id) as conn:
                if name == session.user and role not in (None, "admin"):
                    raise AccountError("an admin cannot take the admin role from themselves")
                await accounts.set_user(conn, session.tenant_id, name, role=role,
                                        password=password)
                await accounts.record(conn, session.tenant_id, "user_change", actor=session.user,
                                      address=str(request.remote or "")[:64],
                                      detail={"user": name, "role": role,
                                              "password": "changed" if password else None})
        except AccountError as err:
            return await self._users_view(request, session, error=str(err), http_status=400)
        if name == session.user:  # their own sessions, this one included, have ended
            raise web.HTTPSeeOther("/login")
        return await self._users_view(request, session, message=f"user {name} changed")

    async def user_remove(self, request: web.Request) -> web.Response:
        """Remove a user of the admin's tenant (not oneself)."""
        session, _ = await self._need_post(request, "admin")
        name = request.match_info["name"][:64]
        if name == session.user:
            return await self._users_view(request, session, http_status=400,
                                          error="an admin cannot remove themselves")
        try:
            async with self.tx(session.tenant_id) as conn:
                await accounts.remove_user(conn, session.tenant_id, name)
                await accounts.record(conn, session.tenant_id, "user_remove", actor=session.user,
                                      address=str(request.remote or "")[:64],
                                      detail={"user": name})
        except AccountError as err:
            return await self._users_view(request, session, error=str(err), http_status=404)
        return await self._users_view(request, session, message=f"user {name} removed")


# --- helpers -------------------------------------------------------------------------------


def _without_paging(shown: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in shown.items() if k not in ("before", "limit")}


def _command_state(row: Mapping[str, Any]) -> tuple[str, str]:
    """A command's outcome as (state, words): done, refused, failed, expired or pending."""
    outcome = row.get("outcome")
    message = str(row.get("message") or "")
    if outcome == "success":
        return "done", message
    if outcome == "refused":
        reason = row.get("reason")
        return "refused", f"{reason}: {message}" if reason else message
    if outcome is not None:  # "failed": accepted, then the gate could not do it
        return str(outcome), message
    if row.get("expired"):
        return "expired", "no answer before it expired"
    return "pending", "no answer yet"


def _issuer(issued_by: str) -> tuple[str, str]:
    """Who sent a command and how: (name, "viewer" or "CLI") from its issuer."""
    kind, sep, name = issued_by.partition(":")
    if sep and kind == "viewer":
        return name, "viewer"
    if sep and kind == "unix":  # `gated central command` names the operator's Unix account
        return name, "CLI"
    return issued_by, ""


def _explain(row: Mapping[str, Any]) -> list[str]:
    """The status page's decision sentences for a stored row (0/1 flags read as booleans)."""
    view = dict(row)
    view["gate_opened"] = None if row.get("gate_opened") is None else bool(row["gate_opened"])
    view.setdefault("decision_reason", "")
    if view.get("decision_reason") is None:
        view["decision_reason"] = "unknown"
    if not isinstance(view.get("metadata"), dict):
        view["metadata"] = {}
    try:
        return explain(view)
    except (KeyError, TypeError, ValueError):
        # a row the edge wrote in an unexpected shape still shows, with the bare reason
        return [f"{row.get('event_type')}: {reason_words(row.get('decision_reason'))}."]


def _match(row: Mapping[str, Any]) -> str | None:
    meta = row.get("metadata")
    match = meta.get("match") if isinstance(meta, dict) else None
    if not isinstance(match, dict):
        return None
    kind = str(match.get("kind"))
    return MATCHES.get(kind, kind)


def _inside(root_dir: str, relative: str) -> Path | None:
    """The file at `relative` under `root_dir`, or None (missing, or outside it)."""
    root = Path(root_dir).resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def _pretty(value: Any) -> str:
    import json

    return "" if value is None else json.dumps(value, indent=2, sort_keys=True, default=str)
