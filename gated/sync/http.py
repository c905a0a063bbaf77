"""HTTP uplink: batched CloudEvents POSTs, content-addressed snapshot PUTs, signed heads.

docs/protocol.md, sections 6, 7 and 12. A batch is settled when the service answers
2xx (the ids it lists as stored or duplicate are marked synced). 400/413/422 mean
"never": the batch is halved until the one event the service refuses is found, and
that event is quarantined (audited, then settled), so it cannot block the queue.
Everything else (5xx, 429, 408, a timeout, a reset, a body cut short) is retried
with full-jitter back-off, capped, with any Retry-After as a floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import sqlite3
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from gated.backoff import full_jitter
from gated.config import SyncConfig
from gated.errors import SyncError
from gated.model import SiteIdentity
from gated.sync.envelope import Ack, access_or_audit, ack_from, encode, source_of
from gated.sync.outbox import Outbox

__all__ = ["HttpUplink", "Pictures", "http_client", "retry_after_s"]

log = logging.getLogger(__name__)

NEVER = frozenset({400, 413, 422})  # the service will never take this batch as it is
KEPT = frozenset({200, 201, 204, 412})  # snapshot PUT: the service has the picture
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
Quarantine = Callable[..., Awaitable[None]]


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpUplink:
    """Delivers the outbox's batches to the service's HTTP API, one batch at a time."""

    name = "http"

    def __init__(self, cfg: SyncConfig, outbox: Outbox, identity: SiteIdentity, *,
                 snapshot_dir: str, on_ack: Callable[[Ack], None] | None = None,
                 quarantine: Quarantine | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 rng: random.Random | None = None,
                 pictures_state: str | Path | None = None) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.identity = identity
        self.source = source_of(identity)
        self.snapshot_dir = Path(snapshot_dir)
        self.on_ack = on_ack
        self.quarantine = quarantine
        self.rng = rng or random.Random()
        base = cfg.http.url.rstrip("/")
        self.events_url = f"{base}/v1/devices/{identity.device_id}/events"
        self.heads_url = f"{base}/v1/devices/{identity.device_id}/heads"
        self.client = http_client(cfg, transport=transport)
        # Pictures whose events went without them ("pending") are retried from here.
        self.pictures = Pictures(cfg, self.client, snapshot_dir, state_path=pictures_state,
                                 rng=self.rng)
        self._picture_since: OrderedDict[str, float] = OrderedDict()  # sha256 -> first try
        self._idle = asyncio.Event()  # clear while a batch is being delivered
        self._idle.set()
        self.state = "starting"
        self.posts = 0

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver batch after batch until cancelled."""
        try:
            while True:
                try:
                    batch = await self.outbox.next_batch()
                except EOFError:
                    return
                self._idle.clear()
                try:
                    await self._deliver(batch.rows)
                finally:
                    self._idle.set()
        finally:
            await self.client.aclose()

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) for the batch being delivered."""
        if not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)

    async def _deliver(self, rows: list[dict[str, Any]]) -> None:
        events: list[tuple[dict[str, Any], dict[str, Any], int]] = []  # (row, event, size)
        for row in rows:
            picture = await self._picture(row)
            if picture is None:
                # Its picture is not up yet and may still go: the event stays in flight and
                # is handed out again after ack_timeout_s (the others go on without it).
                continue
            event = access_or_audit(row, self.source, picture or None)
            events.append((row, event, len(encode(event))))
        chunk: list[tuple[dict[str, Any], dict[str, Any], int]] = []
        size = 2
        for item in events:
            if chunk and size + item[2] + 1 > self.cfg.batch_max_bytes:
                await self._post(chunk)
                chunk, size = [], 2
            chunk.append(item)
            size += item[2] + 1
        if chunk:
            await self._post(chunk)

    # --- events ------------------------------------------------------------------------------

    async def _post(self, chunk: list[tuple[dict[str, Any], dict[str, Any], int]]) -> None:
        """POST one batch until the service settles it (2xx, or a quarantine)."""
        body = b"[" + b",".join(encode(e) for _, e, _ in chunk) + b"]"
        headers = {"Content-Type": BATCH_CONTENT_TYPE, "Idempotency-Key": chunk[0][1]["id"]}
        attempt = 0
        while True:
            delay: float | None = None
            try:
                response = await self.client.post(self.events_url, content=body, headers=headers)
            except httpx.HTTPError as err:
                self._set_state(f"unreachable: {type(err).__name__}: {err}")
            else:
                self.posts += 1
                status = response.status_code
                if 200 <= status < 300:
                    self._settled(chunk, response)
                    return
                if status in NEVER:
                    await self._refused(chunk, status, response.text[:300])
                    return
                self._set_state(f"answered {status}")
                delay = retry_after_s(response.headers.get("Retry-After"))
            jitter = full_jitter(attempt, self.cfg.retry_min_s, self.cfg.retry_max_s, self.rng)
            attempt += 1
            await asyncio.sleep(max(delay or 0.0, jitter))

    def _settled(self, chunk: list[tuple[dict[str, Any], dict[str, Any], int]],
                 response: httpx.Response) -> None:
        try:
            ack = ack_from(response.json())
        except ValueError as err:
            # A 2xx we cannot read says nothing of record: send again (deduplicated).
            # They stay in flight and go again after ack_timeout_s.
            self._set_state(f"unreadable answer: {err}")
            return
        self._set_state("ok")
        # Ids the answer does not list as stored stay in flight: sent again after
        # ack_timeout_s, not at once (a service that keeps dropping one is not hammered).
        self.outbox.acknowledged(ack.stored)
        if self.on_ack is not None:
            self.on_ack(ack)  # quarantines what was rejected for good, takes a head answer

    async def _refused(self, chunk: list[tuple[dict[str, Any], dict[str, Any], int]],
                       status: int, reason: str) -> None:
        if len(chunk) > 1:  # find the one event the service will not take
            half = len(chunk) // 2
            await self._post(chunk[:half])
            await self._post(chunk[half:])
            return
        row = chunk[0][0]
        if self.quarantine is not None:
            await self.quarantine(row["event_id"], row, f"HTTP {status}: {reason}",
                                  http_status=status)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            if state == "ok":
                log.info("sync http: delivering")
            else:
                log.warning("sync http: %s; retrying with back-off", state)
            self.state = state

    # --- snapshots ------------------------------------------------------------------------------

    async def _picture(self, row: dict[str, Any]) -> str | None:
        """"uploaded", "missing", "pending", "" (no picture) or None (not yet: retry later)."""
        sha = row.get("snapshot_sha256")
        if not sha:
            return ""
        path = row.get("snapshot_path")
        file = self.snapshot_dir / path if path else None
        if file is None or not file.is_file():
            return "missing"
        first = self._picture_since.setdefault(sha, time.monotonic())
        while len(self._picture_since) > 10_000:  # bounded memory
            self._picture_since.popitem(last=False)
        outcome = await self.pictures.upload(sha, file)
        if outcome == "kept":
            self._picture_since.pop(sha, None)
            return "uploaded"
        if outcome == "never":
            self._picture_since.pop(sha, None)
            return "pending"
        if outcome == "gone":
            self._picture_since.pop(sha, None)
            return "missing"
        if time.monotonic() - first >= self.cfg.snapshot_wait_s:
            # An event never waits forever for its picture: it goes "pending", and the
            # picture is retried on its own (Pictures.run) until the service keeps it.
            self._picture_since.pop(sha, None)
            await self.pictures.later(sha, str(path), row["event_id"])
            return "pending"
        return None

    # --- heads, status ------------------------------------------------------------------------

    async def send_head(self, event: dict[str, Any]) -> None:
        """POST a signed head; the answer is handed to on_ack."""
        try:
            response = await self.client.post(
                self.heads_url, content=encode(event),
                headers={"Content-Type": "application/cloudevents+json"})
        except httpx.HTTPError as err:
            raise SyncError(f"sync http: head not sent: {err}") from err
        if 200 <= response.status_code < 300 and self.on_ack is not None:
            with contextlib.suppress(ValueError):
                self.on_ack(ack_from(response.json()))

    async def publish_status(self, status: str, reason: str) -> None:
        """HTTP has no retained status: the service sees the batches."""

    async def publish_event(self, suffix: str, event: dict[str, Any], **_: Any) -> None:
        """HTTP sends no heartbeat (docs/protocol.md, section 9)."""


def http_client(cfg: SyncConfig, *,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The service's HTTP client: bearer token, TLS verified (private CA, client cert)."""
    headers = {"User-Agent": "gated-sync"}
    if cfg.http.token:
        headers["Authorization"] = f"Bearer {cfg.http.token}"
    return httpx.AsyncClient(headers=headers, timeout=cfg.http.timeout_s, verify=_tls(cfg),
                             transport=transport, follow_redirects=False)


def _tls(cfg: SyncConfig) -> ssl.SSLContext | bool:
    http = cfg.http
    if not http.url.startswith("https://"):
        return True
    try:
        ctx = ssl.create_default_context(cafile=http.ca_file or None)
        if http.client_cert:
            ctx.load_cert_chain(http.client_cert, http.client_key)
    except (OSError, ssl.SSLError) as err:
        raise SyncError(f"sync.http: cannot load TLS files: {err}") from err
    return ctx


PICTURES_MAX = 100_000  # pictures remembered for a later upload; beyond, the oldest is let go


class Pictures:
    """Snapshot uploads by SHA-256, and the pictures still owed to the service.

    An event whose picture could not be uploaded within `snapshot_wait_s` goes without
    it (`gatedsnapshot: "pending"`); its picture is then remembered in a small SQLite
    file beside the journal (so a restart does not forget it) and retried, oldest
    first, one at a time, with the same capped full-jitter back-off as every other
    failure, until the service keeps it (the PUT itself tells the service: it holds
    the event's `snapshot_sha256` now), the file is gone, or the service refuses it for
    good. Over MQTT with a `[sync.http] url` every event's picture goes this way.
    """

    def __init__(self, cfg: SyncConfig, client: httpx.AsyncClient, snapshot_dir: str | Path,
                 *, state_path: str | Path | None, rng: random.Random | None = None,
                 max_entries: int = PICTURES_MAX) -> None:
        self.cfg = cfg
        self.client = client
        self.snapshot_dir = Path(snapshot_dir)
        self.url = cfg.http.url.rstrip("/") + "/v1/snapshots/"
        self.rng = rng or random.Random()
        self.max_entries = max_entries
        self._db = sqlite3.connect(str(state_path) if state_path else ":memory:",
                                   check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one connection, used from worker threads
        with self._lock:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS pending (sha256 TEXT PRIMARY KEY,"
                             " path TEXT NOT NULL, event_id TEXT, added_at REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS pending_event ON pending (event_id)")
        self._wake = asyncio.Event()
        self.uploaded = 0  # kept by the service after their event had gone without them
        self.given_up = 0  # gone from disk, refused for good, or pushed out by the bound
        self.failures = 0  # consecutive failed attempts (the back-off's exponent)
        self.last_error = ""

    # --- one upload -------------------------------------------------------------------

    async def upload(self, sha: str, file: Path) -> str:
        """PUT one picture: "kept", "gone" (no file), "never" (refused for good) or "failed"."""
        try:
            data = await asyncio.to_thread(file.read_bytes)
        except FileNotFoundError:
            return "gone"
        except OSError as err:
            self.last_error = f"cannot read {file.name}: {err}"
            return "failed"
        try:
            response = await self.client.put(
                self.url + sha, content=data,
                headers={"Content-Type": "image/jpeg", "If-None-Match": "*"})
        except httpx.HTTPError as err:
            self.last_error = f"{type(err).__name__}: {err}"
            log.debug("sync http: snapshot %s not uploaded: %s", sha, err)
            return "failed"
        if response.status_code in KEPT:
            return "kept"
        if response.status_code in NEVER:
            log.warning("sync http: snapshot %s refused for good (%d): it stays on the device",
                        sha, response.status_code)
            return "never"
        self.last_error = f"answered {response.status_code}"
        return "failed"

    # --- pictures owed ------------------------------------------------------------------

    async def later(self, sha: str, path: str, event_id: str | None) -> None:
        """Remember a picture whose event went without it; retried by run()."""
        await self.later_many([(sha, path, event_id)])

    async def later_many(self, pictures: list[tuple[str, str, str | None]]) -> None:
        """Remember several (sha256, path, event id) in one transaction."""
        if not pictures:
            return
        dropped = await asyncio.to_thread(self._remember, pictures, time.time())
        if dropped:
            self.given_up += dropped
            log.warning("sync http: %d picture(s) owed to the service forgotten: more than %d "
                        "waiting (they stay on the device)", dropped, self.max_entries)
        self._wake.set()

    def _remember(self, pictures: list[tuple[str, str, str | None]], now: float) -> int:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)",
                                 [(sha, path, event_id, now) for sha, path, event_id in pictures])
            over = int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0]) - (
                self.max_entries)
            if over > 0:
                self._db.execute("DELETE FROM pending WHERE sha256 IN (SELECT sha256 FROM "
                                 "pending ORDER BY added_at LIMIT ?)", (over,))
            self._db.execute("COMMIT")
            return max(0, over)

    def _oldest(self) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sha256, path FROM pending ORDER BY added_at LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def _forget(self, sha: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE sha256 = ?", (sha,))

    def is_owed(self, event_id: str) -> bool:
        """True while this event's picture is still owed (the snapshot quota spares it)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM pending WHERE event_id = ? LIMIT 1",
                                    (event_id,)).fetchone() is not None

    def owed(self) -> int:
        """Pictures still owed to the service."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM pending").fetchone()[0])

    async def run(self) -> None:
        """Upload the pictures owed, oldest first, backing off while uploads fail."""
        while True:
            self._wake.clear()  # before the look: a picture added meanwhile wakes us
            item = await asyncio.to_thread(self._oldest)
            if item is None:
                await self._wake.wait()
                continue
            sha, path = item
            outcome = await self.upload(sha, self.snapshot_dir / path)
            if outcome == "failed":
                self.failures += 1
                await asyncio.sleep(max(self.cfg.retry_min_s, full_jitter(
                    self.failures, self.cfg.retry_min_s, self.cfg.retry_max_s, self.rng)))
                continue
            self.failures = 0
            await asyncio.to_thread(self._forget, sha)
            if outcome == "kept":
                self.uploaded += 1
                log.info("sync http: picture %s uploaded after its event", sha[:12])
            else:
                self.given_up += 1
                if outcome == "gone":
                    log.info("sync http: picture %s was removed before it could be uploaded",
                             sha[:12])

    def status(self) -> dict[str, Any]:
        """For the heartbeat: how pictures reach the service and what is still owed."""
        return {"upload": "http", "owed": self.owed(), "uploaded_later": self.uploaded,
                "given_up": self.given_up, "last_error": self.last_error or None}
