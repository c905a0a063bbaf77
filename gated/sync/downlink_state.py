"""What the downlink must remember across restarts: commands already seen, the active rule bundle.

A small SQLite file of its own (`[sync] downlink_state_file`, default beside the
journal): the replay cache cannot live in memory, or a restart would make every
unexpired command replayable, and it does not belong in the journal, whose rows
are append-only and go upstream.

The replay cache is bounded without ever letting a replay through: an entry is
dropped only when its command has expired (or, when the cache is full, the entry
that expires first), and its `expires_at` raises a *floor*; any command expiring
at or before the floor is refused as older than the replay window. So a command
whose entry is gone is refused by the floor, even if the wall clock later steps
back far enough to make it look unexpired again.

Calls are blocking (one fsync per remembered command); callers run them in a
worker thread (`asyncio.to_thread`) so the gate's event loop never waits on the disk.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from gated.errors import SyncError

__all__ = ["ActiveBundle", "DownlinkState"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_commands (
    command_id TEXT PRIMARY KEY,
    nonce      TEXT NOT NULL UNIQUE,
    expires_at REAL NOT NULL,
    seen_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS seen_commands_by_expiry ON seen_commands (expires_at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class ActiveBundle:
    """The newest rule bundle applied from the service (version 0: none yet)."""

    version: int = 0
    etag: str = ""
    sha256: str = ""
    rules_version: int = 0  # the local rule store's version it became
    applied_at: float = 0.0


class DownlinkState:
    """The replay cache and the active bundle, in one SQLite file (thread-safe, blocking)."""

    def __init__(self, path: str | os.PathLike[str], *, capacity: int = 10_000) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)  # nonces and command ids: the daemon's business only
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: a command acted on must still be remembered after a power cut, or it
            # could be replayed once the device is back up.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise SyncError(f"downlink state {self.path}: cannot open: {err}") from err

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    # --- the replay cache ---------------------------------------------------------------

    def floor(self) -> float:
        """Commands expiring at or before this are refused: their entries may be gone."""
        with self._lock:
            return float(self._get("replay_floor") or 0.0)

    def remember(self, command_id: str, nonce: str, expires_at: float, now: float,
                 *, prune_before: float) -> str | None:
        """Record a command as seen; the refusal reason if it cannot be taken, else None.

        "replayed": its id or nonce was seen before; "stale": it expires at or before
        the floor. Entries expiring before `prune_before` are dropped first (raising the
        floor), and the one expiring first when the cache is full.
        """
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    floor = float(self._get("replay_floor") or 0.0)
                    dropped = db.execute(
                        "SELECT max(expires_at), count(*) FROM seen_commands WHERE expires_at < ?",
                        (prune_before,),
                    ).fetchone()
                    if dropped[1]:
                        db.execute("DELETE FROM seen_commands WHERE expires_at < ?",
                                   (prune_before,))
                        floor = max(floor, float(dropped[0]))
                    seen = db.execute(
                        "SELECT 1 FROM seen_commands WHERE command_id = ? OR nonce = ?",
                        (command_id, nonce),
                    ).fetchone()
                    if seen is not None:
                        reason: str | None = "replayed"
                    elif expires_at <= floor:
                        reason = "stale"
                    else:
                        reason = None
                        count = db.execute("SELECT count(*) FROM seen_commands").fetchone()[0]
                        if count >= self.capacity:
                            # Full of unexpired entries: forget the soonest to expire and
                            # raise the floor over it, so forgetting never allows a replay.
                            oldest = db.execute(
                                "SELECT command_id, expires_at FROM seen_commands "
                                "ORDER BY expires_at LIMIT ?",
                                (count - self.capacity + 1,),
                            ).fetchall()
                            db.executemany("DELETE FROM seen_commands WHERE command_id = ?",
                                           [(row[0],) for row in oldest])
                            floor = max(floor, max(float(row[1]) for row in oldest))
                            if expires_at <= floor:
                                reason = "stale"
                        if reason is None:
                            db.execute(
                                "INSERT INTO seen_commands VALUES (?, ?, ?, ?)",
                                (command_id, nonce, expires_at, now),
                            )
                    self._put("replay_floor", repr(floor))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise SyncError(f"downlink state {self.path}: {err}") from err
            return reason

    def seen_count(self) -> int:
        """How many commands the cache holds."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM seen_commands").fetchone()[0])

    # --- the active rule bundle --------------------------------------------------------------

    def active_bundle(self) -> ActiveBundle:
        """The bundle last applied (version 0 when none)."""
        with self._lock:
            return ActiveBundle(
                version=int(self._get("bundle_version") or 0),
                etag=self._get("bundle_etag") or "",
                sha256=self._get("bundle_sha256") or "",
                rules_version=int(self._get("bundle_rules_version") or 0),
                applied_at=float(self._get("bundle_applied_at") or 0.0),
            )

    def set_active_bundle(self, bundle: ActiveBundle) -> None:
        """Record the bundle just applied, in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._put("bundle_version", str(bundle.version))
                self._put("bundle_etag", bundle.etag)
                self._put("bundle_sha256", bundle.sha256)
                self._put("bundle_rules_version", str(bundle.rules_version))
                self._put("bundle_applied_at", repr(bundle.applied_at))
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise SyncError(f"downlink state {self.path}: {err}") from err

    # --- helpers (lock held) -----------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _put(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
