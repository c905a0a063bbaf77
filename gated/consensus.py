"""Multi-frame consensus: a plate is accepted only after enough reads of one passage agree.

A plate read from a badge, a sticker or a poster is the false read users of plate
gates report most. One such read is rarely repeated; a real plate is read again and
again while the car passes. So a source can be asked to agree with itself before its
reads reach the lane's decision:

* Reads of one plate by one source in one lane within `window_s` of the first of
  them are one **passage** (a fixed window, so a car parked in view gives one passage
  per window, never one forever). "One plate" is the fuzzy equality the coalescer
  uses (`gated.plates`: same text, same OCR-confusion key, or one edit apart); a
  different text is a passage of its own, so a second car's lone read is never
  swallowed by the first car's agreement.
* A group is **accepted** once `reads` of its reads have arrived, or at once when a
  single read is at or above `unless_confidence`. The accepted read is the group's
  most often read text (ties: the more confident), at its most confident read; it
  carries how many reads agreed and the candidates: the passage's other spellings and
  the source's other readings open at the time (a badge read beside the plate).
* Until then reads are **held**. Reads of a group already accepted pass straight on
  (the coalescer merges them). A passage that ends with no accepted group is
  reported by `expire()` as **unagreed**, with its best read, so the lane journals it
  (denied, reason `no_consensus`, with its picture): nothing is dropped silently.
* A retry of a read already counted (same text and same capture time, as a camera
  resending after a timeout) is not a second agreeing read.

`reads = 1` (the default) turns consensus off for a source: every read passes
through and nothing is remembered, exactly as before consensus existed.

Memory is bounded: passages per lane and spellings per passage are capped; a
passage evicted by the cap ends early and is reported like any other.
Pure: no clock, no IO; pass `now` (monotonic seconds).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from gated.errors import PayloadError
from gated.model import PlateRead
from gated.plates import confusion_key, distance, edits, normalise

__all__ = [
    "Agreement",
    "Candidate",
    "Consensus",
    "ConsensusRule",
    "Ended",
    "Verdict",
    "VerdictKind",
]

MAX_PASSAGES_PER_LANE = 16
MAX_TEXTS = 8  # spellings kept per group
MAX_CANDIDATES = 8  # candidates an accepted or unagreed read carries


@dataclass(frozen=True, slots=True)
class ConsensusRule:
    """One source's consensus settings (its config's `consensus` table)."""

    reads: int = 1  # agreeing reads needed; 1: consensus off
    unless_confidence: float | None = None  # a single read at/above this is enough
    window_s: float = 4.0  # how long one passage lasts, from its first read

    @property
    def enabled(self) -> bool:
        """True when reads must agree before they reach the decision."""
        return self.reads > 1

    @classmethod
    def of(cls, cfg: object) -> ConsensusRule:
        """The rule of a config section with reads, unless_confidence and window_s."""
        return cls(
            reads=getattr(cfg, "reads"),  # noqa: B009 - any Struct with these fields
            unless_confidence=getattr(cfg, "unless_confidence"),  # noqa: B009
            window_s=getattr(cfg, "window_s"),  # noqa: B009
        )


OFF = ConsensusRule()


class VerdictKind(StrEnum):
    """What the lane does with an offered read."""

    PASS = "pass"  # consensus off, or the read's group is already accepted: on to coalescing
    ACCEPT = "accept"  # this read completed an agreement: decide `Verdict.read`
    HOLD = "hold"  # wait for agreement (or the passage's end)


@dataclass(frozen=True, slots=True)
class Candidate:
    """Another reading of the same passage: its text, how often, how confident at best."""

    text: str  # normalised
    reads: int
    confidence: float | None


@dataclass(frozen=True, slots=True)
class Agreement:
    """How a passage's read was agreed (or, when unagreed, how far it got)."""

    reads: int  # reads of the chosen group (repeats of one read not counted)
    of: int  # reads of the whole passage
    required: int  # the rule's `reads`
    by: str  # "reads", "confidence" or "none" (unagreed)
    candidates: tuple[Candidate, ...] = ()  # the passage's other readings, most read first


    def metadata(self, chosen: str) -> dict[str, object]:
        """The agreement as a journal row's metadata: counts, and candidates without their text.

        Plate text is personal data and lives only in the row's erasable column; metadata
        is hashed and never erased. So a candidate is described by how it differs from
        the chosen plate (as a match's edits are), and not at all beyond two edits.
        """
        candidates: list[dict[str, object]] = []
        for c in self.candidates:
            gap = distance(c.text, chosen, 2)
            entry: dict[str, object] = {"reads": c.reads, "confidence": c.confidence,
                                        "distance": gap}
            if gap is not None:
                entry["edits"] = [
                    {"op": e.op, "position": e.position, "read": e.read, "stored": e.stored}
                    for e in edits(c.text, chosen)
                ]
            candidates.append(entry)
        return {"reads": self.reads, "of": self.of, "required": self.required, "by": self.by,
                "candidates": candidates}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on one read."""

    kind: VerdictKind
    read: PlateRead  # ACCEPT: the agreed best read; otherwise the offered read
    passage: str  # the passage it belongs to ("" when consensus is off)
    agreement: Agreement | None = None  # ACCEPT only


@dataclass(frozen=True, slots=True)
class Ended:
    """A passage that has ended: unagreed (journal it) or agreed (its held reads merge)."""

    passage: str
    agreed: bool
    read: PlateRead  # the best read of the passage (unagreed: what the row records)
    agreement: Agreement


def _rank(confidence: float | None) -> float:
    """Confidence for ordering; none, NaN or out of range rank below any valid value."""
    if confidence is None or not 0.0 <= confidence <= 1.0:
        return -1.0
    return confidence


@dataclass(slots=True)
class _Group:
    """The reads of one plate: its spellings, their counts and best reads."""

    texts: Counter[str] = field(default_factory=Counter)
    keys: set[str] = field(default_factory=set)
    best: dict[str, PlateRead] = field(default_factory=dict)  # per spelling
    seen: set[tuple[str, float]] = field(default_factory=set)  # (text, capture time) counted
    reads: int = 0
    accepted: bool = False

    def matches(self, norm: str) -> bool:
        if norm in self.texts:
            return True
        if confusion_key(norm) in self.keys:
            return True
        return any(distance(norm, t, 1) is not None for t in self.texts)

    def add(self, read: PlateRead, norm: str) -> bool:
        """Count one read; False when it repeats a read already counted."""
        captured = read.captured_at
        if isinstance(captured, int | float):
            mark = (norm, float(captured))
            if mark in self.seen:
                return False
            if len(self.seen) < 64:
                self.seen.add(mark)
        if norm not in self.texts and len(self.texts) >= MAX_TEXTS:
            norm = self.texts.most_common(1)[0][0]  # cap: count it for the leading spelling
        else:
            kept = self.best.get(norm)
            if kept is None or _rank(read.confidence) > _rank(kept.confidence):
                self.best[norm] = read
        self.texts[norm] += 1
        self.keys.add(confusion_key(norm))
        self.reads += 1
        return True

    def choice(self) -> tuple[str, PlateRead]:
        """The most often read spelling (ties: the more confident) and its best read."""
        text = max(self.texts, key=lambda t: (self.texts[t], _rank(self.best[t].confidence)))
        return text, self.best[text]


@dataclass(slots=True)
class _Passage:
    """One plate's passage past one source: a group of fuzzy-equal reads and its window."""

    key: str
    first_seen: float
    window_s: float
    required: int
    group: _Group = field(default_factory=_Group)


def _journal_rank(confidence: float | None) -> float | None:
    return confidence if _rank(confidence) >= 0 else None


class Consensus:
    """Holds reads per lane and source until they agree; pure and bounded."""

    def __init__(self, *, max_passages_per_lane: int = MAX_PASSAGES_PER_LANE) -> None:
        if max_passages_per_lane < 1:
            raise ValueError("max_passages_per_lane must be >= 1")
        self._max = max_passages_per_lane
        # (lane, source, kind) → the open passages of that source (one per plate)
        self._open: dict[tuple[str, str, str], list[_Passage]] = {}
        self._ended: list[Ended] = []  # evicted early, reported by the next expire()
        self._serial = 0
        self.counts: Counter[str] = Counter()  # held, accepted, repeats, unagreed … for /metrics

    def __len__(self) -> int:
        """Open passages over all lanes."""
        return sum(len(ps) for ps in self._open.values())

    def offer(self, read: PlateRead, rule: ConsensusRule, now: float) -> Verdict:
        """Classify one read received at monotonic `now` under its source's rule."""
        if not rule.enabled:
            return Verdict(VerdictKind.PASS, read, "")
        try:
            norm = normalise(read.text)
        except PayloadError:
            norm = ""
        if not norm:  # unread vehicles are the ingest's business, never agreed on
            return Verdict(VerdictKind.PASS, read, "")
        self._expire(now)
        slot = (read.access_point, read.source, read.kind.value)
        passages = self._open.setdefault(slot, [])
        passage = next((p for p in passages if p.group.matches(norm)), None)
        if passage is not None and passage.group.accepted:
            self.counts["passed"] += 1
            return Verdict(VerdictKind.PASS, read, passage.key)
        if passage is None:
            passage = self._start(slot, rule, now)
        group = passage.group
        if not group.add(read, norm):
            self.counts["repeats"] += 1
            return Verdict(VerdictKind.HOLD, read, passage.key)
        confident = (
            rule.unless_confidence is not None and _rank(read.confidence) >= rule.unless_confidence
        )
        if confident or group.reads >= rule.reads:
            group.accepted = True
            text, best = group.choice()
            if confident and _rank(read.confidence) >= _rank(best.confidence):
                best = read  # the read that was enough by itself is the one decided
                text = norm if norm in group.texts else text
            agreement = self._agreement(slot, passage, text, by=(
                "confidence" if confident and group.reads < rule.reads else "reads"))
            self.counts["accepted"] += 1
            return Verdict(VerdictKind.ACCEPT, best, passage.key, agreement)
        self.counts["held"] += 1
        return Verdict(VerdictKind.HOLD, read, passage.key)

    def expire(self, now: float) -> list[Ended]:
        """Every passage whose window has ended by `now` (and any evicted early), oldest first."""
        self._expire(now)
        ended, self._ended = self._ended, []
        return ended

    def next_deadline(self) -> float | None:
        """The monotonic time at which the next open passage ends (None: none open)."""
        ends = [p.first_seen + p.window_s for ps in self._open.values() for p in ps]
        return min(ends) if ends else None

    def _expire(self, now: float) -> None:
        for slot in list(self._open):
            for passage in [p for p in self._open[slot] if now - p.first_seen > p.window_s]:
                self._end(slot, passage)
            if not self._open[slot]:
                del self._open[slot]

    def _start(self, slot: tuple[str, str, str], rule: ConsensusRule, now: float) -> _Passage:
        in_lane = [(s, p) for s, ps in self._open.items() if s[0] == slot[0] for p in ps]
        if len(in_lane) >= self._max:
            oldest = min(in_lane, key=lambda sp: sp[1].first_seen)
            self.counts["evicted"] += 1
            self._end(*oldest)
        self._serial += 1
        passage = _Passage(f"{slot[0]}/{slot[1]}/{self._serial}", now, rule.window_s, rule.reads)
        self._open.setdefault(slot, []).append(passage)
        return passage

    def _agreement(self, slot: tuple[str, str, str], passage: _Passage, chosen: str,
                   by: str) -> Agreement:
        """The passage's counts, and as candidates its other spellings and the source's other
        readings open at the same time (a badge seen beside the plate)."""
        others = [p for p in self._open.get(slot, []) if p is not passage]
        candidates = [
            Candidate(text, p.group.texts[text], _journal_rank(p.group.best[text].confidence))
            for p in (passage, *others)
            for text in p.group.texts
            if text != chosen
        ]
        candidates.sort(key=lambda c: (-c.reads, -_rank(c.confidence), c.text))
        return Agreement(
            reads=passage.group.reads,
            of=passage.group.reads + sum(p.group.reads for p in others),
            required=passage.required,
            by=by,
            candidates=tuple(candidates[:MAX_CANDIDATES]),
        )

    def _end(self, slot: tuple[str, str, str], passage: _Passage) -> None:
        self._open[slot].remove(passage)
        group = passage.group
        if not group.texts:
            return
        text, best = group.choice()
        agreement = self._agreement(slot, passage, text, by="reads" if group.accepted else "none")
        if not group.accepted:
            self.counts["unagreed"] += 1
        self._ended.append(Ended(passage.key, group.accepted, best, agreement))
