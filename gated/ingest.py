"""What a lane makes of a read before deciding: plate hygiene, direction, staleness (pure).

Every source's read passes through `ingest()` once, in the lane, so one rule set
answers for every camera and reader:

* **Plate hygiene.** The text is cut down to the plate alphabet
  (`gated.plates.normalise`) and bounded in length; text with markup in it is no read.
  Text with no plate in it (empty, "unknown", punctuation, markup) is an *unread*
  vehicle: journaled as denied with reason `unread_plate` (its picture kept), or
  ignored when the source says so. The raw text never reaches the journal.
* **Direction.** What a camera-reported direction means is the source's choice
  (`camera_direction`, `direction_map`); the result is written to `read.direction`,
  and that one value is what the policy decides with, what the live anti-passback
  and pass-use state records, what the journal row says and what a restart rebuilds
  from. A read travelling against the lane is ignored, journaled as denied with
  reason `wrong_direction`, or decided in its own direction (`wrong_direction`).
* **Staleness.** A retained / re-delivered message, or (device clock synchronised)
  a capture older than `max_age_s`, is journaled with reason `stale_read` and never
  opens. A capture time further than `max_clock_skew_s` from a synchronised device
  clock is flagged `camera_clock_skew`.

Pure: no clock, no IO; pass `now` (device epoch seconds) and whether it is synchronised.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gated.errors import PayloadError
from gated.model import CredentialKind, Direction, PlateRead, Reason
from gated.plates import MAX_PLATE_LEN, MAX_TAG_LEN, normalise

__all__ = ["Ingested", "SourceRules", "Verdict", "clean_text", "ingest", "resolve_direction"]

# Raw values "in"/"out" mean themselves unless a source's direction_map says otherwise.
_PLAIN_DIRECTIONS: Mapping[str, Direction] = {"in": Direction.IN, "out": Direction.OUT}


class Verdict(StrEnum):
    """What the lane does with an ingested read."""

    DECIDE = "decide"  # coalesce, decide, maybe open
    STALE = "stale"  # journal as denied (stale_read); never opens
    UNREAD = "unread"  # journal as denied (unread_plate); never opens
    WRONG_DIRECTION = "wrong_direction"  # journal as denied (wrong_direction); never opens
    NO_CONSENSUS = "no_consensus"  # a passage whose reads never agreed: denied; never opens
    IGNORE = "ignore"  # not journaled (the source's config says so); counted

    @property
    def reason(self) -> Reason | None:
        """The decision reason a journaled, undecided verdict records."""
        return _REASONS.get(self)


_REASONS = {
    Verdict.STALE: Reason.STALE_READ,
    Verdict.UNREAD: Reason.UNREAD_PLATE,
    Verdict.WRONG_DIRECTION: Reason.WRONG_DIRECTION,
    Verdict.NO_CONSENSUS: Reason.NO_CONSENSUS,
}


@dataclass(frozen=True, slots=True)
class SourceRules:
    """How a lane treats one source's reads (the common fields of every source config)."""

    camera_direction: str = "use"  # "use" or "ignore"
    direction_map: Mapping[str, Direction] = field(default_factory=dict)
    wrong_direction: str = "journal"  # "ignore", "journal" or "decide"
    unread: str = "journal"  # "journal" or "ignore"
    max_age_s: float = 10.0  # 0: no age check
    max_clock_skew_s: float = 5.0

    @classmethod
    def of(cls, source: Any) -> SourceRules:
        """The rules of a source config (any Struct with the common source fields)."""
        return cls(
            camera_direction=source.camera_direction,
            direction_map=dict(source.direction_map),
            wrong_direction=source.wrong_direction,
            unread=source.unread,
            max_age_s=source.max_age_s,
            max_clock_skew_s=source.max_clock_skew_s,
        )


DEFAULT_RULES = SourceRules()


@dataclass(frozen=True, slots=True)
class Ingested:
    """A read made fit for the lane, and what the lane should do with it."""

    read: PlateRead  # text in the plate alphabet ("" when unread); direction resolved
    verdict: Verdict
    flags: tuple[str, ...] = ()  # journaled in the row's metadata flags
    camera_skew_s: float | None = None  # captured_at - now, when both clocks can be compared
    # How the source's reads of this passage agreed (gated.consensus), for the row's metadata.
    consensus: Mapping[str, Any] | None = None


def clean_text(text: object, kind: CredentialKind = CredentialKind.PLATE) -> str:
    """The read's text in the plate alphabet, or "" when it holds no plate (or tag)."""
    if not isinstance(text, str) or "<" in text or ">" in text:
        # No plate has angle brackets: markup is never a read, whatever letters it holds.
        return ""
    try:
        cleaned = normalise(text)
    except PayloadError:  # absurdly long: no plate is hidden in 10 kB of text
        return ""
    limit = MAX_TAG_LEN if kind == CredentialKind.TAG else MAX_PLATE_LEN
    return cleaned if len(cleaned) <= limit else ""


def resolve_direction(
    camera_direction: str | None, rules: SourceRules, lane_direction: Direction
) -> Direction:
    """The direction a read travels: the camera's mapped value when used, else the lane's."""
    if camera_direction is None or rules.camera_direction != "use":
        return lane_direction
    word = camera_direction.strip().lower()
    mapped = rules.direction_map.get(word)
    return mapped if mapped is not None else _PLAIN_DIRECTIONS.get(word, lane_direction)


def ingest(
    read: PlateRead,
    rules: SourceRules,
    lane_direction: Direction,
    now: float,
    clock_synced: bool,
) -> Ingested:
    """Clean, orient and date one read; the verdict says whether it may be decided."""
    flags: list[str] = []
    raw_direction = read.camera_direction
    if raw_direction is None and read.direction is not None:
        raw_direction = str(read.direction)  # a source not yet filling camera_direction
    direction = resolve_direction(raw_direction, rules, lane_direction)
    text = clean_text(read.text, read.kind)
    if text != read.text or direction != read.direction:
        read = dataclasses.replace(read, text=text, direction=direction)

    captured = read.captured_at
    skew: float | None = None
    stale = read.retained
    if read.retained:
        flags.append("retained")
    if captured is not None:
        if not isinstance(captured, int | float) or not math.isfinite(captured):
            flags.append("invalid_capture_time")
        elif not clock_synced:
            flags.append("capture_age_unchecked")  # the device clock cannot judge it
        else:
            skew = captured - now
            if abs(skew) > rules.max_clock_skew_s:
                flags.append("camera_clock_skew")
            if rules.max_age_s > 0 and -skew > rules.max_age_s:
                stale = True
                flags.append("capture_too_old")
    if stale:
        return Ingested(read, Verdict.STALE, tuple(flags), skew)

    if direction != lane_direction:
        flags.append("against_lane")
        if rules.wrong_direction == "ignore":
            return Ingested(read, Verdict.IGNORE, tuple(flags), skew)
        if rules.wrong_direction == "journal":
            return Ingested(read, Verdict.WRONG_DIRECTION, tuple(flags), skew)
    if not text:
        verdict = Verdict.IGNORE if rules.unread == "ignore" else Verdict.UNREAD
        return Ingested(read, verdict, tuple(flags), skew)
    return Ingested(read, Verdict.DECIDE, tuple(flags), skew)
