"""The name a Unix user id is audited under: the account name, or "uid:N" without one."""

from __future__ import annotations

import os
import pwd


def name_of(uid: int | None = None) -> str:
    """The account name of `uid` (default: this process's user), or "uid:N" if it has none."""
    uid = os.getuid() if uid is None else uid
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):  # no passwd entry (containers), or not a valid uid
        return f"uid:{uid}"
