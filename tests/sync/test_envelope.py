"""Envelope details the drain's speed work touched: event times are the RFC 3339 text the
datetime module gives for any float (wild clocks included), and no column that stays on
the device leaves it."""

from __future__ import annotations

import datetime as dt

from hypothesis import example, given
from hypothesis import strategies as st

from gated.sync.envelope import access_or_audit, rfc3339


def reference_rfc3339(ts: float) -> str:
    """The plain datetime formatting the cached one must equal."""
    try:
        moment = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError):
        moment = dt.datetime.fromtimestamp(0, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-62_135_596_800, max_value=253_402_300_799.999),
    st.integers(min_value=0, max_value=2**32).map(lambda n: n / 2_000_000),  # half micros
))
@example(1732982040.9999995)  # rounds up into the next second
@example(-0.0000004)  # rounds to the epoch from below
@example(-1.5e-6)  # a negative time that rounds to an even microsecond
@example(253402300799.9999996)  # rounds past year 9999: the epoch, as before
def test_event_time_text_equals_the_datetime_formatting(ts: float) -> None:
    assert rfc3339(ts) == reference_rfc3339(ts)


def test_an_envelope_carries_no_sync_state_nor_salt() -> None:
    row = {"stream": "access", "seq": 7, "event_id": "e", "created_at": 0.0,
           "synced_at": 12.5, "pii_salt": b"s", "gate_opened": True, "access_point": "main-in"}
    event = access_or_audit(row, "gated://t/s/d")
    assert set(event["data"]) == {"seq", "event_id", "created_at", "gate_opened",
                                  "access_point"}
    assert event["data"]["gate_opened"] == 1 and event["gatedseq"] == 7
    assert event["subject"] == "main-in" and event["time"] == "1970-01-01T00:00:00.000000Z"
    assert "synced_at" in row and "stream" in row  # the outbox's row is left as it was
