"""Status-page users: names, roles and scrypt password hashes in one JSON file.

scrypt from hashlib, not argon2: it is in the standard library (no extra wheel to
build or trust on an aarch64 gate computer), memory-hard, and with n=2**14, r=8
(16 MiB, about 60 ms on a Raspberry Pi 4) it meets OWASP's scrypt recommendation.
The parameters are stored with each hash, so they can be raised later without
invalidating existing passwords. The file is written 0640 by atomic rename; the
daemon re-reads it when it changes, so `gated user passwd` takes effect at once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gated.errors import GatedError
from gated.file_modes import open_private

__all__ = ["ROLES", "User", "UserError", "UserStore", "hash_password", "verify_password"]

ROLES = ("viewer", "guard", "admin")  # each role may do everything the one before may
RANK = {role: i for i, role in enumerate(ROLES)}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # scrypt hashes anything, but a megabyte "password" is a DoS
_N, _R, _P = 2**14, 8, 1
_FORMAT = "gated-web-users"


class UserError(GatedError):
    """A user command or file that cannot be carried out (one line)."""


@dataclass(frozen=True, slots=True)
class User:
    """One status-page user."""

    name: str
    role: str
    password_hash: str
    created_at: float


def hash_password(password: str) -> str:
    """A self-describing scrypt hash: scrypt$n$r$p$salt$digest (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32,
                            maxmem=64 * 1024 * 1024)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches `encoded` (constant-time comparison)."""
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode()[:MAX_PASSWORD * 4], salt=base64.b64decode(salt),
                             n=int(n), r=int(r), p=int(p), dklen=len(expected),
                             maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a wrong name costs the same time
    as a wrong password (no user enumeration by timing). Made at the first login, not at
    import: every `gated` command imports this module for its parser, and a scrypt hash
    costs 40 ms and a 16 MB block (which raises glibc's mmap threshold for good)."""
    return hash_password(secrets.token_urlsafe(16))


def check_password(password: str) -> None:
    """Refuse a password too short or too long to be stored (one line why)."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"password: at most {MAX_PASSWORD} characters")


class UserStore:
    """The users file: read on demand (cached by mtime), written atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._cache: tuple[tuple[int, int], dict[str, User]] | None = None

    def users(self) -> dict[str, User]:
        """Every user by name (empty when the file does not exist)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT:
                raise ValueError(f"format is not {_FORMAT!r}")
            users = {
                name: User(name, str(u["role"]), str(u["password_hash"]),
                           float(u.get("created_at", 0)))
                for name, u in doc["users"].items()
                if NAME_RE.match(name) and u.get("role") in ROLES
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{self.path}: unreadable users file: {err}") from err
        self._cache = (key, users)
        return users

    def get(self, name: str) -> User | None:
        """One user, or None."""
        return self.users().get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None (same cost either way)."""
        dummy = _dummy_hash()  # made on the first call whoever logs in: no timing difference
        user = self.get(name) if NAME_RE.match(name or "") else None
        ok = verify_password(password, user.password_hash if user else dummy)
        return user if ok and user is not None else None

    def add(self, name: str, role: str, password: str) -> User:
        """Create a user (refused when the name is taken)."""
        if not NAME_RE.match(name):
            raise UserError("name: letters, digits, _ . @ - (at most 64, a letter or digit first)")
        if role not in ROLES:
            raise UserError(f"role: one of {', '.join(ROLES)}")
        check_password(password)
        users = dict(self.users())
        if name in users:
            raise UserError(f"user {name!r} exists (use `gated user passwd`)")
        users[name] = User(name, role, hash_password(password), time.time())
        self._write(users)
        return users[name]

    def set_password(self, name: str, password: str, role: str | None = None) -> User:
        """Replace a user's password (and role, if given); ends their sessions."""
        users = dict(self.users())
        if name not in users:
            raise UserError(f"no user {name!r}")
        if role is not None and role not in ROLES:
            raise UserError(f"role: one of {', '.join(ROLES)}")
        check_password(password)
        old = users[name]
        users[name] = User(name, role or old.role, hash_password(password), old.created_at)
        self._write(users)
        return users[name]

    def remove(self, name: str) -> None:
        """Delete a user; their sessions end at their next request."""
        users = dict(self.users())
        if users.pop(name, None) is None:
            raise UserError(f"no user {name!r}")
        self._write(users)

    def _write(self, users: dict[str, User]) -> None:
        doc: dict[str, Any] = {"format": _FORMAT, "users": {
            u.name: {"role": u.role, "password_hash": u.password_hash,
                     "created_at": u.created_at} for u in users.values()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with os.fdopen(open_private(tmp), "w", encoding="utf-8") as out:
            json.dump(doc, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        self._cache = None
