"""Read coalescing: repeated reads of one vehicle within a window become one event.

A camera reads a waiting car many times, often with small OCR differences
(AB123C, A8123C, AB12C). The lane must decide once, may re-decide when a
clearly better read arrives, and must not journal every repeat.

`Coalescer.offer(read, now)` classifies each read:

* NEW: the first read of a vehicle in this lane's window; decide and act.
* UPDATE: a read of a vehicle already seen whose confidence beats every read
  so far, or a different but near text (same OCR-confusion key, or one edit
  away) at least as confident as the best so far. `Offer.read` is then the
  best read of the window; the lane may re-decide on it (new → update, as
  Axis and most ANPR cameras report).
* DUPLICATE: nothing new; drop it (counted).

Vehicles are keyed per lane (access_point), credential kind and group (the lane
keeps reads travelling against it apart from the others), so two cars in two lanes
never suppress each other, and a tag never merges with a plate.

A read with no plate in it (text "": a vehicle seen but not read) cannot be told
apart from another unread vehicle, so unread reads of one source are one vehicle
for `window_s` from the first of them: a fixed window, not a sliding one, so a
camera reporting unread cars all day still gives one event per window, never one
event forever.
Tags group only on exactly equal numbers: a tag one digit off is another card.
The window slides: it ends `window_s` after the vehicle's latest read, so a
car that sits in view stays one event. Memory is bounded: expired vehicles
are evicted on every offer, and a per-lane cap evicts the lane's least recently
seen vehicle (per lane, so a flood in one lane cannot evict another's car).

Pure: no clock, no IO; pass `now` (monotonic seconds).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from gated.errors import PayloadError
from gated.model import CredentialKind, PlateRead
from gated.plates import confusion_key, distance, normalise

__all__ = ["Coalescer", "Offer", "OfferKind"]


class OfferKind(StrEnum):
    """What the lane should do with an offered read."""

    NEW = "new"  # decide and act
    UPDATE = "update"  # a better read of a vehicle already seen: the lane may re-decide
    DUPLICATE = "duplicate"  # drop (counted)


@dataclass(frozen=True, slots=True)
class Offer:
    """The verdict on one read, the read to act on, and which vehicle it belongs to."""

    NEW: ClassVar[OfferKind] = OfferKind.NEW
    UPDATE: ClassVar[OfferKind] = OfferKind.UPDATE
    DUPLICATE: ClassVar[OfferKind] = OfferKind.DUPLICATE

    kind: OfferKind
    read: PlateRead  # NEW: the offered read; UPDATE: the best read so far (= the offered one)
    normalised: str  # normalised text of `read` ("" when the text could not be normalised)
    key: str  # the vehicle: equal for NEW and its UPDATEs/DUPLICATEs, unique per window
    sightings: int  # reads of this vehicle in the current window, this one included
    first_seen: float  # `now` of the read that opened this vehicle's window


def _rank(confidence: float | None) -> float:
    """Order confidences; none, NaN or out of range rank below any valid value.

    A NaN must not stick as "best": every later comparison with it is false, so a
    good read after a garbled one could never update it.
    """
    if confidence is None or not 0.0 <= confidence <= 1.0:
        return -1.0
    return confidence


@dataclass(slots=True)
class _Vehicle:
    """One vehicle (or card) seen in a lane within the current window."""

    key: str
    best: PlateRead
    best_norm: str
    first_seen: float
    last_seen: float
    sightings: int = 1
    variants: set[str] = field(default_factory=set)  # normalised texts seen
    keys: set[str] = field(default_factory=set)  # their confusion keys


class Coalescer:
    """Groups repeated reads per lane into NEW / UPDATE / DUPLICATE; pure and bounded."""

    def __init__(
        self,
        window_s: float,
        *,
        max_per_lane: int = 64,
        max_variants: int = 8,
    ) -> None:
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        if max_per_lane < 1 or max_variants < 1:
            raise ValueError("max_per_lane and max_variants must be >= 1")
        self._window = window_s
        self._max_per_lane = max_per_lane
        # Caps how many texts one vehicle can collect, and so how often a flapping
        # read can ask the lane to re-decide.
        self._max_variants = max_variants
        self._lanes: dict[tuple[str, CredentialKind, str], list[_Vehicle]] = {}
        # unread vehicles: (lane, source, group) → the one open unread window
        self._unread: dict[tuple[str, str, str], _Vehicle] = {}
        self._count = 0
        self._serial = 0  # numbers vehicles, so keys are never reused
        self.counts: Counter[str] = Counter()  # verdicts and evictions, for /metrics

    def __len__(self) -> int:
        """Vehicles currently remembered, over all lanes."""
        return self._count

    def offer(self, read: PlateRead, now: float, group: str = "") -> Offer:
        """Classify one read received at monotonic time `now` (within its lane's `group`)."""
        self._expire(now)
        try:
            norm = normalise(read.text)
        except PayloadError:
            norm = ""
        if self._window <= 0:
            # Coalescing is off: pass it through, remember nothing.
            return self._count_as(Offer(OfferKind.NEW, read, norm, self._next_key(read), 1, now))
        if not norm:
            return self._count_as(self._offer_unread(read, now, group))
        lane_key = (read.access_point, read.kind, group)
        vehicles = self._lanes.setdefault(lane_key, [])
        vehicle = self._find(vehicles, norm, read.kind)
        if vehicle is None:
            vehicle = self._remember(vehicles, read, norm, now)
            return self._count_as(Offer(OfferKind.NEW, read, norm, vehicle.key, 1, now))
        vehicle.last_seen = now
        vehicle.sightings += 1
        is_variant = norm not in vehicle.variants
        if is_variant and len(vehicle.variants) < self._max_variants:
            vehicle.variants.add(norm)
            vehicle.keys.add(confusion_key(norm))
        else:
            is_variant = False  # cap reached: no more re-decisions for new spellings
        gain = _rank(read.confidence) - _rank(vehicle.best.confidence)
        if gain > 0 or (is_variant and gain == 0):
            vehicle.best, vehicle.best_norm = read, norm
            kind = OfferKind.UPDATE
        else:
            kind = OfferKind.DUPLICATE
        offer = Offer(
            kind,
            vehicle.best if kind is OfferKind.UPDATE else read,
            vehicle.best_norm if kind is OfferKind.UPDATE else norm,
            vehicle.key,
            vehicle.sightings,
            vehicle.first_seen,
        )
        return self._count_as(offer)

    def _offer_unread(self, read: PlateRead, now: float, group: str) -> Offer:
        """An unread vehicle: one per source for a fixed window from its first read."""
        key = (read.access_point, read.source, group)
        vehicle = self._unread.get(key)
        if vehicle is not None:  # still in its window: _expire() has just dropped ended ones
            vehicle.last_seen = now
            vehicle.sightings += 1
            return Offer(
                OfferKind.DUPLICATE, read, "", vehicle.key, vehicle.sightings, vehicle.first_seen
            )
        vehicle = _Vehicle(self._next_key(read), read, "", now, now)
        self._unread[key] = vehicle
        self._count += 1
        return Offer(OfferKind.NEW, read, "", vehicle.key, 1, now)

    def _find(self, vehicles: list[_Vehicle], norm: str, kind: CredentialKind) -> _Vehicle | None:
        """The vehicle this text belongs to: an exact match first, then the most recent near one."""
        near: _Vehicle | None = None
        key = confusion_key(norm)
        for vehicle in vehicles:
            if norm in vehicle.variants:
                return vehicle
            if kind is CredentialKind.TAG:
                continue
            if near is not None and near.last_seen >= vehicle.last_seen:
                continue
            if key in vehicle.keys or any(
                distance(norm, v, 1) is not None for v in vehicle.variants
            ):
                near = vehicle
        return near

    def _next_key(self, read: PlateRead) -> str:
        self._serial += 1
        return f"{read.access_point}/{read.kind.value}/{self._serial}"

    def _remember(
        self, vehicles: list[_Vehicle], read: PlateRead, norm: str, now: float
    ) -> _Vehicle:
        if len(vehicles) >= self._max_per_lane:
            oldest = min(range(len(vehicles)), key=lambda i: vehicles[i].last_seen)
            del vehicles[oldest]
            self._count -= 1
            self.counts["evicted"] += 1
        vehicle = _Vehicle(
            key=self._next_key(read),
            best=read,
            best_norm=norm,
            first_seen=now,
            last_seen=now,
            variants={norm},
            keys={confusion_key(norm)},
        )
        vehicles.append(vehicle)
        self._count += 1
        return vehicle

    def _expire(self, now: float) -> None:
        """Forget every vehicle whose window has ended (all lanes: memory stays bounded)."""
        for lane_key in list(self._lanes):
            vehicles = self._lanes[lane_key]
            kept = [v for v in vehicles if now - v.last_seen <= self._window]
            dropped = len(vehicles) - len(kept)
            if dropped:
                self._count -= dropped
                self.counts["expired"] += dropped
            if kept:
                self._lanes[lane_key] = kept
            else:
                del self._lanes[lane_key]
        for key in [k for k, v in self._unread.items() if now - v.first_seen > self._window]:
            del self._unread[key]
            self._count -= 1
            self.counts["expired"] += 1

    def _count_as(self, offer: Offer) -> Offer:
        self.counts[offer.kind.value] += 1
        return offer
