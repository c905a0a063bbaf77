"""Parsing of times given on the command line: ISO 8601, or a span back from or ahead of now."""

from __future__ import annotations

import datetime as dt
import re
import time
import zoneinfo

from gated.errors import GatedError

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhdw])$")
_AHEAD = re.compile(r"^\+?(?P<n>\d+(?:\.\d+)?)(?P<unit>[mhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds for '2026-11-26T10:00:00+01:00', '2026-11-26' (UTC) or '24h' / '7d' ago."""
    text = text.strip()
    m = _DURATION.match(text)
    if m:
        current = time.time() if now is None else now
        return current - float(m.group("n")) * _UNIT_S[m.group("unit")]
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise GatedError(
            f"--since: {text!r} is neither an ISO 8601 time nor a duration like 24h"
        ) from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # naive times are UTC, as the journal stores them
    return when.timestamp()


def parse_when(text: str, tz: str, now: float) -> float:
    """Epoch seconds for an ISO 8601 time (naive: the site's time zone), 'now', or '4h' ahead."""
    text = text.strip()
    m = _AHEAD.match(text)
    if m:
        return now + float(m.group("n")) * _UNIT_S[m.group("unit")]
    if text == "now":
        return now
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise GatedError(
            f"{text!r} is neither an ISO 8601 time (2026-12-24T18:00) nor a span like 4h or 2d"
        ) from err
    if when.tzinfo is None:
        # An installer at the gate means the gate's local time.
        when = when.replace(tzinfo=zoneinfo.ZoneInfo(tz))
    return when.timestamp()
