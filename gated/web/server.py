"""The status page's HTTP server: routes, login, roles, CSRF, security headers.

One aiohttp application on the daemon's loop. Every route but `/healthz`, `/login` and
the static files needs a session; each names the least role it needs (viewer < guard <
admin). State-changing requests are POSTs carrying the session's CSRF token (a form
field or the X-CSRF-Token header) from this origin. Gate actions go through the
control plane with a GUARD actor (user, role, address, user agent, request id) and a
confirmation step; lists read through the journal's read API; the live feed is the
one-reader hub of gated.web.feed. Status codes: 401 no session, 403 wrong role / CSRF /
origin, 404 unknown thing, 405 wrong method, 409 refused by the control plane, 422
input that cannot be understood, 429 locked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import logging
import re
import shutil
import ssl
import time
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from gated.config import WebConfig
from gated.control import Actor, ActorType, ControlPlane, Result
from gated.web.auth import LoginLimiter, LoginSummary, Session, Sessions, csrf_ok
from gated.web.charts import HourlyTally, hourly_svg, latency_svg, percentile
from gated.web.common import csv_cell as _cell
from gated.web.common import foreign_origin, security_headers
from gated.web.common import local_path as _local_path
from gated.web.feed import LiveHub, audit_summary, event_summary, sse
from gated.web.replay import DecisionContext, replay
from gated.web.rule_forms import KINDS, FormError, document_for, problem_text
from gated.web.users import RANK, UserError, UserStore
from gated.web.words import explain, reason_words

__all__ = ["PassDesk", "WebDeps", "WebServer"]

log = logging.getLogger(__name__)

COOKIE = "gated_session"
PAGE = 50
CSV_MAX = 20_000
SUMMARY_EVERY_S = 60.0
MAX_BODY = 64 * 1024
_EVENT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LANE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILTER_MAX = 64
EVENT_TYPES = ("entry", "exit", "denied", "visitor_entry")
METHODS = ("auto_plate", "auto_tag", "manual_guard", "guard_button", "remote", "hold_open")
STATUSES = ("success", "failure", "partial")
ACTIONS = {  # URL action → (control-plane call, words for the confirmation)
    "open": "open the gate once",
    "hold": "hold the gate open until released",
    "release": "release the hold (the gate closes when clear)",
    "lockdown-on": "lock down this lane (no automatic entry)",
    "lockdown-off": "end the lockdown",
}
_HERE = Path(__file__).resolve().parent


class PassDesk(Protocol):
    """Visitor passes through `gated pass`'s path (provided by app.py)."""

    async def issue(self, actor: Actor, *, plate: str, host: str, valid_from: float,
                    valid_until: float, uses: int | None, name: str) -> dict[str, Any]:
        """Add a pass (a rule-set version and an audit row); its id and version."""
        ...

    async def revoke(self, actor: Actor, pass_id: str) -> dict[str, Any]:
        """Remove a pass (a rule-set version and an audit row)."""
        ...

    async def list(self) -> list[dict[str, Any]]:
        """Passes valid now or later."""
        ...


class RuleDesk(Protocol):
    """Admin edits of the rule set through `gated rules import`'s path (app.py)."""

    def owner(self) -> str | None:
        """Who else owns the rule set (local edits refused), or None."""
        ...

    async def deny_list(self) -> list[dict[str, Any]]:
        """Every deny-list entry."""
        ...

    async def deny_add(self, actor: Actor, *, plate: str, reason: str) -> dict[str, Any]:
        """Add an entry: one rule-set version and one audit row."""
        ...

    async def deny_remove(self, actor: Actor, entry_id: str) -> dict[str, Any]:
        """Remove an entry (LookupError when there is none)."""
        ...

    async def entries(self, kind: str, query: str, limit: int) -> list[dict[str, Any]]:
        """Entries of a kind containing `query`, as an export writes them."""
        ...

    async def entry(self, kind: str, entry_id: str) -> dict[str, Any] | None:
        """One entry as an export writes it, or None."""
        ...

    async def save(self, actor: Actor, document: Mapping[str, list[dict[str, Any]]],
                   resource: str) -> dict[str, Any]:
        """Merge entries by id: one rule-set version, one audit row (InvalidRulesError)."""
        ...

    async def remove(self, actor: Actor, kind: str, entry_id: str) -> dict[str, Any]:
        """Delete an entry (LookupError when there is none)."""
        ...


@dataclass
class WebDeps:
    """What the page is given by app.py: the control plane, the journal's reads, callables."""

    control: ControlPlane
    journal: Any  # gated.journal.Journal: after/find/get/head and commits
    audit: Callable[..., Awaitable[int]]  # Auditor.record
    snapshot_dir: str
    timezone: str = "UTC"
    passes: PassDesk | None = None
    rules: RuleDesk | None = None
    # (resident id, pass id) → names from the rule index the lanes decide with
    names: Callable[[str | None, str | None], Mapping[str, str]] | None = None
    decision_context: DecisionContext | None = None
    metrics_text: Callable[[], str] | None = None
    sync_backlog: Callable[[], Awaitable[Mapping[str, Any]]] | None = None


class _Problem(Exception):
    """An HTTP error with a status and a one-line message (rendered as page or JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebServer:
    """The status page, served until cancelled."""

    def __init__(self, cfg: WebConfig, deps: WebDeps) -> None:
        self.name = "web"
        self.cfg = cfg
        self.deps = deps
        self.users = UserStore(cfg.users_file)
        self.sessions = Sessions(cfg.session_idle_s, cfg.session_max_s)
        self.by_user = LoginLimiter(cfg.login_max_failures, cfg.login_window_s, cfg.lockout_s)
        self.by_address = LoginLimiter(cfg.login_max_failures * 4, cfg.login_window_s,
                                       cfg.lockout_s)
        self.summary = LoginSummary()
        self.hub = LiveHub(deps.journal, self._status, max_clients=cfg.max_clients)
        self.tally = HourlyTally(deps.journal)
        self.tz = zoneinfo.ZoneInfo(deps.timezone)
        self.tls = bool(cfg.tls_cert)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True,  # every template, whatever its name
        )
        self.env.filters["when"] = self._when
        self.env.filters["reason_words"] = reason_words
        self.app = self._build_app()

    # --- serving ---------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_static("/static/", _HERE / "static", follow_symlinks=False)
        r.add_get("/", self.dashboard)
        r.add_get("/events", self.events)
        r.add_get("/events.csv", self.events_csv)
        r.add_get("/events/{event_id}", self.event_page)
        r.add_get("/events/{event_id}/replay", self.replay_page)
        r.add_get("/snapshots/{event_id}.jpg", self.snapshot)
        r.add_get("/audit", self.audit_page)
        r.add_get("/audit/{event_id}", self.audit_row)
        r.add_post("/lanes/{lane}/{action}", self.lane_action)
        r.add_get("/passes", self.passes_page)
        r.add_post("/passes", self.pass_issue)
        r.add_post("/passes/{pass_id}/revoke", self.pass_revoke)
        r.add_get("/rules/deny", self.deny_page)
        r.add_post("/rules/deny", self.deny_add)
        r.add_post("/rules/deny/{entry_id}/remove", self.deny_remove)
        r.add_get("/rules", self.rules_index)
        r.add_get("/rules/{kind}", self.rules_page)
        r.add_post("/rules/{kind}", self.rules_add)
        r.add_get("/rules/{kind}/{entry_id}", self.rules_entry)
        r.add_post("/rules/{kind}/{entry_id}", self.rules_edit)
        r.add_post("/rules/{kind}/{entry_id}/deactivate", self.rules_deactivate)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/events", self.api_events)
        r.add_get("/api/events/{event_id}", self.api_event)
        r.add_get("/api/events/{event_id}/replay", self.api_replay)
        r.add_get("/api/audit", self.api_audit)
        r.add_get("/api/live", self.live)
        r.add_post("/api/lanes/{lane}/{action}", self.api_lane_action)
        return app

    async def run(self) -> None:
        """Listen on [web] host:port (TLS when configured) until cancelled."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port, ssl_context=context,
                           reuse_address=True)
        try:
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            port = sockets[0].getsockname()[1] if sockets else self.cfg.port
            log.info("status page on %s://%s:%d/", "https" if self.tls else "http",
                     self.cfg.host, port)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.hub.run())
                tg.create_task(self._summaries())
        finally:
            with contextlib.suppress(Exception):
                await self._flush_summaries()
            await runner.cleanup()

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(SUMMARY_EVERY_S)
            await self._flush_summaries()

    async def _flush_summaries(self) -> None:
        for address, summary in self.summary.flush():
            await self.deps.audit(
                "login_failures", "web_session", actor_type="guard", ip_address=address,
                status="failure", error_message=f"{summary['count']} more failed logins",
                metadata=summary)

    # --- middleware: sessions, roles, CSRF, headers ------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        request["request_id"] = uuid.uuid4().hex
        request["session"] = self.sessions.get(request.cookies.get(COOKIE))
        session: Session | None = request["session"]
        if session is not None:
            user = self.users.get(session.user)
            if user is None or user.password_hash != session.password_hash:
                self.sessions.end(session.token)  # removed or password changed
                request["session"] = None
            elif user.role != session.role:
                session.role = user.role
        try:
            response = await handler(request)
        except _Problem as problem:
            response = self._problem(request, problem.status, str(problem))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = self._problem(request, exc.status, exc.reason)
        if not response.prepared:
            self._headers(response)
        return response

    def _headers(self, response: web.StreamResponse) -> None:
        security_headers(response, self.tls)

    def _problem(self, request: web.Request, status: int, message: str) -> web.Response:
        if _wants_json(request):
            return web.json_response({"ok": False, "error": message}, status=status)
        if status == 401:
            return self._render(request, "login.html", http_status=401,
                                next=_local_path(request.path_qs), error="")
        return self._render(request, "problem.html", http_status=status, status_code=status,
                            message=message)

    def _need(self, request: web.Request, role: str) -> Session:
        session: Session | None = request["session"]
        if session is None:
            raise _Problem(401, "log in first")
        if RANK.get(session.role, -1) < RANK[role]:
            raise _Problem(403, f"this needs the {role} role")
        return session

    async def _need_post(self, request: web.Request, role: str) -> tuple[Session, dict[str, str]]:
        """A state-changing request: session, role, same origin, CSRF token; the form."""
        session = self._need(request, role)
        _same_origin(request)
        form: dict[str, str] = {}
        if request.content_type == "application/json":
            # JSON callers send the token in the header: checked before the body is read.
            if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
                raise _Problem(403, "missing or wrong CSRF token: reload the page")
            try:
                body = await request.json()
            except ValueError as err:
                raise _Problem(422, "body is not JSON") from err
            if not isinstance(body, dict):
                raise _Problem(422, "body must be a JSON object")
            form = {str(k): v for k, v in body.items() if isinstance(v, str)}
        else:
            posted = await request.post()
            form = {k: v for k, v in posted.items() if isinstance(v, str)}
        given = request.headers.get("X-CSRF-Token") or form.get("csrf")
        if not csrf_ok(session, given if isinstance(given, str) else None):
            raise _Problem(403, "missing or wrong CSRF token: reload the page")
        return session, form

    def _actor(self, request: web.Request, session: Session) -> Actor:
        return Actor(ActorType.GUARD, id=session.user, role=session.role,
                     address=_address(request), request_id=request["request_id"],
                     user_agent=request.headers.get("User-Agent", "")[:256] or None)

    def _render(self, request: web.Request, template: str, *, http_status: int = 200,
                **context: Any) -> web.Response:
        session: Session | None = request.get("session")
        text = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.path,
            **context)
        return web.Response(text=text, status=http_status, content_type="text/html",
                            charset="utf-8")

    def _when(self, epoch: Any) -> str:
        if not isinstance(epoch, int | float):
            return ""
        return dt.datetime.fromtimestamp(epoch, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    # --- login ---------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """Unauthenticated liveness for a load balancer or a watchdog: no details."""
        status = await self.deps.control.status()
        ok = bool(status.get("health", {}).get("healthy", True))
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def login_page(self, request: web.Request) -> web.Response:
        """The login form."""
        return self._render(request, "login.html", next=_local_path(request.query.get("next")),
                            error="")

    async def login(self, request: web.Request) -> web.Response:
        """Check a name and password; a new session, or a counted and audited failure."""
        _same_origin(request)
        form = await request.post()
        name = str(form.get("user", ""))[:128]
        password = str(form.get("password", ""))[:4096]
        target = _local_path(str(form.get("next", "/")))
        address = _address(request)
        now = time.monotonic()
        wait = max(self.by_user.locked(f"u:{name}", now), self.by_address.locked(address, now))
        if wait > 0:
            await self._login_failed(request, name, address, "locked_out")
            response = self._render(request, "login.html", http_status=429, next=target,
                                    error="Too many failed logins: try again later.")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        try:
            user = await asyncio.to_thread(self.users.authenticate, name, password)
        except UserError as err:
            log.error("%s", err)
            user = None
        if user is None:
            locked_user = self.by_user.failed(f"u:{name}", now)
            locked_addr = self.by_address.failed(address, now)
            reason = "locked_out_now" if (locked_user or locked_addr) else "bad_credentials"
            await self._login_failed(request, name, address, reason)
            # A lockout starting always gets its own row: at most one per name or address
            # per lockout period, so a flood cannot multiply them.
            for locked, what in ((locked_user, f"user:{name[:64]}"),
                                 (locked_addr, f"address:{address}")):
                if locked:
                    await self.deps.audit(
                        "login_lockout", "web_session", resource_id=what, actor_type="guard",
                        actor_id=name[:64] or None, ip_address=address, status="failure",
                        request_id=request["request_id"],
                        error_message=f"locked out for {self.cfg.lockout_s:g} s",
                        metadata={"failures": self.cfg.login_max_failures})
            return self._render(request, "login.html", http_status=401, next=target,
                                error="Wrong user name or password.")
        self.by_user.succeeded(f"u:{name}")
        self.by_address.succeeded(address)
        session = self.sessions.create(user.name, user.role, user.password_hash)
        await self.deps.audit(
            "login", "web_session", actor_type="guard", actor_id=user.name,
            actor_role=user.role, ip_address=address, request_id=request["request_id"],
            user_agent=request.headers.get("User-Agent", "")[:256] or None)
        response = web.HTTPSeeOther(target)
        response.set_cookie(COOKIE, session.token, httponly=True, samesite="Strict",
                            secure=self.tls, path="/")
        self._headers(response)
        raise response

    async def _login_failed(self, request: web.Request, name: str, address: str,
                            reason: str) -> None:
        if self.summary.note(address, name, reason):
            await self.deps.audit(
                "login_failed", "web_session", actor_type="guard", actor_id=name[:64] or None,
                ip_address=address, request_id=request["request_id"], status="failure",
                user_agent=request.headers.get("User-Agent", "")[:256] or None,
                error_message=reason, metadata={"reason": reason})

    async def logout(self, request: web.Request) -> web.Response:
        """End the session."""
        session, _ = await self._need_post(request, "viewer")
        self.sessions.end(session.token)
        await self.deps.audit("logout", "web_session", actor_type="guard",
                              actor_id=session.user, actor_role=session.role,
                              ip_address=_address(request), request_id=request["request_id"])
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        self._headers(response)
        raise response

    # --- dashboard and live feed -------------------------------------------------------

    async def _status(self) -> dict[str, Any]:
        status = await self.deps.control.status()
        status["clients"] = self.hub.clients
        return status

    async def _dashboard_data(self) -> dict[str, Any]:
        status = await self._status()
        recent = [event_summary(r) for r in await self.deps.journal.find("access", limit=20)]
        sync = None
        if self.deps.sync_backlog is not None:
            with contextlib.suppress(Exception):
                sync = dict(await self.deps.sync_backlog())
        disk = None
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(Path(self.deps.journal.path).parent)
            disk = {"free_mb": usage.free // 2**20, "total_mb": usage.total // 2**20}
        seq, digest = await self.deps.journal.head()
        return {"status": status, "recent": recent, "sync": sync, "disk": disk,
                "head": {"seq": seq, "hash": digest}}

    async def dashboard(self, request: web.Request) -> web.Response:
        """Lanes, their modes, alarms and health, last events; updated live by app.js."""
        self._need(request, "viewer")
        data = await self._dashboard_data()
        return self._render(request, "dashboard.html", actions=ACTIONS,
                            charts=await self._charts(), **data)

    async def _charts(self) -> dict[str, Any]:
        """The two 24-hour charts as SVG markup (numbers and fixed words only)."""
        hours = await self.tally.refresh(time.time())

        def label(start: int) -> str:
            return dt.datetime.fromtimestamp(start, self.tz).strftime("%H:00")

        latencies = [v for h in hours for v in h.latencies]
        return {
            "hourly": Markup(hourly_svg(hours, label)),
            "latency": Markup(latency_svg(hours, label)),
            "entries": sum(h.entries for h in hours), "exits": sum(h.exits for h in hours),
            "denials": sum(h.denials for h in hours), "reads": len(latencies),
            "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "max": max(latencies, default=None),
        }

    async def api_status(self, request: web.Request) -> web.Response:
        """The dashboard's data as JSON."""
        self._need(request, "viewer")
        return web.json_response(await self._dashboard_data(), dumps=_dumps)

    async def live(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: access and audit rows as committed, lane status."""
        self._need(request, "viewer")
        queue = self.hub.subscribe()
        if queue is None:
            raise _Problem(503, "too many live connections")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        self._headers(response)
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            await response.write(sse("status", await self._status()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    message = b": keep-alive\n\n"  # proxies and phones drop silent streams
                if message is None:
                    break
                await response.write(message)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(queue)
        return response

    # --- guard actions ---------------------------------------------------------------

    async def _perform(self, request: web.Request, session: Session, lane: str, action: str,
                       reason: str | None) -> Result:
        if action not in ACTIONS:
            raise _Problem(404, f"no action {action[:32]!r}")
        lanes = (await self.deps.control.status())["lanes"]
        if not _LANE.match(lane) or lane not in lanes:
            raise _Problem(404, f"no lane {lane[:64]!r}")
        if reason is not None and len(reason) > 500:
            raise _Problem(422, "reason: at most 500 characters")
        control = self.deps.control
        actor = self._actor(request, session)
        if action == "open":
            return await control.open(actor, lane, reason)
        if action == "hold":
            return await control.hold(actor, lane, reason)
        if action == "release":
            return await control.release(actor, lane, reason)
        return await control.lockdown(actor, action == "lockdown-on", lane, reason)

    async def lane_action(self, request: web.Request) -> web.Response:
        """A guard action: first a confirmation page, then (confirm=yes) the control plane."""
        session, form = await self._need_post(request, "guard")
        lane, action = request.match_info["lane"], request.match_info["action"]
        if action not in ACTIONS:
            raise _Problem(404, f"no action {action[:32]!r}")
        reason = form.get("reason") or None
        if form.get("confirm") != "yes":
            return self._render(request, "confirm.html", lane=lane, action=action,
                                words=ACTIONS[action], reason=reason or "")
        result = await self._perform(request, session, lane, action, reason)
        return self._render(request, "result.html", http_status=_result_status(result),
                            result=result, lane=lane, words=ACTIONS[action])

    async def api_lane_action(self, request: web.Request) -> web.Response:
        """A guard action as JSON ({"reason": …}); the control plane's answer."""
        session, form = await self._need_post(request, "guard")
        reason = form.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _Problem(422, "reason must be text")
        result = await self._perform(request, session, request.match_info["lane"],
                                     request.match_info["action"], reason or None)
        return web.json_response(
            {"ok": result.ok, "outcome": result.outcome.value, "message": result.message,
             "data": dict(result.data), "request_id": request["request_id"]},
            status=_result_status(result), dumps=_dumps)

    # --- events -------------------------------------------------------------------------

    def _event_filters(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
        q = request.query
        equals: dict[str, Any] = {}
        contains: dict[str, str] = {}
        if q.get("plate"):
            contains["vehicle_plate"] = _text(q["plate"], "plate")
        if q.get("lane"):
            equals["access_point"] = _text(q["lane"], "lane")
        for key, column, allowed in (("type", "event_type", EVENT_TYPES),
                                     ("method", "authorization_method", METHODS)):
            if q.get(key):
                if q[key] not in allowed:
                    raise _Problem(422, f"{key}: one of {', '.join(allowed)}")
                equals[column] = q[key]
        if q.get("reason"):
            equals["decision_reason"] = _text(q["reason"], "reason")
        return {"equals": equals, "contains": contains, **self._range(request)}, {
            k: q[k] for k in ("plate", "lane", "type", "method", "reason", "since", "until")
            if q.get(k)}

    def _range(self, request: web.Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("since", "until"):
            if request.query.get(key):
                out[key] = _parse_day(request.query[key], self.tz, key)
        if request.query.get("before"):
            try:
                out["before_seq"] = int(request.query["before"])
            except ValueError as err:
                raise _Problem(422, "before: a sequence number") from err
        return out

    async def _event_list(self, request: web.Request) -> tuple[list[dict[str, Any]],
                                                               dict[str, Any], str | None]:
        filters, shown = self._event_filters(request)
        rows = await self.deps.journal.find("access", limit=PAGE + 1, **filters)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        next_url = None
        if more:
            next_url = "/events?" + urlencode({**shown, "before": rows[-1]["seq"]})
        return [event_summary(r) for r in rows], shown, next_url

    async def events(self, request: web.Request) -> web.Response:
        """The filtered, paged list of access events."""
        self._need(request, "viewer")
        rows, shown, next_url = await self._event_list(request)
        lanes = sorted((await self.deps.control.status())["lanes"])
        return self._render(request, "events.html", rows=rows, filters=shown,
                            next_url=next_url, lanes=lanes, types=EVENT_TYPES,
                            methods=METHODS, csv_url="/events.csv?" + urlencode(shown))

    async def api_events(self, request: web.Request) -> web.Response:
        """The filtered, paged list as JSON (next: the URL of the next page)."""
        self._need(request, "viewer")
        rows, _, next_url = await self._event_list(request)
        return web.json_response({"events": rows, "next": next_url and "/api" + next_url},
                                 dumps=_dumps)

    async def events_csv(self, request: web.Request) -> web.StreamResponse:
        """The filtered list as CSV (at most CSV_MAX rows), safe to open in a spreadsheet."""
        self._need(request, "viewer")
        filters, _ = self._event_filters(request)
        response = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="gated-events.csv"'})
        self._headers(response)
        await response.prepare(request)
        columns = ("created_at", "lane", "event_type", "direction", "plate", "visitor_name",
                   "reason", "method", "authorized_by", "confidence", "gate_opened",
                   "event_id")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        sent, before = 0, filters.pop("before_seq", None)
        while sent < CSV_MAX:
            rows = await self.deps.journal.find("access", limit=500, before_seq=before,
                                                **filters)
            if not rows:
                break
            for row in rows:
                s = event_summary(row)
                s["created_at"] = self._when(s["created_at"])
                writer.writerow([_cell(s[c]) for c in columns])
            sent += len(rows)
            before = rows[-1]["seq"]
            await response.write(out.getvalue().encode())
            out.seek(0)
            out.truncate()
        await response.write(out.getvalue().encode())
        await response.write_eof()
        return response

    async def _event(self, event_id: str) -> dict[str, Any]:
        if not _EVENT_ID.match(event_id):
            raise _Problem(404, "no such event")
        row = await self.deps.journal.get("access", event_id)
        if row is None:
            raise _Problem(404, "no such event")
        return dict(row)

    async def event_page(self, request: web.Request) -> web.Response:
        """One event: snapshot, camera and device time, the decision in words."""
        self._need(request, "viewer")
        row = await self._event(request.match_info["event_id"])
        return self._render(request, "event.html", row=row, e=event_summary(row),
                            words=explain(row), replayed=None, names=self._names(row))

    async def replay_page(self, request: web.Request) -> web.Response:
        """The event page with today's rules' answer beside the recorded one."""
        self._need(request, "viewer")
        row = await self._event(request.match_info["event_id"])
        return self._render(request, "event.html", row=row, e=event_summary(row),
                            words=explain(row), replayed=self._replay(row),
                            names=self._names(row))

    def _names(self, row: Mapping[str, Any]) -> Mapping[str, str]:
        """The resident's and pass holder's names as the rule set has them now."""
        if self.deps.names is None:
            return {}
        resident, pass_id = row.get("resident_id"), row.get("pass_id")
        try:
            return self.deps.names(resident if isinstance(resident, str) else None,
                                   pass_id if isinstance(pass_id, str) else None)
        except Exception:  # a name is a courtesy: the event page shows without it
            log.exception("could not read names for event %s", row.get("event_id"))
            return {}

    def _replay(self, row: dict[str, Any]) -> dict[str, Any]:
        if self.deps.decision_context is None:
            return {"recorded": None, "replayed": None, "why_not": "replay is not available"}
        return replay(row, self.deps.decision_context)

    async def api_event(self, request: web.Request) -> web.Response:
        """One event as JSON (the journal row without hashes) and its explanation."""
        self._need(request, "viewer")
        row = await self._event(request.match_info["event_id"])
        for key in ("prev_hash", "row_hash"):
            row.pop(key, None)
        return web.json_response({"event": row, "explained": explain(row)}, dumps=_dumps)

    async def api_replay(self, request: web.Request) -> web.Response:
        """Recorded and replayed decisions as JSON."""
        self._need(request, "viewer")
        row = await self._event(request.match_info["event_id"])
        return web.json_response(self._replay(row), dumps=_dumps)

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        """An event's JPEG, found by event id (never by a path from the URL)."""
        self._need(request, "viewer")
        row = await self._event(request.match_info["event_id"])
        relative = row.get("snapshot_path")
        if not relative:
            raise _Problem(404, "this event has no snapshot")
        path = await asyncio.to_thread(_inside, self.deps.snapshot_dir, str(relative))
        if path is None:
            raise _Problem(404, "snapshot not found")
        response = web.FileResponse(path, headers={"Content-Type": "image/jpeg",
                                                   "Cache-Control": "private, max-age=86400"})
        self._headers(response)
        return response

    # --- audit --------------------------------------------------------------------------

    def _audit_filters(self, request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
        q = request.query
        equals: dict[str, Any] = {}
        contains: dict[str, str] = {}
        for key, column in (("action", "action"), ("resource_type", "resource_type")):
            if q.get(key):
                equals[column] = _text(q[key], key)
        if q.get("actor"):
            contains["actor_id"] = _text(q["actor"], "actor")
        if q.get("status"):
            if q["status"] not in STATUSES:
                raise _Problem(422, f"status: one of {', '.join(STATUSES)}")
            equals["status"] = q["status"]
        shown = {k: q[k] for k in ("action", "resource_type", "actor", "status", "since",
                                   "until") if q.get(k)}
        return {"equals": equals, "contains": contains, **self._range(request)}, shown

    async def _audit_list(self, request: web.Request) -> tuple[list[dict[str, Any]],
                                                               dict[str, Any], str | None]:
        filters, shown = self._audit_filters(request)
        rows = await self.deps.journal.find("audit", limit=PAGE + 1, **filters)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        next_url = "/audit?" + urlencode({**shown, "before": rows[-1]["seq"]}) if more else None
        return [audit_summary(r) for r in rows], shown, next_url

    async def audit_page(self, request: web.Request) -> web.Response:
        """The audit viewer: filters, badges, paging."""
        self._need(request, "guard")
        rows, shown, next_url = await self._audit_list(request)
        return self._render(request, "audit.html", rows=rows, filters=shown,
                            next_url=next_url, statuses=STATUSES)

    async def api_audit(self, request: web.Request) -> web.Response:
        """The audit list as JSON."""
        self._need(request, "guard")
        rows, _, next_url = await self._audit_list(request)
        return web.json_response({"audit": rows, "next": next_url and "/api" + next_url},
                                 dumps=_dumps)

    async def audit_row(self, request: web.Request) -> web.Response:
        """One audit row in full: who, when, from where, old and new values."""
        self._need(request, "guard")
        event_id = request.match_info["event_id"]
        row = await self.deps.journal.get("audit", event_id) if _EVENT_ID.match(
            event_id) else None
        if row is None:
            raise _Problem(404, "no such audit record")
        return self._render(request, "audit_row.html", row=row,
                            old=_pretty(row.get("old_values")), new=_pretty(row.get("new_values")),
                            meta=_pretty(row.get("metadata")))

    # --- visitor passes -----------------------------------------------------------------

    def _desk(self) -> PassDesk:
        if self.deps.passes is None:
            raise _Problem(404, "visitor passes are not available here")
        return self.deps.passes

    async def passes_page(self, request: web.Request) -> web.Response:
        """Passes valid now or later, and the form to issue one."""
        self._need(request, "guard")
        passes = await self._desk().list()
        return self._render(request, "passes.html", passes=passes, message="")

    async def pass_issue(self, request: web.Request) -> web.Response:
        """Issue a visitor pass (guard): one rule-set version and one audit row."""
        from gated.timeparse import parse_when

        session, form = await self._need_post(request, "guard")
        desk = self._desk()
        plate = (form.get("plate") or "").strip()
        host = (form.get("host") or "").strip()
        if not plate or len(plate) > 16 or not host or len(host) > 64:
            raise _Problem(422, "plate (at most 16) and host resident id are needed")
        now = time.time()
        try:
            valid_from = parse_when(form.get("from") or "now", self.deps.timezone, now)
            valid_until = parse_when(form.get("until") or "4h", self.deps.timezone, now)
        except Exception as err:
            raise _Problem(422, f"time: {err}") from err
        if valid_until <= valid_from:
            raise _Problem(422, "until must be later than from")
        uses = None
        if form.get("uses"):
            try:
                uses = int(form["uses"])
            except ValueError as err:
                raise _Problem(422, "uses: a whole number") from err
            if uses < 1:
                raise _Problem(422, "uses: at least 1")
        name = (form.get("name") or "").strip()[:128]
        try:
            done = await desk.issue(self._actor(request, session), plate=plate, host=host,
                                    valid_from=valid_from, valid_until=valid_until,
                                    uses=uses, name=name)
        except Exception as err:  # a RulesError: bad host, bad plate
            raise _Problem(422, str(err)) from err
        return self._render(request, "passes.html", passes=await desk.list(),
                            message=f"pass {done['pass_id']} issued "
                                    f"(rule-set version {done['rules_version']})")

    async def pass_revoke(self, request: web.Request) -> web.Response:
        """Revoke a visitor pass (guard)."""
        session, _ = await self._need_post(request, "guard")
        desk = self._desk()
        pass_id = request.match_info["pass_id"][:64]
        try:
            done = await desk.revoke(self._actor(request, session), pass_id)
        except LookupError as err:
            raise _Problem(404, str(err)) from err
        return self._render(request, "passes.html", passes=await desk.list(),
                            message=f"pass {pass_id} revoked "
                                    f"(rule-set version {done['rules_version']})")

    # --- the rule set (admin): the deny list ------------------------------------------

    def _rules(self, *, editing: bool) -> RuleDesk:
        if self.deps.rules is None:
            raise _Problem(404, "rule-set editing is not available here")
        owner = self.deps.rules.owner()
        if editing and owner:
            raise _Problem(409, f"the rule set is owned by {owner}: edit it there")
        return self.deps.rules

    async def _deny_view(self, request: web.Request, message: str) -> web.Response:
        desk = self._rules(editing=False)
        return self._render(request, "rules_deny.html", entries=await desk.deny_list(),
                            owner=desk.owner(), message=message)

    async def deny_page(self, request: web.Request) -> web.Response:
        """The deny list, and (unless the central service owns it) the form to add."""
        self._need(request, "admin")
        return await self._deny_view(request, "")

    async def deny_add(self, request: web.Request) -> web.Response:
        """Add a deny-list entry (admin): one rule-set version and one audit row."""
        session, form = await self._need_post(request, "admin")
        desk = self._rules(editing=True)
        plate = (form.get("plate") or "").strip()
        reason = (form.get("reason") or "").strip()
        if not plate or len(plate) > 16 or len(reason) > 200:
            raise _Problem(422, "plate (1 to 16 characters) and a reason of at most 200")
        try:
            done = await desk.deny_add(self._actor(request, session), plate=plate,
                                       reason=reason)
        except Exception as err:  # a RulesError: a plate that does not normalise
            raise _Problem(422, str(err)) from err
        return await self._deny_view(
            request, f"{done['id']} added (rule-set version {done['rules_version']})")

    async def deny_remove(self, request: web.Request) -> web.Response:
        """Remove a deny-list entry (admin)."""
        session, _ = await self._need_post(request, "admin")
        desk = self._rules(editing=True)
        entry_id = request.match_info["entry_id"][:64]
        try:
            done = await desk.deny_remove(self._actor(request, session), entry_id)
        except LookupError as err:
            raise _Problem(404, str(err)) from err
        return await self._deny_view(
            request, f"{entry_id} removed (rule-set version {done['rules_version']})")

    # --- the rule set (admin): residents, vehicles, tags, groups, schedules ---------------

    def _kind(self, request: web.Request) -> str:
        kind = request.match_info["kind"]
        if kind not in KINDS:
            raise _Problem(404, f"no rule list {kind[:32]!r}")
        return kind

    async def rules_index(self, request: web.Request) -> web.Response:
        """The rule set's lists (admin)."""
        self._need(request, "admin")
        raise web.HTTPSeeOther("/rules/residents")

    async def _rules_view(self, request: web.Request, kind: str, *, message: str = "",
                          error: str = "", form: Mapping[str, str] | None = None,
                          http_status: int = 200) -> web.Response:
        desk = self._rules(editing=False)
        query = request.query.get("q", "")
        if query:
            _text(query, "q")
        entries = await desk.entries(kind, query, PAGE)
        return self._render(request, "rules.html", http_status=http_status, kind=kind,
                            kinds=KINDS, spec=KINDS[kind], entries=entries, query=query,
                            owner=desk.owner(), message=message, error=error,
                            form=form or {}, editing=None)

    async def rules_page(self, request: web.Request) -> web.Response:
        """One kind's list with search, and (unless owned elsewhere) the form to add."""
        self._need(request, "admin")
        return await self._rules_view(request, self._kind(request))

    async def rules_entry(self, request: web.Request) -> web.Response:
        """One entry's edit form."""
        self._need(request, "admin")
        kind = self._kind(request)
        desk = self._rules(editing=False)
        entry_id = request.match_info["entry_id"][:64]
        entry = await desk.entry(kind, entry_id)
        if entry is None:
            raise _Problem(404, f"no {KINDS[kind].one} {entry_id!r}")
        return self._render(request, "rules.html", kind=kind, kinds=KINDS, spec=KINDS[kind],
                            entries=[], query="", owner=desk.owner(), message="", error="",
                            form={k: _form_text(v) for k, v in entry.items()},
                            editing=entry_id)

    async def _rules_save(self, request: web.Request, kind: str,
                          entry_id: str | None) -> web.Response:
        session, form = await self._need_post(request, "admin")
        desk = self._rules(editing=True)
        if entry_id is not None and await desk.entry(kind, entry_id) is None:
            raise _Problem(404, f"no {KINDS[kind].one} {entry_id!r}")
        try:
            document, saved_id = document_for(kind, form, entry_id)
        except FormError as err:
            raise _Problem(422, str(err)) from err
        if entry_id is None and await desk.entry(kind, saved_id) is not None:
            raise _Problem(422, f"id: {saved_id!r} is already used")
        try:
            done = await desk.save(self._actor(request, session), document, f"{kind}/{saved_id}")
        except Exception as err:  # InvalidRulesError: the import's checks, by field
            raise _Problem(422, problem_text(err)) from err
        verb = "added" if entry_id is None else "saved"
        return await self._rules_view(
            request, kind, message=f"{saved_id} {verb} (rule-set version "
                                   f"{done['rules_version']})")

    async def rules_add(self, request: web.Request) -> web.Response:
        """Add an entry (admin): one rule-set version, one audit row, decided on at once."""
        return await self._rules_save(request, self._kind(request), None)

    async def rules_edit(self, request: web.Request) -> web.Response:
        """Save an edited entry (admin)."""
        return await self._rules_save(request, self._kind(request),
                                      request.match_info["entry_id"][:64])

    async def rules_deactivate(self, request: web.Request) -> web.Response:
        """Deactivate a resident, vehicle or tag; remove a group or schedule (admin)."""
        session, _ = await self._need_post(request, "admin")
        kind = self._kind(request)
        desk = self._rules(editing=True)
        entry_id = request.match_info["entry_id"][:64]
        entry = await desk.entry(kind, entry_id)
        if entry is None:
            raise _Problem(404, f"no {KINDS[kind].one} {entry_id!r}")
        actor = self._actor(request, session)
        try:
            if "active" in entry:
                done = await desk.save(actor, {kind: [{**entry, "active": "false"}]},
                                       f"{kind}/{entry_id}")
                verb = "deactivated"
            else:  # groups and schedules have no active flag: they go
                done = await desk.remove(actor, kind, entry_id)
                verb = "removed"
        except LookupError as err:
            raise _Problem(404, str(err)) from err
        except Exception as err:  # e.g. a group residents still name
            raise _Problem(409, problem_text(err)) from err
        return await self._rules_view(
            request, kind, message=f"{entry_id} {verb} (rule-set version "
                                   f"{done['rules_version']})")

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus exposition (behind login: lane names and counts are site data)."""
        self._need(request, "viewer")
        text = self.deps.metrics_text() if self.deps.metrics_text else ""
        text += (f"# HELP gated_web_live_clients Live-feed connections.\n"
                 f"# TYPE gated_web_live_clients gauge\ngated_web_live_clients "
                 f"{self.hub.clients}\n")
        return web.Response(text=text, content_type="text/plain", charset="utf-8")


# --- helpers -------------------------------------------------------------------------------


def _form_text(value: Any) -> str:
    """An exported value as a form field shows it."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _inside(root_dir: str, relative: str) -> Path | None:
    """The file at `relative` under `root_dir`, or None (missing, or outside it)."""
    root = Path(root_dir).resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def _wants_json(request: web.Request) -> bool:
    return (request.path.startswith("/api/") or request.path in ("/metrics", "/events.csv")
            or request.path.startswith("/snapshots/")
            or request.content_type == "application/json")


def _address(request: web.Request) -> str:
    return str(request.remote or "unknown")[:64]


def _same_origin(request: web.Request) -> None:
    """Refuse a POST whose Origin (or Referer) is another site (CSRF's first line)."""
    if foreign_origin(request):
        raise _Problem(403, "cross-origin request refused")


def _text(value: str, key: str) -> str:
    if len(value) > _FILTER_MAX or any(ord(c) < 32 for c in value):
        raise _Problem(422, f"{key}: at most {_FILTER_MAX} printable characters")
    return value


def _parse_day(value: str, tz: zoneinfo.ZoneInfo, key: str) -> float:
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        with contextlib.suppress(ValueError):
            return dt.datetime.strptime(value, fmt).replace(tzinfo=tz).timestamp()
    raise _Problem(422, f"{key}: a date YYYY-MM-DD or YYYY-MM-DDTHH:MM")


def _result_status(result: Result) -> int:
    return {"success": 200, "refused": 409, "failed": 502}[result.outcome.value]


def _dumps(value: Any) -> str:
    import json

    return json.dumps(value, default=str, separators=(",", ":"))


def _pretty(value: Any) -> str:
    import json

    return "" if value is None else json.dumps(value, indent=2, sort_keys=True, default=str)
