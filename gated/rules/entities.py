"""The rule-set entities (who may enter where and when) and the read interface over them.

`gated.rules.store` keeps them in SQLite (versioned; `gated.rules.files` imports and
exports CSV/JSON), `gated.rules.memory` in dicts; `gated.rules.index` builds the
in-memory plate index over either, as a RuleSource;
`gated.policy` decides from both. Plates and tags are stored normalised
(`gated.plates.normalise`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily window on some weekdays, in the site's time zone.

    `end <= start` means the window runs past midnight into the next day.
    """

    weekdays: frozenset[int]  # 0 = Monday … 6 = Sunday
    start: dt.time
    end: dt.time


@dataclass(frozen=True, slots=True)
class Schedule:
    """A weekly schedule with exception days (holidays, closures)."""

    id: str
    name: str = ""
    windows: tuple[TimeWindow, ...] = ()
    # A date listed here replaces the weekly windows for that day:
    # an empty tuple means closed all day, otherwise (start, end) pairs.
    exceptions: Mapping[dt.date, tuple[tuple[dt.time, dt.time], ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Group:
    """A set of residents sharing permissions (e.g. 'staff', 'block-a')."""

    id: str
    name: str = ""
    access_points: frozenset[str] | None = None  # None: every access point
    schedule_id: str | None = None  # None: always


@dataclass(frozen=True, slots=True)
class Resident:
    """A person with access rights; vehicles and tags hang off a resident."""

    id: str
    name: str = ""  # personal field
    unit: str = ""
    active: bool = True
    groups: tuple[str, ...] = ()
    # Own grant, in addition to the groups' grants. An empty frozenset and no
    # groups means no access anywhere; None means every access point.
    access_points: frozenset[str] | None = None
    schedule_id: str | None = None


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A resident's vehicle, identified by its normalised plate."""

    id: str
    plate: str
    resident_id: str
    active: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class Tag:
    """An RFID tag (or other credential number) belonging to a resident."""

    id: str
    tag: str
    resident_id: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class VisitorPass:
    """A time-limited pass for a visitor's plate, issued by a host resident."""

    id: str
    plate: str
    host_resident_id: str
    valid_from: float  # epoch seconds
    valid_until: float  # epoch seconds
    visitor_name: str = ""  # personal field
    access_points: frozenset[str] | None = None  # None: every access point
    max_uses: int | None = None  # None: unlimited within validity


@dataclass(frozen=True, slots=True)
class DenyEntry:
    """A plate that must never open the gate automatically."""

    id: str
    plate: str
    reason: str = ""
    until: float | None = None  # epoch seconds; None: indefinitely


class RuleSource(Protocol):
    """Read access to a stored rule set, as the index builder and the policy need it.

    Row keys are small integers chosen by the store (SQLite rowids) so that the
    in-memory index can hold them compactly; entity getters return None for a
    key that no longer exists. A store that can also list vehicles with their
    residents in bulk implements `VehicleFactsSource` (optional).
    """

    @property
    def version(self) -> int:
        """The rule-set version; every change set increments it."""
        ...

    def iter_vehicle_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every vehicle."""
        ...

    def iter_pass_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every visitor pass."""
        ...

    def iter_deny_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every deny-list entry."""
        ...

    def iter_tags(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised tag) of every tag."""
        ...

    def vehicle(self, key: int) -> Vehicle | None:
        """The vehicle stored under this row key."""
        ...

    def visitor_pass(self, key: int) -> VisitorPass | None:
        """The visitor pass stored under this row key."""
        ...

    def deny_entry(self, key: int) -> DenyEntry | None:
        """The deny-list entry stored under this row key."""
        ...

    def tag(self, key: int) -> Tag | None:
        """The tag stored under this row key."""
        ...

    def resident(self, resident_id: str) -> Resident | None:
        """The resident with this id."""
        ...

    def group(self, group_id: str) -> Group | None:
        """The group with this id."""
        ...

    def schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with this id."""
        ...


# A resident's own grant and groups, as the index compiles them: (groups,
# access_points, schedule_id) with the meaning of the Resident fields. Residents
# of a site share few distinct grants, so a store may hand out the same tuple.
Grant = tuple[tuple[str, ...], frozenset[str] | None, str | None]

# One vehicle with its resident, as `VehicleFactsSource.iter_vehicle_facts` yields it:
# (row key, normalised plate, vehicle id, vehicle active, resident id,
#  resident active or None when no such resident exists, the resident's Grant or None).
VehicleFactsRow = tuple[int, str, str, bool, str, bool | None, Grant | None]


class VehicleFactsSource(RuleSource, Protocol):
    """A RuleSource that can also list every vehicle joined with its resident in one pass.

    Optional: the index builder uses it when a source has it (`gated.rules.store.RuleStore`
    does) and then decides the common resident case from compact in-memory facts,
    without reading a Vehicle or Resident per decision; a plain RuleSource still works.
    """

    def iter_vehicle_facts(self) -> Iterator[VehicleFactsRow]:
        """Every vehicle with its resident's facts (see VehicleFactsRow), in one pass."""
        ...
