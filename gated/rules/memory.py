"""An in-memory RuleSource: rule-set entities held in dicts, with bulk vehicle facts.

The one stand-in for the SQLite `RuleStore` wherever a rule set is built in code
rather than imported from a file: the index and policy tests, and `bench.decide`
(a million vehicles). So its bulk iterators are C-level map/zip over the dicts,
and residents' grants are shared tuples as the store hands them out: an index
build over it times the index, not this source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from gated.rules.entities import (
    DenyEntry,
    Grant,
    Group,
    Resident,
    Schedule,
    Tag,
    Vehicle,
    VehicleFactsRow,
    VisitorPass,
)

_PLATE, _TAG, _ID = attrgetter("plate"), attrgetter("tag"), attrgetter("id")
_ACTIVE, _RESIDENT_ID = attrgetter("active"), attrgetter("resident_id")


@dataclass
class MemoryRuleSource:
    """Rule-set entities held in dicts; row keys are assigned in insertion order."""

    version: int = 1
    vehicles: dict[int, Vehicle] = field(default_factory=dict)
    passes: dict[int, VisitorPass] = field(default_factory=dict)
    deny: dict[int, DenyEntry] = field(default_factory=dict)
    tags: dict[int, Tag] = field(default_factory=dict)
    residents: dict[str, Resident] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    _next: int = 1

    def _key(self) -> int:
        self._next += 1
        return self._next - 1

    # --- filling ---------------------------------------------------------------------

    def add_resident(self, resident: Resident) -> Resident:
        """Store a resident."""
        self.residents[resident.id] = resident
        return resident

    def add_vehicle(self, vehicle: Vehicle) -> int:
        """Store a vehicle; returns its row key."""
        key = self._key()
        self.vehicles[key] = vehicle
        return key

    def add_pass(self, visitor_pass: VisitorPass) -> int:
        """Store a visitor pass; returns its row key."""
        key = self._key()
        self.passes[key] = visitor_pass
        return key

    def add_deny(self, entry: DenyEntry) -> int:
        """Store a deny-list entry; returns its row key."""
        key = self._key()
        self.deny[key] = entry
        return key

    def add_tag(self, tag: Tag) -> int:
        """Store a tag; returns its row key."""
        key = self._key()
        self.tags[key] = tag
        return key

    def add_group(self, group: Group) -> Group:
        """Store a group."""
        self.groups[group.id] = group
        return group

    def add_schedule(self, schedule: Schedule) -> Schedule:
        """Store a schedule."""
        self.schedules[schedule.id] = schedule
        return schedule

    # --- RuleSource ------------------------------------------------------------------

    def iter_vehicle_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, plate) of every vehicle."""
        return zip(self.vehicles.keys(), map(_PLATE, self.vehicles.values()), strict=True)

    def iter_pass_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, plate) of every pass."""
        return zip(self.passes.keys(), map(_PLATE, self.passes.values()), strict=True)

    def iter_deny_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, plate) of every deny entry."""
        return zip(self.deny.keys(), map(_PLATE, self.deny.values()), strict=True)

    def iter_tags(self) -> Iterator[tuple[int, str]]:
        """(row key, tag) of every tag."""
        return zip(self.tags.keys(), map(_TAG, self.tags.values()), strict=True)

    def iter_vehicle_facts(self) -> Iterator[VehicleFactsRow]:
        """Every vehicle with its resident's facts (VehicleFactsSource).

        A vehicle whose resident is unknown has None for the resident's active flag
        and grant, as the store's outer join gives it.
        """
        shared: dict[Grant, Grant] = {}
        active: dict[str, bool] = {}
        grants: dict[str, Grant] = {}
        for rid, r in self.residents.items():
            grant = (r.groups, r.access_points, r.schedule_id)
            active[rid], grants[rid] = r.active, shared.setdefault(grant, grant)
        vehicles = self.vehicles.values()
        owners = list(map(_RESIDENT_ID, vehicles))
        return zip(
            self.vehicles.keys(),
            map(_PLATE, vehicles),
            map(_ID, vehicles),
            map(_ACTIVE, vehicles),
            owners,
            map(active.get, owners),
            map(grants.get, owners),
            strict=True,
        )

    def vehicle(self, key: int) -> Vehicle | None:
        """The vehicle under a row key."""
        return self.vehicles.get(key)

    def visitor_pass(self, key: int) -> VisitorPass | None:
        """The pass under a row key."""
        return self.passes.get(key)

    def deny_entry(self, key: int) -> DenyEntry | None:
        """The deny entry under a row key."""
        return self.deny.get(key)

    def tag(self, key: int) -> Tag | None:
        """The tag under a row key."""
        return self.tags.get(key)

    def resident(self, resident_id: str) -> Resident | None:
        """The resident with an id."""
        return self.residents.get(resident_id)

    def group(self, group_id: str) -> Group | None:
        """The group with an id."""
        return self.groups.get(group_id)

    def schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with an id."""
        return self.schedules.get(schedule_id)
