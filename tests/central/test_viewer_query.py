"""The viewer's query builder: only whitelisted columns in the SQL, every value bound."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.central.viewer.lists import ACCESS, AUDIT
from gated.central.viewer.query import FilterError, cursor, parse_cursor, parse_filters, select_page

UTC = zoneinfo.ZoneInfo("UTC")
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def test_filters_map_to_their_columns_and_ranges_to_times() -> None:
    f = parse_filters({"plate": "ab1", "type": "denied", "gate": "g-1", "since": "2026-03-01",
                       "until": "2026-03-02", "limit": "20"}, ACCESS, PARIS)
    assert f.contains == {"vehicle_plate": "ab1"}
    assert f.equals == {"event_type": "denied", "device_id": "g-1"}
    assert f.since == dt.datetime(2026, 3, 1, tzinfo=PARIS)
    assert f.until == dt.datetime(2026, 3, 3, tzinfo=PARIS)  # the whole day of the 2nd
    assert f.limit == 20
    assert f.shown == {"plate": "ab1", "type": "denied", "gate": "g-1", "since": "2026-03-01",
                       "until": "2026-03-02", "limit": "20"}
    timed = parse_filters({"until": "2026-03-02T10:30"}, ACCESS, UTC)
    assert timed.until == dt.datetime(2026, 3, 2, 10, 30, tzinfo=UTC)  # a time is exact


def test_a_filter_of_one_list_is_unknown_to_the_other() -> None:
    with pytest.raises(FilterError, match="unknown filter 'plate'"):
        parse_filters({"plate": "x"}, AUDIT, UTC)
    with pytest.raises(FilterError, match="unknown filter 'actor'"):
        parse_filters({"actor": "x"}, ACCESS, UTC)


@pytest.mark.parametrize("query", [{"until": "9999-12-31"}, {"since": "0000-01-01"},
                                   {"since": "2026-02-30"}, {"before": "inf~x"},
                                   {"before": "-1e20~x"}, {"limit": "1.5"}, {"limit": "٣"}])
def test_edge_values_are_filter_errors_not_crashes(query: dict[str, str]) -> None:
    with pytest.raises(FilterError):
        parse_filters(query, ACCESS, UTC)


def test_a_cursor_names_the_last_row_and_reads_back() -> None:
    row = {"created_at": dt.datetime(2026, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC),
           "event_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}
    text = cursor(row, ACCESS)
    assert parse_cursor(text) == (row["created_at"], row["event_id"])
    f = parse_filters({"before": text}, ACCESS, UTC)
    assert f.before == (row["created_at"], row["event_id"])


BASELINE = select_page(ACCESS, parse_filters(
    {"plate": "x", "lane": "x", "reason": "x", "site": "x"}, ACCESS, UTC), "acme")[0]


@given(st.text(min_size=1, max_size=64).filter(
    lambda s: all(ord(c) >= 32 and ord(c) != 127 for c in s)))
def test_no_value_ever_changes_the_sql_text(value: str) -> None:
    f = parse_filters({"plate": value, "lane": value, "reason": value, "site": value},
                      ACCESS, UTC)
    statement, params = select_page(ACCESS, f, "acme")
    # the statement is the same whatever the values: they travel only as parameters
    assert statement.as_string(None) == BASELINE.as_string(None)
    assert params[0] == "acme" and params.count(value) == 4


def test_the_statement_is_made_of_whitelisted_names_only() -> None:
    f = parse_filters({"site": "x", "plate": "y", "since": "2026-01-01"}, ACCESS, UTC)
    f.before = (dt.datetime(2026, 2, 1, tzinfo=UTC), "k")
    statement, params = select_page(ACCESS, f, "acme", limit=7)
    text = statement.as_string(None)
    assert text.startswith('SELECT "event_id", "created_at"')
    assert 'FROM "access_logs" WHERE "tenant_id" = %s AND "site_id" = %s AND ' \
           'strpos(lower("vehicle_plate"), lower(%s)) > 0 AND "created_at" >= %s AND ' \
           '("created_at", "event_id"::text) < (%s, %s) ' \
           'ORDER BY "created_at" DESC, "event_id"::text DESC LIMIT %s' in text
    assert params == ["acme", "x", "y", dt.datetime(2026, 1, 1, tzinfo=UTC),
                      dt.datetime(2026, 2, 1, tzinfo=UTC), "k", 7]
