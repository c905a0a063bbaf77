"""`gated central viewer` and `gated central user …`: argparse only, the rest on use.

Registered by gated/central/cli.py; like it, nothing of the central extra is imported
until a command runs, so `gated --help` works on a gate without psycopg.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gated.user_actions import add_user_actions

__all__ = ["add_viewer_commands", "main"]

ROLES = ("viewer", "auditor", "admin")  # gated.central.viewer.accounts.ROLES (checked by a test)
ENV_DB = "GATED_CENTRAL_DB"


def _viewer(args: argparse.Namespace) -> int:
    from gated.central.viewer.serve import cmd_viewer

    return cmd_viewer(args)


def _user(args: argparse.Namespace) -> int:
    from gated.central.viewer.users_cli import run

    return run(args)


def add_viewer_commands(commands: Any) -> None:
    """Add `viewer` and `user …` to `gated central`'s subparsers."""
    p = commands.add_parser("viewer", help="run the log viewer alone ([viewer] of central.toml)")
    p.add_argument("--config", required=True, help="central.toml")
    p.set_defaults(func=_viewer)
    users = commands.add_parser("user", help="log viewer users of a tenant").add_subparsers(
        dest="user_action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", required=True, help="the tenant the user belongs to")
        p.add_argument("--config", default=None, help="central.toml ([database] url)")
        p.add_argument("--db", default=None,
                       help=f"libpq connection string instead (or ${ENV_DB})")
        p.set_defaults(func=_user)

    add_user_actions(users, ROLES, common)


def main(argv: list[str] | None = None) -> int:
    """`python -m gated.central.viewer.commands …`: the same commands without `gated central`."""
    parser = argparse.ArgumentParser(prog="gated central")
    add_viewer_commands(parser.add_subparsers(dest="central_command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
