"""Viewer users, roles and sessions per tenant, in PostgreSQL (migration 0002_viewer_users).

The status page's rules, kept: scrypt hashes from gated.web.users (same parameters, same
checks on names and passwords), a fresh 256-bit token at every login, a CSRF token per
session, idle and absolute expiry, a changed password or role ending the user's
sessions. What differs is where they live: a central service may run several
processes, so sessions are rows, and only the SHA-256 of a token is stored (a read of
the table does not hand out live sessions).

Every function takes a connection inside a transaction that has set the tenant
(`tenant_tx`), so row-level security scopes each statement to that tenant; a user name
means nothing outside its tenant.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from gated.web.users import NAME_RE, UserError, check_password, hash_password, verify_password

__all__ = ["RANK", "ROLES", "TENANT_RE", "AccountError", "Connect", "ViewerSession",
           "ViewerUser", "add_user", "authenticate", "create_session", "end_session",
           "find_session", "list_users", "remove_user", "set_user", "tenant_tx"]

ROLES = ("viewer", "auditor", "admin")  # each role may do everything the one before may
RANK = {role: i for i, role in enumerate(ROLES)}
TOUCH_EVERY = dt.timedelta(seconds=60)  # idle expiry is as exact as this
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # as the tenants table checks

Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a wrong name (or tenant) costs the
    same time as a wrong password: no enumeration of users or tenants by timing. Made at
    the first login, not at import (a scrypt hash costs tens of ms and a 16 MB block)."""
    return hash_password(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user change that cannot be made (one line why)."""


@dataclass(frozen=True, slots=True)
class ViewerUser:
    """One viewer user of one tenant."""

    tenant_id: str
    name: str
    role: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class ViewerSession:
    """One logged-in browser: its tenant, user, role (as of now) and CSRF token."""

    tenant_id: str
    user: str
    role: str
    csrf: str
    token_sha256: str


def token_digest(token: str) -> str:
    """What the sessions table keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@asynccontextmanager
async def tenant_tx(connect: Connect, tenant_id: str) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection in a transaction scoped to one tenant (set_config … is_local true)."""
    if not TENANT_RE.match(tenant_id):
        raise AccountError("tenant: letters, digits, _ . - (at most 128)")
    async with connect() as conn, conn.transaction():
        # Local to this transaction: the setting is gone when the connection goes back to
        # a pool, so the next borrower starts with no tenant and sees nothing.
        await conn.execute("SELECT set_config('gated.tenant_id', %s, true)", [tenant_id])
        yield conn


async def _one(conn: AsyncConnection[Any], query: str, params: list[Any]) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)  # callers pass constant SQL only
        return await cur.fetchone()


def _check_name(name: str) -> None:
    if not NAME_RE.match(name or ""):
        raise AccountError("name: letters, digits, _ . @ - (at most 64, a letter or digit first)")


def _check_password(password: str) -> None:
    try:
        check_password(password)  # the status page's length rules
    except UserError as err:
        raise AccountError(str(err)) from err


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}")


async def add_user(conn: AsyncConnection[Any], tenant_id: str, name: str, role: str,
                   password: str) -> ViewerUser:
    """Create a user of the transaction's tenant (refused when the name is taken)."""
    _check_name(name)
    _check_role(role)
    _check_password(password)
    digest = await asyncio.to_thread(hash_password, password)
    row = await _one(conn, "INSERT INTO viewer_users (tenant_id, name, role, password_hash) "
                           "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING name",
                     [tenant_id, name, role, digest])
    if row is None:
        raise AccountError(f"user {name!r} exists")
    return ViewerUser(tenant_id, name, role, digest)


async def set_user(conn: AsyncConnection[Any], tenant_id: str, name: str, *,
                   role: str | None = None, password: str | None = None) -> None:
    """Change a user's role and/or password; their sessions end either way."""
    if role is not None:
        _check_role(role)
    digest = None
    if password is not None:
        _check_password(password)
        digest = await asyncio.to_thread(hash_password, password)
    row = await _one(conn, "UPDATE viewer_users SET role = coalesce(%s, role), "
                           "password_hash = coalesce(%s, password_hash) "
                           "WHERE tenant_id = %s AND name = %s RETURNING name",
                     [role, digest, tenant_id, name])
    if row is None:
        raise AccountError(f"no user {name!r}")
    await conn.execute("DELETE FROM viewer_sessions WHERE tenant_id = %s AND user_name = %s",
                       [tenant_id, name])


async def remove_user(conn: AsyncConnection[Any], tenant_id: str, name: str) -> None:
    """Delete a user (their sessions go with them)."""
    row = await _one(conn, "DELETE FROM viewer_users WHERE tenant_id = %s AND name = %s "
                           "RETURNING name", [tenant_id, name])
    if row is None:
        raise AccountError(f"no user {name!r}")


async def list_users(conn: AsyncConnection[Any], tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's users: name, role, created_at."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT name, role, created_at FROM viewer_users "
                          "WHERE tenant_id = %s ORDER BY name", [tenant_id])
        return await cur.fetchall()


async def admins(conn: AsyncConnection[Any], tenant_id: str) -> int:
    """How many admins the tenant has (the last one may not be removed or demoted)."""
    row = await _one(conn, "SELECT count(*) AS n FROM viewer_users "
                           "WHERE tenant_id = %s AND role = 'admin'", [tenant_id])
    return int(row["n"]) if row else 0


async def authenticate(conn: AsyncConnection[Any], tenant_id: str, name: str,
                       password: str) -> ViewerUser | None:
    """The user when name and password match in this tenant, else None (same cost)."""
    row = None
    if NAME_RE.match(name or ""):
        row = await _one(conn, "SELECT name, role, password_hash FROM viewer_users "
                               "WHERE tenant_id = %s AND name = %s", [tenant_id, name])
    encoded = row["password_hash"] if row else await asyncio.to_thread(_dummy_hash)
    ok = await asyncio.to_thread(verify_password, password, encoded)
    if not ok or row is None:
        return None
    return ViewerUser(tenant_id, row["name"], row["role"], row["password_hash"])


async def create_session(conn: AsyncConnection[Any], user: ViewerUser,
                         max_sessions: int = 64) -> tuple[str, ViewerSession]:
    """A new session for a user (a fresh token: no fixation); the token and the session."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    digest = token_digest(token)
    await conn.execute(
        "INSERT INTO viewer_sessions (tenant_id, token_sha256, user_name, csrf) "
        "VALUES (%s, %s, %s, %s)", [user.tenant_id, digest, user.name, csrf])
    # Bounded per user: the oldest go past max_sessions (a script logging in in a loop
    # does not grow the table without end).
    await conn.execute(
        "DELETE FROM viewer_sessions WHERE tenant_id = %s AND user_name = %s AND "
        "token_sha256 NOT IN (SELECT token_sha256 FROM viewer_sessions WHERE tenant_id = %s "
        "AND user_name = %s ORDER BY last_seen DESC LIMIT %s)",
        [user.tenant_id, user.name, user.tenant_id, user.name, max_sessions])
    return token, ViewerSession(user.tenant_id, user.name, user.role, csrf, digest)


async def find_session(conn: AsyncConnection[Any], tenant_id: str, token: str,
                       idle_s: float, max_s: float) -> ViewerSession | None:
    """The live session for a token, touched; None when unknown or expired (then deleted)."""
    digest = token_digest(token)
    idle, most = dt.timedelta(seconds=idle_s), dt.timedelta(seconds=max_s)
    row = await _one(
        conn, "SELECT s.user_name, s.csrf, u.role, s.last_seen < now() - %s AS stale "
              "FROM viewer_sessions s JOIN viewer_users u "
              "ON u.tenant_id = s.tenant_id AND u.name = s.user_name "
              "WHERE s.tenant_id = %s AND s.token_sha256 = %s "
              "AND s.last_seen > now() - %s AND s.created_at > now() - %s",
        [TOUCH_EVERY, tenant_id, digest, idle, most])
    if row is None:
        await conn.execute("DELETE FROM viewer_sessions WHERE tenant_id = %s AND "
                           "token_sha256 = %s", [tenant_id, digest])
        return None
    if row["stale"]:
        # Touched at most once a minute, not at every request: a page of fifty thumbnails
        # is fifty requests, and each UPDATE is a new row version to vacuum.
        await conn.execute("UPDATE viewer_sessions SET last_seen = now() "
                           "WHERE tenant_id = %s AND token_sha256 = %s", [tenant_id, digest])
    return ViewerSession(tenant_id, row["user_name"], row["role"], row["csrf"], digest)


async def end_session(conn: AsyncConnection[Any], session: ViewerSession) -> None:
    """Log out."""
    await conn.execute("DELETE FROM viewer_sessions WHERE tenant_id = %s AND token_sha256 = %s",
                       [session.tenant_id, session.token_sha256])


async def record(conn: AsyncConnection[Any], tenant_id: str, action: str, *,
                 actor: str | None, address: str | None, status: str = "success",
                 detail: dict[str, Any] | None = None) -> None:
    """One row of the viewer's own audit trail (logins, failures, user changes)."""
    from psycopg.types.json import Jsonb

    await conn.execute(
        "INSERT INTO viewer_audit (tenant_id, action, actor, address, status, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        [tenant_id, action, actor, address, status, Jsonb(detail or {})])
