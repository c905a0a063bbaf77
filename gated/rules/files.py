"""Rule-set files: CSV (one file per kind, for spreadsheets) and JSON (one document).

`import_rules` streams the input into one `ChangeSet`: every row is converted
and validated, every problem is collected with its physical line, and only a
file without a single problem is committed (then as one new version).
`export_rules` writes the same formats back, so export → import round-trips.
docs/rules-format.md describes both formats with examples.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import re
import tempfile
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from gated.errors import RulesError
from gated.plates import normalise
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
from gated.rules.store import (
    KINDS,
    ChangeSet,
    Entity,
    InvalidRulesError,
    RuleStore,
    fmt_time,
)

FORMAT_NAME = "gated-rules"
FORMAT_VERSION = 1
MAX_LINE_BYTES = 16_384  # one CSV line; real rows are a few hundred bytes
MAX_ROWS = 2_000_000  # per CSV file / JSON array
MAX_JSON_BYTES = 512 * 1024 * 1024  # JSON is read whole; bigger sets belong in CSV

Format = Literal["json", "csv"]

# Columns (CSV header names, JSON keys) per kind, in export order: the entity's
# own fields, so the file format cannot drift from gated.rules.entities.
_ENTITIES: dict[str, type] = {
    "schedules": Schedule,
    "groups": Group,
    "residents": Resident,
    "vehicles": Vehicle,
    "tags": Tag,
    "visitor_passes": VisitorPass,
    "deny_list": DenyEntry,
}
COLUMNS: dict[str, tuple[str, ...]] = {
    kind: tuple(f.name for f in dataclasses.fields(entity)) for kind, entity in _ENTITIES.items()
}
# Columns a CSV header must have (a cell may still be empty where a default exists).
REQUIRED: dict[str, tuple[str, ...]] = {
    "schedules": ("id",),
    "groups": ("id",),
    "residents": ("id",),
    "vehicles": ("plate", "resident_id"),
    "tags": ("tag", "resident_id"),
    "visitor_passes": ("id", "plate", "host_resident_id", "valid_from", "valid_until"),
    "deny_list": ("plate",),
}

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {d: i for i, d in enumerate(_DAYS)} | {
    name: i
    for i, name in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}
_SPAN_RE = re.compile(r"^(\d{1,2}:\d{2}(?::\d{2})?)\s*-\s*(\d{1,2}:\d{2}(?::\d{2})?)$")
_DUP = object()  # key under which a decoded JSON object lists its repeated keys


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did; the CLI writes the audit event from it."""

    version: int  # the new rule-set version
    format: Format
    merge: bool
    sha256: str  # of the input file (a CSV folder: see docs/rules-format.md)
    counts: dict[str, int]  # rows read per kind (kinds present in the input)
    written: dict[str, int]  # rows inserted or changed per kind
    deleted: dict[str, int]  # rows removed per kind (full replace, or none when merging)


# --- the small grammars: weekdays, windows, exceptions, times ------------------


def parse_days(text: str) -> frozenset[int]:
    """'mon-fri,sat' → {0,…,5}; ranges may wrap ('fri-mon'); 'daily' is every day."""
    text = text.strip().lower()
    if text in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            start, end = _day(a), _day(b)
            days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
        else:
            days.add(_day(part))
    return frozenset(days)


def _day(name: str) -> int:
    key = name.strip().lower()
    if key not in _DAY_NAMES:
        raise ValueError(f"{name.strip()[:20]!r} is not a weekday (mon tue wed thu fri sat sun)")
    return _DAY_NAMES[key]


def fmt_days(days: frozenset[int]) -> str:
    """{0,…,4,5} → 'mon-sat'; runs of three or more days become ranges."""
    parts: list[str] = []
    ordered = sorted(days)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{_DAYS[ordered[i]]}-{_DAYS[ordered[j]]}")
        else:
            parts.extend(_DAYS[d] for d in ordered[i : j + 1])
        i = j + 1
    return ",".join(parts)


def _time(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text.zfill(5) if len(text) == 4 else text)
    except ValueError:
        raise ValueError(f"{text[:20]!r} is not a time of day (HH:MM)") from None


def parse_span(text: str) -> tuple[dt.time, dt.time]:
    """'07:00-19:00' → (07:00, 19:00); an end at or before the start runs past midnight."""
    m = _SPAN_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text.strip()[:40]!r} is not a window like 07:00-19:00")
    return _time(m.group(1)), _time(m.group(2))


def fmt_span(span: tuple[dt.time, dt.time]) -> str:
    """(07:00, 19:00) → '07:00-19:00'."""
    return f"{fmt_time(span[0])}-{fmt_time(span[1])}"


def parse_window_entry(text: str) -> list[TimeWindow]:
    """'mon-fri 07:00-12:00 13:00-19:00' → one TimeWindow per span."""
    days_text, _, spans_text = text.strip().partition(" ")
    spans = spans_text.split()
    if not days_text or not spans:
        raise ValueError(f"{text.strip()[:40]!r} is not like 'mon-fri 07:00-19:00'")
    days = parse_days(days_text)
    return [TimeWindow(days, *parse_span(s)) for s in spans]


def _windows(value: Any) -> tuple[TimeWindow, ...]:
    entries = value.split(";") if isinstance(value, str) else _list_of_str(value)
    out: list[TimeWindow] = []
    for entry in entries:
        if entry.strip():
            out.extend(parse_window_entry(entry))
    return tuple(out)


def _exceptions(value: Any) -> dict[dt.date, tuple[tuple[dt.time, dt.time], ...]]:
    out: dict[dt.date, tuple[tuple[dt.time, dt.time], ...]] = {}
    items: list[tuple[str, list[str]]] = []
    if isinstance(value, str):
        for entry in value.split(";"):
            if entry.strip():
                date_text, *spans = entry.split()
                items.append((date_text, [] if spans == ["closed"] else spans))
    elif isinstance(value, dict):
        if _DUP in value:
            raise ValueError(f"date {value[_DUP][0]!r} is given twice")
        items = [(k, _list_of_str(v)) for k, v in value.items()]
    else:
        raise ValueError("expected 'YYYY-MM-DD closed; YYYY-MM-DD 08:00-12:00' or an object")
    for date_text, spans in items:
        try:
            day = dt.date.fromisoformat(date_text)
        except ValueError:
            raise ValueError(f"{date_text[:20]!r} is not a date (YYYY-MM-DD)") from None
        if day in out:
            raise ValueError(f"date {date_text} is given twice")
        out[day] = tuple(parse_span(s) for s in spans)
    return out


def fmt_windows(s: Schedule) -> list[str]:
    """The schedule's windows as 'mon-fri 07:00-19:00' entries."""
    return [f"{fmt_days(w.weekdays)} {fmt_span((w.start, w.end))}" for w in s.windows]


def fmt_exceptions(s: Schedule) -> dict[str, list[str]]:
    """The exception days as {'2024-12-25': ['08:00-12:00']} ([] = closed), by date."""
    return {d.isoformat(): [fmt_span(sp) for sp in ws] for d, ws in sorted(s.exceptions.items())}


def parse_timestamp(value: Any, tz: dt.tzinfo) -> float:
    """ISO 8601 (with offset, or naive in the site's zone) or epoch seconds → epoch seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a time like 2025-06-01T08:00:00+02:00")
    text = value.strip()
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an ISO 8601 time like 2025-06-01T08:00") from None
    if when.tzinfo is None:
        local = when.replace(tzinfo=tz)
        # A wall time inside a spring-forward gap does not exist; refuse it rather
        # than guess an hour either way. Ambiguous autumn times take the first one.
        if dt.datetime.fromtimestamp(local.timestamp(), tz).replace(tzinfo=None) != when:
            raise ValueError(f"{text!r} does not exist in {tz} (clock change); give an offset")
        when = local
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError) as err:
        raise ValueError(f"{text[:40]!r} is out of range") from err


def fmt_timestamp(ts: float, tz: dt.tzinfo) -> str:
    """Epoch seconds → ISO 8601 in the site's zone with its offset."""
    when = dt.datetime.fromtimestamp(ts, tz)
    return when.isoformat(timespec="seconds" if when.microsecond == 0 else "microseconds")


# --- value converters (accept CSV text or JSON values) -------------------------


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected text")
    return v


def _ident(v: Any) -> str:
    return _text(v).strip()


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = _text(v).strip().lower()
    if text in ("true", "yes", "y", "1"):
        return True
    if text in ("false", "no", "n", "0"):
        return False
    raise ValueError(f"{text[:20]!r} is not true/false (or yes/no, 1/0)")


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    text = _text(v).strip()
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise ValueError(f"{text[:20]!r} is not a whole number")
    return int(text)


def _list_of_str(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of text")
    return v


def _id_list(v: Any) -> tuple[str, ...]:
    items = re.split(r"[,;\s]+", v) if isinstance(v, str) else _list_of_str(v)
    return tuple(x.strip() for x in items if x.strip())


def _access_points(v: Any) -> frozenset[str] | None:
    if isinstance(v, str) and v.strip() == "*":
        return None
    return frozenset(_id_list(v))


# --- rows ↔ entities ----------------------------------------------------------


class _Row:
    """Typed access to one input row; conversion errors are reported per field."""

    def __init__(self, data: Mapping[str, Any], fail: Callable[[str, str], None]) -> None:
        self.data, self.fail, self.bad = data, fail, False

    def get(
        self,
        name: str,
        conv: Callable[[Any], Any],
        default: Any = None,
        *,
        req: bool = False,
        free: bool = False,
    ) -> Any:
        """The converted value of `name`; `default` when empty (free text: only when '')."""
        v = self.data.get(name)
        empty = v is None or (v == "" if free else isinstance(v, str) and not v.strip())
        if empty:
            if req:
                self.fail(name, "is required")
                self.bad = True
            return default
        try:
            return conv(v)
        except ValueError as err:
            self.fail(name, str(err))
            self.bad = True
            return default


def _derived_id(text: Any) -> str:
    # vehicles, tags and deny entries may leave `id` empty: the normalised plate/tag names them
    try:
        return normalise(text) if isinstance(text, str) else ""
    except Exception:  # hostile text; the plate column reports it
        return ""


def build(
    kind: str, data: Mapping[str, Any], tz: dt.tzinfo, fail: Callable[[str, str], None]
) -> Entity | None:
    """One input row (CSV cells or a JSON object) → entity, or None after fail(field, message)."""
    r = _Row(data, fail)
    ts = lambda v: parse_timestamp(v, tz)  # noqa: E731
    e: Entity
    if kind == "schedules":
        e = Schedule(
            r.get("id", _ident, req=True),
            r.get("name", _text, "", free=True),
            r.get("windows", _windows, ()),
            r.get("exceptions", _exceptions, {}),
        )
    elif kind == "groups":
        e = Group(
            r.get("id", _ident, req=True),
            r.get("name", _text, "", free=True),
            r.get("access_points", _access_points, frozenset()),
            r.get("schedule_id", _ident),
        )
    elif kind == "residents":
        e = Resident(
            r.get("id", _ident, req=True),
            r.get("name", _text, "", free=True),
            r.get("unit", _text, "", free=True),
            r.get("active", _bool, True),
            r.get("groups", _id_list, ()),
            r.get("access_points", _access_points, frozenset()),
            r.get("schedule_id", _ident),
        )
    elif kind == "vehicles":
        plate = r.get("plate", _text, "", req=True, free=True)
        e = Vehicle(
            r.get("id", _ident, _derived_id(plate)),
            plate,
            r.get("resident_id", _ident, "", req=True),
            r.get("active", _bool, True),
            r.get("description", _text, "", free=True),
        )
    elif kind == "tags":
        tag = r.get("tag", _text, "", req=True, free=True)
        e = Tag(
            r.get("id", _ident, _derived_id(tag)),
            tag,
            r.get("resident_id", _ident, "", req=True),
            r.get("active", _bool, True),
        )
    elif kind == "visitor_passes":
        e = VisitorPass(
            r.get("id", _ident, req=True),
            r.get("plate", _text, "", req=True, free=True),
            r.get("host_resident_id", _ident, "", req=True),
            r.get("valid_from", ts, 0.0, req=True),
            r.get("valid_until", ts, 0.0, req=True),
            r.get("visitor_name", _text, "", free=True),
            r.get("access_points", _access_points, frozenset()),
            r.get("max_uses", _int),
        )
    elif kind == "deny_list":
        plate = r.get("plate", _text, "", req=True, free=True)
        e = DenyEntry(
            r.get("id", _ident, _derived_id(plate)),
            plate,
            r.get("reason", _text, "", free=True),
            r.get("until", ts),
        )
    else:  # pragma: no cover - callers pass KINDS only
        raise ValueError(kind)
    return None if r.bad else e


def record(kind: str, e: Any, tz: dt.tzinfo, *, text: bool) -> dict[str, Any]:
    """Entity → row for export: CSV cells (`text`) or JSON values; inverse of build()."""

    def aps(v: frozenset[str] | None) -> Any:
        if v is None:
            return "*"
        return ",".join(sorted(v)) if text else sorted(v)

    def opt(v: Any) -> Any:
        return ("" if text else None) if v is None else v

    def flag(v: bool) -> Any:
        return ("true" if v else "false") if text else v

    if kind == "schedules":
        windows: Any = fmt_windows(e)
        exceptions: Any = fmt_exceptions(e)
        if text:
            windows = "; ".join(windows)
            exceptions = "; ".join(
                f"{d} {' '.join(spans) if spans else 'closed'}" for d, spans in exceptions.items()
            )
        return {"id": e.id, "name": e.name, "windows": windows, "exceptions": exceptions}
    if kind == "groups":
        return {
            "id": e.id,
            "name": e.name,
            "access_points": aps(e.access_points),
            "schedule_id": opt(e.schedule_id),
        }
    if kind == "residents":
        return {
            "id": e.id,
            "name": e.name,
            "unit": e.unit,
            "active": flag(e.active),
            "groups": ",".join(e.groups) if text else list(e.groups),
            "access_points": aps(e.access_points),
            "schedule_id": opt(e.schedule_id),
        }
    if kind == "vehicles":
        return {
            "id": e.id,
            "plate": e.plate,
            "resident_id": e.resident_id,
            "active": flag(e.active),
            "description": e.description,
        }
    if kind == "tags":
        return {"id": e.id, "tag": e.tag, "resident_id": e.resident_id, "active": flag(e.active)}
    if kind == "visitor_passes":
        return {
            "id": e.id,
            "plate": e.plate,
            "host_resident_id": e.host_resident_id,
            "valid_from": fmt_timestamp(e.valid_from, tz),
            "valid_until": fmt_timestamp(e.valid_until, tz),
            "visitor_name": e.visitor_name,
            "access_points": aps(e.access_points),
            "max_uses": ("" if e.max_uses is None else str(e.max_uses)) if text else e.max_uses,
        }
    if kind == "deny_list":
        until = None if e.until is None else fmt_timestamp(e.until, tz)
        return {"id": e.id, "plate": e.plate, "reason": e.reason, "until": opt(until)}
    raise ValueError(kind)


# --- CSV ----------------------------------------------------------------------


def csv_kind(path: Path) -> str | None:
    """The kind a CSV file holds, from its name: 'vehicles.csv', 'site1-vehicles.csv' …"""
    stem = path.stem.lower()
    for kind in sorted(KINDS, key=len, reverse=True):
        if stem == kind or stem.endswith((f"-{kind}", f"_{kind}", f".{kind}")):
            return kind
    return None


def _csv_lines(f: IO[bytes], report: Callable[[int, str], None]) -> Iterator[str]:
    """Physical lines decoded one by one, so every encoding problem has its line number."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if lineno == 1:
            if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                report(1, "the file is UTF-16 text; save it as 'CSV UTF-8' instead")
                return
            raw = raw.removeprefix(codecs.BOM_UTF8)  # spreadsheets write a BOM
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            report(lineno, f"line is longer than {MAX_LINE_BYTES} bytes")
            while True:  # skip the rest of this physical line
                more = f.readline(MAX_LINE_BYTES)
                if not more or more.endswith(b"\n"):
                    break
            yield "\n"  # keeps the csv reader's line count in step
            continue
        if b"\0" in raw:
            report(lineno, "contains NUL bytes")
            raw = raw.replace(b"\0", b"")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as err:
            report(lineno, f"not UTF-8 (byte {err.start + 1} of the line); save as 'CSV UTF-8'")
            yield raw.decode("utf-8", "replace")


def _read_csv(cs: ChangeSet, kind: str, path: Path, tz: dt.tzinfo, replace: bool) -> int:
    """Stream one CSV file of `kind` into the change set; the number of data rows."""
    cs.files[kind] = path.name

    line_problems = 0

    def report(line: int | None, fld: str, message: str) -> None:
        cs.report(line, fld, message, kind)

    def report_line(line: int, message: str) -> None:
        nonlocal line_problems
        line_problems += 1
        report(line, "", message)

    if replace:
        cs.replace(kind)
    rows = 0
    with path.open("rb") as f:
        reader = csv.reader(_csv_lines(f, report_line), strict=True)
        header: list[str] | None = None
        end = 0
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                report(reader.line_num or start, "", f"broken CSV ({err}); stopped reading here")
                break
            end = reader.line_num
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue  # blank rows and '#' comment rows
            if header is None:
                header = [c.strip().lower() for c in cells]
                if not _check_header(kind, header, start, report):
                    return 0
                continue
            rows += 1
            if rows > MAX_ROWS:
                report(start, "", f"more than {MAX_ROWS} rows; split the file")
                break
            if len(cells) != len(header):
                extra = cells[len(header) :]
                if len(cells) < len(header) or any(c.strip() for c in extra):
                    report(start, "", f"row has {len(cells)} cells, the header has {len(header)}")
                    continue
            data = dict(zip(header, cells, strict=False))
            entity = build(kind, data, tz, lambda fld, msg, ln=start: report(ln, fld, msg))
            if entity is not None:
                cs.put(entity, line=start)
        if header is None and not line_problems:
            report(None, "", "no header row (expected: " + ",".join(COLUMNS[kind]) + ")")
    return rows


def _check_header(
    kind: str, header: list[str], line: int, report: Callable[[int | None, str, str], None]
) -> bool:
    ok = True
    allowed = COLUMNS[kind]
    for name in header:
        if name not in allowed:
            report(line, name or "(empty)", "unknown column; allowed: " + ", ".join(allowed))
            ok = False
    for name in {n for n in header if header.count(n) > 1}:
        report(line, name, "column appears more than once")
        ok = False
    for name in REQUIRED[kind]:
        if name not in header:
            report(line, name, "required column is missing")
            ok = False
    return ok


# --- JSON ---------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if k in out:
            out.setdefault(_DUP, []).append(k)
        out[k] = v
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs)
_WS = re.compile(r"[ \t\n\r]*")


class _Lines:
    """Line number of a position, counted forward incrementally."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_json(cs: ChangeSet, text: str, tz: dt.tzinfo, replace: bool) -> dict[str, int]:
    """Stream the document's arrays, one element at a time, into the change set."""
    lines = _Lines(text)
    counts: dict[str, int] = {}
    meta: dict[str, Any] = {}

    def expect(pos: int, char: str, what: str) -> int:
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if text[pos : pos + 1] != char:
            raise json.JSONDecodeError(f"expected {what}", text, pos)
        return pos + 1

    try:
        pos = expect(0, "{", "a JSON object {…} at the top")
        first = True
        while True:
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if text.startswith("}", pos):
                pos += 1
                break
            if not first:
                pos = expect(pos, ",", "',' or '}'")
                pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            first = False
            key_line = lines.at(pos)
            if text[pos : pos + 1] != '"':
                raise json.JSONDecodeError("expected a key in double quotes", text, pos)
            key, pos = _DECODER.raw_decode(text, pos)
            pos = expect(pos, ":", "':'")
            if key in counts or key in meta:
                cs.report(key_line, key, "key appears more than once")
            if key in KINDS:
                start = expect(pos, "[", "an array [")
                counts[key], pos = _read_array(cs, key, text, start, lines, tz, replace)
                continue
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            meta[key], pos = _DECODER.raw_decode(text, pos)
            if key not in ("format", "format_version"):
                cs.report(
                    key_line,
                    key,
                    "unknown key; allowed: format, format_version, " + ", ".join(KINDS),
                )
        if text[_WS.match(text, pos).end() :]:  # type: ignore[union-attr]
            raise json.JSONDecodeError("extra data after the document", text, pos)
    except json.JSONDecodeError as err:
        cs.report(
            err.lineno, "", f"invalid JSON: {err.msg} (column {err.colno}); stopped reading here"
        )
        return counts
    except RecursionError:
        cs.report(None, "", "invalid JSON: nested too deeply")
        return counts
    if meta.get("format") != FORMAT_NAME:
        cs.report(1, "format", f'must be "{FORMAT_NAME}"')
    if meta.get("format_version") != FORMAT_VERSION:
        cs.report(
            1,
            "format_version",
            f"must be {FORMAT_VERSION} (this gated reads version {FORMAT_VERSION})",
        )
    return counts


def _read_array(
    cs: ChangeSet, kind: str, text: str, pos: int, lines: _Lines, tz: dt.tzinfo, replace: bool
) -> tuple[int, int]:
    """Put each element of one kind's array; (element count, position after ']')."""
    if replace:
        cs.replace(kind)
    allowed = set(COLUMNS[kind])
    index = 0
    while True:
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith("]", pos):
            pos += 1
            break
        if index:
            if text[pos : pos + 1] != ",":
                raise json.JSONDecodeError("expected ',' or ']'", text, pos)
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
        line = lines.at(pos)
        obj, pos = _DECODER.raw_decode(text, pos)
        where = f"{kind}[{index}]"
        index += 1
        if index > MAX_ROWS:
            cs.report(line, where, f"more than {MAX_ROWS} entries")
            continue
        if not isinstance(obj, dict):
            cs.report(line, where, "expected an object {…}", kind)
            continue
        if _DUP in obj:
            cs.report(line, f"{where}.{obj.pop(_DUP)[0]}", "key appears more than once", kind)
        for key in obj:
            if key not in allowed:
                cs.report(
                    line,
                    f"{where}.{key}",
                    "unknown key; allowed: " + ", ".join(COLUMNS[kind]),
                    kind,
                )
        entity = build(
            kind, obj, tz, lambda fld, msg, ln=line, w=where: cs.report(ln, f"{w}.{fld}", msg, kind)
        )
        if entity is not None:
            cs.put(entity, line=line, where=where)
    return index, pos


# --- entry points -------------------------------------------------------------


def _zone(tz: str | dt.tzinfo) -> dt.tzinfo:
    if isinstance(tz, dt.tzinfo):
        return tz
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise RulesError(f"unknown time zone {tz!r}") from err


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def import_rules(
    store: RuleStore,
    path: str | Path,
    *,
    fmt: Format | None = None,
    merge: bool = False,
    actor: str = "installer",
    tz: str | dt.tzinfo = "UTC",
    deletes: Mapping[str, Iterable[str]] | None = None,
) -> ImportResult:
    """Import a JSON file, one CSV file or a folder of CSVs as one change set.

    `deletes` (kind → ids) are removed in the same change set, so a rule-bundle
    delta from the service is one version or nothing.
    Full replace (default): each kind present in the input ends up exactly as in
    the file; kinds absent from the input are left as they are. `merge`: rows
    are upserted by id and nothing is deleted. Naive times are in `tz` (the
    site's zone). Raises InvalidRulesError listing every problem; then nothing changed.
    """
    path = Path(path)
    zone = _zone(tz)
    if fmt is None:
        fmt = "csv" if path.is_dir() or path.suffix.lower() == ".csv" else "json"
        if not path.is_dir() and path.suffix.lower() not in (".csv", ".json"):
            raise RulesError(
                f"{path}: cannot tell the format from the name; give --format json|csv"
            )
    try:
        if fmt == "csv":
            files = (
                sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv")
                if path.is_dir()
                else [path]
            )
            if not files:
                raise RulesError(f"{path}: no .csv files in this folder")
            digests = [(p.name, _sha256_file(p)) for p in files]
            sha = (
                digests[0][1]
                if not path.is_dir()
                else hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in digests).encode()).hexdigest()
            )
        else:
            size = path.stat().st_size
            if size > MAX_JSON_BYTES:
                raise RulesError(f"{path}: {size} bytes is too large for JSON; use CSV files")
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
    except OSError as err:
        raise RulesError(f"cannot read {path}: {err.strerror or err}") from err

    source = f"import {path.name}" + (" (merge)" if merge else "")
    counts: dict[str, int] = {}
    with store.change(actor=actor, source=source, sha256=sha) as cs:
        try:
            if fmt == "csv":
                by_kind: dict[str, Path] = {}
                for p in files:
                    kind = csv_kind(p)
                    if kind is None:
                        cs.report(
                            None,
                            "",
                            f"{p.name}: cannot tell what it holds; name it <kind>.csv, "
                            f"kind one of: {', '.join(KINDS)}",
                        )
                    elif kind in by_kind:
                        cs.report(None, "", f"{p.name} and {by_kind[kind].name} both hold {kind}")
                    else:
                        by_kind[kind] = p
                for kind in KINDS:
                    if kind in by_kind:
                        counts[kind] = _read_csv(cs, kind, by_kind[kind], zone, not merge)
            else:
                text = _decode_json(cs, data)
                del data
                if text is not None:
                    counts = _read_json(cs, text, zone, not merge)
            for kind, ids in (deletes or {}).items():
                for i, id_ in enumerate(ids):
                    cs.delete(kind, id_, where=f"delete.{kind}[{i}]")
        except OSError as err:
            raise RulesError(f"cannot read {path}: {err.strerror or err}") from err
        try:
            version = cs.commit()
        except InvalidRulesError as err:
            err.summary = f"{path.name} was not imported"
            err.args = (err._report(),)
            raise
    return ImportResult(
        version=version,
        format=fmt,
        merge=merge,
        sha256=sha,
        counts=counts,
        written={k: v["written"] for k, v in cs.counts.items()},
        deleted={k: v["deleted"] for k, v in cs.counts.items()},
    )


def import_document(
    store: RuleStore,
    data: bytes,
    *,
    name: str,
    merge: bool = False,
    deletes: Mapping[str, Iterable[str]] | None = None,
    actor: str = "service",
    tz: str | dt.tzinfo = "UTC",
) -> ImportResult:
    """Import a JSON rule-set document held in memory (a rule bundle) exactly as a file.

    It goes through a private temporary file named `{name}.json` beside the store, so
    the change set's source reads `import {name}.json` and every check of
    `import_rules` applies unchanged.
    """
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
        raise RulesError(f"{name!r} is not a usable document name")
    try:
        with tempfile.TemporaryDirectory(dir=store.path.parent, prefix=".import-") as tmp:
            path = Path(tmp) / f"{name}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return import_rules(store, path, fmt="json", merge=merge, actor=actor, tz=tz,
                                deletes=deletes)
    except OSError as err:
        raise RulesError(f"cannot stage the rule document: {err.strerror or err}") from err


def _decode_json(cs: ChangeSet, data: bytes) -> str | None:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        cs.report(1, "", "the file is UTF-16 text; save it as UTF-8")
        return None
    try:
        return data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        cs.report(line, "", f"not UTF-8 (byte {column} of the line); save the file as UTF-8")
        return None


def export_rules(
    store: RuleStore,
    out: str | Path | IO[str],
    fmt: Format = "json",
    *,
    tz: str | dt.tzinfo = "UTC",
) -> None:
    """Write the whole rule set: JSON to a file or text stream, CSV to a folder (one file per kind).

    Files are written to a temporary name and renamed, so a reader never sees half a file.
    """
    zone = _zone(tz)
    with store.read_snapshot():
        if fmt == "json":
            if isinstance(out, (str, Path)):
                with _atomic(Path(out)) as f:
                    _write_json(store, f, zone)
            else:
                _write_json(store, out, zone)
        elif fmt == "csv":
            if not isinstance(out, (str, Path)):
                raise RulesError("CSV export needs a folder to write one file per kind into")
            folder = Path(out)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise RulesError(f"cannot create {folder}: {err.strerror or err}") from err
            for kind in KINDS:
                with _atomic(folder / f"{kind}.csv") as f:
                    w = csv.DictWriter(f, fieldnames=COLUMNS[kind], lineterminator="\r\n")
                    w.writeheader()
                    for e in store.entities(kind):
                        w.writerow(record(kind, e, zone, text=True))
        else:
            raise RulesError(f"unknown format {fmt!r} (json or csv)")


def _write_json(store: RuleStore, f: IO[str], zone: dt.tzinfo) -> None:
    f.write(f'{{"format": "{FORMAT_NAME}", "format_version": {FORMAT_VERSION}')
    for kind in KINDS:
        f.write(f',\n"{kind}": [')
        sep = "\n"
        for e in store.entities(kind):
            f.write(sep + json.dumps(record(kind, e, zone, text=False), ensure_ascii=False))
            sep = ",\n"
        f.write("\n]")
    f.write("\n}\n")


class _atomic:
    """Write a text file under a temporary name; fsync and rename on success."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> IO[str]:
        try:
            fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        except OSError as err:
            raise RulesError(f"cannot write {self.path}: {err.strerror or err}") from err
        self.file = io.open(fd, "w", encoding="utf-8", newline="")  # noqa: UP020
        return self.file

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except OSError as err:
            raise RulesError(f"cannot write {self.path}: {err.strerror or err}") from err
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


__all__ = [
    "COLUMNS",
    "ImportResult",
    "build",
    "export_rules",
    "fmt_days",
    "import_rules",
    "parse_days",
    "parse_timestamp",
    "record",
]
