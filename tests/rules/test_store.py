"""RuleStore: the RuleSource protocol, change sets, versions, keys, integrity checks."""

from __future__ import annotations

import datetime as dt
import inspect
import sqlite3
from pathlib import Path

import pytest

from gated.errors import RulesError
from gated.rules.entities import (
    DenyEntry,
    Group,
    Resident,
    RuleSource,
    Schedule,
    Tag,
    TimeWindow,
    Vehicle,
    VisitorPass,
)
from gated.rules.store import (
    KINDS,
    Delete,
    InvalidRulesError,
    RuleSetData,
    RuleStore,
    validate,
)

OFFICE = Schedule(
    "office",
    "Office",
    (TimeWindow(frozenset(range(5)), dt.time(7), dt.time(19)),),
    {dt.date(2025, 12, 25): ()},
)


def small_set() -> RuleSetData:
    return RuleSetData(
        schedules=(OFFICE,),
        groups=(Group("staff", "Staff", None, "office"),),
        residents=(
            Resident("r1", "Ann", "1A", True, ("staff",), frozenset()),
            Resident("r2", "Bob", "2B", True, (), frozenset({"main-in"})),
        ),
        vehicles=(Vehicle("v1", "ab-12 cd", "r1"), Vehicle("v2", "XY 99", "r2", False, "van")),
        tags=(Tag("t1", "0004 5612", "r1"),),
        visitor_passes=(VisitorPass("p1", "kl-77", "r1", 1000.0, 2000.0, "Plumber", None, 2),),
        deny_list=(DenyEntry("d1", "BAD 1", "stolen", None),),
    )


@pytest.fixture
def store(tmp_path: Path) -> RuleStore:
    s = RuleStore(tmp_path / "rules.sqlite3")
    yield s
    s.close()


def rows(store: RuleStore) -> dict[str, list[object]]:
    return {k: list(store.entities(k)) for k in KINDS}


def test_implements_every_member_of_the_rule_source_protocol(store: RuleStore) -> None:
    members = [n for n in vars(RuleSource) if not n.startswith("_")]
    assert members  # the protocol lists its members
    for name in members:
        assert hasattr(RuleStore, name), name
        proto, impl = getattr(RuleSource, name), getattr(RuleStore, name)
        if inspect.isfunction(proto):
            assert list(inspect.signature(proto).parameters) == list(
                inspect.signature(impl).parameters
            ), name
    source: RuleSource = store  # typed use, as the index builder does
    assert source.version == 0


def test_reads_return_normalised_entities_by_key_and_id(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    plates = dict(store.iter_vehicle_plates())
    assert sorted(plates.values()) == ["AB12CD", "XY99"]
    key = next(k for k, p in plates.items() if p == "AB12CD")
    assert store.vehicle(key) == Vehicle("v1", "AB12CD", "r1")
    ((pk, pp),) = store.iter_pass_plates()
    assert pp == "KL77"
    assert store.visitor_pass(pk) == VisitorPass(
        "p1", "KL77", "r1", 1000.0, 2000.0, "Plumber", None, 2
    )
    ((dk, _),) = store.iter_deny_plates()
    assert store.deny_entry(dk) == DenyEntry("d1", "BAD1", "stolen", None)
    ((tk, tt),) = store.iter_tags()
    assert tt == "00045612" and store.tag(tk) == Tag("t1", "00045612", "r1")
    assert store.resident("r1") == Resident("r1", "Ann", "1A", True, ("staff",), frozenset())
    assert store.resident("r2").access_points == frozenset({"main-in"})
    assert store.group("staff") == Group("staff", "Staff", None, "office")
    assert store.schedule("office") == OFFICE
    # raw text as entered is kept for export
    assert [v.plate for v in store.entities("vehicles")] == ["ab-12 cd", "XY 99"]


def test_missing_keys_and_ids_read_as_none(store: RuleStore) -> None:
    assert store.vehicle(99) is None and store.visitor_pass(1) is None
    assert store.deny_entry(1) is None and store.tag(1) is None
    assert store.resident("nobody") is None and store.group("x") is None
    assert store.schedule("x") is None


def test_every_change_set_bumps_the_version_once_and_is_recorded(store: RuleStore) -> None:
    assert store.replace_all(small_set(), actor="ann", source="test", sha256="ab" * 32) == 1
    assert store.apply([Vehicle("v3", "NEW 1", "r2")], actor="api", source="status page") == 2
    assert store.apply([Delete("vehicles", "v3")], actor="api", source="status page") == 3
    assert store.version == 3
    latest, middle, first = store.changesets()
    assert (first.version, first.actor, first.source, first.sha256) == (1, "ann", "test", "ab" * 32)
    assert first.counts["vehicles"] == {"rows": 2, "written": 2, "deleted": 0}
    assert middle.counts == {"vehicles": {"rows": 1, "written": 1, "deleted": 0}}
    assert latest.counts == {"vehicles": {"rows": 0, "written": 0, "deleted": 1}}


def test_a_refused_change_set_changes_nothing(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    before = rows(store)
    with pytest.raises(InvalidRulesError) as err:
        store.apply(
            [Vehicle("v1", "CHANGED", "r1"), Vehicle("v9", "OK 9", "ghost")],
            actor="t",
            source="api",
        )
    assert err.value.problems == [
        (None, "resident_id", "vehicle 'v9': no resident with id 'ghost'", "")
    ]
    assert store.version == 1
    assert rows(store) == before
    assert store.apply([], actor="t", source="noop") == 2  # the store is usable afterwards


def test_keys_survive_upserts_and_are_never_reused(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    k1 = store.key_of("vehicles", "v1")
    store.apply([Vehicle("v1", "AB 12 CE", "r1", True, "new plate")], actor="t", source="api")
    assert store.key_of("vehicles", "v1") == k1
    assert store.vehicle(k1).plate == "AB12CE"
    store.apply([Delete("vehicles", "v1")], actor="t", source="api")
    assert store.vehicle(k1) is None
    store.apply([Vehicle("v1", "AB 12 CE", "r1")], actor="t", source="api")
    assert store.key_of("vehicles", "v1") != k1
    assert store.vehicle(k1) is None


def test_replace_all_removes_what_is_not_in_the_new_set(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    smaller = RuleSetData(
        residents=(Resident("r1", "Ann"),), vehicles=(Vehicle("v1", "ab-12 cd", "r1"),)
    )
    store.replace_all(smaller, actor="t", source="test")
    assert store.counts() == {k: (1 if k in ("residents", "vehicles") else 0) for k in KINDS}
    assert store.changesets(1)[0].counts["vehicles"] == {"rows": 1, "written": 0, "deleted": 1}


def test_unchanged_rows_are_not_rewritten(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    store.replace_all(small_set(), actor="t", source="again")
    counts = store.changesets(1)[0].counts
    assert all(c["written"] == 0 and c["deleted"] == 0 for c in counts.values())


def test_deleting_a_referenced_resident_group_or_schedule_is_refused(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    with pytest.raises(InvalidRulesError) as err:
        store.apply([Delete("residents", "r1")], actor="t", source="api")
    assert sorted(p.message for p in err.value.problems) == [
        "tag 't1' still refers to resident 'r1', which this change removes",
        "vehicle 'v1' still refers to resident 'r1', which this change removes",
        "visitor pass 'p1' still refers to resident 'r1', which this change removes",
    ]
    with pytest.raises(InvalidRulesError) as err:
        store.apply(
            [Delete("groups", "staff"), Delete("schedules", "office")], actor="t", source="api"
        )
    assert sorted(p.message for p in err.value.problems) == [
        "resident 'r1' still refers to group 'staff', which this change removes",
    ]
    # deleting the referrers in the same change set is fine
    store.apply(
        [Delete(k, i) for k, i in [("tags", "t1"), ("vehicles", "v1"), ("visitor_passes", "p1")]]
        + [Delete("residents", "r1"), Delete("groups", "staff"), Delete("schedules", "office")],
        actor="t",
        source="api",
    )
    assert store.version == 2


def test_duplicate_plates_and_tags_are_refused(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    with pytest.raises(InvalidRulesError) as err:
        store.apply(
            [Vehicle("v7", "AB.12.CD", "r2"), Tag("t7", "00045612", "r2"), DenyEntry("d7", "bad1")],
            actor="t",
            source="api",
        )
    assert sorted((p.field, p.message) for p in err.value.problems) == [
        ("plate", "deny-list entry 'd7': plate 'BAD1' is already used by deny-list entry 'd1'"),
        ("plate", "vehicle 'v7': plate 'AB12CD' is already used by vehicle 'v1'"),
        ("tag", "tag 't7': tag '00045612' is already used by tag 't1'"),
    ]


def test_a_plate_may_move_between_vehicles_in_one_change_set(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    store.apply(
        [Vehicle("v1", "OLD 1", "r1"), Vehicle("v3", "AB12CD", "r2")], actor="t", source="api"
    )
    assert {v.id: v.plate for v in store.entities("vehicles", raw=False)} == {
        "v1": "OLD1",
        "v2": "XY99",
        "v3": "AB12CD",
    }


def test_bulk_change_sets_check_references_and_duplicates_by_table_scan(store: RuleStore) -> None:
    residents = tuple(Resident(f"r{i}") for i in range(10))
    vehicles = [Vehicle(f"v{i}", f"P{i:05d}", f"r{i % 10}") for i in range(3000)]
    vehicles[1500] = Vehicle("v1500", "P01500", "ghost")
    vehicles[2999] = Vehicle("v2999", "P00007", "r1")
    with pytest.raises(InvalidRulesError) as err:
        store.replace_all(
            RuleSetData(residents=residents, vehicles=tuple(vehicles)), actor="t", source="bulk"
        )
    assert sorted(p.message for p in err.value.problems) == [
        "vehicle 'v1500': no resident with id 'ghost'",
        "vehicle 'v2999': plate 'P00007' is already used by vehicle 'v7'",
    ]
    assert store.version == 0 and store.counts()["vehicles"] == 0


@pytest.mark.parametrize(
    ("entity", "field", "fragment"),
    [
        (Vehicle("bad id!", "AB1", "r1"), "id", "not valid"),
        (Vehicle("v1", "--", "r1"), "plate", "no letters or digits"),
        (Vehicle("v1", "A" * 40, "r1"), "plate", "longer than"),
        (Vehicle("v1", "AB1", "r1", True, "x\x00y"), "description", "control characters"),
        (Resident("r1", "n" * 300), "name", "longer than"),
        (Resident("r1", groups=("a", "a")), "groups", "twice"),
        (VisitorPass("p", "AB1", "r1", 10.0, 5.0), "valid_until", "later than"),
        (VisitorPass("p", "AB1", "r1", 0.0, float("inf")), "valid_until", "finite"),
        (VisitorPass("p", "AB1", "r1", 0.0, 5.0, access_points=frozenset()), "access_points", ""),
        (VisitorPass("p", "AB1", "r1", 0.0, 5.0, max_uses=0), "max_uses", "at least 1"),
        (Group("g", access_points=frozenset({"a,b"})), "access_points", "not valid"),
        (
            Schedule("s", windows=(TimeWindow(frozenset(), dt.time(1), dt.time(2)),)),
            "windows[0]",
            "",
        ),
        (Tag("t", "AB", "bad id"), "resident_id", "not valid"),
        (DenyEntry("d", "AB1", until=-5.0), "until", "out of range"),
    ],
)
def test_validate_names_the_field(entity: object, field: str, fragment: str) -> None:
    problems = validate(entity)  # type: ignore[arg-type]
    assert any(f == field and fragment in m for f, m in problems), problems


def test_apply_reports_which_change_is_bad(store: RuleStore) -> None:
    with pytest.raises(InvalidRulesError) as err:
        store.apply([Resident("r1"), Vehicle("v1", "", "r1")], actor="t", source="api")
    assert [(p.field, p.message) for p in err.value.problems] == [
        ("changes[1].plate", "'' has no letters or digits")
    ]
    assert "nothing was changed" in str(err.value)


def test_read_snapshot_sees_one_version_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite3"
    reader, writer = RuleStore(path), RuleStore(path)
    writer.replace_all(small_set(), actor="t", source="test")
    with reader.read_snapshot():
        assert reader.version == 1
        writer.apply([Vehicle("v3", "NEW 3", "r1")], actor="t", source="api")
        assert reader.version == 1
        assert len(list(reader.iter_vehicle_plates())) == 2
    assert reader.version == 2
    assert len(list(reader.iter_vehicle_plates())) == 3
    reader.close()
    writer.close()


def test_only_one_change_set_at_a_time_and_rollback_on_leaving(store: RuleStore) -> None:
    with store.change(actor="t", source="x") as cs:
        cs.put(Resident("r1"))
        with pytest.raises(RulesError):
            store.change(actor="t", source="y")
    assert store.version == 0 and store.resident("r1") is None
    with store.change(actor="t", source="x") as cs:
        cs.put(Resident("r1"))
        assert cs.commit() == 1
    assert store.resident("r1") is not None


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite3"
    with RuleStore(path) as s:
        s.replace_all(small_set(), actor="t", source="test")
    with RuleStore(path) as s:
        assert s.version == 1 and s.counts()["vehicles"] == 2
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refuses_a_store_from_a_newer_gated_and_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite3"
    RuleStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RulesError, match="newer"):
        RuleStore(path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RulesError, match="cannot open"):
        RuleStore(junk)


def test_purge_passes_removes_only_expired_ones(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    store.apply([VisitorPass("p2", "ZZ1", "r1", 1000.0, 9000.0)], actor="t", source="api")
    store.purge_passes(5000.0)
    assert [p.id for p in store.entities("visitor_passes")] == ["p2"]
    assert store.version == 3


def test_membership_view_lists_residents_per_group(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    got = store._db.execute("SELECT resident_id, group_id FROM resident_groups").fetchall()
    assert got == [("r1", "staff")]
