"""MQTT uplink: journal events to `…/events` at QoS 1, the service's acks from `…/acks`.

A PUBACK only says the broker has a message; an event is marked synced when the
service's `io.gated.ack.v1` lists it (or, with `[sync] ack = "broker"`, on the PUBACK,
accepting that a crashed broker loses what it held). At most `window` events await an
ack at once; one not acked within `ack_timeout_s` is published again (same id) by the
outbox's re-send. The link (MqttLink) reconnects by itself with its capped back-off;
the session is persistent so acks published while the device was away still arrive.

The drain's cost is per event, so the send path does per event only what it must:
encode the envelope and hand it to paho (`MqttLink.publish_nowait`: no task, no
PUBACK future; the service's ack is what counts). PUBACKs are awaited only in the
opt-in broker mode, where they are collected and given to the outbox in batches.

A batch of rows (the backfill lane, re-sends) is packed into as few messages as the
bounds allow: a JSON array of events in seq order, at most `batch_max_events` events
and `batch_max_bytes` bytes each (docs/protocol.md, section 5), because the broker's
and the service's cost is per message (a PUBLISH read, a PUBACK written). A message
of one event, such as a live row that just committed, is the plain event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
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

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_EVENTS", "PUBACK_WINDOW", "MqttUplink"]

log = logging.getLogger(__name__)

# Messages on the wire awaiting the broker's PUBACK (paho's in-flight window), below the
# events awaiting the service's ack (`mqtt_window`), which wait in paho's queue: on every
# PUBACK paho walks its in-flight messages to find the next queued one, so a window of
# 1,024 there cost ~30 us per event more CPU than 128 in bench.sync. 128 unacked PUBACKs
# still carry ~1,300 events/s over a 100 ms round trip, far above any gate's rate.
PUBACK_WINDOW = 128
# The longest the uplink encodes and hands events to paho in one turn of the event loop:
# the lanes run on the same loop, and a read must not wait behind a whole batch.
SEND_TURN_S = 0.001
# The service takes a batch message of at most 500 events and 1 MiB (docs/protocol.md, 4).
# The payload's cap leaves 1 KiB for the rest of the PUBLISH packet (topic, header,
# properties): the shipped broker's max_packet_size is 1 MiB for the whole packet, and a
# broker drops a client that sends more, which would re-send it after every reconnect.
MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 1024 * 1024 - 1024


class MqttUplink:
    """Publishes the outbox's batches over one MqttLink and takes the service's acks."""

    name = "mqtt"

    def __init__(self, link: MqttLink, outbox: Outbox, identity: SiteIdentity, *,
                 window: int = 256, ack_mode: str = "service",
                 batch_max_events: int = 100, batch_max_bytes: int = 256 * 1024,
                 on_ack: Callable[[Ack], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= batch_max_events <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_max_events: expected 1 to {MAX_BATCH_EVENTS}")
        if not 1 <= batch_max_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_max_bytes: expected 1 to {MAX_BATCH_BYTES}")
        self.link = link
        self.outbox = outbox
        self.identity = identity
        self.window = window
        self.batch_max_events = batch_max_events  # 1: one event per message, never an array
        self.batch_max_bytes = batch_max_bytes
        self._min_room = max(1, min(window // 8, outbox.batch_max_events))
        self.ack_mode = ack_mode
        self.on_ack = on_ack
        self.prefix = topic_prefix(identity)
        self.source = source_of(identity)
        self._monotonic = monotonic
        self._room = asyncio.Event()
        self._pubacked_ids: list[str] = []  # broker mode: ids PUBACKed, for the outbox soon
        self.published = 0  # events handed to the link (QoS 1: paho sends them when it can)
        self.messages = 0  # messages those events went in (a batch message carries several)
        link.subscribe(self.prefix + "acks", self._on_ack_message, qos=1)

    # --- sending ----------------------------------------------------------------------

    async def run(self) -> None:
        """Send batches as the window allows, until cancelled."""
        while True:
            await self.link.subscribed.wait()  # the acks subscription is in place
            room = self.window - self.outbox.awaited(self._monotonic())
            # Acks free the window a few ids at a time: a backlog batch waits until an
            # eighth of it is free (fewer, larger turns); a live event goes at once.
            if room <= 0 or (room < self._min_room and not self.outbox.live_waiting()):
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), self._until_due())
                continue
            try:
                batch = await self.outbox.next_batch(room)
            except EOFError:  # the journal closed: the daemon is stopping
                return
            await self._send(batch.rows)

    def _until_due(self) -> float:
        earliest = self.outbox.earliest_due()
        return max(0.01, earliest - self._monotonic()) if earliest is not None else 1.0

    async def _send(self, rows: list[dict[str, Any]]) -> None:
        # Rows come from the outbox in seq order (both lanes read by seq), so each message's
        # events are too. Each event is encoded once; a message is its parts joined.
        topic = self.prefix + "events"
        source = self.source
        max_events = self.batch_max_events
        max_bytes = self.batch_max_bytes
        clock = time.perf_counter
        turn_ends = clock() + SEND_TURN_S
        parts: list[bytes] = []
        ids: list[str] = []
        size = 1  # the array's length: "[" + "]" + the parts + a comma between each two
        for row in rows:
            if clock() > turn_ends:
                await asyncio.sleep(0)  # the lanes share this loop: let a read through
                turn_ends = clock() + SEND_TURN_S
            snapshot = "pending" if row.get("snapshot_sha256") else None
            payload = encode(access_or_audit(row, source, snapshot))
            # Full, or this event would take it over the byte bound: send what is held. An
            # event over the bound on its own therefore goes alone.
            if parts and (len(parts) >= max_events or size + len(payload) + 1 > max_bytes):
                self._publish(topic, parts, ids)
                parts, ids, size = [], [], 1
            parts.append(payload)
            ids.append(row["event_id"])
            size += len(payload) + 1
        if parts:
            self._publish(topic, parts, ids)

    def _publish(self, topic: str, parts: list[bytes], ids: list[str]) -> None:
        """Hand one message of these encoded events to paho (one event: the plain event)."""
        payload = parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
        try:
            self.link.publish_nowait(
                topic, payload, qos=1,
                on_acked=partial(self._pubacked, ids) if self.ack_mode == "broker" else None)
        except SyncError:
            return  # still in flight in the outbox: sent again when they fall due
        self.published += len(ids)
        self.messages += 1

    def _pubacked(self, event_ids: list[str]) -> None:
        # Broker mode: a message's PUBACK covers every event in it. PUBACKs arrive in
        # bursts; the outbox hears of them once per burst.
        if not self._pubacked_ids:
            asyncio.get_running_loop().call_soon(self._pubacked_flush)
        self._pubacked_ids.extend(event_ids)

    def _pubacked_flush(self) -> None:
        ids, self._pubacked_ids = self._pubacked_ids, []
        self.outbox.acknowledged(ids)
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
        while self.outbox.inflight and self._monotonic() < deadline:
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
