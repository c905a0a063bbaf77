"""gated.ingest: plate hygiene, direction, staleness — tables of cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.ingest import DEFAULT_RULES, SourceRules, Verdict, clean_text, ingest, resolve_direction
from gated.model import CredentialKind, Direction, PlateRead

IN, OUT = Direction.IN, Direction.OUT
NOW = 1_800_000_000.0
HIKVISION = SourceRules(direction_map={"in": IN, "out": OUT, "forward": IN, "reverse": OUT})


def read(text: str = "AB123CD", **kw: object) -> PlateRead:
    return PlateRead("lane", text, "cam", NOW, 0.0, 0.9, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("ab-123 cd", CredentialKind.PLATE, "AB123CD"),
        ("", CredentialKind.PLATE, ""),
        ("---", CredentialKind.PLATE, ""),
        ("<script>alert(1)</script>", CredentialKind.PLATE, ""),
        ("AB123CD</plate>", CredentialKind.PLATE, ""),
        ("A" * 16, CredentialKind.PLATE, "A" * 16),
        ("A" * 17, CredentialKind.PLATE, ""),  # longer than any plate
        ("E2" * 12, CredentialKind.TAG, "E2" * 12),  # a 96-bit UHF EPC is a tag, not junk
        ("x" * 100_000, CredentialKind.PLATE, ""),
    ],
)
def test_clean_text(text: str, kind: CredentialKind, expected: str) -> None:
    assert clean_text(text, kind) == expected


@given(st.text(max_size=300))
def test_cleaned_text_is_in_the_plate_alphabet_and_bounded(text: str) -> None:
    cleaned = clean_text(text)
    assert len(cleaned) <= 16
    assert all(("A" <= c <= "Z") or ("0" <= c <= "9") for c in cleaned)
    assert clean_text(cleaned) == cleaned


@pytest.mark.parametrize(
    ("word", "rules", "lane", "expected"),
    [
        (None, DEFAULT_RULES, IN, IN),
        ("out", DEFAULT_RULES, IN, OUT),
        ("in", DEFAULT_RULES, OUT, IN),
        ("OUT ", DEFAULT_RULES, IN, OUT),
        ("forward", DEFAULT_RULES, IN, IN),  # not mapped: the lane's
        ("reverse", DEFAULT_RULES, IN, IN),
        ("reverse", HIKVISION, IN, OUT),
        ("out", SourceRules(camera_direction="ignore"), IN, IN),
    ],
)
def test_resolve_direction(
    word: str | None, rules: SourceRules, lane: Direction, expected: Direction
) -> None:
    assert resolve_direction(word, rules, lane) == expected


@pytest.mark.parametrize(
    ("the_read", "rules", "synced", "verdict", "flag"),
    [
        (read(), DEFAULT_RULES, True, Verdict.DECIDE, None),
        (read(captured_at=NOW - 11), DEFAULT_RULES, True, Verdict.STALE, "capture_too_old"),
        (read(captured_at=NOW - 9), DEFAULT_RULES, True, Verdict.DECIDE, "camera_clock_skew"),
        (read(captured_at=NOW - 3600), DEFAULT_RULES, False, Verdict.DECIDE,
         "capture_age_unchecked"),  # the device cannot judge it
        (read(captured_at=NOW - 3600), SourceRules(max_age_s=0), True, Verdict.DECIDE,
         "camera_clock_skew"),
        (read(captured_at=float("nan")), DEFAULT_RULES, True, Verdict.DECIDE,
         "invalid_capture_time"),
        (read(retained=True), DEFAULT_RULES, False, Verdict.STALE, "retained"),
        (read(camera_direction="out"), DEFAULT_RULES, True, Verdict.WRONG_DIRECTION,
         "against_lane"),
        (read(camera_direction="out"), SourceRules(wrong_direction="ignore"), True,
         Verdict.IGNORE, "against_lane"),
        (read(camera_direction="out"), SourceRules(wrong_direction="decide"), True,
         Verdict.DECIDE, "against_lane"),
        (read(""), DEFAULT_RULES, True, Verdict.UNREAD, None),
        (read(""), SourceRules(unread="ignore"), True, Verdict.IGNORE, None),
        (read("", retained=True), DEFAULT_RULES, True, Verdict.STALE, "retained"),
    ],
)
def test_ingest(
    the_read: PlateRead, rules: SourceRules, synced: bool, verdict: Verdict, flag: str | None
) -> None:
    got = ingest(the_read, rules, IN, NOW, synced)
    assert got.verdict == verdict
    if flag is not None:
        assert flag in got.flags


def test_ingest_writes_the_resolved_direction_and_clean_text_into_the_read() -> None:
    got = ingest(read("ab 123-cd", camera_direction="out"), SourceRules(wrong_direction="decide"),
                 IN, NOW, True)
    assert (got.read.text, got.read.direction) == ("AB123CD", OUT)
    assert got.read.camera_direction == "out"  # kept as the camera said it, for the record
