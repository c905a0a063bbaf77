"""`gated central user add|passwd|remove|list --tenant T`: the viewer's users of one tenant.

As `gated user` on a gate: the password is read from the terminal (twice), or one line
from stdin with --password-stdin (provisioning scripts); never an argument, where `ps`
and shell history would keep it. Each change is a viewer_audit row naming the Unix user.
The database is given by --db (a libpq connection string) or GATED_CENTRAL_DB; the
statements run as that login with the tenant set, under row-level security like the
viewer itself.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import pwd
import sys
from typing import Any

import psycopg

from gated.central.viewer import accounts
from gated.central.viewer.accounts import AccountError

__all__ = ["run"]

ENV_DB = "GATED_CENTRAL_DB"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the passwords differ")
    return first


def _unix_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


async def _apply(conninfo: str, args: argparse.Namespace, password: str | None) -> str:
    conn = await psycopg.AsyncConnection.connect(conninfo)

    def borrowed() -> Any:
        return _Borrowed(conn)

    try:
        async with accounts.tenant_tx(borrowed, args.tenant) as tx:
            if args.user_action == "list":
                users = await accounts.list_users(tx, args.tenant)
                return "\n".join(f"{u['name']}\t{u['role']}" for u in users)
            async with tx.cursor() as cur:
                await cur.execute("SELECT 1 FROM tenants WHERE tenant_id = %s", [args.tenant])
                if await cur.fetchone() is None:
                    raise AccountError(f"no tenant {args.tenant!r}")
            detail: dict[str, Any] = {"user": args.name, "via": "cli"}
            if args.user_action == "add":
                assert password is not None
                await accounts.add_user(tx, args.tenant, args.name, args.role, password)
                detail["role"] = args.role
                done = f"user {args.name} of {args.tenant} added ({args.role})"
            elif args.user_action == "passwd":
                await accounts.set_user(tx, args.tenant, args.name, role=args.role,
                                        password=password)
                detail.update(role=args.role, password="changed")
                done = f"password of {args.name} of {args.tenant} changed"
            else:
                await accounts.remove_user(tx, args.tenant, args.name)
                done = f"user {args.name} of {args.tenant} removed"
            await accounts.record(tx, args.tenant, f"user_{args.user_action}",
                                  actor=f"unix:{_unix_user()}", address=None, detail=detail)
            return done
    finally:
        await conn.close()


class _Borrowed:
    """One open connection as the async context manager tenant_tx expects (not closed)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        return None


def run(args: argparse.Namespace) -> int:
    """Carry out one `gated central user` invocation; the exit status."""
    conninfo = args.db or os.environ.get(ENV_DB, "")
    if not conninfo and args.config:
        from gated.central.config import load

        conninfo = load(args.config).database_url
    if not conninfo:
        print(f"gated central user: give --config, --db or set {ENV_DB}", file=sys.stderr)
        return 2
    try:
        password = None
        if args.user_action in ("add", "passwd"):
            password = _password(args.password_stdin)
        print(asyncio.run(_apply(conninfo, args, password)))
    except AccountError as err:
        print(f"gated central user: {err}", file=sys.stderr)
        return 1
    except psycopg.Error as err:
        # the first line only: no connection string (it may hold a password) in the message
        print(f"gated central user: database: {str(err).splitlines()[0] if str(err) else err!r}",
              file=sys.stderr)
        return 1
    return 0
