"""Read coalescing: tables of cases and properties (lanes independent, windows end, best wins)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.coalesce import Coalescer, Offer, OfferKind
from gated.model import CredentialKind, PlateRead

NEW, UPDATE, DUP = OfferKind.NEW, OfferKind.UPDATE, OfferKind.DUPLICATE


def read(
    text: str,
    confidence: float | None = 0.9,
    lane: str = "main-in",
    kind: CredentialKind = CredentialKind.PLATE,
) -> PlateRead:
    return PlateRead(
        access_point=lane,
        text=text,
        source="cam-1",
        read_at=0.0,
        received_mono=0.0,
        confidence=confidence,
        kind=kind,
    )


# Each case: a list of (read, now, expected verdict), offered in order to a 6 s coalescer.
CASES: dict[str, list[tuple[PlateRead, float, OfferKind]]] = {
    "repeat of the same read is a duplicate": [
        (read("AB-123-C"), 0.0, NEW),
        (read("AB123C"), 1.0, DUP),  # same once normalised
        (read("ab 123 c", 0.5), 2.0, DUP),  # worse
    ],
    "a more confident read is an update": [
        (read("AB123C", 0.7), 0.0, NEW),
        (read("AB123C", 0.95), 1.0, UPDATE),
        (read("AB123C", 0.95), 2.0, DUP),  # equal: nothing new
    ],
    "a confusion variant at least as confident is an update": [
        (read("AB123C", 0.8), 0.0, NEW),
        (read("A8123C", 0.8), 1.0, UPDATE),  # 8/B
        (read("AB12SC", 0.6), 1.5, DUP),  # one edit away, less confident
    ],
    "a near variant that is less confident is a duplicate": [
        (read("AB123C", 0.9), 0.0, NEW),
        (read("A8123C", 0.7), 1.0, DUP),
        (read("AB12C", 0.6), 1.5, DUP),  # one character dropped
    ],
    "a read one edit away joins the vehicle": [
        (read("AB123C", 0.8), 0.0, NEW),
        (read("AB1234C", 0.85), 1.0, UPDATE),
    ],
    "a different plate is another vehicle": [
        (read("AB123C"), 0.0, NEW),
        (read("XY987Z"), 1.0, NEW),
        (read("AB123C"), 2.0, DUP),
        (read("XY987Z"), 3.0, DUP),
    ],
    "two lanes never suppress each other": [
        (read("AB123C", lane="main-in"), 0.0, NEW),
        (read("AB123C", lane="main-out"), 0.5, NEW),
        (read("AB123C", lane="main-in"), 1.0, DUP),
    ],
    "a tag never merges with a plate, nor with a near tag": [
        (read("0006102349", kind=CredentialKind.TAG), 0.0, NEW),
        (read("0006102349"), 0.1, NEW),
        (read("0006102348", kind=CredentialKind.TAG), 0.2, NEW),
        (read("0006102349", kind=CredentialKind.TAG), 0.3, DUP),
    ],
    "the window ends 6 s after the latest read": [
        (read("AB123C"), 0.0, NEW),
        (read("AB123C"), 5.0, DUP),
        (read("AB123C"), 10.0, DUP),  # sliding: a car waiting in view stays one event
        (read("AB123C"), 16.5, NEW),
    ],
    "no confidence ranks below any confidence": [
        (read("AB123C", None), 0.0, NEW),
        (read("AB123C", None), 1.0, DUP),
        (read("AB123C", 0.1), 2.0, UPDATE),
    ],
    "a NaN or out-of-range confidence never blocks a later good read": [
        (read("AB123C", float("nan")), 0.0, NEW),
        (read("AB123C", 0.2), 1.0, UPDATE),
        (read("XY987Z", 7.5), 2.0, NEW),
        (read("XY987Z", 0.5), 3.0, UPDATE),
    ],
    "unread vehicles of one source are one event per fixed window, never one forever": [
        (read("---"), 0.0, NEW),
        (read(""), 0.1, DUP),
        (read("x" * 300), 0.2, DUP),
        (read(""), 5.9, DUP),
        (read(""), 6.5, NEW),  # the window is fixed from the first read: a stream
        (read(""), 11.0, DUP),  # of unread cars does not stretch it forever
        (read(""), 12.6, NEW),
    ],
    "an unread vehicle never swallows a readable plate": [
        (read(""), 0.0, NEW),
        (read("AB123C"), 0.1, NEW),
        (read(""), 0.2, DUP),
    ],
}


@pytest.mark.parametrize("name", list(CASES))
def test_cases(name: str) -> None:
    c = Coalescer(6.0)
    got = [c.offer(r, now).kind for r, now, _ in CASES[name]]
    assert got == [v for _, _, v in CASES[name]]


def test_update_carries_the_best_read_and_counts_sightings() -> None:
    c = Coalescer(6.0)
    first = c.offer(read("AB123C", 0.7), 10.0)
    assert first.normalised == "AB123C" and first.sightings == 1 and first.first_seen == 10.0
    better = read("A8123C", 0.9)
    out = c.offer(better, 11.0)
    assert out.kind is UPDATE
    assert out.read is better
    assert out.normalised == "A8123C"
    assert out.sightings == 2
    assert out.first_seen == 10.0
    dup = c.offer(read("AB123C", 0.5), 12.0)
    assert dup.kind is DUP and dup.sightings == 3
    assert first.key == out.key == dup.key  # one vehicle
    again = c.offer(read("AB123C", 0.7), 30.0)
    assert again.kind is NEW and again.key != first.key  # a new window is a new vehicle
    assert Offer.NEW is OfferKind.NEW  # the verdicts are reachable from Offer too
    assert c.counts == {"new": 2, "update": 1, "duplicate": 1, "expired": 1}


def test_zero_window_makes_every_read_new() -> None:
    c = Coalescer(0.0)
    assert [c.offer(read("AB123C"), t).kind for t in (0.0, 0.0, 0.1)] == [NEW, NEW, NEW]
    assert len(c) == 0


def test_expired_vehicles_are_forgotten() -> None:
    c = Coalescer(6.0)
    for i in range(20):
        c.offer(read(chr(65 + i) * 3 + str(i % 10) * 3), float(i) * 0.01)  # far apart
    assert len(c) == 20
    c.offer(read("LATE1", lane="other"), 100.0)
    assert len(c) == 1
    assert c.counts["expired"] == 20


def test_per_lane_cap_evicts_the_least_recent_of_that_lane_only() -> None:
    c = Coalescer(60.0, max_per_lane=3)
    c.offer(read("KEEP01", lane="b"), 0.0)
    for i, plate in enumerate(["AAA111", "BBB222", "CCC333", "DDD444"]):
        c.offer(read(plate), 1.0 + i)
    assert len(c) == 4  # 3 in lane main-in, 1 in lane b
    assert c.counts["evicted"] == 1
    assert c.offer(read("AAA111"), 10.0).kind is NEW  # the evicted one
    assert c.offer(read("KEEP01", lane="b"), 10.0).kind is DUP


def test_variant_cap_stops_re_decisions() -> None:
    c = Coalescer(60.0, max_variants=2)
    c.offer(read("AB123C", 0.8), 0.0)
    assert c.offer(read("A8123C", 0.8), 1.0).kind is UPDATE
    assert c.offer(read("AB1Z3C", 0.8), 2.0).kind is DUP  # a third spelling: no more updates


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Coalescer(-1.0)
    with pytest.raises(ValueError):
        Coalescer(1.0, max_per_lane=0)


# --- properties ------------------------------------------------------------------------

PLATES = st.sampled_from(["AB123C", "A8123C", "AB12C", "XY987Z", "XY98Z", "0006102349", "---"])
CONF = st.one_of(st.none(), st.floats(0.0, 1.0))
LANES = st.sampled_from(["in", "out", "side"])
KINDS = st.sampled_from([CredentialKind.PLATE, CredentialKind.TAG])
STEP = st.floats(0.0, 8.0)
EVENTS = st.lists(st.tuples(LANES, PLATES, CONF, KINDS, STEP), max_size=40)


@given(EVENTS)
def test_lanes_never_interfere(
    events: list[tuple[str, str, float | None, CredentialKind, float]],
) -> None:
    together = Coalescer(6.0, max_per_lane=4)
    alone = {lane: Coalescer(6.0, max_per_lane=4) for lane in ("in", "out", "side")}
    keys_together: dict[str, set[str]] = {}
    now = 0.0
    for lane, text, conf, kind, step in events:
        now += step
        r = read(text, conf, lane, kind)
        a, b = together.offer(r, now), alone[lane].offer(r, now)
        # keys number vehicles per coalescer, so only their grouping can be compared
        assert replace(a, key="") == replace(b, key="")
        keys_together.setdefault(a.key, set()).add(lane)
    assert all(len(lanes) == 1 for lanes in keys_together.values())


@given(EVENTS, PLATES, CONF, LANES, st.floats(0.001, 100.0))
def test_a_read_after_the_window_is_new_again(
    events: list[tuple[str, str, float | None, CredentialKind, float]],
    text: str,
    conf: float | None,
    lane: str,
    gap: float,
) -> None:
    c = Coalescer(6.0)
    now = 0.0
    for ev_lane, ev_text, ev_conf, kind, step in events:
        now += step
        c.offer(read(ev_text, ev_conf, ev_lane, kind), now)
    assert c.offer(read(text, conf, lane), now + 6.0 + gap).kind is NEW


@given(st.lists(st.tuples(st.sampled_from(["AB123C", "A8123C", "AB1Z3C", "4B123C"]), CONF)))
def test_update_always_carries_the_best_confidence_seen(
    reads: list[tuple[str, float | None]],
) -> None:
    # All spellings share one confusion key, so within the window they are one vehicle.
    c = Coalescer(60.0)
    best = -1.0
    for i, (text, conf) in enumerate(reads):
        out = c.offer(read(text, conf), float(i))
        rank = -1.0 if conf is None else conf
        best = max(best, rank)
        assert (out.kind is NEW) == (i == 0)
        if out.kind is UPDATE:
            got = -1.0 if out.read.confidence is None else out.read.confidence
            assert got == best


@given(st.lists(st.tuples(LANES, st.text(max_size=40), CONF, KINDS, STEP), max_size=60))
def test_arbitrary_text_never_crashes_and_memory_stays_bounded(
    events: list[tuple[str, str, float | None, CredentialKind, float]],
) -> None:
    c = Coalescer(30.0, max_per_lane=5)
    now = 0.0
    for lane, text, conf, kind, step in events:
        now += step
        c.offer(read(text, conf, lane, kind), now)
        assert len(c) <= 3 * 2 * 5  # lanes x kinds x cap


def test_unread_reads_of_two_sources_are_two_vehicles() -> None:
    c = Coalescer(6.0)
    first = c.offer(read(""), 0.0)
    other = c.offer(replace(read(""), source="cam-2"), 0.1)
    assert (first.kind, other.kind) == (NEW, NEW)
    assert first.key != other.key
    assert c.offer(read(""), 0.2).key == first.key


def test_groups_keep_reads_against_the_lane_apart() -> None:
    """A read travelling the wrong way must not swallow the same plate's read the right way."""
    c = Coalescer(6.0)
    against = c.offer(read("AB123C"), 0.0, group="against")
    along = c.offer(read("AB123C"), 0.5)
    assert (against.kind, along.kind) == (NEW, NEW)
    assert c.offer(read("AB123C"), 1.0, group="against").kind == DUP


def test_unread_windows_expire_and_memory_stays_bounded() -> None:
    c = Coalescer(1.0)
    for i in range(100):
        c.offer(replace(read(""), source=f"cam-{i % 3}"), i * 0.5)
    assert len(c) <= 3
    c.offer(read("AB123C"), 1000.0)
    assert len(c) == 1
