"""decide(read, access_point, rules, state, now) -> Decision: the access decision, pure.

No clock, no network, no writes: the caller passes `now` (epoch seconds) and a
PolicyState to read modes, anti-passback history and pass use counts from.
Reading the RuleIndex (its index and its cached entity getters over the
RuleSource) is the only other input. A RuleIndex built with vehicle facts (see
`gated.rules.index`) answers a resident's car from them: same checks, same order,
same Decision, no entity read; passes, tags and the deny list always use
entities. Schedule answers are kept per (schedule, time zone, minute) on the
RuleIndex, since the reads of one minute share them.

Order of checks, and why:

1. **Invalid read** (not a string, too long, nothing left after normalising):
   treated as an unknown plate with flag ``invalid_read``; nothing below can
   match it. The mode still applies (a held-open gate stays open).
2. **Deny list** (plates only): exact, confusion or fuzzy within
   ``deny_fuzzy_distance``, *whatever the confidence or the mode*. A deny
   list is for vehicles that must be stopped and reported; a blurred read of
   one is exactly the case it exists for, so it must not be filtered first.
3. **Mode**: ``lockdown`` denies every automated opening, exits included (a
   lockdown is also for keeping a vehicle in); guards and signed commands
   still open. ``hold_open`` allows with reason ``hold_open``. Both still
   look the read up and report what it matched (resident, vehicle, pass) so
   the journal says who came through.
4. **Confidence**: a read below ``min_confidence`` never opens by itself:
   ``low_confidence``, with the match it would have had.
   A read whose source reports no confidence (``None``: serial readers, RFID)
   is not gated, and gets flag ``no_confidence``; a NaN or out-of-range value
   counts as below the threshold.
5. **Residents**: vehicles (exact, confusion, fuzzy within
   ``resident_fuzzy_distance``) or tags (exact). Only the best tier of
   matches counts (an exact hit on a suspended car is not rescued by a fuzzy
   hit on another). A non-exact tier naming two different plates is
   ambiguous: ``needs_guard``. When ``plate_formats`` are configured and the
   read fits none, only an exact match may open; others need a guard.
6. **Visitor passes**: exact only, or confusion too when
   ``visitor_match = "confusion"``; any weaker hit on a valid pass is
   ``needs_guard``, never an automatic open.
7. Entity checks, in this order for each candidate: ``inactive`` (vehicle,
   tag, resident or a pass's host), ``not_permitted`` (access point),
   ``outside_schedule``; for passes ``pass_not_yet_valid``, ``pass_expired``,
   ``pass_used_up`` (uses count entries only, so a used-up pass still lets
   the visitor leave).
8. **Anti-passback** on an allowed decision: the same subject passing the same
   way again within ``anti_passback_reset_s`` is flagged (soft) or denied
   (hard). A last passage in the future (device clock stepped back) is not
   enforced and is flagged ``anti_passback_clock``.
9. Nothing matched: ``unknown_plate``.

**Clock.** Schedules and pass validity windows are judged on the time the
PolicyState's optional ``clock`` (a ClockView) gives: while the device clock is
synchronised, ``now``; while it is not but the daemon saw it synchronised
earlier in this boot, ``now`` corrected by the offset measured on the
monotonic clock (flag ``clock_estimated``); with no such time base, a
plausible clock is used as it is (the row's ``clock_unsynced`` says so), and a
clock that cannot be right (before this code existed: a Pi booted in 1970)
refuses every grant that needs a schedule and every pass window with reason
``clock_unsynced`` (fail closed) unless ``[policy] unsynced_clock = "wall"``.
Grants without a schedule, the deny list and modes never depend on the clock
(docs/operations.md, "The clock").

Residents and passes are weighed by match quality: the closest match (exact
before confusion before fuzzy) explains the read, whether it allows or not, so
a fuzzy resident hit never opens for a car whose exact visitor pass has
expired. At equal quality an allowing outcome wins, then residents.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gated.config import PolicyConfig
from gated.errors import PayloadError
from gated.model import (
    AntiPassback,
    CredentialKind,
    Decision,
    Direction,
    Match,
    MatchKind,
    Mode,
    PlateRead,
    Reason,
)
from gated.plates import (
    MAX_PLATE_LEN,
    MAX_TAG_LEN,
    confusion_key,
    normalise,
    plate_matches_format,
)
from gated.rules.entities import Grant, Resident, Schedule
from gated.rules.index import (
    GRANT_SHIFT,
    RESIDENT_ACTIVE,
    RESIDENT_KNOWN,
    VEHICLE_ACTIVE,
    Candidate,
    RuleIndex,
    slot_setters,
    with_edits,
)

_KIND_RANK = {MatchKind.EXACT: 0, MatchKind.CONFUSION: 1, MatchKind.FUZZY: 2}
_NUMBER = (int, float)
_AUTO_EXACT = frozenset((MatchKind.EXACT,))
_AUTO_CONFUSION = frozenset((MatchKind.EXACT, MatchKind.CONFUSION))
_ANSWERS = 4096  # schedule answers and compiled grants kept per rule set
_LIVE = VEHICLE_ACTIVE | RESIDENT_KNOWN | RESIDENT_ACTIVE


@dataclass(frozen=True, slots=True)
class ClockView:
    """What the policy may believe about the wall clock (set by the daemon's clock watch).

    `offset_s`, while unsynchronised, is what to add to the wall clock to get the time
    measured on the monotonic clock from the last synchronised reading of this boot;
    None when there is no such reading (booted without a clock, never synchronised).
    """

    synced: bool = True
    offset_s: float | None = None
    plausible: bool = True  # False: a date before this code existed (a Pi booted in 1970)


SYNCED_CLOCK = ClockView()


@dataclass(frozen=True, slots=True)
class AccessPoint:
    """One access point as the policy sees it: id, default direction, policy and time zone."""

    id: str
    direction: Direction
    policy: PolicyConfig
    tz: zoneinfo.ZoneInfo


class PolicyState(Protocol):
    """The mutable facts decide() reads but never writes."""

    def mode(self, access_point_id: str) -> Mode:
        """The current mode of an access point."""
        ...

    def last_passage(self, subject: str) -> tuple[Direction, float] | None:
        """Direction and epoch seconds of the subject's last passage, if any."""
        ...

    def pass_uses(self, pass_id: str) -> int:
        """How many entries a visitor pass has been used for."""
        ...


def subject_for(
    vehicle_id: str | None, resident_id: str | None, pass_id: str | None
) -> str | None:
    """The anti-passback subject of a passage: the vehicle, else the pass, else the resident.

    Plain ids, as the journal stores them, so state seeded from the journal
    matches. A visitor's decision carries the host as resident_id, which is why
    the pass comes before the resident: two visitors of one host are two subjects.
    """
    return vehicle_id or pass_id or resident_id


class MemoryPolicyState:
    """PolicyState in memory; the daemon seeds it from the journal at start-up."""

    def __init__(self, modes: Mapping[str, Mode] | None = None) -> None:
        """Start with the given per-access-point modes (others are normal)."""
        self._modes: dict[str, Mode] = dict(modes or {})
        self._passages: dict[str, tuple[Direction, float]] = {}
        self._uses: dict[str, int] = {}
        # Read by decide() for schedules and pass windows (see the module doc, Clock).
        self.clock: ClockView = SYNCED_CLOCK

    def set_clock(self, view: ClockView) -> None:
        """Tell decisions what the wall clock is worth now (the daemon's clock watch calls it)."""
        self.clock = view

    def mode(self, access_point_id: str) -> Mode:
        """The current mode of an access point (normal unless set)."""
        return self._modes.get(access_point_id, Mode.NORMAL)

    def set_mode(self, access_point_id: str, mode: Mode) -> None:
        """Change an access point's mode."""
        self._modes[access_point_id] = mode

    def last_passage(self, subject: str) -> tuple[Direction, float] | None:
        """Direction and time of the subject's last passage."""
        return self._passages.get(subject)

    def record_passage(self, subject: str, direction: Direction, at: float) -> None:
        """Remember a passage (keeps the latest by time: journal replay may come out of order)."""
        last = self._passages.get(subject)
        if last is None or at >= last[1]:
            self._passages[subject] = (direction, at)

    def pass_uses(self, pass_id: str) -> int:
        """Entries made with a visitor pass."""
        return self._uses.get(pass_id, 0)

    def record_pass_use(self, pass_id: str, count: int = 1) -> None:
        """Count entries made with a visitor pass."""
        self._uses[pass_id] = self._uses.get(pass_id, 0) + count

    def record(self, decision: Decision, at: float) -> tuple[Direction, float] | None:
        """Record the passage an allowed decision led to (call once the gate has opened).

        Returns the subject's passage as it was before, which is what undo() restores.
        """
        if not decision.allowed:
            return None
        direction = Direction(decision.inputs.get("direction", Direction.IN))
        subject = subject_for(decision.vehicle_id, decision.resident_id, decision.pass_id)
        previous = None
        if subject is not None:
            previous = self._passages.get(subject)
            self.record_passage(subject, direction, at)
        if decision.pass_id is not None and direction == Direction.IN:
            self.record_pass_use(decision.pass_id)
        return previous

    def undo(self, decision: Decision, previous: tuple[Direction, float] | None) -> None:
        """Take back what record(decision) counted: the gate did not open (relay failed).

        `previous` is what record() returned (the subject's passage before it); the
        journal's rebuild (gated.app._seed_state) skips such rows the same way.
        """
        if not decision.allowed:
            return
        subject = subject_for(decision.vehicle_id, decision.resident_id, decision.pass_id)
        if subject is not None:
            if previous is None:
                self._passages.pop(subject, None)
            else:
                self._passages[subject] = previous
        direction = Direction(decision.inputs.get("direction", Direction.IN))
        if decision.pass_id is not None and direction == Direction.IN:
            self.record_pass_use(decision.pass_id, -1)

    def prune(self, before: float) -> int:
        """Forget passages older than `before` (they no longer matter); returns how many."""
        old = [s for s, (_, at) in self._passages.items() if at < before]
        for s in old:
            del self._passages[s]
        return len(old)


# --- schedules ----------------------------------------------------------------------


def _in_interval(t: dt.time, start: dt.time, end: dt.time, today: bool) -> bool:
    """Is local time t inside [start, end) (today) or in its after-midnight tail (not today)."""
    if end > start:
        return today and start <= t < end
    # crosses midnight (end <= start; start == end is a full 24 hours)
    return t >= start if today else t < end


def _intervals(schedule: Schedule, day: dt.date) -> list[tuple[dt.time, dt.time]]:
    if day in schedule.exceptions:
        return list(schedule.exceptions[day])
    wd = day.weekday()
    return [(w.start, w.end) for w in schedule.windows if wd in w.weekdays]


def schedule_open(schedule: Schedule, now: float, tz: zoneinfo.ZoneInfo) -> bool:
    """Is the schedule open at epoch `now`, evaluated on the wall clock of `tz`?

    Windows are wall-clock times, so DST needs no special case: a window
    covers whatever local times the day really has. An exception date replaces
    the weekly windows of that date *including* the after-midnight tail of the
    previous evening's window (closed all day means closed all day); a window
    of an exception date that crosses midnight does run into the next day.
    """
    return _open_at(schedule, dt.datetime.fromtimestamp(now, tz))


def _open_at(schedule: Schedule, local: dt.datetime) -> bool:
    t = local.time()
    today = local.date()
    if any(_in_interval(t, s, e, True) for s, e in _intervals(schedule, today)):
        return True
    if today in schedule.exceptions:
        return False
    yesterday = today - dt.timedelta(days=1)
    return any(_in_interval(t, s, e, False) for s, e in _intervals(schedule, yesterday))


# --- evaluation ---------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    """What one candidate (or the best tier of them) amounts to."""

    allowed: bool
    reason: Reason
    match: Match | None = None
    resident_id: str | None = None
    vehicle_id: str | None = None
    pass_id: str | None = None
    visitor_name: str | None = None
    flags: tuple[str, ...] = ()


class _Context:
    """Per-call values shared by the checks (keeps helper signatures short)."""

    __slots__ = (
        "ap",
        "direction",
        "flags",
        "format_ok",
        "inputs",
        "local",
        "now",
        "rules",
        "state",
        "window_blocked",
        "window_now",
    )

    def __init__(
        self,
        ap: AccessPoint,
        rules: RuleIndex,
        state: PolicyState,
        now: float,
        direction: Direction,
        inputs: dict[str, Any],
    ) -> None:
        self.ap = ap
        self.rules = rules
        self.state = state
        self.now = now
        self.direction = direction
        self.inputs = inputs
        self.flags: list[str] = []
        self.format_ok = True
        self.local: dt.datetime | None = None  # window_now on the site's wall clock, once needed
        # The time schedules and pass windows are judged on (module doc, Clock); when
        # window_blocked, nothing that needs one may open by itself.
        self.window_now = now
        self.window_blocked = False
        clock = getattr(state, "clock", SYNCED_CLOCK)
        if isinstance(clock, ClockView) and not clock.synced:
            if clock.offset_s is not None:
                self.window_now = now + clock.offset_s
                inputs["window_now"] = self.window_now
                self.flags.append("clock_estimated")
            elif not clock.plausible and ap.policy.unsynced_clock == "deny":
                self.window_blocked = True
            # Otherwise a plausible clock NTP has not confirmed (a battery RTC, a site
            # without network): used as it is; the row's clock_unsynced column says so.

    def schedule_ok(self, schedule_id: str | None) -> bool:
        """Is the schedule open now at this access point (flags why not, if it cannot say)?

        Answers are kept per (schedule, time zone, minute) on the rule set: the
        reads of one minute share them. Only plain answers are kept; a missing
        schedule or an unusable clock is worked out (and flagged) every time.
        """
        if schedule_id is None:
            return True
        if self.window_blocked:
            if "clock_unsynced" not in self.flags:
                self.flags.append("clock_unsynced")
            return False
        answers = self.rules.schedule_answers
        minute = self.window_now // 60
        cache_key = (schedule_id, self.ap.tz, minute)
        answer = answers.get(cache_key)
        if answer is not None:
            return answer
        schedule = self.rules.schedule(schedule_id)
        if schedule is None:
            self.flags.append("missing_schedule")  # dangling reference: fail closed
            return False
        if self.local is None:
            try:
                self.local = dt.datetime.fromtimestamp(self.window_now, self.ap.tz)
            except (OverflowError, ValueError, OSError):
                self.flags.append("bad_clock")  # `now` outside what a calendar can hold
                return False
        answer = _open_at(schedule, self.local)
        if _same_all_minute(schedule, self.local, minute, self.ap.tz):
            if len(answers) >= _ANSWERS:
                answers.clear()  # a new minute's answers replace the old ones
            answers[cache_key] = answer
        return answer

    def resident_reason(self, resident: Resident | None) -> Reason | None:
        """None when the resident may pass here now, else why not."""
        if resident is None or not resident.active:
            return Reason.INACTIVE
        grant = (resident.groups, resident.access_points, resident.schedule_id)
        return self.grant_reason(self._schedules(grant))

    def _schedules(self, grant: Grant) -> tuple[str | None, ...]:
        """The schedules under which a grant lets through at this access point (none: not here).

        Own access points first, then each existing group's, in order.
        """
        groups, access_points, schedule_id = grant
        ap_id = self.ap.id
        schedules: list[str | None] = []
        if access_points is None or ap_id in access_points:
            schedules.append(schedule_id)
        for group_id in groups:
            group = self.rules.group(group_id)
            if group is not None and (group.access_points is None or ap_id in group.access_points):
                schedules.append(group.schedule_id)
        return tuple(schedules)

    def compiled_grant(self, number: int, grant: Grant) -> tuple[str | None, ...]:
        """`_schedules` of the rule set's grant `number`, kept per (grant, access point)."""
        compiled = self.rules._grant_schedules
        cache_key = (number, self.ap.id)
        schedules = compiled.get(cache_key)
        if schedules is None:
            schedules = self._schedules(grant)
            if len(compiled) >= _ANSWERS:
                compiled.clear()
            compiled[cache_key] = schedules
        return schedules

    def grant_reason(self, schedules: tuple[str | None, ...]) -> Reason | None:
        """None when one of the schedules is open now, else why not."""
        if not schedules:
            return Reason.NOT_PERMITTED
        if any(self.schedule_ok(s) for s in schedules):
            return None
        return Reason.CLOCK_UNSYNCED if self.window_blocked else Reason.OUTSIDE_SCHEDULE


def _same_all_minute(
    schedule: Schedule, local: dt.datetime, minute: float, tz: zoneinfo.ZoneInfo
) -> bool:
    """Does the schedule give one answer for the whole epoch minute of `local`?

    True when every boundary of the schedule is a whole minute and the zone's
    offset is a whole number of minutes that does not change within the minute.
    """
    offset = local.utcoffset()
    if offset is None or offset.seconds % 60 or offset.microseconds:
        return False
    start = minute * 60
    try:
        first = dt.datetime.fromtimestamp(start, tz).utcoffset()
        last = dt.datetime.fromtimestamp(start + 59, tz).utcoffset()
    except (OverflowError, ValueError, OSError):
        return False
    if not first == offset == last:
        return False
    times = [t for w in schedule.windows for t in (w.start, w.end)]
    times.extend(t for spans in schedule.exceptions.values() for span in spans for t in span)
    return all(not (t.second or t.microsecond) for t in times)


def _pick(outcomes: list[_Outcome]) -> _Outcome | None:
    for o in outcomes:
        if o.allowed:
            return o
    return outcomes[0] if outcomes else None


def _live_tier(
    candidates: tuple[Candidate, ...], fetch: Any, ambiguity: bool = False
) -> list[tuple[Candidate, Any]]:
    """The best tier of candidates whose entity still exists with the indexed plate.

    Entities are fetched tier by tier, so the lower tiers of a dense fleet are
    never read; a row deleted or re-plated since the index was built is skipped.
    With `ambiguity`, a non-exact tier stops at its second distinct plate: the
    caller then only needs its first member (a dense fleet's fuzzy tier can
    name a dozen cars, each an entity read).
    """
    tier: list[tuple[Candidate, Any]] = []
    current: tuple[MatchKind, int] | None = None
    for c in candidates:
        match = c.match
        rank = (match.kind, match.distance)
        if rank != current:
            if tier:
                return tier
            current = rank
        entity = fetch(c.key)
        if entity is not None and _same_text(entity.plate, match.stored):
            tier.append((c, entity))
            if (
                ambiguity
                and match.kind != MatchKind.EXACT
                and match.stored != tier[0][0].match.stored
            ):
                return tier
    return tier


def _vehicle_outcomes(ctx: _Context, candidates: tuple[Candidate, ...]) -> _Outcome | None:
    if not candidates:
        return None
    if ctx.rules.vehicle_facts is not None and candidates[0].row >= 0:
        return _vehicle_outcomes_from_facts(ctx, candidates)
    tier = _live_tier(candidates, ctx.rules.vehicle, ambiguity=True)
    if not tier:
        return None
    match = tier[0][0].match
    if match.kind != MatchKind.EXACT and len({c.match.stored for c, _ in tier}) > 1:
        v = tier[0][1]
        return _Outcome(
            False, Reason.NEEDS_GUARD, match, v.resident_id, v.id, flags=("ambiguous_match",)
        )
    outcomes = []
    for c, vehicle in tier:
        resident = ctx.rules.resident(vehicle.resident_id)
        reason = Reason.INACTIVE if not vehicle.active else ctx.resident_reason(resident)
        o = _Outcome(
            reason is None, reason or Reason.RESIDENT, c.match, vehicle.resident_id, vehicle.id
        )
        if o.allowed and c.match.kind != MatchKind.EXACT and not ctx.format_ok:
            o = _Outcome(False, Reason.NEEDS_GUARD, c.match, o.resident_id, o.vehicle_id,
                         flags=("plate_format_mismatch",))  # fmt: skip
        outcomes.append(o)
    return _pick(outcomes)


def _vehicle_outcomes_from_facts(
    ctx: _Context, candidates: tuple[Candidate, ...]
) -> _Outcome | None:
    """`_vehicle_outcomes` from the rule set's compact vehicle facts: no entity is read.

    The same tier, checks and outcomes as the entity path. The facts were
    loaded with the index at its version, so every candidate row is live with
    the plate it was indexed under: the entity path's plate re-check holds by
    construction.
    """
    facts = ctx.rules.vehicle_facts
    assert facts is not None
    first = candidates[0]
    match = first.match
    exact = match.kind == MatchKind.EXACT
    tier: tuple[Candidate, ...] | list[Candidate] = candidates
    if len(candidates) > 1:
        tier = [first]
        for c in candidates[1:]:
            m = c.match
            if m.kind != match.kind or m.distance != match.distance:
                break
            tier.append(c)
            if not exact and m.stored != match.stored:
                # two plates in a non-exact tier: ambiguous; the first one is reported
                row = first.row
                return _Outcome(False, Reason.NEEDS_GUARD, match, facts.resident_id(row),
                                facts.vehicle_id(row), flags=("ambiguous_match",))  # fmt: skip
    info, grants, base = facts.info, facts.grants, facts.base
    offsets, blob = facts.ids.offsets, facts.ids.blob
    outcomes = []
    for c in tier:
        i = c.row - base
        word = info[i]
        reason: Reason | None
        if word & _LIVE == _LIVE:
            number = word >> GRANT_SHIFT
            reason = ctx.grant_reason(ctx.compiled_grant(number, grants[number]))
        else:  # the vehicle, or its resident, is suspended or missing
            reason = Reason.INACTIVE
        j = 2 * i
        start, middle, end = offsets[j], offsets[j + 1], offsets[j + 2]
        vehicle_id = blob[start:middle].decode("utf-8", "surrogatepass")
        resident_id = blob[middle:end].decode("utf-8", "surrogatepass")
        if reason is None and c.match.kind != MatchKind.EXACT and not ctx.format_ok:
            o = _Outcome(False, Reason.NEEDS_GUARD, c.match, resident_id, vehicle_id,
                         flags=("plate_format_mismatch",))  # fmt: skip
        else:
            o = _Outcome(
                reason is None, reason or Reason.RESIDENT, c.match, resident_id, vehicle_id
            )
        outcomes.append(o)
    return _pick(outcomes)


def _tag_outcome(ctx: _Context, candidates: tuple[Candidate, ...]) -> _Outcome | None:
    outcomes = []
    for c in candidates:
        tag = ctx.rules.tag(c.key)
        if tag is None or not _same_text(tag.tag, c.match.stored):
            continue
        reason = Reason.INACTIVE if not tag.active else ctx.resident_reason(
            ctx.rules.resident(tag.resident_id)
        )
        outcomes.append(
            _Outcome(reason is None, reason or Reason.RESIDENT, c.match, tag.resident_id)
        )
    return _pick(outcomes)


def _pass_outcome(
    ctx: _Context, candidates: tuple[Candidate, ...], auto: frozenset[MatchKind]
) -> _Outcome | None:
    if not candidates:
        return None
    tier = _live_tier(candidates, ctx.rules.visitor_pass)
    outcomes = []
    for c, vp in tier:
        host = ctx.rules.resident(vp.host_resident_id)
        if host is None or not host.active:
            reason: Reason | None = Reason.INACTIVE
        elif vp.access_points is not None and ctx.ap.id not in vp.access_points:
            reason = Reason.NOT_PERMITTED
        elif ctx.window_blocked:
            reason = Reason.CLOCK_UNSYNCED  # a window cannot be judged without a clock
            if "clock_unsynced" not in ctx.flags:
                ctx.flags.append("clock_unsynced")
        elif ctx.window_now < vp.valid_from:
            reason = Reason.PASS_NOT_YET_VALID
        elif ctx.window_now >= vp.valid_until:
            reason = Reason.PASS_EXPIRED
        elif vp.max_uses is not None and ctx.direction == Direction.IN and (
            _note_uses(ctx, vp.id) >= vp.max_uses
        ):
            reason = Reason.PASS_USED_UP
        else:
            reason = None
        flags: tuple[str, ...] = ()
        if reason is None and (c.match.kind not in auto or not ctx.format_ok):
            reason = Reason.NEEDS_GUARD  # a pass is a weaker credential: only a sure read opens
            flags = ("visitor_match_" + c.match.kind.value,)
        allowed = reason is None
        outcomes.append(
            _Outcome(
                allowed,
                reason or Reason.VISITOR_PASS,
                c.match,
                vp.host_resident_id,
                None,
                vp.id,
                vp.visitor_name or None,
                flags,
            )
        )
    return _pick(outcomes)


def _note_uses(ctx: _Context, pass_id: str) -> int:
    uses = ctx.state.pass_uses(pass_id)
    ctx.inputs.setdefault("pass_uses", {})[pass_id] = uses
    return uses


def _same_text(entity_text: str, stored: str) -> bool:
    if entity_text == stored:
        return True
    try:
        return normalise(entity_text) == stored
    except PayloadError:
        return False


def _rank(o: _Outcome) -> tuple[int, int]:
    match = o.match
    assert match is not None  # resident and pass outcomes always carry the match that found them
    return (_KIND_RANK[match.kind], match.distance)


def _anti_passback(ctx: _Context, o: _Outcome) -> _Outcome:
    policy = ctx.ap.policy
    if not o.allowed or policy.anti_passback == AntiPassback.OFF:
        return o
    subject = subject_for(o.vehicle_id, o.resident_id, o.pass_id)
    if subject is None:
        return o
    last = ctx.state.last_passage(subject)
    if last is None:
        return o
    last_direction, at = last
    ctx.inputs["last_passage"] = (str(last_direction), at)
    elapsed = ctx.now - at
    if elapsed < 0:
        ctx.flags.append("anti_passback_clock")
        return o
    if last_direction != ctx.direction or elapsed >= policy.anti_passback_reset_s:
        return o
    if policy.anti_passback == AntiPassback.SOFT:
        ctx.flags.append("anti_passback_soft")
        return o
    return _Outcome(False, Reason.ANTI_PASSBACK, o.match, o.resident_id, o.vehicle_id,
                    o.pass_id, o.visitor_name, o.flags)  # fmt: skip


def _confidence(read: PlateRead, policy: PolicyConfig, flags: list[str]) -> bool:
    """True when the read's confidence is too low for it to open the gate by itself."""
    c = read.confidence
    if c is None:
        if read.kind == CredentialKind.PLATE:
            flags.append("no_confidence")  # a tag reader never gives one: not worth a flag
        return False
    if not isinstance(c, _NUMBER) or math.isnan(c) or not 0.0 <= c <= 1.0:
        flags.append("invalid_confidence")
        return True
    return c < policy.min_confidence


def _plate_outcome(ctx: _Context, rules: RuleIndex, text: str) -> _Outcome | None:
    """Deny list, then residents and passes, for a normalised plate (see the module doc)."""
    policy = ctx.ap.policy
    inputs = ctx.inputs
    ckey = confusion_key(text)
    ctx.format_ok = plate_matches_format(text, policy.plate_formats)
    depths = rules.depths
    deny_d = min(policy.deny_fuzzy_distance, depths["deny"])
    resident_d = min(policy.resident_fuzzy_distance, depths["resident"])
    inputs["confusion_key"] = ckey
    inputs["plate_format_ok"] = ctx.format_ok
    inputs["deny_distance"] = deny_d
    inputs["resident_distance"] = resident_d
    inputs["visitor_match"] = policy.visitor_match
    # an index built shallower than the policy asks: say so on every decision
    if deny_d < policy.deny_fuzzy_distance:
        ctx.flags.append("deny_distance_capped")
    if resident_d < policy.resident_fuzzy_distance:
        ctx.flags.append("resident_distance_capped")
    query = rules.query(text, ckey)
    deny, residents, passes = query.first_pass(deny_d)
    for c in deny:
        entry = ctx.rules.deny_entry(c.key)
        if entry is None or not _same_text(entry.plate, c.match.stored):
            continue
        # Without a clock a deny entry never lapses (fail closed: a jump forward must
        # not lift a ban early).
        if entry.until is not None and not ctx.window_blocked and ctx.window_now >= entry.until:
            continue
        inputs["deny_entry"] = entry.id
        return _Outcome(False, Reason.DENY_LISTED, c.match)
    auto = _AUTO_CONFUSION if policy.visitor_match == "confusion" else _AUTO_EXACT
    # Exact and confusion hits first; fuzzy ones only when neither list has one,
    # since a fuzzy match never outranks an exact or confusion match.
    resident = _vehicle_outcomes(ctx, residents)
    visitor = _pass_outcome(ctx, passes, auto)
    if resident is None and visitor is None:
        # edits of fuzzy candidates are filled in by _decision, for the reported match only
        fuzzy_residents, fuzzy_passes = query.fuzzy_pass(resident_d, 1)
        resident = _vehicle_outcomes(ctx, fuzzy_residents)
        visitor = _pass_outcome(ctx, fuzzy_passes, auto)
    if resident is None or visitor is None:
        return resident or visitor
    # The closest match explains the read; at equal quality an allowing
    # outcome wins (a pass issued for a car whose own schedule is shut).
    return min((resident, visitor), key=lambda o: (*_rank(o), not o.allowed))


def decide(
    read: PlateRead,
    access_point: AccessPoint,
    rules: RuleIndex,
    state: PolicyState,
    now: float,
) -> Decision:
    """Decide whether a read opens `access_point` now; pure and deterministic (see module doc)."""
    policy = access_point.policy
    direction = read.direction or access_point.direction
    mode = state.mode(access_point.id)
    is_tag = read.kind == CredentialKind.TAG
    inputs: dict[str, Any] = {
        "raw_text": read.text if isinstance(read.text, str) else repr(read.text)[:64],
        "kind": str(read.kind),
        "source": read.source,
        "confidence": read.confidence,
        "min_confidence": policy.min_confidence,
        "mode": str(mode),
        "direction": str(direction),
        "access_point": access_point.id,
        "now": now,
        "rules_version": rules.version,
    }
    ctx = _Context(access_point, rules, state, now, direction, inputs)
    low = _confidence(read, policy, ctx.flags)

    try:
        if not isinstance(now, _NUMBER) or not math.isfinite(now):
            # validity windows and schedules cannot be judged: nothing opens by itself
            ctx.flags.append("bad_clock")
            raise PayloadError(f"decision time {now!r} is not a finite number")
        text = normalise(read.text)
        limit = MAX_TAG_LEN if is_tag else MAX_PLATE_LEN
        if not text or len(text) > limit:
            raise PayloadError(f"normalised text has {len(text)} characters (1..{limit})")
    except PayloadError as err:
        inputs["raw_text"] = inputs["raw_text"][:64]
        inputs["error"] = str(err)
        ctx.flags.append("invalid_read")
        text = ""
    inputs["normalised"] = text

    outcome: _Outcome | None = None
    if text and is_tag:
        outcome = _tag_outcome(ctx, rules.match_tag(text))
    elif text:
        outcome = _plate_outcome(ctx, rules, text)
        if outcome is not None and outcome.reason == Reason.DENY_LISTED:
            return _decision(False, Reason.DENY_LISTED, access_point, rules, ctx, outcome)
    if mode == Mode.LOCKDOWN:
        return _decision(False, Reason.LOCKDOWN, access_point, rules, ctx, outcome)
    if mode == Mode.HOLD_OPEN:
        return _decision(True, Reason.HOLD_OPEN, access_point, rules, ctx, outcome)
    if low:
        return _decision(False, Reason.LOW_CONFIDENCE, access_point, rules, ctx, outcome)
    if outcome is None:
        return _decision(False, Reason.UNKNOWN_PLATE, access_point, rules, ctx, None)
    outcome = _anti_passback(ctx, outcome)
    return _decision(outcome.allowed, outcome.reason, access_point, rules, ctx, outcome)


_DECISION_SETTERS = slot_setters(
    Decision,
    (
        "allowed", "reason", "access_point", "rules_version", "match", "resident_id",
        "vehicle_id", "pass_id", "visitor_name", "flags", "inputs",
    ),
)  # fmt: skip


def _new_decision(*values: Any) -> Decision:
    """Decision(*values) without the frozen dataclass __init__ (see index.new_match)."""
    if not _DECISION_SETTERS:
        return Decision(*values)
    d = object.__new__(Decision)
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10 = _DECISION_SETTERS
    v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10 = values
    s0(d, v0)  # unrolled: a loop over zip() costs more than the __init__ it replaces
    s1(d, v1)
    s2(d, v2)
    s3(d, v3)
    s4(d, v4)
    s5(d, v5)
    s6(d, v6)
    s7(d, v7)
    s8(d, v8)
    s9(d, v9)
    s10(d, v10)
    return d


def _decision(
    allowed: bool,
    reason: Reason,
    ap: AccessPoint,
    rules: RuleIndex,
    ctx: _Context,
    outcome: _Outcome | None,
) -> Decision:
    flags = tuple(ctx.flags) + (outcome.flags if outcome is not None else ())
    if outcome is None:
        return _new_decision(
            allowed, reason, ap.id, rules.version, None, None, None, None, None, flags, ctx.inputs
        )
    match = outcome.match
    if match is not None and match.kind == MatchKind.FUZZY and not match.edits:
        match = with_edits(ctx.inputs["normalised"], match)
    return _new_decision(
        allowed,
        reason,
        ap.id,
        rules.version,
        match,
        outcome.resident_id,
        outcome.vehicle_id,
        outcome.pass_id,
        outcome.visitor_name,
        flags,
        ctx.inputs,
    )


__all__ = [
    "AccessPoint",
    "MemoryPolicyState",
    "PolicyState",
    "decide",
    "schedule_open",
    "subject_for",
]
