"""The sync service: a long-lived daemon service that delivers the journal upstream.

One `SyncService` per daemon (app.py starts it once, supervised; it outlives config
generations). It owns the outbox, one transport (MQTT or HTTP), the signed chain
heads and their countersignatures, the heartbeat and the retained status. Nothing
here runs on a lane's path: lanes only append to the journal, and the sync reads
committed rows through the journal's reader connection and commit feed.

At a stop (`stop()`, after the control socket at SIGTERM) it takes no new batch,
waits a bounded time for the acks of what is in flight, marks them synced and
publishes "offline"; whatever is still unacknowledged is simply sent again at the
next start (the receiver deduplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from gated.config import Config, MqttConfig
from gated.errors import SyncError
from gated.mqttlink import MqttLink, Will
from gated.sync import envelope
from gated.sync.envelope import Ack
from gated.sync.outbox import Batch, Outbox, OutboxJournal
from gated.sync.signing import (
    SignatureError,
    device_key_path,
    load_or_create_key,
    parse_public_keys,
    sign,
    verify,
)

__all__ = ["SyncJournal", "SyncService"]

log = logging.getLogger(__name__)

STOP_FLUSH_S = 3.0  # at SIGTERM: the longest a stop waits for in-flight acks
PICTURES_FILE = "sync-pictures.sqlite3"  # beside the journal: pictures owed to the service


class SyncJournal(OutboxJournal, Protocol):
    """The journal as the sync service uses it."""

    async def head(self) -> tuple[int, str]:
        """(seq, row_hash) of the newest committed row."""
        ...


Audit = Callable[..., Awaitable[int]]  # Auditor.record(action, resource_type, **fields)
StatusProvider = Callable[[], Awaitable[dict[str, Any]]]


class SyncService:
    """Delivers the journal upstream and keeps the service's countersigned heads."""

    name = "sync"

    def __init__(self, cfg: Config, journal: SyncJournal, *, audit: Audit,
                 status: StatusProvider | None = None,
                 backlog: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 snapshot_dir: str | None = None, version: str = "") -> None:
        self.cfg = cfg
        self.sync = cfg.sync
        self.identity = cfg.site.identity
        self.journal = journal
        self.audit = audit
        self.status = status
        self.backlog = backlog
        self.version = version
        self.source = envelope.source_of(self.identity)
        self.key = load_or_create_key(device_key_path(self.sync.key_file, cfg.journal.path))
        self.service_keys = parse_public_keys(self.sync.service_public_keys)
        self.outbox = Outbox(journal, batch_max_events=self.sync.batch_max_events,
                             ack_timeout_s=self.sync.ack_timeout_s)
        self.started_mono = time.monotonic()
        self.last_head_sent: tuple[int, str] | None = None
        self.last_countersigned: dict[str, Any] | None = None
        self._own_rows: set[int] = set()  # seqs of this service's own audit rows
        self._refused_logged: set[int] = set()
        self._stopping = False
        self.link: MqttLink | None = None
        self.transport: Any = None
        self.snapshot_dir = snapshot_dir or cfg.journal.snapshot_dir
        self.pictures_state = Path(cfg.journal.path).parent / PICTURES_FILE
        self.pictures: Any = None  # gated.sync.http.Pictures when pictures go upstream
        self._build_transport()

    # --- transport -------------------------------------------------------------------------

    def _mqtt_config(self) -> MqttConfig:
        mqtt_cfg = self.sync.mqtt or self.cfg.mqtt
        if mqtt_cfg is None:
            raise SyncError("sync: no MQTT broker configured ([sync.mqtt] or [mqtt])")
        return mqtt_cfg

    def _build_transport(self) -> None:
        if self.sync.transport == "mqtt":
            from gated.sync.mqtt import PUBACK_WINDOW, MqttUplink

            mqtt_cfg = self._mqtt_config()
            client_id = (mqtt_cfg.client_id or f"gated-{self.identity.device_id}") + "-sync"
            prefix = envelope.topic_prefix(self.identity)
            will = Will(prefix + "status", envelope.status_message(
                self.identity.device_id, "offline", "connection lost"), qos=1, retain=True)
            self.link = MqttLink(mqtt_cfg, client_id, name="sync", clean_start=False,
                                 session_expiry_s=self.sync.mqtt_session_expiry_s,
                                 on_state=self._on_link_state, will=will,
                                 max_inflight=min(self.sync.mqtt_window, PUBACK_WINDOW))
            if self.sync.http.url:
                # Pictures never go over the broker (megabytes): with a [sync.http] url they
                # are PUT by hash beside the MQTT events; without one they stay on the device.
                from gated.sync.http import Pictures, http_client

                self.pictures = Pictures(self.sync, http_client(self.sync), self.snapshot_dir,
                                         state_path=self.pictures_state)
                self.outbox = _PictureOutbox(
                    self.journal, self.pictures, batch_max_events=self.sync.batch_max_events,
                    ack_timeout_s=self.sync.ack_timeout_s)
            self.transport = MqttUplink(self.link, self.outbox, self.identity,
                                        window=self.sync.mqtt_window, ack_mode=self.sync.ack,
                                        batch_max_events=self.sync.mqtt_batch_max_events,
                                        batch_max_bytes=self.sync.mqtt_batch_max_bytes,
                                        on_ack=self._on_ack)
        else:
            from gated.sync.http import HttpUplink

            self.transport = HttpUplink(self.sync, self.outbox, self.identity,
                                        snapshot_dir=self.snapshot_dir,
                                        on_ack=self._on_ack, quarantine=self._quarantine,
                                        pictures_state=self.pictures_state)
            self.pictures = self.transport.pictures

    def _on_link_state(self, up: bool, detail: str) -> None:
        if up and not self._stopping:
            asyncio.get_running_loop().create_task(self._announce_online())

    async def _announce_online(self) -> None:
        with contextlib.suppress(SyncError):
            await self.transport.publish_status("online", "connected")

    # --- the service ------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: transport, heads and heartbeat."""
        async with asyncio.TaskGroup() as group:
            if self.link is not None:
                group.create_task(self.link.run(), name="sync-link")
            group.create_task(self.transport.run(), name="sync-transport")
            group.create_task(self._heads(), name="sync-heads")
            if self.pictures is not None:
                group.create_task(self.pictures.run(), name="sync-pictures")
            if self.link is not None:
                group.create_task(self._heartbeats(), name="sync-heartbeat")

    async def stop(self, timeout_s: float = STOP_FLUSH_S) -> None:
        """Stop sending; wait (bounded) for in-flight acks, mark them, publish offline."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.transport.settle(timeout_s)
        with contextlib.suppress(Exception):
            await self.outbox.flush()
        if self.link is not None and self.link.stats.connected:
            with contextlib.suppress(SyncError, TimeoutError):
                await asyncio.wait_for(self.transport.publish_status("offline", "stopped"), 1.0)

    # --- chain heads -------------------------------------------------------------------------

    async def _heads(self) -> None:
        while True:
            await asyncio.sleep(self.sync.head_interval_s)
            with contextlib.suppress(SyncError, OSError):
                await self.send_head()

    async def send_head(self) -> dict[str, Any] | None:
        """Sign the journal's head and send it, unless nothing but our own rows moved it."""
        seq, row_hash = await self.journal.head()
        if seq == 0:
            return None
        countersigned = self.last_countersigned["seq"] if self.last_countersigned else 0
        if seq == countersigned or (seq in self._own_rows and seq - 1 <= countersigned):
            return None  # only our own countersignature row moved it: no chatter
        signed = sign({"device_id": self.identity.device_id, "seq": seq, "row_hash": row_hash,
                       "at": envelope.rfc3339(time.time())}, self.key)
        event = envelope.head_event(signed, self.source, time.time())
        self.last_head_sent = (seq, row_hash)
        await self.transport.send_head(event)
        return event

    def _on_ack(self, ack: Ack) -> None:
        if ack.head_status is not None:
            asyncio.get_running_loop().create_task(self._take_head_answer(ack))
        for event_id, reason, retryable in ack.rejected:
            if not retryable:
                asyncio.get_running_loop().create_task(
                    self._quarantine(event_id, None, reason))

    async def _take_head_answer(self, ack: Ack) -> None:
        if ack.head_status == "countersigned" and ack.head is not None:
            try:
                verify(ack.head, self.service_keys)
            except SignatureError as err:
                log.error("sync: countersignature refused: %s", err)
                return
            if ack.head.get("device_id") != self.identity.device_id:
                log.error("sync: countersignature for another device refused")
                return
            seq = ack.head.get("seq")
            if not isinstance(seq, int) or (
                self.last_countersigned is not None and seq <= self.last_countersigned["seq"]
            ):
                return
            self.last_countersigned = dict(ack.head)
            own = await self.audit("head_countersigned", "journal", resource_id=str(seq),
                                   new_values=dict(ack.head))
            self._own_rows.add(own)
            log.info("sync: chain head seq %d countersigned by the service", seq)
        elif ack.head_status == "refused" and ack.head_seq not in self._refused_logged:
            self._refused_logged.add(ack.head_seq or 0)
            log.error("sync: the service refused chain head seq %s: %s", ack.head_seq,
                      ack.head_reason)
            own = await self.audit("head_refused", "journal", resource_id=str(ack.head_seq),
                                   status="failure", error_message=ack.head_reason)
            self._own_rows.add(own)

    async def _quarantine(self, event_id: str, row: dict[str, Any] | None, reason: str,
                          http_status: int | None = None) -> None:
        """Settle an event the service will never take: audit it, then mark it synced."""
        stream = row["stream"] if row else (
            self.outbox.inflight[event_id].stream if event_id in self.outbox.inflight else None)
        seq = row["seq"] if row else (
            self.outbox.inflight[event_id].seq if event_id in self.outbox.inflight else None)
        log.error("sync: event %s (seq %s) refused for good by the service: %s",
                  event_id, seq, reason)
        own = await self.audit(
            "sync_quarantined", "journal", resource_id=None if seq is None else str(seq),
            status="failure", error_message=reason[:500],
            metadata={"event_id": event_id, "stream": stream, "seq": seq,
                      "http_status": http_status})
        self._own_rows.add(own)
        self.outbox.acknowledged([event_id])
        await self.outbox.flush()

    # --- heartbeat ----------------------------------------------------------------------------

    async def heartbeat(self) -> dict[str, Any]:
        """The heartbeat CloudEvent as it would be sent now."""
        seq, row_hash = await self.journal.head()
        extra = await self.status() if self.status is not None else {}
        backlog = await self.backlog() if self.backlog is not None else {}
        data = {
            "device_id": self.identity.device_id,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "version": self.version,
            "backlog": backlog.get("counts", {"access": 0, "audit": 0}),
            "oldest_unsynced_age_s": backlog.get("oldest_age_s"),
            "rules_version": extra.get("rules_version"),
            "head": {"seq": seq, "row_hash": row_hash},
            "last_countersigned_seq": (self.last_countersigned or {}).get("seq"),
            "healthy": bool(extra.get("healthy", True)),
            "components": extra.get("components", {}),
            "lanes": extra.get("lanes", {}),
            # Says plainly where pictures go: "http" (with what is still owed) or "local"
            # (an MQTT-only site: no [sync.http] url, pictures stay on the device).
            "pictures": (await asyncio.to_thread(self.pictures.status)
                         if self.pictures is not None else {"upload": "local"}),
        }
        if extra.get("rules_bundle") is not None:  # the downlink's bundle in effect (11.2)
            data["rules_bundle"] = extra["rules_bundle"]
        return envelope.heartbeat_event(data, self.source, time.time())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.sync.heartbeat_interval_s)
            if self.link is None or not self.link.stats.connected:
                continue
            try:
                await self.transport.publish_event("heartbeat", await self.heartbeat(), qos=0)
            except (SyncError, OSError) as err:
                log.debug("sync: heartbeat not sent: %s", err)


class _PictureOutbox(Outbox):
    """The outbox of an MQTT uplink that also owes pictures over HTTP.

    Every picture of a row handed to the MQTT uplink is remembered for an HTTP PUT
    (its event goes at once with `gatedsnapshot: "pending"`; the PUT by hash tells the
    service the picture arrived). Remembering is idempotent, so re-sends cost nothing.
    """

    def __init__(self, journal: OutboxJournal, pictures: Any, **kwargs: Any) -> None:
        super().__init__(journal, **kwargs)
        self.pictures = pictures

    async def next_batch(self, limit: int | None = None) -> Batch:
        """The next batch, its pictures remembered for upload first."""
        batch = await super().next_batch(limit)
        owed = [(row["snapshot_sha256"], row["snapshot_path"], row["event_id"])
                for row in batch.rows if row.get("snapshot_sha256") and row.get("snapshot_path")
                and not row.get("snapshot_missing")]
        await self.pictures.later_many(owed)
        return batch
