"""MQTT uplink: journal events to `…/events` at QoS 1, the service's acks from `…/acks`.

A PUBACK only says the broker has a message; an event is marked synced when the
service's `io.gated.ack.v1` lists it (or, with `[sync] ack = "broker"`, on the PUBACK,
accepting that a crashed broker loses what it held). At most `window` events await an
ack at once; one not acked within `ack_timeout_s` is published again (same id) by the
outbox's re-send. The link (MqttLink) reconnects by itself with its capped back-off;
the session is persistent so acks published while the device was away still arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gated.errors import SyncError
from gated.model import SiteIdentity
from gated.mqttlink import MqttLink, MqttMessage
from gated.sync.envelope import (
    Ack,
    access_or_audit,
    ack_from_event,
    encode,
    source_of,
    status_message,
    topic_prefix,
)
from gated.sync.outbox import Outbox

__all__ = ["MqttUplink"]

log = logging.getLogger(__name__)


class MqttUplink:
    """Publishes the outbox's batches over one MqttLink and takes the service's acks."""

    name = "mqtt"

    def __init__(self, link: MqttLink, outbox: Outbox, identity: SiteIdentity, *,
                 window: int = 256, ack_mode: str = "service",
                 on_ack: Callable[[Ack], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.outbox = outbox
        self.identity = identity
        self.window = window
        self.ack_mode = ack_mode
        self.on_ack = on_ack
        self.prefix = topic_prefix(identity)
        self.source = source_of(identity)
        self._monotonic = monotonic
        self._room = asyncio.Event()
        self._publishing: set[asyncio.Task[None]] = set()
        self.published = 0
        link.subscribe(self.prefix + "acks", self._on_ack_message, qos=1)

    # --- sending ----------------------------------------------------------------------

    def _outstanding(self) -> int:
        now = self._monotonic()
        return sum(1 for item in self.outbox.inflight.values() if item.due > now)

    async def run(self) -> None:
        """Send batches as the window allows, until cancelled."""
        while True:
            await self.link.subscribed.wait()  # the acks subscription is in place
            room = self.window - self._outstanding()
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), self._until_due())
                continue
            try:
                batch = await self.outbox.next_batch(room)
            except EOFError:  # the journal closed: the daemon is stopping
                return
            for row in batch.rows:
                self._send(row)

    def _until_due(self) -> float:
        dues = [item.due for item in self.outbox.inflight.values()]
        return max(0.01, min(dues) - self._monotonic()) if dues else 1.0

    def _send(self, row: dict[str, Any]) -> None:
        snapshot = "pending" if row.get("snapshot_sha256") else None
        payload = encode(access_or_audit(row, self.source, snapshot))
        task = asyncio.get_running_loop().create_task(
            self._publish(row["event_id"], payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, event_id: str, payload: bytes) -> None:
        try:
            await self.link.publish(self.prefix + "events", payload, qos=1)
        except SyncError:
            return  # still in flight in the outbox: sent again when it falls due
        self.published += 1
        if self.ack_mode == "broker":
            self.outbox.acknowledged([event_id])
            self._room.set()

    async def publish_event(self, suffix: str, event: dict[str, Any], *, qos: int = 1,
                            retain: bool = False) -> None:
        """Publish one message under this device's prefix (heads, heartbeats, results)."""
        await self.link.publish(self.prefix + suffix, encode(event), qos=qos, retain=retain)

    async def send_head(self, event: dict[str, Any]) -> None:
        """Publish a signed head; the answer comes back in an ack."""
        await self.publish_event("heads", event)

    async def publish_status(self, status: str, reason: str) -> None:
        """The retained online/offline status."""
        await self.link.publish(
            self.prefix + "status",
            status_message(self.identity.device_id, status, reason, time.time()),
            qos=1, retain=True)

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) for publishes on the wire and acks of what is in flight."""
        deadline = self._monotonic() + timeout_s
        while (self._publishing or self.outbox.inflight) and self._monotonic() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), max(0.01, deadline - self._monotonic()))

    # --- the service's acks ----------------------------------------------------------------

    def _on_ack_message(self, message: MqttMessage) -> None:
        try:
            ack = ack_from_event(message.payload)
        except ValueError as err:
            self.link.malformed(self.prefix + "acks", str(err))
            return
        if ack.stored:
            self.outbox.acknowledged(ack.stored)
        retry = [event_id for event_id, _, retryable in ack.rejected if retryable]
        if retry:
            self.outbox.give_back(retry)
        self._room.set()
        if self.on_ack is not None:
            self.on_ack(ack)
