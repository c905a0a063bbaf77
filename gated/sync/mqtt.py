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

__all__ = ["PUBACK_WINDOW", "MqttUplink"]

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
        self._min_room = max(1, min(window // 8, outbox.batch_max_events))
        self.ack_mode = ack_mode
        self.on_ack = on_ack
        self.prefix = topic_prefix(identity)
        self.source = source_of(identity)
        self._monotonic = monotonic
        self._room = asyncio.Event()
        self._pubacked: list[str] = []  # broker mode: ids PUBACKed, handed to the outbox soon
        self.published = 0  # events handed to the link (QoS 1: paho sends them when it can)
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
        topic = self.prefix + "events"
        source = self.source
        publish = self.link.publish_nowait
        broker = self.ack_mode == "broker"
        clock = time.perf_counter
        turn_ends = clock() + SEND_TURN_S
        for row in rows:
            if clock() > turn_ends:
                await asyncio.sleep(0)  # the lanes share this loop: let a read through
                turn_ends = clock() + SEND_TURN_S
            snapshot = "pending" if row.get("snapshot_sha256") else None
            payload = encode(access_or_audit(row, source, snapshot))
            try:
                publish(topic, payload, qos=1,
                        on_acked=partial(self._pubacked_one, row["event_id"]) if broker
                        else None)
            except SyncError:
                continue  # still in flight in the outbox: sent again when it falls due
            self.published += 1

    def _pubacked_one(self, event_id: str) -> None:
        # Broker mode: PUBACKs arrive in bursts; the outbox hears of them once per burst.
        if not self._pubacked:
            asyncio.get_running_loop().call_soon(self._pubacked_flush)
        self._pubacked.append(event_id)

    def _pubacked_flush(self) -> None:
        ids, self._pubacked = self._pubacked, []
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
