"""The viewer's list queries: URL filters checked against a whitelist, then bound SQL.

A list's URL may name only the filters its `Listing` declares; each maps to one column
from a fixed tuple in this module, and every value travels as a bound parameter. SQL
text is composed with psycopg's `sql.Identifier` from those constants alone, never from
the request, so a hostile query string can change which rows match but not what the
statement is. Anything that does not parse is a `FilterError`, which the app answers
with 400 and the message.

Paging is by keyset: a page ends with a cursor `before=<epoch seconds>~<row key>`
naming the last row shown; the next page asks for rows strictly older in
(time, key) order, which costs the same on page 1,000 as on page 1.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import sql

__all__ = ["Field", "FilterError", "Filters", "Listing", "parse_filters", "select_page"]

MAX_TEXT = 64
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_CURSOR_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DIGITS = re.compile(r"^[0-9]{1,6}$")  # ASCII only: str.isdigit() also takes "٣"
_DATE_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d")
# Paging keys the lists own; everything else in a query string must be a declared filter.
PAGING = ("before", "limit")
RANGE = ("since", "until")


class FilterError(ValueError):
    """A query string the viewer refuses (the message says which key and why)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One URL filter: its key, the column it tests, and how."""

    key: str
    column: str
    how: Literal["equals", "contains", "choice"] = "equals"
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Listing:
    """One list: its table, selected columns, filters, time column and row key."""

    table: str
    columns: tuple[str, ...]
    fields: tuple[Field, ...]
    time_column: str  # timestamptz: the order and the since/until range
    key_column: str  # unique within a tenant: breaks ties in the order

    def field(self, key: str) -> Field | None:
        """The filter named `key`, or None."""
        return next((f for f in self.fields if f.key == key), None)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every query-string key this list understands."""
        return (*(f.key for f in self.fields), *RANGE, *PAGING)


@dataclass(slots=True)
class Filters:
    """A parsed, checked query string."""

    equals: dict[str, str] = field(default_factory=dict)  # column → value
    contains: dict[str, str] = field(default_factory=dict)  # column → substring
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    before: tuple[dt.datetime, str] | None = None
    limit: int = DEFAULT_LIMIT
    shown: dict[str, str] = field(default_factory=dict)  # the filters as given, for links


def _text(value: str, key: str) -> str:
    if len(value) > MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FilterError(f"{key}: at most {MAX_TEXT} printable characters")
    return value


def _when(value: str, key: str, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    for fmt in _DATE_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt).replace(tzinfo=tz)
        except ValueError:
            continue
    raise FilterError(f"{key}: a date YYYY-MM-DD or YYYY-MM-DDTHH:MM, not {value[:32]!r}")


def parse_cursor(value: str) -> tuple[dt.datetime, str]:
    """A `before` cursor (`<epoch seconds>~<row key>`) as (time, key)."""
    stamp, sep, key = value.partition("~")
    if not sep or not _CURSOR_KEY.match(key) or len(stamp) > 32 or not stamp.isascii():
        raise FilterError("before: a cursor from a page's Older link")
    try:
        seconds = float(stamp)
    except ValueError as err:
        raise FilterError("before: a cursor from a page's Older link") from err
    # Year 1 to 9999 is what a timestamptz parameter can carry; past it is a made-up cursor.
    if not math.isfinite(seconds) or not -62_135_596_800 <= seconds <= 253_402_300_799:
        raise FilterError("before: the cursor's time is out of range")
    return dt.datetime.fromtimestamp(seconds, dt.UTC), key


def cursor(row: Mapping[str, Any], listing: Listing) -> str:
    """The `before` cursor naming a row (the next page starts after it)."""
    when = row[listing.time_column]
    return f"{when.timestamp():.6f}~{row[listing.key_column]}"


def parse_filters(query: Mapping[str, str], listing: Listing, tz: zoneinfo.ZoneInfo,
                  keys: list[str] | None = None) -> Filters:
    """The checked filters of a query string (FilterError names the first bad key)."""
    given = keys if keys is not None else list(query)
    for key in given:
        if key not in listing.keys:
            raise FilterError(f"unknown filter {key[:32]!r}: one of {', '.join(listing.keys)}")
    if len(given) != len(set(given)):
        raise FilterError("each filter at most once")
    out = Filters()
    for spec in listing.fields:
        value = query.get(spec.key, "")
        if not value:
            continue
        value = _text(value, spec.key)
        if spec.how == "choice":
            if value not in spec.choices:
                raise FilterError(f"{spec.key}: one of {', '.join(spec.choices)}")
            out.equals[spec.column] = value
        elif spec.how == "contains":
            out.contains[spec.column] = value
        else:
            out.equals[spec.column] = value
        out.shown[spec.key] = value
    for key in RANGE:
        value = query.get(key, "")
        if value:
            when = _when(_text(value, key), key, tz)
            if key == "until" and len(value) == 10:
                try:
                    when += dt.timedelta(days=1)  # a day given as `until` includes that day
                except OverflowError as err:
                    raise FilterError("until: at most 9999-12-30") from err
            setattr(out, key, when)
            out.shown[key] = value
    if out.since and out.until and out.until <= out.since:
        raise FilterError("until must be later than since")
    if query.get("before"):
        out.before = parse_cursor(query["before"])
    if query.get("limit"):
        raw = query["limit"]
        if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
            raise FilterError(f"limit: a whole number from 1 to {MAX_LIMIT}")
        out.limit = int(raw)
        out.shown["limit"] = raw
    return out


def select_page(listing: Listing, filters: Filters, tenant_id: str, *,
                limit: int | None = None) -> tuple[sql.Composed, list[Any]]:
    """The SELECT of one page (newest first) and its parameters.

    The tenant is named in the WHERE clause as well as by row-level security: the
    policy is what keeps tenants apart, the explicit predicate lets the planner use
    the (tenant_id, …) primary key and indexes.
    """
    where: list[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier("tenant_id"))]
    params: list[Any] = [tenant_id]
    for column, value in filters.equals.items():
        where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
        params.append(value)
    for column, value in filters.contains.items():
        # strpos, not LIKE: a % or _ in the value is just a character, nothing to escape.
        where.append(sql.SQL("strpos(lower({}), lower(%s)) > 0").format(sql.Identifier(column)))
        params.append(value)
    time_col = sql.Identifier(listing.time_column)
    key_col = sql.Identifier(listing.key_column)
    if filters.since is not None:
        where.append(sql.SQL("{} >= %s").format(time_col))
        params.append(filters.since)
    if filters.until is not None:
        where.append(sql.SQL("{} < %s").format(time_col))
        params.append(filters.until)
    if filters.before is not None:
        where.append(sql.SQL("({}, {}::text) < (%s, %s)").format(time_col, key_col))
        params.extend(filters.before)
    statement = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {where} ORDER BY {time} DESC, {key}::text DESC "
        "LIMIT %s").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in listing.columns),
        table=sql.Identifier(listing.table), where=sql.SQL(" AND ").join(where),
        time=time_col, key=key_col)
    params.append(filters.limit if limit is None else limit)
    return statement, params
