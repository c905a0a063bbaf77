"""The rule store: residents, groups, schedules, vehicles, tags, visitor passes, deny list.

One SQLite file (config `rules.path`), separate from the journal. Reads are sync
`sqlite3` calls from the event loop, so each getter is one indexed statement out
of the connection's statement cache (a few µs). Writes come in change sets: one
transaction that validates every row, checks references and duplicate plates,
bumps `version` by exactly 1 and records who changed what. A change set that has
any problem is rolled back whole and raised as `InvalidRulesError`.

Row keys (`INTEGER PRIMARY KEY AUTOINCREMENT`) are never reused: a key always
names the same entity id, and an upsert keeps the key, so an index built at an
older version never finds a *different* entity under a key it holds; it finds
the same one (possibly edited) or None.

Plates and tags are stored normalised (`gated.plates.normalise`) next to the raw
text as entered, so an export gives back what the installer typed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gated.errors import RulesError
from gated.file_modes import prepare_sqlite_file
from gated.plates import MAX_PLATE_LEN, MAX_TAG_LEN, normalise
from gated.rules.entities import (
    DenyEntry,
    Grant,
    Group,
    Resident,
    Schedule,
    Tag,
    TimeWindow,
    Vehicle,
    VehicleFactsRow,
    VisitorPass,
)

Entity = Schedule | Group | Resident | Vehicle | Tag | VisitorPass | DenyEntry

# Kinds in dependency order; also the JSON array names and the CSV file stems.
KINDS = ("schedules", "groups", "residents", "vehicles", "tags", "visitor_passes", "deny_list")
KIND_OF: dict[type, str] = {
    Schedule: "schedules",
    Group: "groups",
    Resident: "residents",
    Vehicle: "vehicles",
    Tag: "tags",
    VisitorPass: "visitor_passes",
    DenyEntry: "deny_list",
}
SINGULAR = {
    "schedules": "schedule",
    "groups": "group",
    "residents": "resident",
    "vehicles": "vehicle",
    "tags": "tag",
    "visitor_passes": "visitor pass",
    "deny_list": "deny-list entry",
}

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 200  # names, units, descriptions, reasons
MAX_RAW_PLATE = 32
MAX_RAW_TAG = 64
MAX_PROBLEMS = 10_000  # kept in InvalidRulesError.problems; the total is always counted
_BULK = 2_000  # above this many rows per kind, integrity checks scan the table once


class Problem(NamedTuple):
    """One thing wrong with a change: where (line, field) and what."""

    line: int | None  # physical line in the input file; None when not from a file
    field: str  # column / key path, e.g. "plate" or "vehicles[12].plate"
    message: str
    file: str = ""  # input file name when the input has several (CSV folder)


class InvalidRulesError(RulesError):
    """A rule-set change was refused; `.problems` lists every problem found, nothing changed."""

    def __init__(self, summary: str, problems: Sequence[Problem], total: int | None = None) -> None:
        self.summary = summary
        # by file, then line, so the report reads top to bottom like the input
        self.problems = sorted(problems, key=lambda p: (p.file, p.line is None, p.line or 0))
        self.total = len(self.problems) if total is None else total
        super().__init__(self._report())

    def _report(self, limit: int = 500) -> str:
        lines = [f"{self.summary}: {self.total} problem(s), nothing was changed"]
        for p in self.problems[:limit]:
            where = p.file
            if p.line is not None:
                where = f"{where} line {p.line}" if where else f"line {p.line}"
            where = f"{where}, {p.field}" if where and p.field else (where or p.field or "input")
            lines.append(f"  {where}: {p.message}")
        hidden = self.total - min(limit, len(self.problems))
        if hidden > 0:
            lines.append(f"  … and {hidden} more")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Delete:
    """A change that removes the entity of `kind` (one of KINDS) with this id."""

    kind: str
    id: str


Change = Entity | Delete


@dataclass(frozen=True, slots=True)
class RuleSetData:
    """A complete rule set, as given to `RuleStore.replace_all`."""

    schedules: tuple[Schedule, ...] = ()
    groups: tuple[Group, ...] = ()
    residents: tuple[Resident, ...] = ()
    vehicles: tuple[Vehicle, ...] = ()
    tags: tuple[Tag, ...] = ()
    visitor_passes: tuple[VisitorPass, ...] = ()
    deny_list: tuple[DenyEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class ChangeSetRecord:
    """One committed change set, as recorded in the store."""

    version: int
    at: float  # epoch seconds (wall clock when committed)
    actor: str
    source: str
    counts: dict[str, dict[str, int]]  # kind → {"rows", "written", "deleted"}
    sha256: str


# --- value codecs shared by the table specs ----------------------------------


def fmt_time(t: dt.time) -> str:
    """'07:00', or '07:00:30' when the time has seconds."""
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


def _ap_text(aps: frozenset[str] | None) -> str | None:
    # NULL: every access point; '': none; else sorted, comma separated (ids have no commas)
    return None if aps is None else ",".join(sorted(aps))


def _ap_value(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    return frozenset(text.split(",")) if text else frozenset()


def _windows_json(s: Schedule) -> str:
    return json.dumps([[sorted(w.weekdays), fmt_time(w.start), fmt_time(w.end)] for w in s.windows])


def _exceptions_json(s: Schedule) -> str:
    return json.dumps(
        {
            d.isoformat(): [[fmt_time(a), fmt_time(b)] for a, b in ws]
            for d, ws in sorted(s.exceptions.items())
        }
    )


def _schedule_from_row(row: tuple[Any, ...]) -> Schedule:
    id_, name, windows, exceptions = row
    t = dt.time.fromisoformat
    return Schedule(
        id=id_,
        name=name,
        windows=tuple(
            TimeWindow(frozenset(days), t(a), t(b)) for days, a, b in json.loads(windows)
        ),
        exceptions={
            dt.date.fromisoformat(d): tuple((t(a), t(b)) for a, b in ws)
            for d, ws in json.loads(exceptions).items()
        },
    )


@dataclass(frozen=True, slots=True)
class _Table:
    """How one kind maps onto its table."""

    name: str
    columns: tuple[str, ...]  # after `key`; the first is always `id`
    params: Callable[[Any], tuple[Any, ...]]  # entity → column values
    entity: Callable[[tuple[Any, ...]], Any]  # row of `read_columns` → entity (normalised)
    read_columns: tuple[str, ...]
    raw_entity: Callable[[tuple[Any, ...]], Any] | None = None  # row of `raw_columns` → as entered
    raw_columns: tuple[str, ...] = ()
    unique: str | None = None  # column that must not repeat (normalised plate / tag)


def _b(v: int) -> bool:
    return bool(v)


TABLES: dict[str, _Table] = {
    "schedules": _Table(
        "schedules",
        ("id", "name", "windows", "exceptions"),
        lambda s: (s.id, s.name, _windows_json(s), _exceptions_json(s)),
        _schedule_from_row,
        ("id", "name", "windows", "exceptions"),
    ),
    "groups": _Table(
        "access_groups",
        ("id", "name", "access_points", "schedule_id"),
        lambda g: (g.id, g.name, _ap_text(g.access_points), g.schedule_id),
        lambda r: Group(r[0], r[1], _ap_value(r[2]), r[3]),
        ("id", "name", "access_points", "schedule_id"),
    ),
    "residents": _Table(
        "residents",
        ("id", "name", "unit", "active", "group_ids", "access_points", "schedule_id"),
        lambda r: (
            r.id,
            r.name,
            r.unit,
            int(r.active),
            ",".join(r.groups),
            _ap_text(r.access_points),
            r.schedule_id,
        ),
        lambda r: Resident(
            r[0],
            r[1],
            r[2],
            _b(r[3]),
            tuple(r[4].split(",")) if r[4] else (),
            _ap_value(r[5]),
            r[6],
        ),
        ("id", "name", "unit", "active", "group_ids", "access_points", "schedule_id"),
    ),
    "vehicles": _Table(
        "vehicles",
        ("id", "plate", "plate_raw", "resident_id", "active", "description"),
        lambda v: (v.id, normalise(v.plate), v.plate, v.resident_id, int(v.active), v.description),
        lambda r: Vehicle(r[0], r[1], r[2], _b(r[3]), r[4]),
        ("id", "plate", "resident_id", "active", "description"),
        lambda r: Vehicle(r[0], r[1], r[2], _b(r[3]), r[4]),
        ("id", "plate_raw", "resident_id", "active", "description"),
        unique="plate",
    ),
    "tags": _Table(
        "tags",
        ("id", "tag", "tag_raw", "resident_id", "active"),
        lambda t: (t.id, normalise(t.tag), t.tag, t.resident_id, int(t.active)),
        lambda r: Tag(r[0], r[1], r[2], _b(r[3])),
        ("id", "tag", "resident_id", "active"),
        lambda r: Tag(r[0], r[1], r[2], _b(r[3])),
        ("id", "tag_raw", "resident_id", "active"),
        unique="tag",
    ),
    "visitor_passes": _Table(
        "visitor_passes",
        (
            "id",
            "plate",
            "plate_raw",
            "host_resident_id",
            "valid_from",
            "valid_until",
            "visitor_name",
            "access_points",
            "max_uses",
        ),
        lambda p: (
            p.id,
            normalise(p.plate),
            p.plate,
            p.host_resident_id,
            p.valid_from,
            p.valid_until,
            p.visitor_name,
            _ap_text(p.access_points),
            p.max_uses,
        ),
        lambda r: VisitorPass(r[0], r[1], r[2], r[3], r[4], r[5], _ap_value(r[6]), r[7]),
        (
            "id",
            "plate",
            "host_resident_id",
            "valid_from",
            "valid_until",
            "visitor_name",
            "access_points",
            "max_uses",
        ),
        lambda r: VisitorPass(r[0], r[1], r[2], r[3], r[4], r[5], _ap_value(r[6]), r[7]),
        (
            "id",
            "plate_raw",
            "host_resident_id",
            "valid_from",
            "valid_until",
            "visitor_name",
            "access_points",
            "max_uses",
        ),
    ),
    "deny_list": _Table(
        "deny_list",
        ("id", "plate", "plate_raw", "reason", "until"),
        lambda d: (d.id, normalise(d.plate), d.plate, d.reason, d.until),
        lambda r: DenyEntry(r[0], r[1], r[2], r[3]),
        ("id", "plate", "reason", "until"),
        lambda r: DenyEntry(r[0], r[1], r[2], r[3]),
        ("id", "plate_raw", "reason", "until"),
        unique="plate",
    ),
}

# (source kind, column, target kind, column holds a comma-separated list)
_REFS = (
    ("groups", "schedule_id", "schedules", False),
    ("residents", "schedule_id", "schedules", False),
    ("residents", "group_ids", "groups", True),
    ("vehicles", "resident_id", "residents", False),
    ("tags", "resident_id", "residents", False),
    ("visitor_passes", "host_resident_id", "residents", False),
)
_FIELD_OF_COLUMN = {"group_ids": "groups"}


def _upsert_sql(t: _Table) -> str:
    cols = ", ".join(t.columns)
    marks = ", ".join("?" * len(t.columns))
    rest = t.columns[1:]
    sets = ", ".join(f"{c} = excluded.{c}" for c in rest)
    # Skip rows that did not change: an unchanged re-import then rewrites no pages,
    # which spares the SD card and keeps rowcount meaningful.
    changed = " OR ".join(f"{c} IS NOT excluded.{c}" for c in rest)
    return (
        f"INSERT INTO {t.name} ({cols}) VALUES ({marks}) "
        f"ON CONFLICT(id) DO UPDATE SET {sets} WHERE {changed}"
    )


_BY_KEY = {
    k: f"SELECT {', '.join(t.read_columns)} FROM {t.name} WHERE key = ?" for k, t in TABLES.items()
}
_BY_ID = {
    k: f"SELECT {', '.join(t.read_columns)} FROM {t.name} WHERE id = ?" for k, t in TABLES.items()
}

# One statement for the index builder: a vehicle with its resident's facts (a LEFT
# JOIN, so a vehicle whose resident is missing still shows, with NULLs).
_VEHICLE_FACTS = (
    "SELECT v.key, v.plate, v.id, v.active, v.resident_id, "
    "r.active, r.group_ids, r.access_points, r.schedule_id "
    "FROM vehicles v LEFT JOIN residents r ON r.id = v.resident_id"
)

# --- schema --------------------------------------------------------------------

_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE changesets (
        version INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL,
        counts TEXT NOT NULL,
        sha256 TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE schedules (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        windows TEXT NOT NULL,
        exceptions TEXT NOT NULL
    );
    CREATE TABLE access_groups (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        access_points TEXT,
        schedule_id TEXT
    );
    CREATE TABLE residents (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        unit TEXT NOT NULL,
        active INTEGER NOT NULL,
        group_ids TEXT NOT NULL,
        access_points TEXT,
        schedule_id TEXT
    );
    CREATE INDEX residents_schedule ON residents (schedule_id);
    CREATE TABLE vehicles (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        plate TEXT NOT NULL,
        plate_raw TEXT NOT NULL,
        resident_id TEXT NOT NULL,
        active INTEGER NOT NULL,
        description TEXT NOT NULL
    );
    CREATE INDEX vehicles_plate ON vehicles (plate);
    CREATE INDEX vehicles_resident ON vehicles (resident_id);
    CREATE TABLE tags (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        tag TEXT NOT NULL,
        tag_raw TEXT NOT NULL,
        resident_id TEXT NOT NULL,
        active INTEGER NOT NULL
    );
    CREATE INDEX tags_tag ON tags (tag);
    CREATE INDEX tags_resident ON tags (resident_id);
    CREATE TABLE visitor_passes (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        plate TEXT NOT NULL,
        plate_raw TEXT NOT NULL,
        host_resident_id TEXT NOT NULL,
        valid_from REAL NOT NULL,
        valid_until REAL NOT NULL,
        visitor_name TEXT NOT NULL,
        access_points TEXT,
        max_uses INTEGER
    );
    CREATE INDEX visitor_passes_plate ON visitor_passes (plate);
    CREATE INDEX visitor_passes_host ON visitor_passes (host_resident_id);
    CREATE INDEX visitor_passes_until ON visitor_passes (valid_until);
    CREATE TABLE deny_list (
        key INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        plate TEXT NOT NULL,
        plate_raw TEXT NOT NULL,
        reason TEXT NOT NULL,
        until REAL
    );
    CREATE INDEX deny_list_plate ON deny_list (plate);
    -- resident ↔ group membership, for queries such as "members of staff"
    CREATE VIEW resident_groups AS
        SELECT r.id AS resident_id, j.value AS group_id
        FROM residents r, json_each('["' || replace(r.group_ids, ',', '","') || '"]') j
        WHERE r.group_ids <> '';
    """,
)


# --- entity validation (every write path goes through this) --------------------


def _text_problem(value: object, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return "expected text"
    if len(value) > limit:
        return f"longer than {limit} characters"
    if _CONTROL_RE.search(value):
        return "contains control characters (tab, newline, NUL …)"
    return None


def _id_problem(value: object, what: str = "id") -> str | None:
    if not isinstance(value, str) or not ID_RE.match(value):
        shown = repr(value)[:40]
        return (
            f"{what} {shown} is not valid: 1-64 characters A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return None


def _time_problem(t: object) -> str | None:
    if not isinstance(t, dt.time) or t.tzinfo is not None or t.microsecond:
        return "expected a local time with whole seconds"
    return None


def _ts_problem(v: object) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "expected a finite time"
    if not 0 <= v < 253_402_300_800:  # before year 10000
        return "time out of range"
    return None


def _aps_problems(aps: object) -> str | None:
    if aps is None:
        return None
    if not isinstance(aps, frozenset):
        return "expected a set of access point ids"
    for ap in sorted(aps, key=str):
        p = _id_problem(ap, "access point")
        if p:
            return p
    return None


def _plate_problem(raw: object, limit: int, norm_limit: int) -> str | None:
    if not isinstance(raw, str):
        return "expected text"
    if len(raw) > limit:
        return f"longer than {limit} characters"
    norm = normalise(raw)
    if not norm:
        return f"{raw[:40]!r} has no letters or digits"
    if len(norm) > norm_limit:
        return f"{raw[:40]!r} has more than {norm_limit} letters and digits"
    return None


def validate(entity: Entity) -> list[tuple[str, str]]:
    """(field, message) for every invariant the entity breaks; [] when it is storable."""
    out: list[tuple[str, str]] = []

    def check(fld: str, msg: str | None) -> None:
        if msg:
            out.append((fld, msg))

    check("id", _id_problem(entity.id))
    if isinstance(entity, Schedule):
        check("name", _text_problem(entity.name))
        for i, w in enumerate(entity.windows):
            if not w.weekdays or not w.weekdays <= set(range(7)):
                check(f"windows[{i}]", "weekdays must be a non-empty set of 0 (Mon) … 6 (Sun)")
            check(f"windows[{i}]", _time_problem(w.start) or _time_problem(w.end))
        for d, spans in entity.exceptions.items():
            if not isinstance(d, dt.date) or isinstance(d, dt.datetime):
                check("exceptions", f"{d!r} is not a date")
                continue
            for a, b in spans:
                check(f"exceptions[{d.isoformat()}]", _time_problem(a) or _time_problem(b))
    elif isinstance(entity, Group):
        check("name", _text_problem(entity.name))
        check("access_points", _aps_problems(entity.access_points))
        if entity.schedule_id is not None:
            check("schedule_id", _id_problem(entity.schedule_id, "schedule id"))
    elif isinstance(entity, Resident):
        check("name", _text_problem(entity.name))
        check("unit", _text_problem(entity.unit))
        check("active", None if isinstance(entity.active, bool) else "expected true or false")
        for g in entity.groups:
            check("groups", _id_problem(g, "group id"))
        if len(set(entity.groups)) != len(entity.groups):
            check("groups", "a group is listed twice")
        check("access_points", _aps_problems(entity.access_points))
        if entity.schedule_id is not None:
            check("schedule_id", _id_problem(entity.schedule_id, "schedule id"))
    elif isinstance(entity, Vehicle):
        check("plate", _plate_problem(entity.plate, MAX_RAW_PLATE, MAX_PLATE_LEN))
        check("resident_id", _id_problem(entity.resident_id, "resident id"))
        check("active", None if isinstance(entity.active, bool) else "expected true or false")
        check("description", _text_problem(entity.description))
    elif isinstance(entity, Tag):
        check("tag", _plate_problem(entity.tag, MAX_RAW_TAG, MAX_TAG_LEN))
        check("resident_id", _id_problem(entity.resident_id, "resident id"))
        check("active", None if isinstance(entity.active, bool) else "expected true or false")
    elif isinstance(entity, VisitorPass):
        check("plate", _plate_problem(entity.plate, MAX_RAW_PLATE, MAX_PLATE_LEN))
        check("host_resident_id", _id_problem(entity.host_resident_id, "resident id"))
        check("valid_from", _ts_problem(entity.valid_from))
        check("valid_until", _ts_problem(entity.valid_until))
        if not out and entity.valid_until <= entity.valid_from:
            check("valid_until", "must be later than valid_from")
        check("visitor_name", _text_problem(entity.visitor_name))
        check("access_points", _aps_problems(entity.access_points))
        if entity.access_points is not None and not entity.access_points:
            check("access_points", "a pass needs at least one access point ('*' for every one)")
        mu = entity.max_uses
        if mu is not None and (
            isinstance(mu, bool) or not isinstance(mu, int) or not 1 <= mu < 2**31
        ):
            check("max_uses", "expected a whole number of at least 1, or nothing for unlimited")
    elif isinstance(entity, DenyEntry):
        check("plate", _plate_problem(entity.plate, MAX_RAW_PLATE, MAX_PLATE_LEN))
        check("reason", _text_problem(entity.reason))
        if entity.until is not None:
            check("until", _ts_problem(entity.until))
    return out


# --- the store -------------------------------------------------------------------


class RuleStore:
    """The versioned rule set in its own SQLite file; implements `RuleSource`.

    One instance owns one connection and must be used from one thread. The
    daemon reads from the event-loop thread; a large write (upstream sync)
    should open its own RuleStore on the same path in a worker thread, since WAL
    lets that writer run while the loop keeps reading the last committed version.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        try:
            # 0640 whatever the umask (SQLite gives -wal/-shm the same): names and plates.
            prepare_sqlite_file(self.path)
        except OSError as err:
            raise RulesError(f"rule store {self.path}: cannot create: {err.strerror}") from err
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, cached_statements=256)
            self._db.execute("PRAGMA busy_timeout = 5000")
            # WAL: readers never block the writer of an import and vice versa.
            self._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a power cut can lose the last committed change set but
            # never corrupts the file; a lost import is simply re-run, and it saves an
            # fsync per commit on the SD card.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.Error as err:
            raise RulesError(f"rule store {self.path}: cannot open: {err}") from err
        self._open_change: ChangeSet | None = None

    def _migrate(self) -> None:
        have = self._db.execute("PRAGMA user_version").fetchone()[0]
        if have > len(_MIGRATIONS):
            raise RulesError(
                f"rule store {self.path}: schema version {have} is newer than this gated "
                f"understands ({len(_MIGRATIONS)})"
            )
        for number in range(have + 1, len(_MIGRATIONS) + 1):
            script = (
                f"BEGIN IMMEDIATE;{_MIGRATIONS[number - 1]};PRAGMA user_version = {number};COMMIT;"
            )
            try:
                self._db.executescript(script)
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> RuleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- RuleSource ------------------------------------------------------------

    @property
    def version(self) -> int:
        """The rule-set version (0: empty store); one indexed lookup, cheap to poll."""
        return self._db.execute("SELECT coalesce(max(version), 0) FROM changesets").fetchone()[0]

    def _iter(self, sql: str) -> Iterator[tuple[int, str]]:
        yield from self._db.execute(sql)

    def iter_vehicle_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every vehicle."""
        return self._iter("SELECT key, plate FROM vehicles")

    def iter_pass_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every visitor pass."""
        return self._iter("SELECT key, plate FROM visitor_passes")

    def iter_deny_plates(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised plate) of every deny-list entry."""
        return self._iter("SELECT key, plate FROM deny_list")

    def iter_tags(self) -> Iterator[tuple[int, str]]:
        """(row key, normalised tag) of every tag."""
        return self._iter("SELECT key, tag FROM tags")

    def iter_vehicle_facts(self) -> Iterator[VehicleFactsRow]:
        """Every vehicle joined with its resident, in one query (`VehicleFactsSource`).

        Residents share few distinct grants, so each distinct (group_ids,
        access_points, schedule_id) text is parsed once and the same Grant tuple
        handed out again: a million rows cost one dict look-up each, not a parse.
        """
        grants: dict[tuple[str, str | None, str | None], Grant] = {}
        for key, plate, vid, vactive, rid, ractive, groups, aps, schedule in self._db.execute(
            _VEHICLE_FACTS
        ):
            if ractive is None:  # no such resident (a dangling reference): fail closed
                yield key, plate, vid, bool(vactive), rid, None, None
                continue
            spec = (groups, aps, schedule)
            grant = grants.get(spec)
            if grant is None:
                grant = (tuple(groups.split(",")) if groups else (), _ap_value(aps), schedule)
                grants[spec] = grant
            yield key, plate, vid, bool(vactive), rid, bool(ractive), grant

    def _by_key(self, kind: str, key: int) -> Any:
        # the SQL text is built once: the connection's statement cache is keyed by it
        row = self._db.execute(_BY_KEY[kind], (key,)).fetchone()
        return None if row is None else TABLES[kind].entity(row)

    def _by_id(self, kind: str, id_: str) -> Any:
        row = self._db.execute(_BY_ID[kind], (id_,)).fetchone()
        return None if row is None else TABLES[kind].entity(row)

    def vehicle(self, key: int) -> Vehicle | None:
        """The vehicle stored under this row key."""
        return self._by_key("vehicles", key)

    def visitor_pass(self, key: int) -> VisitorPass | None:
        """The visitor pass stored under this row key."""
        return self._by_key("visitor_passes", key)

    def deny_entry(self, key: int) -> DenyEntry | None:
        """The deny-list entry stored under this row key."""
        return self._by_key("deny_list", key)

    def tag(self, key: int) -> Tag | None:
        """The tag stored under this row key."""
        return self._by_key("tags", key)

    def resident(self, resident_id: str) -> Resident | None:
        """The resident with this id."""
        return self._by_id("residents", resident_id)

    def group(self, group_id: str) -> Group | None:
        """The group with this id."""
        return self._by_id("groups", group_id)

    def schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with this id."""
        return self._by_id("schedules", schedule_id)

    # --- more reads -------------------------------------------------------------

    def get(self, kind: str, id_: str) -> Entity | None:
        """Any entity by kind (one of KINDS) and id, plates normalised."""
        return self._by_id(kind, id_)

    def key_of(self, kind: str, id_: str) -> int | None:
        """The row key of the entity with this id."""
        row = self._db.execute(
            f"SELECT key FROM {TABLES[kind].name} WHERE id = ?", (id_,)
        ).fetchone()
        return None if row is None else row[0]

    def counts(self) -> dict[str, int]:
        """Number of stored rows per kind."""
        return {
            k: self._db.execute(f"SELECT count(*) FROM {TABLES[k].name}").fetchone()[0]
            for k in KINDS
        }

    def entities(self, kind: str, *, raw: bool = True) -> Iterator[Entity]:
        """Every entity of a kind in key order; with `raw`, plates and tags as entered (export)."""
        t = TABLES[kind]
        cols, make = (
            (t.raw_columns, t.raw_entity) if raw and t.raw_entity else (t.read_columns, t.entity)
        )
        for row in self._db.execute(f"SELECT {', '.join(cols)} FROM {t.name} ORDER BY key"):
            yield make(row)

    def changesets(self, limit: int = 20) -> list[ChangeSetRecord]:
        """The most recent change sets, newest first."""
        rows = self._db.execute(
            "SELECT version, at, actor, source, counts, sha256 FROM changesets "
            "ORDER BY version DESC LIMIT ?",
            (limit,),
        )
        return [ChangeSetRecord(v, at, a, s, json.loads(c), h) for v, at, a, s, c, h in rows]

    @contextmanager
    def read_snapshot(self) -> Iterator[RuleStore]:
        """Within this block every read sees one committed version (for an index build)."""
        self._db.execute("BEGIN DEFERRED")
        try:
            self._db.execute("SELECT 1 FROM changesets LIMIT 1").fetchall()  # start the read txn
            yield self
        finally:
            self._db.execute("COMMIT")

    # --- writes -----------------------------------------------------------------

    def change(self, *, actor: str, source: str, sha256: str = "") -> ChangeSet:
        """Begin a change set (a transaction); commit() it, or leaving the block rolls back."""
        if self._open_change is not None:
            raise RulesError("a change set is already open on this rule store")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise RulesError(f"rule store {self.path} is busy or read-only: {err}") from err
        self._open_change = ChangeSet(self, actor=actor, source=source, sha256=sha256)
        return self._open_change

    def apply(self, changes: Iterable[Change], *, actor: str, source: str) -> int:
        """Upsert the entities and delete the `Delete`d ids as one change set; the new version.

        Plates/tags in the entities are taken as entered and stored normalised.
        """
        with self.change(actor=actor, source=source) as cs:
            for i, c in enumerate(changes):
                if isinstance(c, Delete):
                    cs.delete(c.kind, c.id, where=f"changes[{i}]")
                else:
                    cs.put(c, where=f"changes[{i}]")
            return cs.commit()

    def replace_all(
        self, ruleset: RuleSetData, *, actor: str, source: str, sha256: str = ""
    ) -> int:
        """Make the store hold exactly `ruleset`, as one change set; the new version."""
        with self.change(actor=actor, source=source, sha256=sha256) as cs:
            for kind in KINDS:
                cs.replace(kind)
                for i, e in enumerate(getattr(ruleset, kind)):
                    cs.put(e, where=f"{kind}[{i}]")
            return cs.commit()

    def purge_passes(self, before: float, *, actor: str = "gated", source: str = "purge") -> int:
        """Delete visitor passes that expired before `before` (epoch s) as one change set."""
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM visitor_passes WHERE valid_until < ?", (before,)
            )
        ]
        return self.apply((Delete("visitor_passes", i) for i in ids), actor=actor, source=source)


@dataclass
class _KindState:
    """What a change set did to one kind."""

    seen: dict[str, int | None] = field(default_factory=dict)  # id → line (None: not from a file)
    invalid: set[str] = field(default_factory=set)
    buffer: list[tuple[Any, ...]] = field(default_factory=list)
    written_ids: list[str] = field(default_factory=list)  # only while ≤ _BULK
    deleted_ids: list[str] = field(default_factory=list)  # only while ≤ _BULK
    rows: int = 0
    written: int = 0
    deleted: int = 0
    replace: bool = False


class ChangeSet:
    """One open write transaction on a RuleStore; becomes one version on commit().

    Rows are written as they come (in executemany batches) so a million-row
    import never sits in memory; problems are collected, and commit() runs the
    cross-row checks (references, duplicate plates) and rolls everything back
    if anything at all was wrong.
    """

    def __init__(self, store: RuleStore, *, actor: str, source: str, sha256: str) -> None:
        self._store = store
        self._db = store._db
        self.actor, self.source, self.sha256 = actor, source, sha256
        self.files: dict[str, str] = {}  # kind → input file name, for problem reports
        self.problems: list[Problem] = []
        self.total_problems = 0
        self._kinds = {k: _KindState() for k in KINDS}
        self._sql = {k: _upsert_sql(TABLES[k]) for k in KINDS}
        self._done = False

    def __enter__(self) -> ChangeSet:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.rollback()

    # -- collecting --------------------------------------------------------

    def report(self, line: int | None, fld: str, message: str, kind: str | None = None) -> None:
        """Record a problem; any problem makes commit() refuse the whole change set."""
        self.total_problems += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(line, fld, message, self.files.get(kind or "", "")))

    def replace(self, kind: str) -> None:
        """Rows of `kind` not put in this change set are deleted at commit (full replace)."""
        self._kinds[kind].replace = True

    def put(self, entity: Entity, *, line: int | None = None, where: str = "") -> None:
        """Upsert one entity (plates/tags as entered), validating it first."""
        kind = KIND_OF.get(type(entity))
        if kind is None:
            self.report(line, where, f"not a rule-set entity: {type(entity).__name__}")
            return
        st = self._kinds[kind]
        st.rows += 1
        prefix = f"{where}." if where else ""
        id_ = entity.id
        if isinstance(id_, str) and id_ in st.seen:
            first = st.seen[id_]
            at = f" (first on line {first})" if first is not None else ""
            self.report(line, f"{prefix}id", f"duplicate {SINGULAR[kind]} id {id_!r}{at}", kind)
            return
        problems = validate(entity)
        if isinstance(id_, str) and ID_RE.match(id_):
            st.seen[id_] = line
        if problems:
            if id_ == "" and len(problems) > 1:
                # an empty derived id only echoes the bad plate/tag it came from
                problems = [p for p in problems if p[0] != "id"]
            if isinstance(id_, str):
                st.invalid.add(id_)
            for fld, msg in problems:
                self.report(line, prefix + fld, msg, kind)
            return
        st.buffer.append(TABLES[kind].params(entity))
        if len(st.written_ids) <= _BULK:
            st.written_ids.append(id_)
        if len(st.buffer) >= 5000:
            self._flush(kind)

    def delete(self, kind: str, id_: str, *, line: int | None = None, where: str = "") -> None:
        """Delete one entity by id (absent ids are ignored)."""
        if kind not in TABLES:
            self.report(line, f"{where}.kind" if where else "kind", f"unknown kind {kind!r}")
            return
        self._flush(kind)
        cur = self._db.execute(f"DELETE FROM {TABLES[kind].name} WHERE id = ?", (id_,))
        self._deleted(kind, [id_] if cur.rowcount else [])

    def _deleted(self, kind: str, ids: list[str]) -> None:
        st = self._kinds[kind]
        st.deleted += len(ids)
        if len(st.deleted_ids) <= _BULK:
            st.deleted_ids.extend(ids[: _BULK + 1])

    def _flush(self, kind: str) -> None:
        st = self._kinds[kind]
        if st.buffer:
            cur = self._db.executemany(self._sql[kind], st.buffer)
            st.written += max(cur.rowcount, 0)
            st.buffer.clear()

    # -- finishing ---------------------------------------------------------

    def commit(self) -> int:
        """Check and commit; the new version. Any problem: InvalidRulesError, rolled back."""
        if self._done:
            raise RulesError("this change set is already finished")
        try:
            for kind in KINDS:
                self._flush(kind)
            self._delete_unseen()
            self._check_references()
            self._check_duplicates()
            if self.total_problems:
                raise InvalidRulesError(
                    f"rule-set change from {self.source}", self.problems, self.total_problems
                )
            version = self._store.version + 1
            counts = {
                k: {"rows": st.rows, "written": st.written, "deleted": st.deleted}
                for k, st in self._kinds.items()
                if st.rows or st.deleted or st.replace
            }
            self._db.execute(
                "INSERT INTO changesets (version, at, actor, source, counts, sha256) "
                "VALUES (?,?,?,?,?,?)",
                (
                    version,
                    self._store._clock(),
                    self.actor,
                    self.source,
                    json.dumps(counts),
                    self.sha256,
                ),
            )
            self._db.execute("COMMIT")
            self.version, self.counts = version, counts
            self._finish()
            return version
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Discard everything written in this change set."""
        if self._done:
            return
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._finish()

    def _finish(self) -> None:
        self._done = True
        self._store._open_change = None

    def _delete_unseen(self) -> None:
        for kind, st in self._kinds.items():
            if not st.replace:
                continue
            t = TABLES[kind]
            gone = [i for (i,) in self._db.execute(f"SELECT id FROM {t.name}") if i not in st.seen]
            for start in range(0, len(gone), 5000):
                chunk = gone[start : start + 5000]
                self._db.executemany(f"DELETE FROM {t.name} WHERE id = ?", ((i,) for i in chunk))
            self._deleted(kind, gone)

    def _where(self, kind: str, id_: str) -> int | None:
        return self._kinds[kind].seen.get(id_)

    def _check_references(self) -> None:
        for src, col, dst, multi in _REFS:
            s, d = self._kinds[src], self._kinds[dst]
            touched_src = s.rows > 0
            touched_dst = d.deleted > 0
            if not (touched_src or touched_dst):
                continue
            full = (touched_src and len(s.written_ids) > _BULK) or (
                touched_dst and len(d.deleted_ids) > _BULK
            )
            st, dt_ = TABLES[src], TABLES[dst]
            if multi:
                self._check_multi_ref(src, col, dst)
                continue
            base = (
                f"SELECT s.id, s.{col} FROM {st.name} s WHERE s.{col} IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM {dt_.name} t WHERE t.id = s.{col})"
            )
            queries: list[tuple[str, tuple[Any, ...]]] = []
            if full:
                queries.append((base, ()))
            else:
                if touched_src and s.written_ids:
                    queries.append(
                        (
                            base + " AND s.id IN (SELECT value FROM json_each(?))",
                            (json.dumps(s.written_ids),),
                        )
                    )
                if touched_dst and d.deleted_ids:
                    queries.append(
                        (
                            base + f" AND s.{col} IN (SELECT value FROM json_each(?))",
                            (json.dumps(d.deleted_ids),),
                        )
                    )
            seen_pairs: set[tuple[str, str]] = set()
            for sql, params in queries:
                for sid, ref in self._db.execute(sql, params):
                    if (sid, ref) in seen_pairs:
                        continue
                    seen_pairs.add((sid, ref))
                    self._ref_problem(src, sid, _FIELD_OF_COLUMN.get(col, col), dst, ref)

    def _check_multi_ref(self, src: str, col: str, dst: str) -> None:
        # group lists are small and groups are few: one pass in Python is simplest
        known = {i for (i,) in self._db.execute(f"SELECT id FROM {TABLES[dst].name}")}
        for sid, ids in self._db.execute(
            f"SELECT id, {col} FROM {TABLES[src].name} WHERE {col} <> ''"
        ):
            for ref in ids.split(","):
                if ref not in known:
                    self._ref_problem(src, sid, _FIELD_OF_COLUMN.get(col, col), dst, ref)

    def _ref_problem(self, src: str, sid: str, fld: str, dst: str, ref: str) -> None:
        line = self._where(src, sid)
        d = self._kinds[dst]
        if ref in d.invalid:
            at = d.seen.get(ref)
            msg = f"{SINGULAR[dst]} {ref!r} is itself invalid" + (f" (line {at})" if at else "")
        elif sid not in self._kinds[src].seen:
            msg = (
                f"{SINGULAR[src]} {sid!r} still refers to {SINGULAR[dst]} {ref!r}, "
                "which this change removes"
            )
        else:
            msg = f"no {SINGULAR[dst]} with id {ref!r}"
        if line is None and not msg.startswith(SINGULAR[src]):
            msg = f"{SINGULAR[src]} {sid!r}: {msg}"
        self.report(line, fld, msg, src)

    def _check_duplicates(self) -> None:
        for kind in KINDS:
            t, st = TABLES[kind], self._kinds[kind]
            if t.unique is None or not st.rows:
                continue
            col = t.unique
            if len(st.written_ids) > _BULK:
                rows = self._db.execute(
                    f"SELECT {col}, group_concat(id, char(31)) FROM {t.name} "
                    f"GROUP BY {col} HAVING count(*) > 1"
                )
                groups = [(value, ids.split("\x1f")) for value, ids in rows]
            else:
                groups = []
                done: set[str] = set()
                for id_ in st.written_ids:
                    row = self._db.execute(
                        f"SELECT {col} FROM {t.name} WHERE id = ?", (id_,)
                    ).fetchone()
                    if row is None or row[0] in done:
                        continue
                    ids = [
                        i
                        for (i,) in self._db.execute(
                            f"SELECT id FROM {t.name} WHERE {col} = ?", (row[0],)
                        )
                    ]
                    if len(ids) > 1:
                        done.add(row[0])
                        groups.append((row[0], ids))
            for value, ids in groups:
                # report on every row but the first one (by line, rows outside the input first)
                ordered = sorted(
                    ids, key=lambda i: (st.seen.get(i) or 0, self._store.key_of(kind, i))
                )
                first = ordered[0]
                first_line = st.seen.get(first)
                first_at = f"{SINGULAR[kind]} {first!r}" + (
                    f" on line {first_line}" if first_line else ""
                )
                for other in ordered[1:]:
                    self.report(
                        st.seen.get(other),
                        col,
                        f"{SINGULAR[kind]} {other!r}: {col} {value!r} "
                        f"is already used by {first_at}",
                        kind,
                    )


__all__ = [
    "KINDS",
    "Change",
    "ChangeSet",
    "ChangeSetRecord",
    "Delete",
    "Entity",
    "InvalidRulesError",
    "Problem",
    "RuleSetData",
    "RuleStore",
    "validate",
]
