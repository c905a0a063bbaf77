"""The plate/tag index: exact, confusion and fuzzy lookups checked against brute force."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.errors import RulesError
from gated.model import MatchKind
from gated.plates import confusion_key, distance, normalise
from gated.rules.entities import DenyEntry, Resident, Tag, Vehicle, VisitorPass
from gated.rules.index import LISTS, RuleIndex, _HashTable
from gated.rules.memory import MemoryRuleSource

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def source_with(
    vehicles: list[str] = (),  # type: ignore[assignment]
    passes: list[str] = (),  # type: ignore[assignment]
    deny: list[str] = (),  # type: ignore[assignment]
    tags: list[str] = (),  # type: ignore[assignment]
) -> MemoryRuleSource:
    """A source holding these plates (one resident owns everything)."""
    src = MemoryRuleSource()
    src.add_resident(Resident("r1"))
    for i, p in enumerate(vehicles):
        src.add_vehicle(Vehicle(f"v{i}", p, "r1"))
    for i, p in enumerate(passes):
        src.add_pass(VisitorPass(f"p{i}", p, "r1", 0.0, 1e12))
    for i, p in enumerate(deny):
        src.add_deny(DenyEntry(f"d{i}", p))
    for i, t in enumerate(tags):
        src.add_tag(Tag(f"t{i}", t, "r1"))
    return src


def brute_force(stored: dict[int, str], plate: str, limit: int) -> dict[int, tuple[MatchKind, int]]:
    """What the index must return: every stored plate whose confusion key is within `limit`."""
    out = {}
    ckey = confusion_key(plate)
    for key, s in stored.items():
        skey = confusion_key(s)
        if abs(len(skey) - len(ckey)) > limit:
            continue
        if s == plate:
            out[key] = (MatchKind.EXACT, 0)
        elif skey == ckey:
            out[key] = (MatchKind.CONFUSION, 0)
        else:
            d = distance(ckey, skey, limit)
            if d is not None:
                out[key] = (MatchKind.FUZZY, d)
    return out


def as_dict(cands: tuple) -> dict[int, tuple[MatchKind, int]]:
    return {c.key: (c.match.kind, c.match.distance) for c in cands}


def test_exact_confusion_and_fuzzy_hits_carry_their_match() -> None:
    src = source_with(vehicles=["AB12CDE", "AB12CDF", "XY99ZZZ"])
    rules = RuleIndex.build(src)
    exact = rules.lookup("resident", "AB12CDE", 1)
    assert [(c.match.kind, c.match.stored) for c in exact] == [
        (MatchKind.EXACT, "AB12CDE"),
        (MatchKind.FUZZY, "AB12CDF"),
    ]
    assert exact[1].match.edits[0].op == "sub"
    confused = rules.lookup("resident", "A812CDE", 0)
    assert len(confused) == 1
    assert confused[0].match.kind == MatchKind.CONFUSION
    assert confused[0].match.list == "resident"
    assert [(e.position, e.read, e.stored) for e in confused[0].match.edits] == [(1, "8", "B")]
    assert rules.lookup("resident", "XY99ZZ", 0) == ()
    missing = rules.lookup("resident", "XY99ZZ", 1)
    assert [(c.match.kind, c.match.distance, c.match.edits[0].op) for c in missing] == [
        (MatchKind.FUZZY, 1, "del")
    ]


def test_candidates_are_ordered_best_first() -> None:
    src = source_with(vehicles=["AB12CDF", "A812CDE", "AB12CDE"])
    found = RuleIndex.build(src).lookup("resident", "AB12CDE", 1)
    assert [c.match.kind for c in found] == [MatchKind.EXACT, MatchKind.CONFUSION, MatchKind.FUZZY]


def test_lists_are_kept_apart() -> None:
    src = source_with(vehicles=["AAA111"], passes=["BBB222"], deny=["CCC333"])
    rules = RuleIndex.build(src)
    found = rules.match_plate("BBB222", deny=2, resident=1, visitor_pass=1)
    assert found.deny == () and found.resident == ()
    assert [c.match.list for c in found.visitor_pass] == ["visitor_pass"]
    assert [c.match.list for c in rules.lookup("deny", "CCC333")] == ["deny"]


def test_deny_list_answers_distance_two_by_default() -> None:
    rules = RuleIndex.build(source_with(deny=["STOLEN1"], vehicles=["STOLEN1"]))
    two_off = "STXLEN2"
    assert [c.match.distance for c in rules.lookup("deny", two_off, 2)] == [2]
    assert rules.lookup("deny", two_off, 1) == ()
    # residents are built to depth 1: asking for 2 is capped, and says so
    assert rules.effective_distance("resident", 2) == 1
    assert rules.lookup("resident", two_off, 2) == ()


@pytest.mark.parametrize(
    ("size", "depth", "n_queries"),
    [(300, 2, 100), (12_000, 1, 12)],  # a dict table, then a bucketed numpy table
)
def test_lookups_agree_with_brute_force(size: int, depth: int, n_queries: int) -> None:
    rnd = random.Random(size)
    alphabet = "ABCDEFGHJK0125678"  # small alphabet: many near neighbours
    plates = ["".join(rnd.choices(alphabet, k=rnd.randint(3, 8))) for _ in range(size)]
    src = source_with(vehicles=plates, deny=plates[:50])
    rules = RuleIndex.build(src, deny_depth=2, resident_depth=depth)
    if size > 1000:
        assert rules._table._dict is None
    stored = {k: v.plate for k, v in src.vehicles.items()}
    stored_deny = {k: d.plate for k, d in src.deny.items()}
    half = n_queries // 2
    queries = plates[:half] + [
        "".join(rnd.choices(alphabet, k=rnd.randint(2, 9))) for _ in range(half)
    ]
    for q in queries:
        for limit in range(depth + 1):
            assert as_dict(rules.lookup("resident", q, limit)) == brute_force(stored, q, limit)
            assert as_dict(rules.lookup("deny", q, limit)) == brute_force(stored_deny, q, limit)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet=ALNUM, min_size=1, max_size=9), min_size=1, max_size=30),
    st.text(alphabet=ALNUM, min_size=1, max_size=9),
)
def test_lookup_property_matches_brute_force(plates: list[str], query: str) -> None:
    src = source_with(passes=plates)
    rules = RuleIndex.build(src, pass_depth=2)
    stored = {k: p.plate for k, p in src.passes.items()}
    for limit in (0, 1, 2):
        assert as_dict(rules.lookup("visitor_pass", query, limit)) == brute_force(
            stored, query, limit
        )


def test_long_plates_wrap_into_hashes_and_still_verify() -> None:
    long_plates = ["ABCDEFGHJKLMNP", "ABCDEFGHJKLMNR", "1234567890123456"]
    rules = RuleIndex.build(source_with(vehicles=long_plates))
    assert [c.match.stored for c in rules.lookup("resident", "ABCDEFGHJKLMNP", 0)] == [
        "ABCDEFGHJKLMNP"
    ]
    assert len(rules.lookup("resident", "ABCDEFGHJKLMNP", 1)) == 2
    assert rules.lookup("resident", "1234567890123456", 0)[0].match.kind == MatchKind.EXACT


def test_tags_match_exactly_only() -> None:
    rules = RuleIndex.build(source_with(tags=["0A1B2C3D4E", "E2000017221101441890ABCD"]))
    assert [c.match.stored for c in rules.match_tag("0A1B2C3D4E")] == ["0A1B2C3D4E"]
    assert rules.match_tag("0A1B2C3D4F") == ()
    assert rules.match_tag("OA1B2C3D4E") == ()  # no confusion for tags
    assert len(rules.match_tag("E2000017221101441890ABCD")) == 1
    assert rules.match_tag("") == ()


def test_store_rows_that_are_not_normalised_are_repaired_or_skipped() -> None:
    src = source_with(
        vehicles=["ab-12 cd", "\u0410\u0412123", "", "---", "A" * 40, "AB\x0012", "OK1"]
    )
    rules = RuleIndex.build(src)
    assert rules.counts()["resident"] == 4
    assert rules.skipped == 3
    assert rules.lookup("resident", "AB12CD")[0].match.stored == "AB12CD"
    assert rules.lookup("resident", "AB123")[0].match.stored == "AB123"
    assert rules.lookup("resident", "AB12")[0].match.stored == "AB12"


def test_queries_refuse_text_that_is_not_normalised() -> None:
    rules = RuleIndex.build(source_with(vehicles=["AB12"]))
    with pytest.raises(ValueError, match="normalised"):
        rules.lookup("resident", "ab-12")
    with pytest.raises(ValueError, match="normalised"):
        rules.match_tag("ab 12")
    with pytest.raises(ValueError, match="list"):
        rules.lookup("residents", "AB12")


def test_empty_rule_set() -> None:
    rules = RuleIndex.build(MemoryRuleSource())
    assert len(rules) == 0
    assert rules.match_plate("AB12", deny=2, resident=1, visitor_pass=1).resident == ()
    assert rules.match_tag("AB12") == ()
    assert RuleIndex().lookup("deny", "AB12", 1) == ()


class ChangingSource(MemoryRuleSource):
    """A store that gets a new version while the index is being built."""

    def iter_pass_plates(self) -> Iterator[tuple[int, str]]:
        self.version += 1
        return super().iter_pass_plates()


def test_a_source_changing_during_the_build_is_refused() -> None:
    src = ChangingSource()
    src.add_vehicle(Vehicle("v", "AB12", "r"))
    with pytest.raises(RulesError, match="changed"):
        RuleIndex.build(src)


def test_bad_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        RuleIndex.build(MemoryRuleSource(), resident_depth=3)


async def test_build_in_a_worker_thread_then_swap() -> None:
    src = source_with(vehicles=["AB12CDE"])
    old = RuleIndex.build(src)
    src.add_vehicle(Vehicle("v9", "NEW123", "r1"))
    src.version += 1
    new = await asyncio.to_thread(RuleIndex.build, src)
    assert (old.version, new.version) == (1, 2)
    assert old.lookup("resident", "NEW123") == ()
    assert new.lookup("resident", "NEW123")[0].match.stored == "NEW123"


def test_counts_and_sizes_are_reported() -> None:
    rules = RuleIndex.build(source_with(vehicles=["AB12", "CD34"], deny=["EF56"], tags=["1234"]))
    counts = rules.counts()
    assert (counts["resident"], counts["deny"], counts["tag"], counts["visitor_pass"]) == (
        2,
        1,
        1,
        0,
    )
    assert counts["entries"] > 4
    assert rules.nbytes() > 0
    assert set(rules.depths) == set(LISTS)


def test_hash_table_bucket_mode_finds_every_entry() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**28, 100_000, dtype=np.uint64)
    entries = np.sort((hashes << np.uint64(36)) | np.arange(100_000, dtype=np.uint64))
    table = _HashTable(entries)
    assert table._dict is None  # large: bucketed
    for e in entries[::997].tolist():
        assert e in table.probe(e >> 36)
    present = set(hashes.tolist())
    absent = next(h for h in range(2**28) if h not in present)
    assert table.probe(absent) == []


def test_normalised_store_plates_match_their_raw_forms() -> None:
    rules = RuleIndex.build(source_with(vehicles=["AB12CDE"]))
    for raw in ["ab 12 cde", "AB-12-CDE", "\u0430b12cde"]:
        assert rules.lookup("resident", normalise(raw))[0].match.kind == MatchKind.EXACT


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_hostile_store_rows_never_break_the_build(texts: list[str]) -> None:
    src = source_with(vehicles=texts, deny=texts, tags=texts)
    rules = RuleIndex.build(src)
    for text in texts:
        try:
            plate = normalise(text)
        except Exception:
            continue
        if 0 < len(plate) <= 16:
            found = rules.match_plate(plate, deny=1, resident=1)
            assert plate in {c.match.stored for c in found.resident}
            assert plate in {c.match.stored for c in found.deny}


def test_fuzzy_edits_can_be_deferred_and_filled_in() -> None:
    from gated.rules.index import with_edits

    rules = RuleIndex.build(source_with(vehicles=["AB12CDE"]))
    query = rules.query("AB12CDX")
    bare = query.candidates("resident", 1, with_edits=False)[0].match
    assert bare.kind == MatchKind.FUZZY and bare.edits == ()
    full = with_edits("AB12CDX", bare)
    assert full == rules.lookup("resident", "AB12CDX", 1)[0].match
    assert full.edits[0].stored == "E"
    exact = rules.lookup("resident", "AB12CDE")[0].match
    assert with_edits("AB12CDE", exact) is exact


def test_query_rejects_oversized_plates() -> None:
    rules = RuleIndex.build(source_with(vehicles=["AB12"]))
    with pytest.raises(ValueError, match="normalised"):
        rules.query("A" * 17)


def test_the_source_can_be_swapped_after_a_build_elsewhere() -> None:
    builder = source_with(vehicles=["AB12CDE"])
    rules = RuleIndex.build(builder)
    key = rules.lookup("resident", "AB12CDE")[0].key
    assert rules.vehicle(key) is not None and rules.vehicle(key).id == "v0"
    live = MemoryRuleSource()  # e.g. the event loop's own connection to the same store
    live.vehicles[key] = Vehicle("v-live", "AB12CDE", "r1")
    rules.source = live
    assert rules.source is live
    assert rules.vehicle(key).id == "v-live"  # caches were reset with the new source


# --- the policy's fast path: deny screen and fused first pass ------------------------


def _first_pass_agrees(rules: RuleIndex, query: str, deny_distance: int) -> None:
    """first_pass gives what three candidates() calls give (the policy relies on it)."""
    q = rules.query(query)
    deny, resident, visitor = q.first_pass(deny_distance)
    fresh = rules.query(query)
    assert deny == fresh.candidates("deny", deny_distance)
    assert resident == fresh.candidates("resident", 0)
    assert visitor == fresh.candidates("visitor_pass", 0)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.text(alphabet="AB0O18", min_size=1, max_size=7), min_size=1, max_size=25),
    st.text(alphabet="AB0O18", min_size=1, max_size=8),
    st.integers(0, 2),
)
def test_first_pass_agrees_with_candidates(plates: list[str], query: str, deny_d: int) -> None:
    half = len(plates) // 2
    rules = RuleIndex.build(source_with(vehicles=plates[half:], passes=plates, deny=plates[:half]))
    _first_pass_agrees(rules, query, deny_d)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.text(alphabet="AB0O18C", min_size=1, max_size=7), min_size=1, max_size=25),
    st.text(alphabet="AB0O18C", min_size=1, max_size=8),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 2),
)
def test_fuzzy_pass_agrees_with_candidates(
    plates: list[str], query: str, depth: int, resident_d: int, pass_d: int
) -> None:
    half = len(plates) // 2
    src = source_with(vehicles=plates[:half], passes=plates[half:])
    rules = RuleIndex.build(src, resident_depth=depth, pass_depth=depth)
    residents, passes = rules.query(query).fuzzy_pass(resident_d, pass_d)
    fresh = rules.query(query)
    assert residents == fresh.candidates("resident", resident_d, with_edits=False)
    assert passes == fresh.candidates("visitor_pass", pass_d, with_edits=False)


def test_a_large_hotlist_is_screened_by_hashes_with_the_same_answers() -> None:
    rnd = random.Random(11)
    alphabet = "ABCDEFGH0123"
    deny = ["".join(rnd.choices(alphabet, k=7)) for _ in range(6000)]
    src = source_with(deny=deny, vehicles=deny[:100])
    rules = RuleIndex.build(src, deny_depth=2)
    assert rules._deny_screen is None  # 6000 x 29 strings: too many for the string screen
    stored = {k: d.plate for k, d in src.deny.items()}
    queries = deny[:5] + ["".join(rnd.choices(alphabet, k=rnd.randint(5, 8))) for _ in range(10)]
    for q in queries:
        for limit in (0, 1, 2):
            _first_pass_agrees(rules, q, limit)
            assert as_dict(rules.lookup("deny", q, limit)) == brute_force(stored, q, limit)


def test_the_string_screen_sees_every_deny_neighbour() -> None:
    deny = ["STOLEN1", "AB12CDE", "X1"]
    rules = RuleIndex.build(source_with(deny=deny), deny_depth=2)
    assert rules._deny_screen is not None
    reads = ["STOLEN1", "5TOLEN1", "STOLEN", "STXLEN2", "ST0LEN12", "AB2CDE", "A12CD", "X", "XY1"]
    for text in reads:
        for limit in (0, 1, 2):
            q = rules.query(text)
            want = any(
                distance(confusion_key(text), confusion_key(d), limit) is not None for d in deny
            )
            if want:  # the screen may say "maybe" for nothing, never "no" for a neighbour
                assert q._deny_maybe(limit)
            assert bool(q.candidates("deny", limit)) == want


def test_matches_made_by_slot_setters_are_plain_matches() -> None:
    import dataclasses

    from gated.model import Edit, Match
    from gated.rules.index import new_match, slot_setters

    edit = (Edit("sub", 1, "8", "B"),)
    fast = new_match(MatchKind.CONFUSION, "resident", "AB12CDE", 0, edit)
    slow = Match(MatchKind.CONFUSION, "resident", "AB12CDE", 0, edit)
    assert type(fast) is Match
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.replace(fast) == slow
    assert new_match(MatchKind.EXACT, "deny", "X1") == Match(MatchKind.EXACT, "deny", "X1")
    # a class whose fields are not the expected ones gets no setters (its own __init__ is used)
    assert slot_setters(Match, ("kind", "list", "stored")) == ()


def test_a_bucketed_table_answers_fuzzy_queries_like_brute_force() -> None:
    rnd = random.Random(5)
    alphabet = "ABCDEF0123"
    plates = ["".join(rnd.choices(alphabet, k=rnd.randint(5, 7))) for _ in range(14000)]
    src = source_with(vehicles=plates)
    rules = RuleIndex.build(src)
    assert rules._table._dict is None  # more entries than a dict table holds
    stored = {k: v.plate for k, v in src.vehicles.items()}
    queries = [p[:-1] + "F" for p in plates[:15]] + plates[15:20] + ["ABCDEF", "F0F0F0F"]
    for q in queries:
        assert as_dict(rules.lookup("resident", q, 1)) == brute_force(stored, q, 1)
        residents, _ = rules.query(q).fuzzy_pass(1, 1)
        assert {c.key for c in residents} == set(brute_force(stored, q, 1))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ABC0O18X", min_size=1, max_size=9), min_size=1, max_size=12),
    st.data(),
)
def test_the_deny_screen_never_misses_a_neighbour_one_edit_away(
    deny: list[str], data: st.DataObject
) -> None:
    rules = RuleIndex.build(source_with(deny=deny))
    base = data.draw(st.sampled_from(deny))
    i = data.draw(st.integers(0, len(base)))
    ch = data.draw(st.sampled_from("ABC0O18XYZ"))
    op = data.draw(st.sampled_from(["sub", "ins", "del", "same"]))
    read = {
        "sub": base[:i] + ch + base[i + 1 :],
        "ins": base[:i] + ch + base[i:],
        "del": base[:i] + base[i + 1 :],
        "same": base,
    }[op] or "Z"
    q = rules.query(read)
    near = any(distance(confusion_key(read), confusion_key(d), 1) is not None for d in deny)
    if near:
        assert q._deny_maybe(1)
    assert bool(rules.query(read).first_pass(1)[0]) == near
