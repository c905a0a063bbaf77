"""The `user add|passwd|remove|list` sub-commands, shared by `gated user` and `gated central user`.

Argparse only: both commands register them without importing what carries them out.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def add_user_actions(users: Any, roles: Sequence[str],
                     common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add add/passwd/remove/list to `users` (a subparsers object); `common` adds the rest."""
    p = users.add_parser("add", help="create a user")
    p.add_argument("name")
    p.add_argument("--role", choices=roles, required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    common(p)
    p = users.add_parser("passwd", help="set a user's password (ends their sessions)")
    p.add_argument("name")
    p.add_argument("--role", choices=roles, default=None, help="also change the role")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    common(p)
    p = users.add_parser("remove", help="delete a user (ends their sessions)")
    p.add_argument("name")
    common(p)
    p = users.add_parser("list", help="users and roles")
    common(p)
