"""Licence-plate reads from a Frigate NVR over MQTT (Frigate 0.16+ licence plate recognition).

Two Frigate topics carry plates (per Frigate's MQTT documentation):

* ``<prefix>/events``: ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``
  where the tracked object carries ``id``, ``camera``, ``label``, ``current_zones``,
  ``sub_label`` (``[name, score]`` for a known plate, or null),
  ``recognized_license_plate`` and ``recognized_license_plate_score``.
* ``<prefix>/tracked_object_update``: ``{"type": "lpr", "id", "camera", "name", "plate",
  "score", "timestamp"}`` (other types such as "description" or "face" are ignored).

Frigate republishes a tracked object on every update; FrigatePlates emits one
read per new or changed plate text of an object id, never the same text twice.
MQTT messages carry no JPEG, so reads have no snapshot (a lane's own camera
config provides one). Exercised against a real Mosquitto with messages built from
the documented formats; not against a running Frigate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gated.config import FrigateSourceConfig, MqttConfig
from gated.errors import PayloadError
from gated.hardware.base import Emit
from gated.hardware.threads import call_in_loop
from gated.model import PlateRead

__all__ = ["FrigatePlates", "FrigateSource"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024  # a Frigate event is ~2 kB (thumbnails are null since 0.14)
MAX_TRACKED_OBJECTS = 2048  # ids remembered for de-duplication; oldest forgotten first
MAX_PLATE_CHARS = 32

_KINDS = ("events", "tracked_object_update")


def _score(raw: Any) -> float | None:
    """A Frigate score as 0..1, None when absent; PayloadError when not a number."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PayloadError("score is not a number")
    if not 0.0 <= raw <= 1.0:
        raise PayloadError("score out of range")
    return round(float(raw), 4)


def _plate(raw: Any) -> tuple[str | None, float | None]:
    """(text, score-from-list) of a recognized_license_plate value (str, or [str, score])."""
    score = None
    if isinstance(raw, list) and raw:
        if len(raw) > 1:
            score = _score(raw[1])
        raw = raw[0]
    if raw is None or raw == "":
        return None, score
    if not isinstance(raw, str):
        raise PayloadError("plate is not a string")
    text = raw.strip()
    if len(text) > MAX_PLATE_CHARS or not text.isprintable():
        raise PayloadError("plate text too long or not printable")
    return (text or None), score


def _string(raw: Any, limit: int = 128) -> str | None:
    """A bounded string field, None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise PayloadError("expected a string field")
    return raw[:limit]


def _float_time(raw: Any) -> float | None:
    """An epoch time field, None when absent or not plausible."""
    if isinstance(raw, int | float) and not isinstance(raw, bool) and 0 < raw < 1e11:
        return float(raw)
    return None


class FrigatePlates:
    """Pure core: Frigate MQTT messages in, de-duplicated PlateReads out."""

    def __init__(self, sources: Sequence[tuple[FrigateSourceConfig, str]]) -> None:
        # (topic_prefix, frigate camera) -> [(source name, lane id)]
        self.routes: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for cfg, lane_id in sources:
            prefix = cfg.topic_prefix.rstrip("/")
            self.routes.setdefault((prefix, cfg.camera), []).append((cfg.name, lane_id))
        self._emitted: OrderedDict[str, set[str]] = OrderedDict()

    @property
    def topics(self) -> list[str]:
        """MQTT topics to subscribe to."""
        prefixes = sorted({prefix for prefix, _ in self.routes})
        return [f"{prefix}/{kind}" for prefix in prefixes for kind in _KINDS]

    def feed(self, topic: str, payload: bytes, now: float, mono: float) -> list[PlateRead]:
        """Reads for one message ([] when it carries no new plate); PayloadError when malformed."""
        prefix, _, kind = topic.rpartition("/")
        if kind not in _KINDS:
            return []
        if len(payload) > MAX_MESSAGE_BYTES:
            raise PayloadError("message too large")
        try:
            doc = msgspec.json.decode(payload)
        except msgspec.DecodeError as err:
            raise PayloadError(f"invalid JSON ({err})") from None
        if not isinstance(doc, dict):
            raise PayloadError("message is not a JSON object")
        if kind == "events":
            return self._event(prefix, doc, now, mono)
        return self._object_update(prefix, doc, now, mono)

    def _event(self, prefix: str, doc: dict[str, Any], now: float, mono: float) -> list[PlateRead]:
        kind = doc.get("type")
        after = doc.get("after")
        if kind not in ("new", "update", "end") or not isinstance(after, dict):
            raise PayloadError("event without type new/update/end or without 'after'")
        object_id = _string(after.get("id"))
        camera = _string(after.get("camera"))
        if not object_id or not camera:
            raise PayloadError("event object without id or camera")
        text, list_score = _plate(after.get("recognized_license_plate"))
        score = _score(after.get("recognized_license_plate_score"))
        extra: dict[str, Any] = {"frigate_id": object_id, "frigate_camera": camera}
        label = _string(after.get("label"))
        if label:
            extra["label"] = label
        zones = after.get("current_zones")
        if isinstance(zones, list):
            extra["zones"] = [str(z)[:64] for z in zones[:16]]
        sub_label = after.get("sub_label")
        if isinstance(sub_label, list) and sub_label and isinstance(sub_label[0], str):
            extra["name"] = sub_label[0][:128]  # the known plate's name in Frigate
        elif isinstance(sub_label, str):
            extra["name"] = sub_label[:128]
        read_at = _float_time(after.get("frame_time")) or now
        reads = self._reads(
            prefix, camera, object_id, text, score or list_score, read_at, mono, extra
        )
        if kind == "end":
            self._emitted.pop(object_id, None)  # the object is gone; free its memory
        return reads

    def _object_update(
        self, prefix: str, doc: dict[str, Any], now: float, mono: float
    ) -> list[PlateRead]:
        if doc.get("type") != "lpr":
            return []  # description, face, classification …: not ours
        object_id = _string(doc.get("id"))
        camera = _string(doc.get("camera"))
        if not object_id or not camera:
            raise PayloadError("lpr update without id or camera")
        text, _ = _plate(doc.get("plate"))
        extra: dict[str, Any] = {"frigate_id": object_id, "frigate_camera": camera}
        name = _string(doc.get("name"))
        if name:
            extra["name"] = name
        read_at = _float_time(doc.get("timestamp")) or now
        return self._reads(
            prefix, camera, object_id, text, _score(doc.get("score")), read_at, mono, extra
        )

    def _reads(
        self,
        prefix: str,
        camera: str,
        object_id: str,
        text: str | None,
        score: float | None,
        read_at: float,
        mono: float,
        extra: dict[str, Any],
    ) -> list[PlateRead]:
        routes = self.routes.get((prefix, camera))
        if text is None or not routes:
            return []
        key = text.upper().replace(" ", "")
        seen = self._emitted.get(object_id)
        if seen is None:
            seen = set()
            self._emitted[object_id] = seen
            while len(self._emitted) > MAX_TRACKED_OBJECTS:
                self._emitted.popitem(last=False)
        else:
            self._emitted.move_to_end(object_id)
        if key in seen:
            return []
        seen.add(key)
        return [
            PlateRead(
                access_point=lane_id,
                text=text,
                source=source,
                read_at=read_at,
                received_mono=mono,
                confidence=score,
                vendor="frigate",
                extra=dict(extra),
            )
            for source, lane_id in routes
        ]


class FrigateSource:
    """A PlateSource subscribing to Frigate's MQTT topics with paho-mqtt's network thread.

    paho reconnects by itself (1 s to 60 s back-off) and the subscriptions are
    renewed on every connect; nothing here blocks the event loop.
    """

    def __init__(
        self,
        mqtt_cfg: MqttConfig,
        sources: Sequence[tuple[FrigateSourceConfig, str]],
        *,
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = "frigate"
        self._cfg = mqtt_cfg
        self.plates = FrigatePlates(sources)
        # Not the configured client_id as is: the upstream sync connection may use
        # it, and a broker drops the older of two sessions with the same id.
        base = client_id or mqtt_cfg.client_id or f"gated-{uuid.uuid4().hex[:8]}"
        self.client_id = f"{base}-frigate"
        self._clock = clock
        self._monotonic = monotonic
        self.counters: dict[str, int] = dict.fromkeys(
            ("messages", "reads", "malformed", "connects", "disconnects"), 0
        )
        self.subscribed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emit: Emit | None = None
        self._logged: set[str] = set()
        self._link_up = False

    async def run(self, emit: Emit) -> None:
        """Receive plates until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._emit = emit
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True
        )
        if self._cfg.username:
            client.username_pw_set(self._cfg.username, self._cfg.password)
        if self._cfg.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive_s)
        client.loop_start()  # its thread connects, retries and reconnects
        try:
            await asyncio.Event().wait()
        finally:
            client.disconnect()
            client.loop_stop()
            self.subscribed.clear()

    # --- paho network thread: everything crosses into the loop through _to_loop ------

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """The one seam from paho's thread into asyncio."""
        loop = self._loop
        if loop is None:
            return
        call_in_loop(loop, fn, *args)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._to_loop(self._link_state, False, f"broker refused: {reason}")
            return
        topics = self.plates.topics
        if topics:
            client.subscribe([(topic, 1) for topic in topics])
        self._to_loop(self._link_state, True, "connected")

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._to_loop(self._link_state, False, f"disconnected: {reason}")

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        self._to_loop(self.subscribed.set)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._to_loop(self._handle, message.topic, bytes(message.payload))

    # --- event loop thread ------------------------------------------------------------

    def _link_state(self, up: bool, detail: str) -> None:
        """Log on state change only ("link down", then once "recovered")."""
        if up:
            self.counters["connects"] += 1
            if not self._link_up:
                log.info("frigate: %s to %s:%s", detail, self._cfg.host, self._cfg.port)
        else:
            self.subscribed.clear()
            if self._link_up:
                self.counters["disconnects"] += 1
                log.warning("frigate: link down (%s); paho reconnects", detail)
            elif detail.startswith("broker refused") and "refused" not in self._logged:
                self._logged.add("refused")
                log.warning("frigate: %s", detail)
        self._link_up = up

    def _handle(self, topic: str, payload: bytes) -> None:
        self.counters["messages"] += 1
        try:
            reads = self.plates.feed(topic, payload, self._clock(), self._monotonic())
        except PayloadError as err:
            self.counters["malformed"] += 1
            if topic not in self._logged:
                self._logged.add(topic)
                log.warning("frigate: dropped malformed message on %s: %s", topic, err)
            return
        assert self._emit is not None
        for read in reads:
            try:
                self._emit(read)
            except Exception:  # the daemon's problem; keep receiving
                log.exception("frigate: emit failed")
                continue
            self.counters["reads"] += 1
