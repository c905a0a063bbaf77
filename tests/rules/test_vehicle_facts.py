"""RuleStore.iter_vehicle_facts: every vehicle joined with its resident, as the index loads it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from gated.rules.entities import Resident, Vehicle, VehicleFactsSource
from gated.rules.index import RuleIndex
from gated.rules.store import RuleSetData, RuleStore
from tests.rules.test_store import small_set


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RuleStore]:
    s = RuleStore(tmp_path / "rules.sqlite3")
    yield s
    s.close()


def test_implements_the_bulk_protocol(store: RuleStore) -> None:
    proto = VehicleFactsSource.iter_vehicle_facts
    assert list(inspect.signature(proto).parameters) == list(
        inspect.signature(RuleStore.iter_vehicle_facts).parameters
    )
    source: VehicleFactsSource = store  # typed use, as the index builder does
    assert list(source.iter_vehicle_facts()) == []


def test_rows_agree_with_the_entities(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    rows = {row[2]: row for row in store.iter_vehicle_facts()}
    assert set(rows) == {"v1", "v2"}
    for vid, (key, plate, _, active, rid, ractive, grant) in rows.items():
        vehicle = store.vehicle(key)
        resident = store.resident(rid)
        assert vehicle is not None and resident is not None
        assert (vehicle.id, vehicle.plate, vehicle.active, vehicle.resident_id) == (
            vid, plate, active, rid
        )
        assert ractive is resident.active
        assert grant == (resident.groups, resident.access_points, resident.schedule_id)
    assert rows["v1"][1] == "AB12CD" and rows["v2"][3] is False


def test_residents_share_one_grant_tuple(store: RuleStore) -> None:
    data = small_set()
    residents = tuple(Resident(f"r{i}", groups=("staff",), access_points=frozenset())
                      for i in range(1, 5))  # fmt: skip
    vehicles = tuple(Vehicle(f"v{i}", f"AA{i}", f"r{i}") for i in range(1, 5))
    store.replace_all(
        RuleSetData(data.schedules, data.groups, residents, vehicles), actor="t", source="test"
    )
    grants = {id(row[6]) for row in store.iter_vehicle_facts()}
    assert len(grants) == 1


def test_a_vehicle_whose_resident_vanished_shows_with_no_resident(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    # the store's own checks forbid this; a damaged file must still fail closed
    store._db.execute("DELETE FROM residents WHERE id = 'r2'")
    (row,) = [r for r in store.iter_vehicle_facts() if r[2] == "v2"]
    assert row[4:] == ("r2", None, None)


def test_the_index_built_from_the_store_carries_the_facts(store: RuleStore) -> None:
    store.replace_all(small_set(), actor="t", source="test")
    rules = RuleIndex.build(store)
    assert rules.vehicle_facts is not None
    (c,) = rules.lookup("resident", "AB12CD")
    assert rules.vehicle_facts.vehicle_id(c.row) == "v1"
    assert rules.vehicle_facts.resident_id(c.row) == "r1"
