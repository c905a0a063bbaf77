"""The demo's stand-in for the central service: stores each event, then acknowledges it.

`gated demo --mqtt HOST:PORT` runs one beside the daemon so sync can be watched end to
end on one machine: it subscribes the demo device's `P/events` on the broker, keeps every
event once by id in its own SQLite file (`service.sqlite3` in the demo folder), and only
after that commit publishes the `io.gated.ack.v1` that lets the device mark the rows
synced (docs/protocol.md, sections 4 and 5). It checks no chain and countersigns no head:
a real service does both (section 13); tests use tests/support/receiver.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gated.config import MqttConfig
from gated.errors import SyncError
from gated.model import SiteIdentity
from gated.mqttlink import MqttLink, MqttMessage
from gated.sync.envelope import ACK_TYPE, topic_prefix

__all__ = ["DemoService"]

log = logging.getLogger(__name__)

OnStored = Callable[[int, int], None]  # (events newly stored in this batch, total stored)


class DemoService:
    """Stores the demo device's events by id and acks them over MQTT."""

    name = "demo-service"

    def __init__(self, mqtt_cfg: MqttConfig, identity: SiteIdentity, db_path: Path, *,
                 on_stored: OnStored | None = None) -> None:
        self.prefix = topic_prefix(identity)
        self.source = f"gated-service://{identity.tenant_id}"
        self.link = MqttLink(mqtt_cfg, f"gated-demo-service-{identity.device_id}",
                             name=self.name)
        self.link.subscribe(self.prefix + "events", self._on_message)
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY,"
                        " type TEXT, seq INTEGER, data TEXT, received_at REAL)")
        self.on_stored = on_stored
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()

    @property
    def total(self) -> int:
        """Distinct events stored so far."""
        return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    def _on_message(self, message: MqttMessage) -> None:
        self._pending.append(message.payload)
        self._wake.set()

    async def run(self) -> None:
        """Connect, store and acknowledge until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.link.run(), name="demo-service-link")
            group.create_task(self._store_and_ack(), name="demo-service-store")

    def close(self) -> None:
        """Close the service's database (after run() ended)."""
        self.db.close()

    async def _store_and_ack(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            stored, duplicate = self._store(batch)
            if not stored and not duplicate:
                continue
            # The ack comes after the commit: that is what makes it an ack of record.
            ack = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": self.source,
                   "type": ACK_TYPE,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "datacontenttype": "application/json",
                   "data": {"stored": stored, "duplicate": duplicate, "rejected": []}}
            try:
                await self.link.publish(self.prefix + "acks", json.dumps(ack), qos=1)
            except SyncError as err:  # the device re-sends what it saw no ack for
                log.info("demo service: ack not delivered: %s", err)
            if stored and self.on_stored is not None:
                self.on_stored(len(stored), self.total)

    def _store(self, payloads: list[bytes]) -> tuple[list[str], list[str]]:
        events: list[dict[str, Any]] = []
        for payload in payloads:
            try:
                decoded = json.loads(payload)
            except ValueError:
                log.warning("demo service: an event that is not JSON was dropped")
                continue
            for event in decoded if isinstance(decoded, list) else [decoded]:
                if isinstance(event, dict) and isinstance(event.get("id"), str):
                    events.append(event)
        stored: list[str] = []
        duplicate: list[str] = []
        self.db.execute("BEGIN")
        for event in events:
            data = event["data"] if isinstance(event.get("data"), dict) else {}
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)",
                (event["id"], str(event.get("type")), data.get("seq"), json.dumps(data),
                 time.time()))
            (stored if cursor.rowcount else duplicate).append(event["id"])
        self.db.execute("COMMIT")
        return stored, duplicate
