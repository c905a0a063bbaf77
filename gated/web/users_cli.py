"""`gated user add|passwd|remove|list`: the status page's users, audited in the journal.

The password is read from the terminal (twice), or one line from stdin with
--password-stdin (for provisioning scripts); it is never an argument, where `ps` and
shell history would keep it. Each change is one audit row naming the Unix user who
made it; the running daemon sees the file change at the next request.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

from gated import unix_user
from gated.audit import Auditor
from gated.config import DEFAULT_CONFIG, load_config
from gated.user_actions import add_user_actions
from gated.web.users import ROLES, UserError, UserStore

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    """Add `gated user …` (handled by `func`) to the top-level subparsers."""
    users = sub.add_parser("user", help="status page users").add_subparsers(
        dest="user_action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help=f"config file (default {DEFAULT_CONFIG})")
        p.add_argument("--users-file", default=None, help="users file (default: [web] users_file)")
        p.set_defaults(func=func)

    add_user_actions(users, ROLES, common)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the passwords differ")
    return first


async def _audit(journal_path: str, cfg: Any, action: str, name: str,
                 values: dict[str, Any] | None) -> None:
    from gated.journal import Journal

    journal = await Journal.open(journal_path)
    try:
        await Auditor(journal.append, cfg.site.identity).record(
            action, "web_user", resource_id=name, actor_type="local_user",
            actor_id=unix_user.name_of(), ip_address=f"uid={os.getuid()}", new_values=values)
    finally:
        await journal.close()


def run(args: argparse.Namespace) -> int:
    """Carry out one `gated user` invocation; the exit status."""
    path = args.config or DEFAULT_CONFIG
    cfg = load_config(path) if args.config or os.path.exists(path) else None
    users_file = args.users_file or (cfg.web.users_file if cfg else None)
    if not users_file:
        raise UserError("no users file: give --users-file or --config")
    store = UserStore(users_file)
    try:
        if args.user_action == "list":
            for user in sorted(store.users().values(), key=lambda u: u.name):
                print(f"{user.name}\t{user.role}")
            return 0
        if args.user_action == "add":
            store.add(args.name, args.role, _password(args.password_stdin))
            values: dict[str, Any] | None = {"role": args.role}
            done = f"user {args.name} added ({args.role})"
        elif args.user_action == "passwd":
            user = store.set_password(args.name, _password(args.password_stdin), args.role)
            values = {"role": user.role, "password": "changed"}
            done = f"password of {args.name} changed"
        else:
            store.remove(args.name)
            values = None
            done = f"user {args.name} removed"
    except UserError as err:
        print(f"gated user: {err}", file=sys.stderr)
        return 1
    if cfg is not None and os.path.exists(cfg.journal.path):
        asyncio.run(_audit(cfg.journal.path, cfg, f"user_{args.user_action}", args.name, values))
    print(done)
    return 0
