"""Licence-plate reads from a Frigate NVR over MQTT (Frigate 0.16+ licence plate recognition).

Two Frigate topics carry plates (per Frigate's MQTT documentation):

* ``<prefix>/events``: ``{"type": "new"|"update"|"end", "before": {...}, "after": {...}}``
  where the tracked object carries ``id``, ``camera``, ``label``, ``frame_time``,
  ``current_zones``, ``sub_label`` (``[name, score]``: a known plate's or a face's name,
  or null), ``recognized_license_plate`` and ``recognized_license_plate_score``.
* ``<prefix>/tracked_object_update``: ``{"type": "lpr", "id", "camera", "name", "plate",
  "score", "timestamp"}`` (other types such as "description" or "face" are ignored).

What may reach a lane (docs/cameras.md, "Frigate"):

* Every read carries the message's own time (``frame_time`` / ``timestamp``) as
  ``captured_at`` and the MQTT retain flag as ``retained``: the lane journals an old
  or retained read as stale and never opens for it. Anyone who can publish or replay
  on the broker must not be able to open the gate with yesterday's message.
* Only objects of the source's ``labels`` (car, motorcycle, truck, bus by default):
  a plate on a person or a dog is dropped and counted. An ``lpr`` update carries no
  label; the object's label from ``events`` decides when it is known.
* A new text, or a higher score for the same text, of one object is a new read (the
  lane's coalescing decides again: 0.55 denied, then 0.93 allowed); the same text at
  the same or a lower score is a repeat and dropped.
* Object ids are remembered for OBJECT_MEMORY_S after their last message, ``end``
  included, so a late ``lpr`` update or a re-delivered ``end`` opens nothing; an
  ended object emits no more reads.
* Names (``sub_label``, the ``lpr`` update's ``name``) never leave this module: a
  face-recognition or known-plate name is personal data, and event metadata is not
  erasable. The read says only ``known_plate``.

MQTT messages carry no JPEG, so reads have no snapshot (a lane's own camera config
provides one). Exercised against a real Mosquitto with messages built from the
documented formats; not against a running Frigate.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gated.config import FrigateSourceConfig, MqttConfig
from gated.errors import PayloadError
from gated.hardware.base import Emit
from gated.model import PlateRead
from gated.mqttlink import LinkStats, MqttLink, MqttMessage, StateCallback

__all__ = ["FrigatePlates", "FrigateSource"]

MAX_MESSAGE_BYTES = 256 * 1024  # a Frigate event is ~2 kB (thumbnails are null since 0.14)
MAX_TRACKED_OBJECTS = 4096  # ids remembered; the least recently heard of is forgotten first
# How long an object id is remembered after its last message. Brokers re-deliver within
# seconds to a minute (QoS 1 retries, a client reconnecting); Frigate ends a car's object
# when it leaves the frame. Ten minutes outlasts both at ~100 bytes an object.
OBJECT_MEMORY_S = 600.0
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


@dataclass(slots=True)
class _Tracked:
    """What is remembered of one Frigate object id."""

    heard_mono: float  # monotonic time of its last message
    label: str | None = None
    ended: bool = False
    best: dict[str, float] = field(default_factory=dict)  # plate key -> best score emitted


@dataclass(frozen=True, slots=True)
class _Route:
    """A configured source: which lane gets the plates of which object labels."""

    source: str
    lane_id: str
    labels: frozenset[str]


class FrigatePlates:
    """Pure core: Frigate MQTT messages in, PlateReads of live vehicles out."""

    def __init__(self, sources: Sequence[tuple[FrigateSourceConfig, str]]) -> None:
        # (topic_prefix, frigate camera) -> routes
        self.routes: dict[tuple[str, str], list[_Route]] = {}
        for cfg, lane_id in sources:
            prefix = cfg.topic_prefix.rstrip("/")
            route = _Route(cfg.name, lane_id, frozenset(cfg.labels))
            self.routes.setdefault((prefix, cfg.camera), []).append(route)
        self.tracked: OrderedDict[str, _Tracked] = OrderedDict()  # least recently heard first
        self.dropped: Counter[str] = Counter()  # reads not emitted, by reason

    @property
    def topics(self) -> list[str]:
        """MQTT topics to subscribe to."""
        prefixes = sorted({prefix for prefix, _ in self.routes})
        return [f"{prefix}/{kind}" for prefix in prefixes for kind in _KINDS]

    def feed(
        self, topic: str, payload: bytes, now: float, mono: float, *, retained: bool = False
    ) -> list[PlateRead]:
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
        self._forget_old(mono)
        if kind == "events":
            return self._event(prefix, doc, now, mono, retained)
        return self._object_update(prefix, doc, now, mono, retained)

    def _forget_old(self, mono: float) -> None:
        """Drop ids not heard of for OBJECT_MEMORY_S (oldest first: the dict is in that order)."""
        while self.tracked:
            oldest = next(iter(self.tracked.values()))
            if mono - oldest.heard_mono < OBJECT_MEMORY_S:
                break
            self.tracked.popitem(last=False)

    def _track(self, object_id: str, mono: float) -> _Tracked:
        """The remembered state of an object id, marked as heard of now."""
        tracked = self.tracked.get(object_id)
        if tracked is None:
            tracked = _Tracked(mono)
            self.tracked[object_id] = tracked
            while len(self.tracked) > MAX_TRACKED_OBJECTS:
                self.tracked.popitem(last=False)
        else:
            tracked.heard_mono = mono
            self.tracked.move_to_end(object_id)
        return tracked

    def _event(
        self, prefix: str, doc: dict[str, Any], now: float, mono: float, retained: bool
    ) -> list[PlateRead]:
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
        label = _string(after.get("label"), 64)
        extra: dict[str, Any] = {"frigate_id": object_id, "frigate_camera": camera}
        if label:
            extra["label"] = label
        zones = after.get("current_zones")
        if isinstance(zones, list):
            extra["zones"] = [str(z)[:64] for z in zones[:16]]
        # sub_label is a known plate's or a recognised face's name: only whether there is one.
        extra["known_plate"] = bool(after.get("sub_label"))
        tracked = self._track(object_id, mono)
        if label:
            tracked.label = label
        if kind == "end":
            # The object has left; its plates were reported by its updates. A re-delivered
            # end, or an lpr update arriving after it, must not open the gate again.
            if tracked.ended:
                self.dropped["ended"] += 1
            tracked.ended = True
            return []
        read = _Read(
            text, score if score is not None else list_score, _float_time(after.get("frame_time"))
        )
        return self._reads(prefix, camera, tracked, read, now, mono, retained, extra)

    def _object_update(
        self, prefix: str, doc: dict[str, Any], now: float, mono: float, retained: bool
    ) -> list[PlateRead]:
        if doc.get("type") != "lpr":
            return []  # description, face, classification …: not ours
        object_id = _string(doc.get("id"))
        camera = _string(doc.get("camera"))
        if not object_id or not camera:
            raise PayloadError("lpr update without id or camera")
        text, _ = _plate(doc.get("plate"))
        extra: dict[str, Any] = {
            "frigate_id": object_id,
            "frigate_camera": camera,
            "known_plate": bool(doc.get("name")),  # the name itself is personal data
        }
        tracked = self._track(object_id, mono)
        if tracked.label:
            extra["label"] = tracked.label
        read = _Read(text, _score(doc.get("score")), _float_time(doc.get("timestamp")))
        return self._reads(prefix, camera, tracked, read, now, mono, retained, extra)

    def _reads(
        self,
        prefix: str,
        camera: str,
        tracked: _Tracked,
        read: _Read,
        now: float,
        mono: float,
        retained: bool,
        extra: dict[str, Any],
    ) -> list[PlateRead]:
        routes = self.routes.get((prefix, camera))
        if read.text is None or not routes:
            return []
        if tracked.ended:
            self.dropped["ended"] += 1
            return []
        if tracked.label is not None:
            wanted = [r for r in routes if tracked.label in r.labels]
            if len(wanted) < len(routes):
                self.dropped["label"] += 1
            routes = wanted
            if not routes:
                return []
        key = read.text.upper().replace(" ", "")
        rank = -1.0 if read.score is None else read.score
        best = tracked.best.get(key)
        if best is not None and rank <= best:
            self.dropped["repeat"] += 1
            return []
        tracked.best[key] = rank
        if len(tracked.best) > 16:  # one object, many OCR variants: keep the newest few
            del tracked.best[next(iter(tracked.best))]
        return [
            PlateRead(
                access_point=route.lane_id,
                text=read.text,
                source=route.source,
                read_at=now,
                received_mono=mono,
                confidence=read.score,
                vendor="frigate",
                extra=dict(extra),
                captured_at=read.captured_at,
                retained=retained,
            )
            for route in routes
        ]


@dataclass(frozen=True, slots=True)
class _Read:
    """The plate part of one message."""

    text: str | None
    score: float | None
    captured_at: float | None


class FrigateSource:
    """A PlateSource on an MqttLink subscribed to Frigate's topics.

    The link reconnects with the [mqtt] back-off (capped at reconnect_max_s) and a
    clean session (docs/cameras.md says why not a persistent one); subscriptions are
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
        on_link_state: StateCallback | None = None,
    ) -> None:
        self.name = "frigate"
        self.plates = FrigatePlates(sources)
        # Not the configured client_id as is: the upstream sync connection may use
        # it, and a broker drops the older of two sessions with the same id.
        base = client_id or mqtt_cfg.client_id or f"gated-{uuid.uuid4().hex[:8]}"
        self.client_id = f"{base}-frigate"
        self._clock = clock
        self._monotonic = monotonic
        # Clean start, no session kept: Frigate publishes at QoS 0 by default (never
        # queued for an absent subscriber) and drops what it cannot send itself, while a
        # kept session would replay what was queued as old reads after an outage.
        self.link = MqttLink(
            mqtt_cfg, self.client_id, name="frigate", clean_start=True, on_state=on_link_state
        )
        # One counter: the core counts its drops where the metrics read the link's.
        self.link.stats.dropped = self.plates.dropped
        for topic in self.plates.topics:
            self.link.subscribe(topic, self._handle, qos=1)
        self.reads = 0
        self._emit: Emit | None = None

    @property
    def subscribed(self) -> Any:
        """An asyncio.Event set while every Frigate topic is subscribed."""
        return self.link.subscribed

    @property
    def stats(self) -> LinkStats:
        """The link's counters, with this source's drops by reason."""
        return self.link.stats

    @property
    def counters(self) -> dict[str, int]:
        """Flat counters: messages, reads, malformed, connects, disconnects and drops."""
        stats = self.link.stats
        return {
            "messages": sum(stats.messages.values()),
            "reads": self.reads,
            "malformed": sum(stats.malformed.values()),
            "connects": stats.connects,
            "disconnects": stats.disconnects,
            **{f"dropped_{reason}": n for reason, n in self.plates.dropped.items()},
        }

    async def run(self, emit: Emit) -> None:
        """Receive plates until cancelled."""
        self._emit = emit
        await self.link.run()

    def _handle(self, message: MqttMessage) -> None:
        """One message from the link (event loop thread)."""
        try:
            reads = self.plates.feed(
                message.topic,
                message.payload,
                self._clock(),
                self._monotonic(),
                retained=message.retain,
            )
        except PayloadError as err:
            self.link.malformed(message.topic, str(err))
            return
        assert self._emit is not None
        for read in reads:
            # The future is the journal's; Frigate cannot be told "taken", so nothing waits.
            self._emit(read)
            self.reads += 1
