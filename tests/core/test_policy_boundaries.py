"""decide() at the edges mutation testing found untested: boundaries, tags, several candidates.

Each case here is one a changed comparison or a skipped branch in policy.py
would get wrong while every other test still passed (see docs/mutation-testing.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from typing import Any

import pytest

from gated.config import PolicyConfig
from gated.model import (
    AntiPassback,
    CredentialKind,
    Direction,
    MatchKind,
    Mode,
    PlateRead,
    Reason,
)
from gated.policy import AccessPoint, MemoryPolicyState, decide
from gated.rules.entities import (
    DenyEntry,
    Group,
    Resident,
    Schedule,
    Tag,
    TimeWindow,
    Vehicle,
    VisitorPass,
)
from gated.rules.index import RuleIndex
from gated.rules.memory import MemoryRuleSource
from tests.core.test_policy import ALL_DAYS, HOUR, NOW, RULES, RULES_ENTITIES, TZ, run, world

BOTH_PATHS = pytest.mark.parametrize("facts", [True, False], ids=["facts", "entities"])
HARD = PolicyConfig(anti_passback=AntiPassback.HARD)
RESET = HARD.anti_passback_reset_s

# a 96-bit UHF EPC: 24 hex digits, longer than any plate (MAX_PLATE_LEN = 16)
EPC = "E28011606000020A1B2C3D4E"


def tag_rules() -> RuleIndex:
    """The standard site plus a UHF windscreen tag of alice's."""
    src = world()
    src.add_tag(Tag("t-uhf", EPC, "alice"))
    return RuleIndex.build(src)


def tag(text: str, **kw: Any) -> Any:
    """decide() for a tag read (no confidence, as an RFID reader gives none)."""
    return run(text, kind=CredentialKind.TAG, confidence=None, **kw)


# --- tags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [EPC, EPC.lower(), " ".join(EPC[i : i + 4] for i in range(0, 24, 4))]
)
def test_a_uhf_tag_longer_than_any_plate_opens(text: str) -> None:
    d = tag(text, rules=tag_rules())
    assert (d.allowed, d.reason, d.resident_id) == (True, Reason.RESIDENT, "alice")
    assert d.match is not None and (d.match.list, d.match.stored) == ("tag", EPC)
    assert "invalid_read" not in d.flags


def test_tags_and_plates_have_their_own_length_limits() -> None:
    rules = tag_rules()
    # 32 characters is the longest tag, 16 the longest plate
    long_tag = tag("F" * 32, rules=rules)
    assert (long_tag.reason, "invalid_read" in long_tag.flags) == (Reason.UNKNOWN_PLATE, False)
    too_long = tag("F" * 33, rules=rules)
    assert (too_long.reason, "invalid_read" in too_long.flags) == (Reason.UNKNOWN_PLATE, True)
    plate = run(EPC, rules=rules)  # the same characters read as a plate are not one
    assert (plate.allowed, "invalid_read" in plate.flags) == (False, True)
    sixteen = run("A" * 16, rules=rules)
    assert "invalid_read" not in sixteen.flags


def test_a_plate_read_never_matches_a_tag_nor_a_tag_read_a_plate() -> None:
    assert run("0A1B2C3D4E").reason == Reason.UNKNOWN_PLATE
    assert tag("AB12CDE").reason == Reason.UNKNOWN_PLATE


def test_a_tag_below_min_confidence_never_opens() -> None:
    d = run("0A1B2C3D4E", kind=CredentialKind.TAG, confidence=0.5)
    assert (d.allowed, d.reason, d.resident_id) == (False, Reason.LOW_CONFIDENCE, "alice")
    assert "no_confidence" not in tag("0A1B2C3D4E").flags  # a tag reader never gives one


def test_a_tag_of_a_resident_outside_the_schedule_or_lane_does_not_open() -> None:
    src = world()
    src.add_tag(Tag("t-bob", "B0B0B0B0", "bob"))  # staff: office hours, main lanes only
    rules = RuleIndex.build(src)
    assert tag("B0B0B0B0", rules=rules).allowed
    evening = NOW + 10 * HOUR
    assert tag("B0B0B0B0", rules=rules, now=evening).reason == Reason.OUTSIDE_SCHEDULE
    assert tag("B0B0B0B0", rules=rules, ap_id="side-in").reason == Reason.NOT_PERMITTED


def test_a_tag_whose_entity_changed_since_the_index_does_not_open() -> None:
    src = world()
    key = src.add_tag(Tag("t-x", "7777AAAA", "alice"))
    rules = RuleIndex.build(src)
    src.tags[key] = Tag("t-x", "7777AAAB", "alice")  # re-numbered after the build
    assert tag("7777AAAA", rules=rules).reason == Reason.UNKNOWN_PLATE


# --- anti-passback for every kind of credential --------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "subject"),
    [
        ("AB12CDE", CredentialKind.PLATE, "v-alice"),
        ("0A1B2C3D4E", CredentialKind.TAG, "alice"),  # a tag's subject is its resident
        ("VIS123", CredentialKind.PLATE, "p-now"),  # a visitor's is the pass
    ],
)
def test_hard_anti_passback_applies_to_plates_tags_and_passes(
    text: str, kind: CredentialKind, subject: str
) -> None:
    state = MemoryPolicyState()
    conf = None if kind == CredentialKind.TAG else 0.95
    first = run(text, kind=kind, confidence=conf, policy=HARD, state=state)
    assert first.allowed
    state.record(first, NOW)
    assert state.last_passage(subject) == (Direction.IN, NOW)
    again = run(text, kind=kind, confidence=conf, policy=HARD, state=state, now=NOW + 60)
    assert (again.allowed, again.reason) == (False, Reason.ANTI_PASSBACK)
    assert again.inputs["last_passage"] == ("in", NOW)
    out = run(text, kind=kind, confidence=conf, policy=HARD, state=state, now=NOW + 60,
              direction=Direction.OUT)  # fmt: skip
    assert out.allowed


def test_a_denied_anti_passback_keeps_what_it_matched() -> None:
    state = MemoryPolicyState()
    state.record_passage("p-now", Direction.IN, NOW - 60)
    d = run("VIS123", policy=HARD, state=state)
    assert (d.allowed, d.reason) == (False, Reason.ANTI_PASSBACK)
    assert (d.pass_id, d.resident_id, d.visitor_name) == ("p-now", "alice", "Vera")
    assert d.match is not None and d.match.kind == MatchKind.EXACT


@pytest.mark.parametrize(
    ("ago", "allowed"),
    [
        (0.0, False),  # the same instant: a passback, not a clock step
        (0.5, False),
        (1.0, False),
        (RESET - 1.0, False),
        (RESET, True),  # exactly the reset window: reset
        (RESET + 1.0, True),
    ],
)
def test_anti_passback_reset_at_its_boundary(ago: float, allowed: bool) -> None:
    state = MemoryPolicyState()
    state.record_passage("v-alice", Direction.IN, NOW - ago)
    d = run("AB12CDE", policy=HARD, state=state)
    assert (d.allowed, d.reason) == (allowed, Reason.RESIDENT if allowed else Reason.ANTI_PASSBACK)
    assert "anti_passback_clock" not in d.flags
    # a denial still says whose car it was
    assert (d.vehicle_id, d.resident_id, d.pass_id) == ("v-alice", "alice", None)


def test_anti_passback_soft_flags_but_opens_and_only_when_it_applies() -> None:
    soft = PolicyConfig(anti_passback=AntiPassback.SOFT)
    state = MemoryPolicyState()
    state.record_passage("v-alice", Direction.IN, NOW - RESET)
    assert "anti_passback_soft" not in run("AB12CDE", policy=soft, state=state).flags
    state.record_passage("v-alice", Direction.IN, NOW - 1)
    d = run("AB12CDE", policy=soft, state=state)
    assert (d.allowed, d.reason) == (True, Reason.RESIDENT)
    assert "anti_passback_soft" in d.flags


def test_anti_passback_a_moment_in_the_future_is_a_clock_step() -> None:
    state = MemoryPolicyState()
    state.record_passage("v-alice", Direction.IN, NOW + 0.5)
    d = run("AB12CDE", policy=HARD, state=state)
    assert d.allowed and "anti_passback_clock" in d.flags


def test_anti_passback_is_not_asked_about_a_denied_read() -> None:
    state = MemoryPolicyState()
    state.record_passage("v-alice-old", Direction.IN, NOW - 60)
    d = run("OLD111", policy=HARD, state=state)
    assert d.reason == Reason.INACTIVE and "last_passage" not in d.inputs


# --- visitor passes at their boundaries ----------------------------------------------


@pytest.mark.parametrize(
    ("valid_from", "valid_until", "reason"),
    [
        (NOW, NOW + HOUR, Reason.VISITOR_PASS),  # valid from this very second
        (NOW + 1, NOW + HOUR, Reason.PASS_NOT_YET_VALID),
        (NOW - HOUR, NOW + 1, Reason.VISITOR_PASS),
        (NOW - HOUR, NOW, Reason.PASS_EXPIRED),  # valid_until is exclusive
        (NOW - HOUR, NOW - 1, Reason.PASS_EXPIRED),
    ],
)
def test_pass_validity_at_its_boundaries(
    valid_from: float, valid_until: float, reason: Reason
) -> None:
    src = world()
    src.add_pass(VisitorPass("p-edge", "EDGE77", "alice", valid_from, valid_until))
    d = run("EDGE77", rules=RuleIndex.build(src))
    assert (d.allowed, d.reason, d.pass_id) == (reason == Reason.VISITOR_PASS, reason, "p-edge")


@pytest.mark.parametrize(("uses", "allowed"), [(0, True), (1, True), (2, False), (3, False)])
def test_pass_uses_at_the_limit(uses: int, allowed: bool) -> None:
    src = world()
    src.add_pass(VisitorPass("p-two", "TWICE2", "alice", NOW - HOUR, NOW + HOUR, max_uses=2))
    state = MemoryPolicyState()
    state.record_pass_use("p-two", uses)
    d = run("TWICE2", rules=RuleIndex.build(src), state=state)
    assert (d.allowed, d.reason) == (
        allowed,
        Reason.VISITOR_PASS if allowed else Reason.PASS_USED_UP,
    )
    assert d.inputs["pass_uses"] == {"p-two": uses}


def test_a_pass_without_a_use_limit_does_not_count_uses() -> None:
    state = MemoryPolicyState()
    state.record_pass_use("p-now", 1000)
    d = run("VIS123", state=state)
    assert d.allowed and "pass_uses" not in d.inputs


def test_a_pass_for_a_listed_access_point_opens_there() -> None:
    src = world()
    src.add_pass(VisitorPass("p-main", "MAIN11", "alice", NOW - HOUR, NOW + HOUR,
                             access_points=frozenset({"main-in"})))  # fmt: skip
    rules = RuleIndex.build(src)
    assert run("MAIN11", rules=rules).allowed
    assert run("MAIN11", rules=rules, ap_id="side-in").reason == Reason.NOT_PERMITTED


def test_an_allowing_pass_is_picked_over_a_denying_one_of_the_same_tier() -> None:
    src = world()
    src.add_pass(VisitorPass("p-a-gone", "TWOPAS", "alice", NOW - 2 * HOUR, NOW - HOUR))
    src.add_pass(VisitorPass("p-b-now", "TWOPAS", "alice", NOW - HOUR, NOW + HOUR))
    d = run("TWOPAS", rules=RuleIndex.build(src))
    assert (d.allowed, d.pass_id) == (True, "p-b-now")


# --- confidence at its boundaries ------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "min_confidence", "reason", "flag"),
    [
        (1.0, 0.80, Reason.RESIDENT, None),  # the top of the range is a valid confidence
        (0.0, 0.0, Reason.RESIDENT, None),  # so is the bottom
        (0.80, 0.80, Reason.RESIDENT, None),
        (0.7999999, 0.80, Reason.LOW_CONFIDENCE, None),
        (1.0000001, 0.80, Reason.LOW_CONFIDENCE, "invalid_confidence"),
        (-0.0000001, 0.0, Reason.LOW_CONFIDENCE, "invalid_confidence"),
        (1, 0.80, Reason.RESIDENT, None),  # an integer from a JSON payload
    ],
)
def test_confidence_at_its_boundaries(
    confidence: float, min_confidence: float, reason: Reason, flag: str | None
) -> None:
    d = run("AB12CDE", confidence=confidence, policy=PolicyConfig(min_confidence=min_confidence))
    assert (d.allowed, d.reason) == (reason == Reason.RESIDENT, reason)
    assert ("invalid_confidence" in d.flags) == (flag is not None)


@pytest.mark.parametrize("bad", ["0.9", True, [0.9]])
def test_a_confidence_that_is_not_a_number_never_opens(bad: object) -> None:
    d = run("AB12CDE", confidence=bad)  # type: ignore[arg-type]
    # bool is an int: True counts as 1.0, which is a valid confidence
    if bad is True:
        assert d.allowed
    else:
        assert (d.allowed, d.reason) == (False, Reason.LOW_CONFIDENCE)
        assert "invalid_confidence" in d.flags


# --- several deny-list candidates -----------------------------------------------------


def test_an_expired_deny_entry_does_not_hide_a_live_one_behind_it() -> None:
    src = world()
    src.add_deny(DenyEntry("d-live", "PAROLE2", "stolen again"))  # one edit from d-old
    d = run("PAROLE1", rules=RuleIndex.build(src))
    assert (d.allowed, d.reason) == (False, Reason.DENY_LISTED)
    assert d.inputs["deny_entry"] == "d-live"
    assert d.match is not None and d.match.kind == MatchKind.FUZZY


def test_a_deleted_deny_entry_does_not_hide_a_live_one_behind_it() -> None:
    src = world()
    gone = src.add_deny(DenyEntry("d-gone", "GONE99", "deleted after the build"))
    src.add_deny(DenyEntry("d-near", "GONE98", "stolen"))
    rules = RuleIndex.build(src)
    del src.deny[gone]
    d = run("GONE99", rules=rules)
    assert (d.reason, d.inputs["deny_entry"]) == (Reason.DENY_LISTED, "d-near")


def test_a_re_plated_deny_entry_is_not_a_hit_for_its_old_plate() -> None:
    src = world()
    key = src.add_deny(DenyEntry("d-moved", "MOVED1", "stolen"))
    rules = RuleIndex.build(src)
    src.deny[key] = DenyEntry("d-moved", "ELSE22", "stolen")
    d = run("MOVED1", rules=rules)
    assert d.reason == Reason.UNKNOWN_PLATE and "deny_entry" not in d.inputs


@pytest.mark.parametrize(("until", "listed"), [(NOW, False), (NOW + 1, True), (NOW - 1, False)])
def test_a_deny_entry_ends_at_its_until(until: float, listed: bool) -> None:
    src = world()
    src.add_deny(DenyEntry("d-until", "UNTIL1", "banned", until=until))
    d = run("UNTIL1", rules=RuleIndex.build(src))
    assert (d.reason == Reason.DENY_LISTED) is listed


def test_deny_entry_text_is_compared_normalised() -> None:
    src = world()
    src.add_deny(DenyEntry("d-spaced", "sp 12-ace", "stolen"))
    d = run("SP12ACE", rules=RuleIndex.build(src))
    assert (d.reason, d.inputs["deny_entry"]) == (Reason.DENY_LISTED, "d-spaced")


# --- residents: tiers, picks, both paths ------------------------------------------------


@BOTH_PATHS
def test_an_allowed_car_is_picked_over_a_suspended_one_with_the_same_plate(facts: bool) -> None:
    src = world()
    src.add_vehicle(Vehicle("v-a-old", "SHARED1", "alice", active=False))
    src.add_vehicle(Vehicle("v-b-new", "SHARED1", "bob"))
    d = run("SHARED1", rules=RuleIndex.build(src, vehicle_facts=facts))
    assert (d.allowed, d.vehicle_id, d.resident_id) == (True, "v-b-new", "bob")


@BOTH_PATHS
def test_a_suspended_car_reports_itself_when_nothing_allows(facts: bool) -> None:
    src = world()
    src.add_vehicle(Vehicle("v-a-old", "SHARED1", "alice", active=False))
    src.add_vehicle(Vehicle("v-c", "SHARED1", "carol"))  # resident suspended
    d = run("SHARED1", rules=RuleIndex.build(src, vehicle_facts=facts))
    assert (d.allowed, d.reason, d.vehicle_id) == (False, Reason.INACTIVE, "v-a-old")


@BOTH_PATHS
def test_two_confusion_plates_are_ambiguous(facts: bool) -> None:
    src = world()
    src.add_vehicle(Vehicle("v-o", "XO1234", "alice"))
    src.add_vehicle(Vehicle("v-0", "X01234", "bob"))
    rules = RuleIndex.build(src, vehicle_facts=facts)
    d = run("XD1234", rules=rules)  # neither exactly; both by confusion
    assert (d.allowed, d.reason) == (False, Reason.NEEDS_GUARD)
    assert "ambiguous_match" in d.flags
    assert run("XO1234", rules=rules).vehicle_id == "v-o"  # exact beats the twin


@BOTH_PATHS
def test_a_resident_in_a_missing_group_is_not_let_through_by_it(facts: bool) -> None:
    src = world()
    src.add_resident(Resident("gus", groups=("no-such-group",), access_points=frozenset()))
    src.add_vehicle(Vehicle("v-gus", "GUS123", "gus"))
    d = run("GUS123", rules=RuleIndex.build(src, vehicle_facts=facts))
    assert (d.allowed, d.reason) == (False, Reason.NOT_PERMITTED)


@BOTH_PATHS
def test_any_one_open_grant_lets_through(facts: bool) -> None:
    src = world()
    # own grant: nights only; group grant: office hours on the main lanes
    src.add_group(Group("day", "day", frozenset({"main-in"}), "office"))
    src.add_resident(Resident("hal", groups=("day",), schedule_id="night"))
    src.add_vehicle(Vehicle("v-hal", "HAL900", "hal"))
    rules = RuleIndex.build(src, vehicle_facts=facts)
    assert run("HAL900", rules=rules).allowed  # Wednesday 10:00: the group's window
    assert run("HAL900", rules=rules, now=NOW + 13 * HOUR).allowed  # 23:00: its own
    assert run("HAL900", rules=rules, now=NOW + 9 * HOUR).reason == Reason.OUTSIDE_SCHEDULE


def test_a_vehicle_deleted_or_re_plated_since_the_index_does_not_open() -> None:
    # the entity path reads the car: what the index remembers is not enough
    src = world()
    gone = src.add_vehicle(Vehicle("v-del", "DEL123", "alice"))
    moved = src.add_vehicle(Vehicle("v-mov", "MOV123", "alice"))
    rules = RuleIndex.build(src, vehicle_facts=False)
    del src.vehicles[gone]
    src.vehicles[moved] = Vehicle("v-mov", "NEW999", "alice")
    assert run("DEL123", rules=rules).reason == Reason.UNKNOWN_PLATE
    assert run("MOV123", rules=rules).reason == Reason.UNKNOWN_PLATE


def test_both_paths_agree_on_every_plate_of_the_site() -> None:
    plates = [v.plate for v in world().vehicles.values()]
    reads = plates + [p[:-1] for p in plates] + [p + "X" for p in plates]
    for text in reads:
        a, b = run(text, rules=RULES), run(text, rules=RULES_ENTITIES)
        assert (a.allowed, a.reason, a.match, a.vehicle_id, a.resident_id, a.flags) == (
            b.allowed, b.reason, b.match, b.vehicle_id, b.resident_id, b.flags,
        ), text  # fmt: skip


# --- modes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "reason"), [(Mode.LOCKDOWN, Reason.LOCKDOWN), (Mode.HOLD_OPEN, Reason.HOLD_OPEN)]
)
def test_modes_come_before_confidence(mode: Mode, reason: Reason) -> None:
    d = run("AB12CDE", confidence=0.1, state=MemoryPolicyState({"main-in": mode}))
    assert d.reason == reason


# --- the schedule answers kept per minute -----------------------------------------------


class StepZone(dt.tzinfo):
    """UTC+1 until `at`, UTC+2 from then: a zone whose offset changes mid-minute."""

    def __init__(self, at: float) -> None:
        self.at = at

    def _offset(self, utc_ts: float) -> dt.timedelta:
        return dt.timedelta(hours=1 if utc_ts < self.at else 2)

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        assert d is not None
        naive = d.replace(tzinfo=dt.UTC).timestamp()
        return dt.timedelta(hours=1 if naive < self.at + 3600 else 2)

    def dst(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: dt.datetime | None) -> str:
        return "STEP"

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        return d + self._offset(d.replace(tzinfo=dt.UTC).timestamp())


def one_window(start: dt.time, end: dt.time) -> Schedule:
    return Schedule("w", "", (TimeWindow(ALL_DAYS, start, end),))


def scheduled(schedule: Schedule) -> RuleIndex:
    """A site with one car allowed only under `schedule`."""
    src = world()
    src.add_schedule(schedule)
    src.add_resident(Resident("sam", access_points=None, schedule_id=schedule.id))
    src.add_vehicle(Vehicle("v-sam", "SAM123", "sam"))
    return RuleIndex.build(src)


@pytest.mark.parametrize("order", ["closed_first", "open_first"])
def test_a_window_starting_mid_minute_is_not_answered_from_the_minute(order: str) -> None:
    rules = scheduled(one_window(dt.time(10, 0, 30), dt.time(12)))
    minute = NOW  # 10:00:00 local, a whole epoch minute
    times = [minute + 10, minute + 40] if order == "closed_first" else [minute + 40, minute + 10]
    got = {t - minute: run("SAM123", rules=rules, now=t).allowed for t in times}
    assert got == {10.0: False, 40.0: True}


def test_an_offset_of_seconds_is_not_answered_from_the_minute() -> None:
    # Monrovia kept -0:44:30 until 1972: local minutes start 30 s into epoch minutes
    monrovia = zoneinfo.ZoneInfo("Africa/Monrovia")
    rules = scheduled(one_window(dt.time(8), dt.time(9)))
    eight = dt.datetime(1960, 6, 1, 8, 0, tzinfo=monrovia).timestamp()
    minute = eight // 60 * 60
    assert minute != eight  # 08:00 local falls inside an epoch minute
    access_point = AccessPoint("main-in", Direction.IN, PolicyConfig(), monrovia)
    for first, second in [(eight - 5, eight + 5), (eight + 5, eight - 5)]:
        rules.schedule_answers.clear()
        answers = []
        for t in (first, second):
            r = PlateRead("main-in", "SAM123", "cam1", t, 0.0, 0.95, CredentialKind.PLATE)
            answers.append(decide(r, access_point, rules, MemoryPolicyState(), t).allowed)
        assert answers == [first >= eight, second >= eight]


def test_an_offset_changing_mid_minute_is_not_answered_from_the_minute() -> None:
    # 08:59:30 UTC the zone steps from +1 to +2: local 09:59:30 becomes 10:59:30
    step_at = dt.datetime(2025, 3, 12, 8, 59, 30, tzinfo=dt.UTC).timestamp()
    zone = StepZone(step_at)
    rules = scheduled(one_window(dt.time(10), dt.time(12)))
    access_point = AccessPoint("main-in", Direction.IN, PolicyConfig(), zone)  # type: ignore[arg-type]
    for first, second in [(step_at - 20, step_at + 10), (step_at + 10, step_at - 20)]:
        rules.schedule_answers.clear()
        answers = []
        for t in (first, second):
            r = PlateRead("main-in", "SAM123", "cam1", t, 0.0, 0.95, CredentialKind.PLATE)
            answers.append(decide(r, access_point, rules, MemoryPolicyState(), t).allowed)
        assert answers == [first >= step_at, second >= step_at]


def test_schedule_answers_are_kept_for_the_minute_and_bounded() -> None:
    rules = scheduled(one_window(dt.time(8), dt.time(18)))
    rules.schedule_answers.clear()
    assert run("SAM123", rules=rules).allowed
    assert len(rules.schedule_answers) == 1  # a plain answer is kept
    # many minutes later the table never grows past its bound
    for minute in range(5000):
        run("SAM123", rules=rules, now=NOW + 60 * minute)
    assert 0 < len(rules.schedule_answers) <= 4096


def test_compiled_grants_are_bounded() -> None:
    for i in range(5000):
        run("AB12CDE", ap_id=f"lane-{i}")
    assert 0 < len(RULES._grant_schedules) <= 4096


def test_a_missing_schedule_is_never_kept_as_an_answer() -> None:
    src = world()
    src.add_resident(Resident("zed", access_points=None, schedule_id="nope"))
    src.add_vehicle(Vehicle("v-zed", "ZED123", "zed"))
    rules = RuleIndex.build(src)
    rules.schedule_answers.clear()
    for _ in range(2):
        d = run("ZED123", rules=rules)
        assert (d.reason, "missing_schedule" in d.flags) == (Reason.OUTSIDE_SCHEDULE, True)
    assert not rules.schedule_answers


def test_a_kept_answer_serves_the_rest_of_its_minute() -> None:
    rules = scheduled(one_window(dt.time(8), dt.time(18)))
    rules.schedule_answers.clear()
    assert run("SAM123", rules=rules).allowed
    assert run("SAM123", rules=rules, now=NOW + 59).allowed
    key = ("w", TZ, NOW // 60)
    assert list(rules.schedule_answers.items()) == [(key, True)]  # one answer for the minute
    # the kept answer is what the next read of that minute uses (no calendar work)
    rules.schedule_answers[key] = False
    assert run("SAM123", rules=rules, now=NOW + 30).reason == Reason.OUTSIDE_SCHEDULE
    assert run("SAM123", rules=rules, now=NOW + 60).allowed  # a new minute: worked out


def test_schedule_answers_never_exceed_their_bound() -> None:
    rules = scheduled(one_window(dt.time(8), dt.time(18)))
    rules.schedule_answers.clear()
    most = 0
    for minute in range(4200):
        run("SAM123", rules=rules, now=NOW + 60 * minute)
        most = max(most, len(rules.schedule_answers))
    assert most == 4096


def test_compiled_grants_are_kept_per_access_point_and_bounded() -> None:
    rules = RuleIndex.build(world())
    assert run("KX55PRM", rules=rules).allowed
    kept = dict(rules._grant_schedules)
    assert len(kept) == 1 and next(iter(kept.values())) == ("office",)
    # what is kept is what the next decision at that access point uses
    (key,) = kept
    rules._grant_schedules[key] = ()
    assert run("KX55PRM", rules=rules).reason == Reason.NOT_PERMITTED
    most = 0
    for i in range(4200):
        run("KX55PRM", rules=rules, ap_id=f"lane-{i}")
        most = max(most, len(rules._grant_schedules))
    assert most == 4096


# --- tiers: the best tier explains the read -------------------------------------------


@BOTH_PATHS
def test_an_exact_suspended_car_is_not_rescued_by_a_confusion_match(facts: bool) -> None:
    src = world()
    src.add_vehicle(Vehicle("v-zero", "0LD111", "bob"))  # OLD111 by confusion, allowed
    d = run("OLD111", rules=RuleIndex.build(src, vehicle_facts=facts))
    assert (d.allowed, d.reason, d.vehicle_id) == (False, Reason.INACTIVE, "v-alice-old")
    assert d.match is not None and d.match.kind == MatchKind.EXACT


def test_an_exact_suspended_car_is_not_rescued_by_a_confusion_pass() -> None:
    src = world()
    src.add_pass(VisitorPass("p-zero", "0LD111", "alice", NOW - HOUR, NOW + HOUR))
    rules = RuleIndex.build(src)
    d = run("OLD111", rules=rules, policy=PolicyConfig(visitor_match="confusion"))
    assert (d.allowed, d.reason, d.vehicle_id) == (False, Reason.INACTIVE, "v-alice-old")


def test_a_valid_confusion_pass_is_found_behind_an_expired_one() -> None:
    src = world()
    src.add_pass(VisitorPass("p-old", "XO5555", "alice", NOW - 2 * HOUR, NOW - HOUR))
    src.add_pass(VisitorPass("p-new", "X05555", "alice", NOW - HOUR, NOW + HOUR))
    d = run("XD5555", rules=RuleIndex.build(src), policy=PolicyConfig(visitor_match="confusion"))
    assert (d.allowed, d.reason, d.pass_id) == (True, Reason.VISITOR_PASS, "p-new")


def test_a_re_issued_tag_opens_after_its_old_record_is_gone() -> None:
    src = world()
    old = src.add_tag(Tag("t-old", "5555AAAA", "alice"))
    src.add_tag(Tag("t-new", "5555AAAA", "bob"))
    rules = RuleIndex.build(src)
    del src.tags[old]
    d = tag("5555AAAA", rules=rules)
    assert (d.allowed, d.resident_id) == (True, "bob")


class CountingVehicles(MemoryRuleSource):
    """Counts vehicle reads, as a SQLite store would pay a query for each."""

    reads = 0

    def vehicle(self, key: int) -> Vehicle | None:
        CountingVehicles.reads += 1
        return super().vehicle(key)


def test_an_ambiguous_fuzzy_tier_stops_reading_cars_at_its_second_plate() -> None:
    src = CountingVehicles()
    for r in world().residents.values():
        src.add_resident(r)
    for i in range(10):  # ten cars one edit from the read
        src.add_vehicle(Vehicle(f"v-{i}", f"FLEET{i}", "alice"))
    rules = RuleIndex.build(src, vehicle_facts=False)
    CountingVehicles.reads = 0
    d = run("FLEETX", rules=rules)
    assert (d.reason, "ambiguous_match" in d.flags) == (Reason.NEEDS_GUARD, True)
    assert CountingVehicles.reads == 2


@BOTH_PATHS
def test_ids_come_back_as_stored_whatever_their_characters(facts: bool) -> None:
    # ids arrive from JSON and CSV: any string, even a lone surrogate from a JSON escape
    src = world()
    src.add_resident(Resident("r-\udc80-ø"))
    src.add_vehicle(Vehicle("v-\ud800-é", "ODD123", "r-\udc80-ø"))
    d = run("ODD123", rules=RuleIndex.build(src, vehicle_facts=facts))
    assert (d.allowed, d.vehicle_id, d.resident_id) == (True, "v-\ud800-é", "r-\udc80-ø")


# --- the policy state ---------------------------------------------------------------------


def test_memory_state_keeps_the_later_of_two_passages_at_the_same_time() -> None:
    state = MemoryPolicyState()
    state.record_passage("v", Direction.IN, 100.0)
    state.record_passage("v", Direction.OUT, 100.0)
    assert state.last_passage("v") == (Direction.OUT, 100.0)


def test_memory_state_counts_every_use_and_prunes_only_older_passages() -> None:
    state = MemoryPolicyState()
    state.record_pass_use("p")
    state.record_pass_use("p", 2)
    assert (state.pass_uses("p"), state.pass_uses("q")) == (3, 0)
    state.record_passage("v", Direction.IN, 60.0)
    assert state.prune(before=60.0) == 0  # exactly at the cut: kept
    assert state.last_passage("v") == (Direction.IN, 60.0)


def test_a_recorded_visitor_exit_is_a_passage_but_not_a_use() -> None:
    state = MemoryPolicyState()
    out = run("VIS123", direction=Direction.OUT)
    state.record(out, NOW)
    assert state.last_passage("p-now") == (Direction.OUT, NOW)
    assert state.pass_uses("p-now") == 0


# --- what a decision records --------------------------------------------------------------


def test_an_allowed_resident_is_picked_over_an_expired_pass_of_the_same_plate() -> None:
    src = world()
    src.add_pass(VisitorPass("p-old", "AB12CDE", "bob", NOW - 2 * HOUR, NOW - HOUR))
    d = run("AB12CDE", rules=RuleIndex.build(src))
    assert (d.allowed, d.reason, d.vehicle_id, d.pass_id) == (
        True,
        Reason.RESIDENT,
        "v-alice",
        None,
    )


def test_passes_are_matched_fuzzily_one_edit_away_only() -> None:
    deep = RuleIndex.build(world(), pass_depth=2)
    assert run("VIS12", rules=deep).reason == Reason.NEEDS_GUARD  # one edit: a guard looks
    assert run("VIS1", rules=deep).reason == Reason.UNKNOWN_PLATE  # two: not a match


def test_a_deep_enough_index_is_not_flagged_as_capped() -> None:
    d = run("AB12CDE")
    assert not {"deny_distance_capped", "resident_distance_capped"} & set(d.flags)


@pytest.mark.parametrize("text", ["ZZ99ZZZ", "", "0A1B2C3D4E"])
def test_every_decision_names_its_access_point_rules_and_read(text: str) -> None:
    d = run(text, kind=CredentialKind.TAG if text.startswith("0A") else CredentialKind.PLATE)
    assert (d.access_point, d.rules_version) == ("main-in", RULES.version)
    assert d.inputs["source"] == "cam1"
    assert d.inputs["kind"] == ("tag" if text.startswith("0A") else "plate")


def test_an_invalid_read_records_why_and_matches_nothing() -> None:
    d = run("A" * 17)
    assert d.inputs["normalised"] == "" and d.match is None
    assert d.inputs["error"] == "normalised text has 17 characters (1..16)"
    clock = run("AB12CDE", now=float("nan"))
    assert clock.inputs["error"] == "decision time nan is not a finite number"


def test_a_read_that_is_not_text_is_recorded_as_its_shortened_repr() -> None:
    odd = list(range(100))
    r = PlateRead("main-in", odd, "cam1", NOW, 0.0, 0.95, CredentialKind.PLATE)  # type: ignore[arg-type]
    d = decide(r, AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ), RULES,
               MemoryPolicyState(), NOW)  # fmt: skip
    assert d.inputs["raw_text"] == repr(odd)[:64] and len(d.inputs["raw_text"]) == 64
    assert "invalid_read" in d.flags and not d.allowed


def test_an_entity_re_plated_to_text_that_is_no_plate_is_not_a_hit() -> None:
    src = world()
    key = src.add_deny(DenyEntry("d-junk", "JUNK12", "stolen"))
    rules = RuleIndex.build(src)
    src.deny[key] = DenyEntry("d-junk", "J" * 300, "stolen")  # cannot even be normalised
    assert run("JUNK12", rules=rules).reason == Reason.UNKNOWN_PLATE


def test_a_recorded_decision_without_a_direction_counts_as_an_entry() -> None:
    state = MemoryPolicyState()
    entry = dataclasses.replace(run("ONCE33"), inputs={})
    state.record(entry, NOW)
    assert state.last_passage("p-once") == (Direction.IN, NOW)
    assert state.pass_uses("p-once") == 1


def test_a_valid_confusion_pass_is_found_behind_two_expired_ones() -> None:
    src = world()
    src.add_pass(VisitorPass("p-o", "XO6666", "alice", NOW - 2 * HOUR, NOW - HOUR))
    src.add_pass(VisitorPass("p-d", "XD6666", "alice", NOW - 2 * HOUR, NOW - HOUR))
    src.add_pass(VisitorPass("p-q", "XQ6666", "alice", NOW - HOUR, NOW + HOUR))
    d = run("X06666", rules=RuleIndex.build(src), policy=PolicyConfig(visitor_match="confusion"))
    assert (d.allowed, d.reason, d.pass_id) == (True, Reason.VISITOR_PASS, "p-q")


def test_undo_takes_back_exactly_what_record_counted() -> None:
    # the relay failed: the gate did not open, so the passage and the pass use never happened
    state = MemoryPolicyState()
    state.record_passage("v-alice", Direction.OUT, NOW - 100)
    car = run("AB12CDE", state=state)
    before = state.record(car, NOW)  # what the passage was: what undo() restores
    assert before == (Direction.OUT, NOW - 100)
    state.undo(car, before)
    assert state.last_passage("v-alice") == (Direction.OUT, NOW - 100)
    visitor = run("ONCE33", state=state)
    assert state.record(visitor, NOW) is None  # the pass had no passage yet
    state.undo(visitor, None)
    assert (state.last_passage("p-once"), state.pass_uses("p-once")) == (None, 0)
    leaving = run("ONCE33", state=state, direction=Direction.OUT)
    state.record_pass_use("p-once")
    state.record(leaving, NOW)
    state.undo(leaving, None)
    assert state.pass_uses("p-once") == 1  # an exit was never a use
    denied = run("ONCE33", state=state, confidence=0.1)
    assert denied.pass_id == "p-once" and not denied.allowed
    state.record_passage("p-once", Direction.IN, NOW - 50)
    state.undo(denied, None)  # nothing was recorded for a denial: nothing to take back
    assert state.pass_uses("p-once") == 1
    assert state.last_passage("p-once") == (Direction.IN, NOW - 50)


def test_undo_of_a_tag_and_of_a_decision_without_a_direction() -> None:
    state = MemoryPolicyState()
    state.record_passage("alice", Direction.OUT, NOW - 100)  # a tag's subject: its resident
    card = tag("0A1B2C3D4E", state=state)
    state.record(card, NOW)
    state.undo(card, (Direction.OUT, NOW - 100))
    assert state.last_passage("alice") == (Direction.OUT, NOW - 100)
    entry = dataclasses.replace(run("ONCE33", state=state), inputs={})
    state.record(entry, NOW)
    state.undo(entry, None)  # no direction recorded: an entry, as record() counted it
    assert state.pass_uses("p-once") == 0
