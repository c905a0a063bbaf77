"""Sessions, CSRF tokens, login rate limits and lockouts, and login audit summaries.

Sessions live in memory only: a daemon restart logs everyone out, which is the safe
answer on a device that may have been tampered with. A session token is 256 random
bits in an HttpOnly, SameSite=Strict cookie (Secure over TLS); its CSRF token is a
second secret that every state-changing request must echo. Failed logins are counted
per user name and per client address in a sliding window; either reaching the limit
locks that name or address out for a while, so neither spraying one password over many
names nor many passwords at one name gets far.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LoginLimiter", "LoginSummary", "Session", "Sessions"]

MAX_SESSIONS = 256  # oldest sessions go first past this (bounded memory)
MAX_TRACKED = 4096  # names and addresses whose failures are remembered


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    token: str
    csrf: str
    user: str
    role: str
    password_hash: str  # the hash at login: a changed password ends the session
    created: float
    last_seen: float


class Sessions:
    """Logged-in sessions by token, with idle and absolute expiry."""

    def __init__(self, idle_s: float, max_s: float) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._by_token: dict[str, Session] = {}

    def create(self, user: str, role: str, password_hash: str) -> Session:
        """A new session (a fresh token at every login: no session fixation)."""
        now = time.monotonic()
        if len(self._by_token) >= MAX_SESSIONS:
            oldest = min(self._by_token.values(), key=lambda s: s.last_seen)
            del self._by_token[oldest.token]
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, role,
                          password_hash, now, now)
        self._by_token[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for a cookie value, or None (expired ones are dropped)."""
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle_s or now - session.created > self.max_s:
            del self._by_token[token]
            return None
        session.last_seen = now
        return session

    def end(self, token: str | None) -> None:
        """Log out."""
        if token:
            self._by_token.pop(token, None)


def csrf_ok(session: Session, given: str | None) -> bool:
    """True when the request echoed the session's CSRF token (constant time)."""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), str(given).encode())


class LoginLimiter:
    """Failed logins per key (a user name, an address) in a window; lockout past the limit."""

    def __init__(self, max_failures: int, window_s: float, lockout_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, key: str, now: float | None = None) -> float:
        """Seconds left of this key's lockout (0: not locked)."""
        now = time.monotonic() if now is None else now
        until = self._locked_until.get(key, 0.0)
        if until <= now:
            self._locked_until.pop(key, None)
            return 0.0
        return until - now

    def failed(self, key: str, now: float | None = None) -> bool:
        """Count a failure; True when it starts a lockout."""
        now = time.monotonic() if now is None else now
        if key not in self._failures and len(self._failures) >= MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))  # oldest tracked key goes
        times = self._failures.setdefault(key, deque())
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked_until[key] = now + self.lockout_s
            times.clear()
            return True
        return False

    def succeeded(self, key: str) -> None:
        """Forget a key's failures (a good login)."""
        self._failures.pop(key, None)


@dataclass
class _Tally:
    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    users: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


class LoginSummary:
    """Failed logins from one address past the first few in an interval, as one audit row.

    The first `immediate` failures of an address in an interval are audited one by one;
    the rest are counted here and flushed as one `login_failures` row per address and
    interval, so a password-guessing flood costs a row a minute, not an fsync a guess.
    """

    def __init__(self, immediate: int = 3) -> None:
        self.immediate = immediate
        self._tallies: dict[str, _Tally] = {}
        self._seen: dict[str, int] = {}

    def note(self, address: str, user: str, reason: str) -> bool:
        """Count a failure; True when it should be audited on its own row now."""
        seen = self._seen.get(address, 0) + 1
        if len(self._seen) < MAX_TRACKED or address in self._seen:
            self._seen[address] = seen
        if seen <= self.immediate:
            return True
        tally = self._tallies.setdefault(address, _Tally(first_at=time.time()))
        tally.count += 1
        tally.last_at = time.time()
        tally.users[user[:64]] = tally.users.get(user[:64], 0) + 1
        tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
        return False

    def flush(self) -> list[tuple[str, dict[str, Any]]]:
        """(address, summary) of every address counted since the last flush; starts over."""
        out = [(address, {"count": t.count, "first_at": t.first_at, "last_at": t.last_at,
                          "users": dict(sorted(t.users.items())[:16]),
                          "reasons": dict(t.reasons)})
               for address, t in self._tallies.items()]
        self._tallies.clear()
        self._seen.clear()
        return out
