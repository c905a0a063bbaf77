"""MqttLink: one paho-mqtt 2.x client per broker connection, bridged into asyncio at one seam.

It owns the connection's whole life: connect, notice the loss, reconnect with a
capped, jittered back-off from gated.backoff (seconds, not minutes: a gate must
not stay blind long after its broker returns), restore every subscription on
each connect, hand messages to the event loop, publish with an awaitable
completion (PUBACK for QoS 1), TLS and credentials, and count what happened for
health and metrics. Consumers (the Frigate source now, the upstream sync next)
register handlers and never see paho.

paho runs one network thread per connection (`loop_forever` with
`reconnect_on_failure=False`, so paho's own 1-120 s reconnect ladder never
runs); every callback crosses into asyncio through `_to_loop`, the only place
that calls `call_soon_threadsafe`. Only gated.model, gated.config, gated.errors
and gated.backoff are imported, so both gated.hardware and gated.sync may use it.
Speaks MQTT 5 (Mosquitto 1.6+, EMQX, HiveMQ …), for clean start and session expiry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gated.backoff import Backoff
from gated.config import MqttConfig
from gated.errors import ConfigError, SyncError

__all__ = ["LinkStats", "MqttLink", "MqttMessage", "Will", "tls_context"]

log = logging.getLogger(__name__)

# Messages handed to the event loop and not yet handled; beyond this a flood from the
# broker is dropped (counted) instead of growing memory without bound.
MAX_PENDING_MESSAGES = 10_000
MALFORMED_LOG_EVERY_S = 60.0  # at most one "malformed" log line per topic per minute


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One received message, as the broker delivered it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool  # set when the broker re-sent a retained message (on (re)subscribe)


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: what the broker publishes for us when the connection is lost."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


Handler = Callable[[MqttMessage], None]
StateCallback = Callable[[bool, str], None]


@dataclass(slots=True)
class LinkStats:
    """What the link counts; read by health and metrics (event loop thread only)."""

    connected: bool = False
    connects: int = 0  # successful CONNACKs
    reconnects: int = 0  # successful connects after the first
    disconnects: int = 0  # established connections lost
    connect_failures: int = 0  # attempts that did not reach a successful CONNACK
    overflow: int = 0  # messages dropped because the loop fell MAX_PENDING_MESSAGES behind
    messages: Counter[str] = field(default_factory=Counter)  # by subscription filter
    malformed: Counter[str] = field(default_factory=Counter)  # by subscription filter
    dropped: Counter[str] = field(default_factory=Counter)  # dropped by the consumer, by reason
    detail: str = "not connected yet"
    # Recent reconnect delays (seconds), for the operator and for tests of the cap.
    delays: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    # Seconds from a successful connect to the broker acknowledging every subscription.
    last_resubscribe_s: float | None = None


class MqttLink:
    """One broker connection shared by the handlers subscribed through it."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        *,
        name: str = "mqtt",
        clean_start: bool = True,
        session_expiry_s: int = 0,
        on_state: StateCallback | None = None,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        will: Will | None = None,
        max_inflight: int = 20,
    ) -> None:
        self.cfg = cfg
        self.will = will  # set at every connect: the broker publishes it if we vanish
        # QoS 1 messages on the wire awaiting PUBACK (paho's default is 20); the upstream
        # sync raises it to its window so a round trip does not cap its throughput.
        self.max_inflight = max_inflight
        self.name = name
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.stats = LinkStats()
        self.subscribed = asyncio.Event()  # set while every subscription is acknowledged
        self._on_state = on_state
        self._rng = rng
        self._monotonic = monotonic
        self._subscriptions: dict[str, tuple[int, list[Handler]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._stopping = threading.Event()
        self._pending = 0  # messages scheduled on the loop and not yet handled
        self._pending_lock = threading.Lock()
        self._acks: dict[int, asyncio.Future[None]] = {}  # awaited publishes by mid
        self._on_acked: dict[int, Callable[[], None]] = {}  # publish_nowait callbacks by mid
        # PUBACKs cross from paho's thread in batches: the network thread appends mids
        # here and schedules one hand-over while none is pending (a drain of thousands of
        # messages a second must not cost one cross-thread wake-up each).
        self._pubacks: deque[int] = deque()
        self._pubacks_lock = threading.Lock()
        self._pubacks_scheduled = False
        self._subscribe_mid: int | None = None
        self._connected_at = 0.0
        self._malformed_logged: dict[str, tuple[float, int]] = {}
        # Paho thread only: did this attempt get a CONNACK, and why did its socket close.
        self._accepted = False
        self._closed_by = ""

    # --- what consumers call (event loop thread) -------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Deliver messages matching topic_filter to handler; renewed on every connect."""
        qos_now, handlers = self._subscriptions.get(topic_filter, (qos, []))
        handlers.append(handler)
        self._subscriptions[topic_filter] = (max(qos_now, qos), handlers)
        client = self._client
        if client is not None and self.stats.connected:
            self.subscribed.clear()
            self._subscribe_mid = client.subscribe(topic_filter, max(qos_now, qos))[1]

    async def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and wait for completion: the PUBACK for QoS 1, the write for QoS 0.

        A QoS 1 message published while the link is down waits in paho's queue and
        is sent after the reconnect. Raises SyncError when paho refuses the message
        or the link is closed before the broker acknowledged it. A PUBACK means the
        broker has it, not that anyone stored it (see docs/design.md, invariant 3).
        """
        mid = self._hand_to_paho(topic, payload, qos, retain)
        assert self._loop is not None
        # Registered before any await: the acknowledgement is handled on this same loop
        # (through _to_loop), so it can never be looked up before this line ran.
        future: asyncio.Future[None] = self._loop.create_future()
        self._acks[mid] = future
        try:
            await future
        finally:
            self._acks.pop(mid, None)

    def publish_nowait(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
        on_acked: Callable[[], None] | None = None,
    ) -> int:
        """Hand a message to paho without waiting; returns its mid.

        For senders that do not need each PUBACK (the upstream sync waits for the
        service's own ack) or that take it as a callback, `on_acked`, called on the
        event loop when the broker acknowledges it (QoS 1) and never if the link closes
        first. A QoS 1 message published while the link is down waits in paho's queue.
        Raises SyncError like publish().
        """
        mid = self._hand_to_paho(topic, payload, qos, retain)
        if on_acked is not None:
            self._on_acked[mid] = on_acked  # before any PUBACK can be handled (same loop)
        return mid

    def _hand_to_paho(self, topic: str, payload: bytes | str, qos: int, retain: bool) -> int:
        client = self._client
        if client is None or self._loop is None:
            raise SyncError(f"mqtt {self.name}: link is not running")
        if qos == 0 and not self.stats.connected:
            raise SyncError(f"mqtt {self.name}: not connected")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise SyncError(f"mqtt {self.name}: publish refused: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    def malformed(self, topic_filter: str, problem: str) -> None:
        """Count a message its consumer could not parse, and log it at a bounded rate."""
        self.stats.malformed[topic_filter] += 1
        now = self._monotonic()
        last, suppressed = self._malformed_logged.get(topic_filter, (float("-inf"), 0))
        if now - last < MALFORMED_LOG_EVERY_S:
            self._malformed_logged[topic_filter] = (last, suppressed + 1)
            return
        self._malformed_logged[topic_filter] = (now, 0)
        if suppressed:
            log.warning(
                "mqtt %s: dropped malformed message on %s: %s (%d more since the last report)",
                self.name,
                topic_filter,
                problem,
                suppressed,
            )
        else:
            log.warning(
                "mqtt %s: dropped malformed message on %s: %s", self.name, topic_filter, problem
            )

    # --- the service ----------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected (reconnecting with capped back-off) until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        client = self._make_client()
        self._client = client
        backoff = Backoff(
            initial=self.cfg.reconnect_min_s, maximum=self.cfg.reconnect_max_s, rng=self._rng
        )
        try:
            while True:
                was_up_at = await self._connection(client)
                if was_up_at is not None and self._monotonic() - was_up_at >= backoff.maximum:
                    backoff.reset()  # it held for a while: the next loss starts again quickly
                delay = backoff.next_delay()
                self.stats.delays.append(delay)
                await asyncio.sleep(delay)
        finally:
            self._stopping.set()
            self.subscribed.clear()
            self._set_state(False, "stopped")
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(SyncError(f"mqtt {self.name}: link closed"))
            self._acks.clear()
            self._on_acked.clear()

    async def _connection(self, client: mqtt.Client) -> float | None:
        """One connection attempt and its life, on a paho network thread; when it was up."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._connected_at = 0.0

        def body() -> None:
            try:
                self._connect_and_loop(client)
            finally:
                self._to_loop(_settle, done)

        thread = threading.Thread(target=body, name=f"mqtt-{self.name}", daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            if not done.done():  # cancelled: end the network loop, without blocking the loop
                self._stopping.set()
                client.disconnect()
                await asyncio.to_thread(thread.join, 10.0)
        return self._connected_at or None

    # --- paho network thread -----------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,  # the back-off here, not paho's, decides when
        )
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password or None)
        if self.cfg.tls:
            client.tls_set_context(tls_context(self.cfg))
        client.max_inflight_messages_set(self.max_inflight)
        if self.will is not None:
            client.will_set(
                self.will.topic, self.will.payload, qos=self.will.qos, retain=self.will.retain
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect_and_loop(self, client: mqtt.Client) -> None:
        """Connect (blocking: DNS, TCP, TLS) and run the network loop until the link ends."""
        if self._stopping.is_set():
            return
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        try:
            client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=self.clean_start,
                properties=properties,
            )
        except (OSError, ValueError, ssl.SSLError) as err:
            # No secret can be in here: paho's errors name the host and the OS reason.
            self._to_loop(self._attempt_failed, f"cannot connect: {err}")
            return
        if self._stopping.is_set():
            client.disconnect()
        self._accepted = False
        self._closed_by = ""
        client.loop_forever(timeout=0.5)
        if not self._accepted and not self._stopping.is_set():
            # TCP (and the TLS handshake as far as the client sees it) went through, but the
            # broker closed before any CONNACK: with TLS 1.3 a refused client certificate
            # looks like this. Said plainly, once, instead of a silent retry loop.
            self._to_loop(
                self._attempt_failed,
                "closed before the broker accepted the connection "
                f"({self._closed_by or 'no reason given'}); "
                "if it uses TLS client certificates, check tls_cert_file and its CA",
            )

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> bool:
        """The one seam from paho's thread into asyncio; False once the loop is closed."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown: nothing left to deliver to
            return False
        return True

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._accepted = True  # a CONNACK came, good or bad: its reason is reported below
        if reason.is_failure:
            client.disconnect()  # ends loop_forever; the back-off decides the next attempt
            self._to_loop(self._attempt_failed, f"broker refused: {reason}")
            return
        filters = [
            (topic, SubscribeOptions(qos=qos)) for topic, (qos, _) in self._subscriptions.items()
        ]
        mid = client.subscribe(filters)[1] if filters else None
        self._to_loop(self._connected, mid)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._closed_by = str(reason)
        self._to_loop(self._disconnected, f"disconnected: {reason}")

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        failed = [str(code) for code in codes if getattr(code, "is_failure", False)]
        self._to_loop(self._subscribe_acked, mid, failed)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._pubacks.append(mid)
        with self._pubacks_lock:
            if self._pubacks_scheduled:
                return  # the pending hand-over takes this mid too
            self._pubacks_scheduled = True
        if not self._to_loop(self._published):
            with self._pubacks_lock:
                self._pubacks_scheduled = False

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._pending_lock:
            if self._pending >= MAX_PENDING_MESSAGES:
                overflow = True
            else:
                overflow = False
                self._pending += 1
        if overflow:
            self._to_loop(self._overflowed)
            return
        received = MqttMessage(
            message.topic, bytes(message.payload), int(message.qos), bool(message.retain)
        )
        if not self._to_loop(self._deliver, received):
            with self._pending_lock:
                self._pending -= 1

    # --- event loop thread ---------------------------------------------------------------

    def _set_state(self, up: bool, detail: str) -> None:
        """Record the link state; log and report only when it changes."""
        changed = up != self.stats.connected
        new_detail = detail != self.stats.detail
        self.stats.connected = up
        self.stats.detail = detail
        if changed and up:
            log.info("mqtt %s: connected to %s:%s", self.name, self.cfg.host, self.cfg.port)
        elif changed and detail != "stopped":
            log.warning("mqtt %s: link down (%s); reconnecting", self.name, detail)
        if (changed or new_detail) and self._on_state is not None:
            self._on_state(up, detail)  # health shows why it is down, not only that it is

    def _connected(self, subscribe_mid: int | None) -> None:
        self._connected_at = self._monotonic()
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self._subscribe_mid = subscribe_mid
        if subscribe_mid is None:
            self.subscribed.set()
        self._set_state(True, "connected")

    def _attempt_failed(self, detail: str) -> None:
        self.stats.connect_failures += 1
        if detail != self.stats.detail:  # a new reason is said once, not on every retry
            log.warning("mqtt %s: %s", self.name, detail)
        self._set_state(False, detail)

    def _disconnected(self, detail: str) -> None:
        self.subscribed.clear()
        if self._stopping.is_set():  # our own disconnect at shutdown: no "link down"
            self._set_state(False, "stopped")
        elif self.stats.connected:  # an attempt that never got up keeps its own reason
            self.stats.disconnects += 1
            self._set_state(False, detail)

    def _subscribe_acked(self, mid: int, failed: list[str]) -> None:
        if failed:
            log.error("mqtt %s: broker refused a subscription: %s", self.name, ", ".join(failed))
            return
        if mid == self._subscribe_mid and self.stats.connected:
            self.stats.last_resubscribe_s = self._monotonic() - self._connected_at
            self.subscribed.set()

    def _published(self) -> None:
        # Cleared before draining: a mid appended after this line schedules a new call.
        with self._pubacks_lock:
            self._pubacks_scheduled = False
        pubacks = self._pubacks
        while pubacks:
            mid = pubacks.popleft()
            future = self._acks.get(mid)
            if future is not None:
                if not future.done():
                    future.set_result(None)
                continue
            callback = self._on_acked.pop(mid, None)
            if callback is not None:
                try:
                    callback()
                except Exception:  # one consumer's bug must not stop the others
                    log.exception("mqtt %s: PUBACK callback failed", self.name)

    def _overflowed(self) -> None:
        self.stats.overflow += 1
        if self.stats.overflow == 1 or self.stats.overflow % 1000 == 0:
            log.error(
                "mqtt %s: %d message(s) dropped: falling behind", self.name, self.stats.overflow
            )

    def _deliver(self, message: MqttMessage) -> None:
        with self._pending_lock:
            self._pending -= 1
        for topic_filter, (_, handlers) in self._subscriptions.items():
            if not mqtt.topic_matches_sub(topic_filter, message.topic):
                continue
            self.stats.messages[topic_filter] += 1
            for handler in handlers:
                try:
                    handler(message)
                except Exception:  # one consumer's bug must not stop the others
                    log.exception("mqtt %s: handler for %s failed", self.name, topic_filter)


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """The TLS context for a broker: its CA, our client certificate, the name checked.

    Built here rather than by paho's tls_set so the choices are ours and visible:
    certificate and host name verification always on (there is no "insecure" key: a
    gate that talks to whoever answers on the broker's address can be fed forged acks),
    TLS 1.2 at least. A file that cannot be loaded is a ConfigError naming its key.
    """
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.tls_ca_file or None)
    except (OSError, ssl.SSLError, ValueError) as err:
        raise ConfigError(f"mqtt.tls_ca_file: cannot load {cfg.tls_ca_file}: {err}") from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cfg.tls_cert_file:
        try:
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        except (OSError, ssl.SSLError, ValueError) as err:
            # Which of the two is wrong is not always knowable (a key that does not match
            # its certificate): name both, never the key's content.
            raise ConfigError(
                f"mqtt.tls_cert_file: cannot load {cfg.tls_cert_file} with its key "
                f"{cfg.tls_key_file}: {err}"
            ) from err
    return ctx


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
