"""decide(): every reason code, the order of checks, schedules, anti-passback, properties."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.config import PolicyConfig
from gated.model import (
    AntiPassback,
    CredentialKind,
    Decision,
    Direction,
    EventType,
    MatchKind,
    Mode,
    PlateRead,
    Reason,
)
from gated.policy import AccessPoint, MemoryPolicyState, decide, schedule_open, subject_for
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

TZ = zoneinfo.ZoneInfo("Europe/Amsterdam")
WEEKDAYS = frozenset(range(5))
ALL_DAYS = frozenset(range(7))


def at(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    """Epoch seconds of a wall-clock time in TZ."""
    return dt.datetime(y, mo, d, h, mi, tzinfo=TZ).timestamp()


NOW = at(2025, 3, 12, 10)  # a Wednesday morning
HOUR = 3600.0


def world() -> MemoryRuleSource:
    """A small site: residents with cars and tags, groups, schedules, passes, a deny list."""
    src = MemoryRuleSource()
    src.add_schedule(
        Schedule("office", "office", (TimeWindow(WEEKDAYS, dt.time(8), dt.time(18)),))
    )
    src.add_schedule(
        Schedule("night", "night", (TimeWindow(ALL_DAYS, dt.time(22), dt.time(6)),))
    )
    src.add_group(Group("staff", "staff", frozenset({"main-in", "main-out"}), "office"))
    src.add_group(Group("nights", "nights", None, "night"))
    src.add_resident(Resident("alice", "Alice", "1A"))  # everywhere, always
    src.add_resident(Resident("bob", "Bob", "2B", groups=("staff",), access_points=frozenset()))
    src.add_resident(Resident("carol", "Carol", "3C", active=False))
    src.add_resident(Resident("dave", "Dave", "4D", access_points=frozenset({"side-in"})))
    src.add_resident(
        Resident("erin", "Erin", "5E", groups=("nights",), access_points=frozenset())
    )
    src.add_vehicle(Vehicle("v-alice", "AB12CDE", "alice"))
    src.add_vehicle(Vehicle("v-alice-old", "OLD111", "alice", active=False))
    src.add_vehicle(Vehicle("v-bob", "KX55PRM", "bob"))
    src.add_vehicle(Vehicle("v-carol", "CAR0L9", "carol"))
    src.add_vehicle(Vehicle("v-dave", "DAVE44", "dave"))
    src.add_vehicle(Vehicle("v-erin", "NYT999", "erin"))
    src.add_vehicle(Vehicle("v-twin1", "TWN100", "alice"))  # two plates one edit apart
    src.add_vehicle(Vehicle("v-twin2", "TWN109", "bob"))
    src.add_tag(Tag("t-alice", "0A1B2C3D4E", "alice"))
    src.add_tag(Tag("t-carol", "0A1B2C3D4F", "alice", active=False))
    src.add_pass(VisitorPass("p-now", "VIS123", "alice", NOW - HOUR, NOW + HOUR, "Vera"))
    src.add_pass(VisitorPass("p-later", "LATER1", "alice", NOW + HOUR, NOW + 2 * HOUR))
    src.add_pass(VisitorPass("p-gone", "GONE22", "alice", NOW - 2 * HOUR, NOW - HOUR))
    src.add_pass(VisitorPass("p-once", "ONCE33", "alice", NOW - HOUR, NOW + HOUR, max_uses=1))
    src.add_pass(
        VisitorPass(
            "p-side", "SIDE44", "alice", NOW - HOUR, NOW + HOUR, access_points=frozenset({"x"})
        )
    )
    src.add_pass(VisitorPass("p-host", "HOST55", "carol", NOW - HOUR, NOW + HOUR))
    src.add_deny(DenyEntry("d-stolen", "STOLEN7", "stolen"))
    src.add_deny(DenyEntry("d-old", "PAROLE1", "ban lifted", until=NOW - HOUR))
    return src


RULES = RuleIndex.build(world())
# The same rules decided from entities instead of the compact vehicle facts: the
# two paths must give the same decision, so the tables below run on both.
RULES_ENTITIES = RuleIndex.build(world(), vehicle_facts=False)
BOTH_PATHS = pytest.mark.parametrize("rules", [RULES, RULES_ENTITIES], ids=["facts", "entities"])


def ap(
    policy: PolicyConfig | None = None,
    direction: Direction = Direction.IN,
    ap_id: str = "main-in",
) -> AccessPoint:
    return AccessPoint(ap_id, direction, policy or PolicyConfig(), TZ)


def read(
    text: str,
    confidence: float | None = 0.95,
    kind: CredentialKind = CredentialKind.PLATE,
    direction: Direction | None = None,
) -> PlateRead:
    return PlateRead("main-in", text, "cam1", NOW, 0.0, confidence, kind, direction)


def run(
    text: str,
    *,
    policy: PolicyConfig | None = None,
    state: MemoryPolicyState | None = None,
    now: float = NOW,
    rules: RuleIndex = RULES,
    **kw: Any,
) -> Decision:
    access_point = ap(policy, kw.pop("ap_direction", Direction.IN), kw.pop("ap_id", "main-in"))
    return decide(read(text, **kw), access_point, rules, state or MemoryPolicyState(), now)


# --- table of reason codes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "allowed", "reason", "kind", "extra"),
    [
        ("AB12CDE", True, Reason.RESIDENT, MatchKind.EXACT, {}),
        ("ab-12 cde", True, Reason.RESIDENT, MatchKind.EXACT, {}),
        ("A812CDE", True, Reason.RESIDENT, MatchKind.CONFUSION, {}),
        ("AB12CDX", True, Reason.RESIDENT, MatchKind.FUZZY, {}),
        ("AB12CD", True, Reason.RESIDENT, MatchKind.FUZZY, {}),
        ("ZZ99ZZZ", False, Reason.UNKNOWN_PLATE, None, {}),
        ("STOLEN7", False, Reason.DENY_LISTED, MatchKind.EXACT, {}),
        ("5T0LEN7", False, Reason.DENY_LISTED, MatchKind.CONFUSION, {}),
        ("STOLEN", False, Reason.DENY_LISTED, MatchKind.FUZZY, {}),
        ("PAROLE1", False, Reason.UNKNOWN_PLATE, None, {}),  # deny entry expired
        ("OLD111", False, Reason.INACTIVE, MatchKind.EXACT, {}),  # vehicle inactive
        ("CAR0L9", False, Reason.INACTIVE, MatchKind.EXACT, {}),  # resident inactive
        ("DAVE44", False, Reason.NOT_PERMITTED, MatchKind.EXACT, {}),
        ("KX55PRM", True, Reason.RESIDENT, MatchKind.EXACT, {}),  # staff, office hours
        ("NYT999", False, Reason.OUTSIDE_SCHEDULE, MatchKind.EXACT, {}),  # nights only
        ("VIS123", True, Reason.VISITOR_PASS, MatchKind.EXACT, {"pass_id": "p-now"}),
        ("V1S123", False, Reason.NEEDS_GUARD, MatchKind.CONFUSION, {"pass_id": "p-now"}),
        ("VIS12", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, {"pass_id": "p-now"}),
        ("LATER1", False, Reason.PASS_NOT_YET_VALID, MatchKind.EXACT, {}),
        ("GONE22", False, Reason.PASS_EXPIRED, MatchKind.EXACT, {}),
        ("SIDE44", False, Reason.NOT_PERMITTED, MatchKind.EXACT, {}),
        ("HOST55", False, Reason.INACTIVE, MatchKind.EXACT, {}),  # host suspended
        ("TWN10X", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, {"flag": "ambiguous_match"}),
        ("TWN100", True, Reason.RESIDENT, MatchKind.EXACT, {}),  # exact beats the fuzzy twin
    ],
)
@BOTH_PATHS
def test_reason_table(
    text: str,
    allowed: bool,
    reason: Reason,
    kind: MatchKind | None,
    extra: dict[str, str],
    rules: RuleIndex,
) -> None:
    d = run(text, rules=rules)
    assert (d.allowed, d.reason) == (allowed, reason)
    assert (d.match.kind if d.match else None) == kind
    if "pass_id" in extra:
        assert d.pass_id == extra["pass_id"]
    if "flag" in extra:
        assert extra["flag"] in d.flags


def test_resident_decision_names_vehicle_and_resident() -> None:
    d = run("AB12CDE")
    assert (d.resident_id, d.vehicle_id, d.pass_id) == ("alice", "v-alice", None)
    assert d.event_type == EventType.ENTRY
    assert d.match is not None and d.match.list == "resident"


def test_visitor_decision_names_pass_host_and_visitor() -> None:
    d = run("VIS123")
    assert (d.pass_id, d.resident_id, d.visitor_name) == ("p-now", "alice", "Vera")
    assert d.event_type == EventType.VISITOR_ENTRY


def test_fuzzy_edits_explain_the_difference() -> None:
    d = run("AB12CDX")
    assert d.match is not None
    assert [(e.op, e.position, e.read, e.stored) for e in d.match.edits] == [
        ("sub", 6, "X", "E")
    ]


def test_fuzzy_distance_zero_turns_fuzzy_matching_off() -> None:
    d = run("AB12CDX", policy=PolicyConfig(resident_fuzzy_distance=0))
    assert d.reason == Reason.UNKNOWN_PLATE


def test_confusion_visitor_match_opens_for_a_confused_read() -> None:
    d = run("V1S123", policy=PolicyConfig(visitor_match="confusion"))
    assert (d.allowed, d.reason) == (True, Reason.VISITOR_PASS)
    # a fuzzy pass hit still needs a guard
    assert run("VIS12", policy=PolicyConfig(visitor_match="confusion")).reason == Reason.NEEDS_GUARD


# --- pass uses ------------------------------------------------------------------------


def test_pass_used_up_on_entry_but_not_on_exit() -> None:
    state = MemoryPolicyState()
    first = run("ONCE33", state=state)
    assert (first.allowed, first.reason) == (True, Reason.VISITOR_PASS)
    state.record(first, NOW)
    assert state.pass_uses("p-once") == 1
    again = run("ONCE33", state=state)
    assert (again.allowed, again.reason) == (False, Reason.PASS_USED_UP)
    assert again.inputs["pass_uses"] == {"p-once": 1}
    leaving = run("ONCE33", state=state, direction=Direction.OUT)
    assert (leaving.allowed, leaving.reason) == (True, Reason.VISITOR_PASS)
    state.record(leaving, NOW + 60)
    assert state.pass_uses("p-once") == 1  # exits are not uses


# --- order of checks ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [Mode.NORMAL, Mode.LOCKDOWN, Mode.HOLD_OPEN])
@pytest.mark.parametrize("confidence", [0.99, 0.3, None])
@pytest.mark.parametrize("text", ["STOLEN7", "STOLEN", "5TOLEN7"])
def test_deny_list_comes_first_whatever_the_mode_or_confidence(
    mode: Mode, confidence: float | None, text: str
) -> None:
    state = MemoryPolicyState({"main-in": mode})
    d = run(text, state=state, confidence=confidence)
    assert (d.allowed, d.reason) == (False, Reason.DENY_LISTED)
    assert d.inputs["deny_entry"] == "d-stolen"


def test_deny_list_beats_a_resident_with_the_same_plate() -> None:
    src = world()
    src.add_vehicle(Vehicle("v-x", "STOLEN7", "alice"))
    d = run("STOLEN7", rules=RuleIndex.build(src))
    assert d.reason == Reason.DENY_LISTED


def test_lockdown_denies_but_reports_the_match() -> None:
    d = run("AB12CDE", state=MemoryPolicyState({"main-in": Mode.LOCKDOWN}))
    assert (d.allowed, d.reason) == (False, Reason.LOCKDOWN)
    assert (d.vehicle_id, d.resident_id) == ("v-alice", "alice")
    assert d.inputs["mode"] == "lockdown"


def test_lockdown_applies_to_unknown_plates_too() -> None:
    d = run("ZZ99ZZZ", state=MemoryPolicyState({"main-in": Mode.LOCKDOWN}))
    assert (d.allowed, d.reason, d.match) == (False, Reason.LOCKDOWN, None)


@pytest.mark.parametrize("text", ["AB12CDE", "ZZ99ZZZ", "GONE22"])
def test_hold_open_allows_and_records_the_match(text: str) -> None:
    d = run(text, state=MemoryPolicyState({"main-in": Mode.HOLD_OPEN}))
    assert (d.allowed, d.reason) == (True, Reason.HOLD_OPEN)
    if text == "AB12CDE":
        assert d.vehicle_id == "v-alice"


@pytest.mark.parametrize("confidence", [0.79, 0.0, math.nan, -1.0, 1.5])
def test_low_confidence_never_opens_but_reports_the_match(confidence: float) -> None:
    d = run("AB12CDE", confidence=confidence)
    assert (d.allowed, d.reason) == (False, Reason.LOW_CONFIDENCE)
    assert d.vehicle_id == "v-alice"
    assert d.inputs["min_confidence"] == 0.80


def test_confidence_at_the_threshold_opens() -> None:
    assert run("AB12CDE", confidence=0.80).allowed


def test_missing_confidence_is_not_gated_but_flagged() -> None:
    d = run("AB12CDE", confidence=None)
    assert d.allowed and "no_confidence" in d.flags


def test_exact_pass_outranks_a_fuzzy_resident() -> None:
    src = world()
    src.add_vehicle(Vehicle("v-near", "GONE23", "alice"))
    d = run("GONE22", rules=RuleIndex.build(src))
    # the exact (expired) pass explains the read, not the fuzzy resident car
    assert (d.allowed, d.reason, d.pass_id) == (False, Reason.PASS_EXPIRED, "p-gone")


def test_valid_pass_wins_over_a_resident_car_outside_its_schedule() -> None:
    src = world()
    src.add_pass(VisitorPass("p-erin", "NYT999", "alice", NOW - HOUR, NOW + HOUR))
    d = run("NYT999", rules=RuleIndex.build(src))
    assert (d.allowed, d.reason, d.pass_id) == (True, Reason.VISITOR_PASS, "p-erin")


UK = r"[A-Z]{2}[0-9]{2}[A-Z]{3}"
UK_FORMAT = PolicyConfig(plate_formats=[UK])


@BOTH_PATHS
@pytest.mark.parametrize(
    ("text", "allowed", "reason", "kind", "flag"),
    [
        ("AB12CDE", True, Reason.RESIDENT, MatchKind.EXACT, None),
        ("DAVE44", False, Reason.NOT_PERMITTED, MatchKind.EXACT, None),  # foreign format
        # a fuzzy or confusion read that fits no format never opens by itself
        ("AB12CD", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, "plate_format_mismatch"),
        ("A812CD", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, "plate_format_mismatch"),
        ("AB12CDX", True, Reason.RESIDENT, MatchKind.FUZZY, None),  # fuzzy, but fits
        ("A812CDE", False, Reason.NEEDS_GUARD, MatchKind.CONFUSION, "plate_format_mismatch"),
        ("KX55PRN", True, Reason.RESIDENT, MatchKind.FUZZY, None),
        ("KX55PR", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, "plate_format_mismatch"),
        # a denied candidate is not turned into needs_guard: the reason stays the real one
        ("OLD11", False, Reason.INACTIVE, MatchKind.FUZZY, None),
        ("VIS12", False, Reason.NEEDS_GUARD, MatchKind.FUZZY, "visitor_match_fuzzy"),
    ],
)
def test_plate_format_mismatch_only_lets_exact_matches_open(
    text: str,
    allowed: bool,
    reason: Reason,
    kind: MatchKind,
    flag: str | None,
    rules: RuleIndex,
) -> None:
    d = run(text, policy=UK_FORMAT, rules=rules)
    assert (d.allowed, d.reason, d.match.kind if d.match else None) == (allowed, reason, kind)
    # whatever the outcome, the decision names the car the read was matched to
    car = {"A": ("v-alice", "alice"), "D": ("v-dave", "dave"), "K": ("v-bob", "bob"),
           "O": ("v-alice-old", "alice"), "V": (None, "alice")}[text[0]]  # fmt: skip
    assert (d.vehicle_id, d.resident_id) == car
    assert d.inputs["plate_format_ok"] is (re.fullmatch(UK, text) is not None)
    if flag is None:
        assert "plate_format_mismatch" not in d.flags
    else:
        assert flag in d.flags


@BOTH_PATHS
def test_an_exact_read_of_a_foreign_plate_opens_despite_the_format(rules: RuleIndex) -> None:
    d = run("DAVE44", policy=UK_FORMAT, ap_id="side-in", rules=rules)
    assert (d.allowed, d.reason, d.vehicle_id) == (True, Reason.RESIDENT, "v-dave")
    assert d.inputs["plate_format_ok"] is False


# --- tags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "allowed", "reason"),
    [
        ("0A1B2C3D4E", True, Reason.RESIDENT),
        ("0a1b2c3d4e", True, Reason.RESIDENT),
        ("0A1B2C3D4F", False, Reason.INACTIVE),
        ("0A1B2C3D40", False, Reason.UNKNOWN_PLATE),
        ("OA1B2C3D4E", False, Reason.UNKNOWN_PLATE),  # tags are exact: no confusion
    ],
)
def test_tags(tag: str, allowed: bool, reason: Reason) -> None:
    d = run(tag, kind=CredentialKind.TAG, confidence=None)
    assert (d.allowed, d.reason) == (allowed, reason)
    if allowed:
        assert d.resident_id == "alice" and d.match is not None and d.match.list == "tag"


# --- invalid reads -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "---", "A" * 17, "x" * 10_000])
def test_invalid_reads_are_denied_with_a_flag(text: str) -> None:
    d = run(text)
    assert (d.allowed, d.reason) == (False, Reason.UNKNOWN_PLATE)
    assert "invalid_read" in d.flags
    assert len(d.inputs["raw_text"]) <= 64
    assert "error" in d.inputs


def test_a_non_string_read_is_denied_not_raised() -> None:
    bad = dataclasses.replace(read("AB12CDE"), text=None)  # type: ignore[arg-type]
    d = decide(bad, ap(), RULES, MemoryPolicyState(), NOW)
    assert (d.allowed, "invalid_read" in d.flags) == (False, True)


# --- anti-passback -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "last", "allowed", "reason", "flag"),
    [
        (AntiPassback.OFF, (Direction.IN, NOW - 60), True, Reason.RESIDENT, None),
        (AntiPassback.SOFT, (Direction.IN, NOW - 60), True, Reason.RESIDENT, "anti_passback_soft"),
        (AntiPassback.HARD, (Direction.IN, NOW - 60), False, Reason.ANTI_PASSBACK, None),
        (AntiPassback.HARD, (Direction.OUT, NOW - 60), True, Reason.RESIDENT, None),
        (AntiPassback.HARD, (Direction.IN, NOW - 5 * HOUR), True, Reason.RESIDENT, None),  # reset
        (AntiPassback.HARD, (Direction.IN, NOW + HOUR), True, Reason.RESIDENT, "anti_passback_clock"),  # noqa: E501
        (AntiPassback.HARD, None, True, Reason.RESIDENT, None),
    ],
)
def test_anti_passback(
    level: AntiPassback,
    last: tuple[Direction, float] | None,
    allowed: bool,
    reason: Reason,
    flag: str | None,
) -> None:
    state = MemoryPolicyState()
    if last is not None:
        state.record_passage("v-alice", *last)
    d = run("AB12CDE", policy=PolicyConfig(anti_passback=level), state=state)
    assert (d.allowed, d.reason) == (allowed, reason)
    if flag:
        assert flag in d.flags
    else:
        assert not [f for f in d.flags if f.startswith("anti_passback")]


def test_anti_passback_after_a_recorded_decision() -> None:
    state = MemoryPolicyState()
    policy = PolicyConfig(anti_passback=AntiPassback.HARD)
    first = run("AB12CDE", policy=policy, state=state)
    state.record(first, NOW)
    second = run("AB12CDE", policy=policy, state=state, now=NOW + 30)
    assert second.reason == Reason.ANTI_PASSBACK
    out = run("AB12CDE", policy=policy, state=state, now=NOW + 60, ap_direction=Direction.OUT)
    assert out.allowed
    state.record(out, NOW + 60)
    assert run("AB12CDE", policy=policy, state=state, now=NOW + 90).allowed


def test_subjects_are_vehicle_then_pass_then_resident() -> None:
    assert subject_for("v", "r", None) == "v"
    assert subject_for(None, "host", "p") == "p"
    assert subject_for(None, "r", None) == "r"
    assert subject_for(None, None, None) is None


def test_memory_state_keeps_the_latest_passage_and_prunes() -> None:
    state = MemoryPolicyState()
    state.record_passage("v", Direction.IN, 100.0)
    state.record_passage("v", Direction.OUT, 50.0)  # older: journal replay out of order
    assert state.last_passage("v") == (Direction.IN, 100.0)
    state.record_passage("w", Direction.IN, 10.0)
    assert state.prune(before=60.0) == 1
    assert state.last_passage("w") is None
    state.set_mode("main-in", Mode.LOCKDOWN)
    assert (state.mode("main-in"), state.mode("other")) == (Mode.LOCKDOWN, Mode.NORMAL)


def test_denied_decisions_are_not_recorded() -> None:
    state = MemoryPolicyState()
    state.record(run("ZZ99ZZZ"), NOW)
    state.record(run("ONCE33", confidence=0.1), NOW)
    assert state.pass_uses("p-once") == 0


# --- schedules -----------------------------------------------------------------------

OFFICE = Schedule("o", "", (TimeWindow(WEEKDAYS, dt.time(8), dt.time(18)),))
NIGHT = Schedule("n", "", (TimeWindow(frozenset({4}), dt.time(22), dt.time(6)),))  # Fri night
HOLIDAY = Schedule(
    "h",
    "",
    (TimeWindow(ALL_DAYS, dt.time(22), dt.time(6)),),
    {
        dt.date(2025, 3, 12): (),  # closed all Wednesday, even the tail of Tuesday night
        dt.date(2025, 3, 13): ((dt.time(12), dt.time(13)),),
        dt.date(2025, 3, 14): ((dt.time(23), dt.time(1)),),  # crosses into Saturday
    },
)
ALWAYS = Schedule("a", "", (TimeWindow(ALL_DAYS, dt.time(0), dt.time(0)),))


@pytest.mark.parametrize(
    ("schedule", "when", "open_"),
    [
        (OFFICE, at(2025, 3, 12, 8, 0), True),
        (OFFICE, at(2025, 3, 12, 7, 59), False),
        (OFFICE, at(2025, 3, 12, 17, 59), True),
        (OFFICE, at(2025, 3, 12, 18, 0), False),  # end is exclusive
        (OFFICE, at(2025, 3, 15, 10, 0), False),  # Saturday
        (NIGHT, at(2025, 3, 14, 23, 0), True),  # Friday night
        (NIGHT, at(2025, 3, 15, 5, 59), True),  # the same window, Saturday morning
        (NIGHT, at(2025, 3, 15, 6, 0), False),
        (NIGHT, at(2025, 3, 14, 5, 0), False),  # Friday morning: Thursday has no window
        (NIGHT, at(2025, 3, 15, 23, 0), False),  # Saturday night
        (HOLIDAY, at(2025, 3, 12, 2, 0), False),  # closed day swallows the overnight tail
        (HOLIDAY, at(2025, 3, 12, 23, 0), False),
        (HOLIDAY, at(2025, 3, 13, 2, 0), False),  # Wednesday night never opened
        (HOLIDAY, at(2025, 3, 13, 12, 30), True),
        (HOLIDAY, at(2025, 3, 13, 22, 30), False),  # exception replaces the weekly window
        (HOLIDAY, at(2025, 3, 14, 23, 30), True),
        (HOLIDAY, at(2025, 3, 15, 0, 30), True),  # exception window runs past midnight
        (HOLIDAY, at(2025, 3, 15, 1, 30), False),
        (HOLIDAY, at(2025, 3, 15, 22, 30), True),  # back to the weekly window
        (ALWAYS, at(2025, 3, 12, 0, 0), True),
        (ALWAYS, at(2025, 3, 12, 23, 59), True),
    ],
)
def test_schedule_open(schedule: Schedule, when: float, open_: bool) -> None:
    assert schedule_open(schedule, when, TZ) is open_


def test_schedules_follow_the_wall_clock_across_dst() -> None:
    early = Schedule("e", "", (TimeWindow(ALL_DAYS, dt.time(1), dt.time(3)),))
    # 2025-03-30: clocks jump 02:00 -> 03:00 in Amsterdam
    spring = dt.datetime(2025, 3, 30, 0, 30, tzinfo=dt.UTC).timestamp()  # 01:30 CET
    assert schedule_open(early, spring, TZ)
    assert not schedule_open(early, spring + HOUR, TZ)  # 03:30 CEST
    # 2025-10-26: 02:00-03:00 happens twice; both are inside 01:00-03:00
    fall = dt.datetime(2025, 10, 26, 0, 30, tzinfo=dt.UTC).timestamp()  # 02:30 CEST
    assert schedule_open(early, fall, TZ)
    assert schedule_open(early, fall + HOUR, TZ)  # 02:30 CET
    assert not schedule_open(early, fall + 2 * HOUR, TZ)  # 03:30 CET


def test_a_missing_schedule_fails_closed() -> None:
    src = world()
    src.add_resident(Resident("zed", groups=(), access_points=None, schedule_id="nope"))
    src.add_vehicle(Vehicle("v-zed", "ZED123", "zed"))
    d = run("ZED123", rules=RuleIndex.build(src))
    assert (d.allowed, d.reason) == (False, Reason.OUTSIDE_SCHEDULE)
    assert "missing_schedule" in d.flags


def test_group_grant_follows_the_group_schedule() -> None:
    evening = at(2025, 3, 12, 20)
    assert run("KX55PRM", now=evening).reason == Reason.OUTSIDE_SCHEDULE
    assert run("NYT999", now=at(2025, 3, 12, 23)).allowed
    assert run("KX55PRM", ap_id="side-in").reason == Reason.NOT_PERMITTED


# --- explainability ------------------------------------------------------------------


def test_inputs_hold_everything_needed_to_replay() -> None:
    d = run(" ab-12 cde ", confidence=0.91)
    for key, value in {
        "raw_text": " ab-12 cde ",
        "normalised": "AB12CDE",
        "confusion_key": "4812C0E",
        "confidence": 0.91,
        "min_confidence": 0.80,
        "mode": "normal",
        "direction": "in",
        "access_point": "main-in",
        "now": NOW,
        "rules_version": RULES.version,
        "deny_distance": 1,
        "resident_distance": 1,
        "visitor_match": "exact",
    }.items():
        assert d.inputs[key] == value, key
    assert d.rules_version == RULES.version and d.access_point == "main-in"


def test_a_shallow_index_is_flagged() -> None:
    shallow = RuleIndex.build(world(), deny_depth=0)
    d = run("STOLEN", rules=shallow)
    assert "deny_distance_capped" in d.flags
    assert d.inputs["deny_distance"] == 0


# --- properties ----------------------------------------------------------------------

SEPARATORS = st.sampled_from([" ", "-", ".", "·", "/", ""])
LOOKALIKE = {"A": "\u0430", "B": "\u0412", "E": "\u0415", "K": "\u039a", "O": "\u041e"}


@st.composite
def mangled(draw: st.DrawFn, plate: str) -> str:
    """The plate as a camera might send it: case, separators, look-alike letters."""
    out = []
    for ch in plate:
        if ch in LOOKALIKE and draw(st.booleans()):
            ch = LOOKALIKE[ch]
        if draw(st.booleans()):
            ch = ch.lower()
        out.append(ch + draw(SEPARATORS))
    return draw(SEPARATORS) + "".join(out)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_plate_always_matches_itself_after_mangling(data: st.DataObject) -> None:
    plate = data.draw(st.sampled_from(["AB12CDE", "KX55PRM", "VIS123", "OLD111"]))
    d = run(data.draw(mangled(plate)))
    assert d.match is not None
    assert (d.match.kind, d.match.stored) == (MatchKind.EXACT, plate)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["STOLEN7", "5TOLEN7", "ST0LEN", "STOLEN77"]),
    st.sampled_from(list(Mode)),
    st.one_of(st.none(), st.floats(allow_nan=True)),
    st.sampled_from(list(AntiPassback)),
    st.sampled_from(["exact", "confusion"]),
)
def test_a_deny_listed_plate_never_opens(
    text: str, mode: Mode, confidence: float | None, apb: AntiPassback, visitor: str
) -> None:
    src = world()
    # whatever the other lists say about this plate
    src.add_vehicle(Vehicle("v-s", "STOLEN7", "alice"))
    src.add_pass(VisitorPass("p-s", "STOLEN7", "alice", NOW - HOUR, NOW + HOUR))
    src.add_tag(Tag("t-s", "STOLEN7", "alice"))
    policy = PolicyConfig(anti_passback=apb, visitor_match=visitor)  # type: ignore[arg-type]
    d = run(
        text,
        rules=RuleIndex.build(src),
        policy=policy,
        state=MemoryPolicyState({"main-in": mode}),
        confidence=confidence,
    )
    assert (d.allowed, d.reason) == (False, Reason.DENY_LISTED)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["AB12CDE", "A812CDE", "VIS123", "KX55PRM", "ZZ1", "0A1B2C3D4E"]),
    st.floats(min_value=0.0, max_value=0.7999),
    st.sampled_from(list(CredentialKind)),
)
def test_a_read_below_min_confidence_never_opens(
    text: str, confidence: float, kind: CredentialKind
) -> None:
    d = run(text, confidence=confidence, kind=kind)
    assert not d.allowed


@settings(max_examples=150, deadline=None)
@given(
    st.text(max_size=20),
    st.one_of(st.none(), st.floats()),
    st.sampled_from(list(Mode)),
    st.sampled_from(list(CredentialKind)),
)
def test_decide_is_deterministic_and_never_raises(
    text: str, confidence: float | None, mode: Mode, kind: CredentialKind
) -> None:
    state = MemoryPolicyState({"main-in": mode})
    first = run(text, confidence=confidence, state=state, kind=kind)
    second = run(text, confidence=confidence, state=state, kind=kind)
    assert first == second or (confidence is not None and math.isnan(confidence))
    assert (first.allowed, first.reason, first.match, first.flags) == (
        second.allowed,
        second.reason,
        second.match,
        second.flags,
    )


def test_a_shallow_resident_index_is_flagged() -> None:
    d = run("AB12CDE", policy=PolicyConfig(resident_fuzzy_distance=2))
    assert d.allowed and "resident_distance_capped" in d.flags
    assert d.inputs["resident_distance"] == 1


class CountingSource(MemoryRuleSource):
    """Counts entity reads, as a SQLite store would pay a query for each."""

    reads = 0

    def resident(self, resident_id: str) -> Resident | None:
        CountingSource.reads += 1
        return super().resident(resident_id)


@pytest.mark.parametrize(("facts", "reads"), [(False, 1), (True, 0)])
def test_entity_reads_are_cached_per_rule_set_version(facts: bool, reads: int) -> None:
    # the entity path reads the resident once per version; the facts path never does
    src = CountingSource()
    for r in world().residents.values():
        src.add_resident(r)
    src.add_vehicle(Vehicle("v-alice", "AB12CDE", "alice"))
    rules = RuleIndex.build(src, vehicle_facts=facts)
    assert (rules.vehicle_facts is not None) == facts
    CountingSource.reads = 0
    for _ in range(5):
        assert run("AB12CDE", rules=rules).allowed
    assert CountingSource.reads == reads
    src.add_resident(Resident("alice", active=False))
    src.version += 1
    rules = RuleIndex.build(src, vehicle_facts=facts)
    assert run("AB12CDE", rules=rules).reason == Reason.INACTIVE


@pytest.mark.parametrize("bad_now", [math.nan, math.inf, -math.inf])
def test_a_broken_clock_opens_nothing(bad_now: float) -> None:
    for text in ["AB12CDE", "VIS123"]:
        d = run(text, now=bad_now)
        assert not d.allowed
        assert "bad_clock" in d.flags


def test_a_time_beyond_the_calendar_fails_closed() -> None:
    d = run("KX55PRM", now=1e20)  # staff: needs the office schedule
    assert (d.allowed, d.reason) == (False, Reason.OUTSIDE_SCHEDULE)
    assert "bad_clock" in d.flags


def test_a_fuzzy_deny_hit_beats_an_exact_resident_hit_on_the_same_read() -> None:
    # The read is alice's car exactly, and two edits from a stolen plate: the deny
    # check must not be skipped because the exact tier already found a resident.
    src = world()
    src.add_deny(DenyEntry("d-near", "AB12CXY", "stolen"))
    rules = RuleIndex.build(src)
    d = run("AB12CDE", rules=rules, policy=PolicyConfig(deny_fuzzy_distance=2))
    assert (d.allowed, d.reason) == (False, Reason.DENY_LISTED)
    assert d.inputs["deny_entry"] == "d-near"
    assert (d.match.kind, d.match.distance) == (MatchKind.FUZZY, 2)
    # at distance 1 the same read is alice's
    d = run("AB12CDE", rules=rules, policy=PolicyConfig(deny_fuzzy_distance=1))
    assert (d.allowed, d.reason, d.vehicle_id) == (True, Reason.RESIDENT, "v-alice")


def test_an_ambiguous_fuzzy_tier_reports_its_first_plate() -> None:
    # TWN10X is one edit from both twins: a guard decides, and the decision names
    # the first plate of the tier (the tier stops reading entities at the second).
    d = run("TWN10X")
    assert (d.allowed, d.reason) == (False, Reason.NEEDS_GUARD)
    assert "ambiguous_match" in d.flags
    assert (d.match.stored, d.vehicle_id) == ("TWN100", "v-twin1")


@pytest.mark.parametrize("text", ["AB12CDE", "ZZ99ZZZ", "A812CDF", "STOLEN7", ""])
def test_decisions_are_plain_decisions(text: str) -> None:
    d = run(text)
    assert type(d) is Decision
    again = dataclasses.replace(d)  # goes through Decision.__init__
    assert again == d and repr(again) == repr(d)
