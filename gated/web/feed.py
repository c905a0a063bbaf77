"""The live feed: one journal reader following `journal.commits`, fanned out to browsers.

However many pages are open, the journal is read once per commit batch: the hub awaits
the commit feed (no polling), reads the new rows through the journal's read API and
puts one encoded message on every subscriber's bounded queue. A browser that cannot
keep up loses its queue (and reconnects, as EventSource does by itself) instead of
making the daemon buffer without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from gated.web.words import reason_words

__all__ = ["LiveHub", "audit_summary", "event_summary", "sse"]

log = logging.getLogger(__name__)

QUEUE_MAX = 256
READ_BATCH = 200
STATUS_EVERY_S = 2.0  # gate movements are not journal rows: lane status is sent this often


class _Commits(Protocol):
    seq: int

    async def wait(self, seq: int) -> int: ...


class _Reader(Protocol):
    commits: Any

    async def after(self, seq: int, limit: int = ...) -> list[dict[str, Any]]: ...


def sse(kind: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event as the stream carries it."""
    body = json.dumps(data, default=str, separators=(",", ":"))
    return f"event: {kind}\ndata: {body}\n\n".encode()


def event_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows of an access row (live feed, dashboard, JSON lists)."""
    meta = row.get("metadata") or {}
    return {
        "seq": row["seq"], "event_id": row["event_id"], "created_at": row["created_at"],
        "captured_at": row.get("captured_at"), "lane": row["access_point"],
        "event_type": row["event_type"], "direction": row.get("direction"),
        "plate": row.get("vehicle_plate"), "visitor_name": row.get("visitor_name"),
        "reason": row["decision_reason"], "reason_text": reason_words(row["decision_reason"]),
        "method": row["authorization_method"],
        "authorized_by": row.get("authorized_by"), "confidence": row.get("confidence_score"),
        "gate_opened": row.get("gate_opened"), "read_to_relay_ms": row.get("read_to_relay_ms"),
        "snapshot": bool(row.get("snapshot_path")), "rules_version": row.get("rules_version"),
        "relay_error": meta.get("relay_error") if isinstance(meta, dict) else None,
    }


def audit_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows of an audit row in lists."""
    return {
        "seq": row["seq"], "event_id": row["event_id"], "created_at": row["created_at"],
        "action": row["action"], "resource_type": row["resource_type"],
        "resource_id": row.get("resource_id"), "actor_type": row["actor_type"],
        "actor_id": row.get("actor_id"), "actor_role": row.get("actor_role"),
        "ip_address": row.get("ip_address"), "status": row["status"],
        "error_message": row.get("error_message"),
    }


class LiveHub:
    """Follows the journal's commits and the lanes' status; one queue per live client."""

    def __init__(self, journal: _Reader, status: Callable[[], Awaitable[Mapping[str, Any]]],
                 *, max_clients: int = 32) -> None:
        self.journal = journal
        self.status = status
        self.max_clients = max_clients
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self.dropped = 0

    @property
    def clients(self) -> int:
        """Live-feed connections now."""
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue[bytes | None] | None:
        """A new client's queue, or None when max_clients are connected."""
        if len(self._clients) >= self.max_clients:
            return None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        """Forget a client that went away."""
        self._clients.discard(queue)

    def publish(self, kind: str, data: Mapping[str, Any]) -> None:
        """Send one server-sent event to every client (slow ones are cut off)."""
        if not self._clients:
            return
        message = sse(kind, data)
        for queue in list(self._clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self._clients.discard(queue)
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)  # tells the handler to end the response

    async def run(self) -> None:
        """Follow commits and tick status until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow())
            tg.create_task(self._tick())

    async def _follow(self) -> None:
        commits = self.journal.commits
        seq = commits.seq
        while True:
            try:
                await commits.wait(seq + 1)
            except EOFError:
                return
            if not self._clients:
                seq = commits.seq  # nobody watches: no read at all on a commit
                continue
            while True:
                rows = await self.journal.after(seq, READ_BATCH)
                if not rows:
                    break
                seq = rows[-1]["seq"]
                if not self._clients:
                    continue
                for row in rows:
                    if row["stream"] == "access":
                        self.publish("access", event_summary(row))
                    else:
                        self.publish("audit", audit_summary(row))
                if len(rows) < READ_BATCH:
                    break
            if self._clients:
                self.publish("status", await self.status())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            if self._clients:
                try:
                    self.publish("status", await self.status())
                except Exception as err:  # a status read must not end the feed
                    log.warning("live status failed: %s", err)
