"""The facts path: decisions from compact vehicle facts equal the entity path's, exactly."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.config import PolicyConfig
from gated.errors import RulesError
from gated.model import Direction, PlateRead, Reason
from gated.policy import AccessPoint, MemoryPolicyState, decide
from gated.rules.entities import Group, Resident, Schedule, TimeWindow, Vehicle, VehicleFactsRow
from gated.rules.index import RuleIndex
from gated.rules.memory import MemoryRuleSource
from tests.core.test_policy import NOW, TZ, at, world

ALL_DAYS = frozenset(range(7))


def rich_world() -> MemoryRuleSource:
    """world() plus the awkward cases: duplicate plates, dangling references, odd ids."""
    src = world()
    src.add_schedule(
        Schedule("late", "late", (TimeWindow(ALL_DAYS, dt.time(10, 0, 30), dt.time(11)),))
    )
    src.add_group(Group("ghosts", "ghosts", None, "no-such-schedule"))
    src.add_group(Group("late", "late", frozenset({"main-in"}), "late"))
    src.add_resident(Resident("gus", groups=("ghosts", "no-such-group"), access_points=frozenset()))
    src.add_resident(Resident("liz", groups=("late",), access_points=frozenset()))
    src.add_resident(Resident("ünï-\udcff", groups=("staff", "nights"), access_points=None,
                              schedule_id="night"))  # fmt: skip
    src.add_vehicle(Vehicle("v-gus", "GUS111", "gus"))
    src.add_vehicle(Vehicle("v-liz", "LIZ222", "liz"))
    src.add_vehicle(Vehicle("v-uni-\u00e9", "UNI333", "ünï-\udcff"))
    src.add_vehicle(Vehicle("v-orphan", "ORF444", "nobody"))  # resident missing
    src.add_vehicle(Vehicle("v-dup1", "DUP555", "alice", active=False))  # same plate twice
    src.add_vehicle(Vehicle("v-dup2", "DUP555", "bob"))
    src.add_vehicle(Vehicle("v-empty", "", "alice"))  # unusable rows shift the index rows
    src.add_vehicle(Vehicle("v-long", "X" * 40, "alice"))
    src.add_vehicle(Vehicle("v-after", "AFT666", "erin"))
    return src


SRC = rich_world()
FACTS = RuleIndex.build(SRC)
ENTITIES = RuleIndex.build(SRC, vehicle_facts=False)
PLATES = sorted({v.plate for v in SRC.vehicles.values() if v.plate and len(v.plate) < 17})
TIMES = [NOW, at(2025, 3, 12, 20), at(2025, 3, 12, 23), at(2025, 3, 15, 10), NOW + 15, NOW + 45]
APS = ["main-in", "main-out", "side-in"]


def both(text: str, now: float, ap_id: str, policy: PolicyConfig) -> tuple[object, object]:
    access_point = AccessPoint(ap_id, Direction.IN, policy, TZ)
    read = PlateRead(ap_id, text, "cam1", now, 0.0, 0.95)
    return (
        decide(read, access_point, FACTS, MemoryPolicyState(), now),
        decide(read, access_point, ENTITIES, MemoryPolicyState(), now),
    )


def test_the_facts_are_loaded_and_the_entity_build_has_none() -> None:
    assert FACTS.vehicle_facts is not None and ENTITIES.vehicle_facts is None
    assert len(FACTS.vehicle_facts) == FACTS.counts()["resident"]
    assert FACTS.nbytes() > ENTITIES.nbytes()


@pytest.mark.parametrize("text", [*PLATES, "DUP55", "GUS11", "TWN10X", "A812CDE", "ZZ99ZZZ"])
@pytest.mark.parametrize("now", TIMES)
@pytest.mark.parametrize("ap_id", APS)
def test_every_vehicle_decides_alike_on_both_paths(text: str, now: float, ap_id: str) -> None:
    facts, entities = both(text, now, ap_id, PolicyConfig())
    assert facts == entities


def test_ids_survive_the_compact_store() -> None:
    facts, _ = both("UNI333", NOW, "main-in", PolicyConfig())
    assert facts.vehicle_id == "v-uni-\u00e9"  # type: ignore[attr-defined]
    assert facts.resident_id == "ünï-\udcff"  # type: ignore[attr-defined]
    after, _ = both("AFT666", at(2025, 3, 12, 23), "main-in", PolicyConfig())
    assert after.vehicle_id == "v-after"  # type: ignore[attr-defined]  # past the skipped rows


def test_dangling_references_fail_closed_on_the_facts_path() -> None:
    orphan, _ = both("ORF444", NOW, "main-in", PolicyConfig())
    assert (orphan.reason, orphan.resident_id) == (Reason.INACTIVE, "nobody")  # type: ignore[attr-defined]
    ghost, _ = both("GUS111", NOW, "main-in", PolicyConfig())
    assert ghost.reason == Reason.OUTSIDE_SCHEDULE  # type: ignore[attr-defined]
    assert "missing_schedule" in ghost.flags  # type: ignore[attr-defined]


PLATE_CHARS = st.sampled_from(sorted(set("".join(PLATES)) | {"8", "0", "Q"}))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.sampled_from(PLATES), st.text(PLATE_CHARS, min_size=1, max_size=8)),
    st.sampled_from(TIMES),
    st.sampled_from(APS),
    st.sampled_from([0, 1]),
    st.sampled_from([[], [r"^[A-Z]{3}\d{3}$"]]),
)
def test_any_read_decides_alike_on_both_paths(
    text: str, now: float, ap_id: str, distance: int, formats: list[str]
) -> None:
    policy = PolicyConfig(resident_fuzzy_distance=distance, plate_formats=formats)
    facts, entities = both(text, now, ap_id, policy)
    assert facts == entities


def test_schedule_answers_are_shared_within_a_minute_only_when_that_is_exact() -> None:
    # liz's group opens at 10:00:30: the minute 10:00 has two answers, never cached
    ten = at(2025, 3, 12, 10)
    rules = RuleIndex.build(SRC)
    for now, allowed in [(ten + 10, False), (ten + 40, True), (ten + 20, False)]:
        facts, _ = both("LIZ222", now, "main-in", PolicyConfig())
        d = decide(
            PlateRead("main-in", "LIZ222", "c", now, 0.0, 0.95),
            AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ),
            rules,
            MemoryPolicyState(),
            now,
        )
        assert d.allowed is allowed and facts.allowed is allowed  # type: ignore[attr-defined]
    assert not any(key[0] == "late" for key in rules.schedule_answers)
    # a whole-minute schedule is answered once per minute and time zone
    decide(
        PlateRead("main-in", "KX55PRM", "c", ten, 0.0, 0.95),
        AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ),
        rules,
        MemoryPolicyState(),
        ten,
    )
    assert rules.schedule_answers[("office", TZ, ten // 60)] is True


def test_schedule_answers_follow_the_access_points_time_zone() -> None:
    rules = RuleIndex.build(SRC)
    nine_utc = at(2025, 3, 12, 8)  # 08:00 in Amsterdam is 07:00 UTC
    for tz, allowed in [(TZ, True), (zoneinfo.ZoneInfo("America/New_York"), False)]:
        d = decide(
            PlateRead("main-in", "KX55PRM", "c", nine_utc, 0.0, 0.95),
            AccessPoint("main-in", Direction.IN, PolicyConfig(), tz),
            rules,
            MemoryPolicyState(),
            nine_utc,
        )
        assert d.allowed is allowed


class BrokenFacts(MemoryRuleSource):
    """A source whose bulk rows have the wrong shape."""

    def iter_vehicle_facts(self) -> Iterator[VehicleFactsRow]:
        yield (1, "AB12", "v1")  # type: ignore[misc]


class OddFacts(MemoryRuleSource):
    """A source whose bulk rows have the right shape and wrong values."""

    def __init__(self, row: tuple[object, ...]) -> None:
        super().__init__()
        self.row = row

    def iter_vehicle_facts(self) -> Iterator[VehicleFactsRow]:
        yield self.row  # type: ignore[misc]


@pytest.mark.parametrize(
    "row",
    [
        (1, "AB12", "v1", True, "r1", "yes", None),  # resident active neither bool nor None
        (1, "AB12", "v1", True, "r1", True, ([], None, None)),  # unhashable grant
    ],
)
def test_malformed_bulk_rows_are_a_rules_error(row: tuple[object, ...]) -> None:
    with pytest.raises(RulesError, match="malformed"):
        RuleIndex.build(BrokenFacts())
    with pytest.raises(RulesError, match="malformed"):
        RuleIndex.build(OddFacts(row))


def test_odd_but_usable_bulk_values_are_taken_as_meant() -> None:
    src = OddFacts((7, "AB12", 42, 1, "r1", 1, ((), None, None)))  # ints for flags and an id
    rules = RuleIndex.build(src)
    (c,) = rules.lookup("resident", "AB12")
    assert c.key == 7 and rules.vehicle_facts is not None
    assert rules.vehicle_facts.vehicle_id(c.row) == "42"
    d = decide(
        PlateRead("main-in", "AB12", "c", NOW, 0.0, 0.95),
        AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ),
        rules,
        MemoryPolicyState(),
        NOW,
    )
    assert (d.allowed, d.vehicle_id, d.resident_id) == (True, "42", "r1")


def test_a_large_fleet_keeps_ids_in_order() -> None:
    src = MemoryRuleSource()
    src.add_resident(Resident("r"))
    for i in range(70_000):  # more than one build chunk
        src.add_vehicle(Vehicle(f"v{i}", f"P{i:06d}", "r", active=i % 7 != 0))
    rules = RuleIndex.build(src)
    facts = rules.vehicle_facts
    assert facts is not None and len(facts) == 70_000
    for i in (0, 1, 65_535, 65_536, 69_999):
        (c,) = rules.lookup("resident", f"P{i:06d}")
        assert facts.vehicle_id(c.row) == f"v{i}" and facts.resident_id(c.row) == "r"


def test_after_a_source_swap_the_facts_still_answer_for_the_built_version() -> None:
    # The daemon builds in a worker thread, then points the rule set at the event
    # loop's own connection, which may already see a newer version: the facts are
    # the built version's, as the decision's rules_version says.
    rules = RuleIndex.build(rich_world())
    newer = rich_world()
    newer.vehicles = {k: v for k, v in newer.vehicles.items() if v.id != "v-alice"}
    newer.version += 1
    run_kx = PlateRead("main-in", "KX55PRM", "c", NOW, 0.0, 0.95)
    access_point = AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ)
    assert decide(run_kx, access_point, rules, MemoryPolicyState(), NOW).allowed
    assert rules.schedule_answers  # bob's office schedule, answered for this minute
    rules.source = newer
    assert not rules.schedule_answers  # answers from the old source are dropped
    d = decide(
        PlateRead("main-in", "AB12CDE", "c", NOW, 0.0, 0.95),
        AccessPoint("main-in", Direction.IN, PolicyConfig(), TZ),
        rules,
        MemoryPolicyState(),
        NOW,
    )
    assert (d.allowed, d.vehicle_id, d.rules_version) == (True, "v-alice", 1)
