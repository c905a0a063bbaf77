"""The rule index's two builds agree: the Python build (every table up to about a million
entries, no numpy import) and the vectorised numpy build (larger tables) make the same
entries, bucket starts, texts, keys and vehicle facts, so a decision cannot depend on
which one ran (docs/rule-index.md)."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gated.rules.index as index_module
from gated.rules.entities import DenyEntry, Resident, Tag, Vehicle, VisitorPass
from gated.rules.index import RuleIndex
from gated.rules.memory import MemoryRuleSource

# confusable characters (0/O/D, 1/I, 8/B, 5/S, 2/Z ...) so confusion keys collide often
ALPHABET = "0123456789ABDEGHIOSZ"
HOSTILE = ["", "\0", "AB\0", "A\0B", "ab 12", "\ud800x", "Ö12", "X" * 17, "X" * 16, " ",
           "AB-12-CD", "\u0430b12cde", "Q" * 300]


def _source(vehicles: list[str], passes: list[str], deny: list[str], tags: list[str],
            seed: int = 0) -> MemoryRuleSource:
    rng = random.Random(seed)
    src = MemoryRuleSource()
    for r in range(5):
        src.add_resident(Resident(f"r{r}", active=r != 3, groups=("g",) if r % 2 else (),
                                  access_points=None if r != 1 else frozenset({"main-in"})))
    for i, plate in enumerate(vehicles):
        # r5 does not exist: the facts say so
        src.add_vehicle(Vehicle(f"v{i}", plate, f"r{rng.randrange(6)}", active=i % 7 != 0))
    for i, plate in enumerate(passes):
        src.add_pass(VisitorPass(f"p{i}", plate, "r0", 0.0, 1e12))
    for i, plate in enumerate(deny):
        src.add_deny(DenyEntry(f"d{i}", plate))
    for i, tag in enumerate(tags):
        src.add_tag(Tag(f"t{i}", tag, "r0"))
    return src


def _state(rules: RuleIndex) -> dict[str, Any]:
    """Everything a query reads of an index."""
    n = len(rules)
    out: dict[str, Any] = {
        "plates": rules._plates.slice(0, n),
        "keys": rules._keys.tolist(),
        "bounds": rules._bounds,
        "skipped": rules.skipped,
        "depths": rules.depths,
        "screen": rules._deny_screen,
        "halves": rules._deny_halves,
        "tags": rules._tags.slice(0, len(rules._tags)),
        "tag_keys": rules._tag_keys.tolist(),
    }
    for name in ("_deny_table", "_table", "_tag_table"):
        table = getattr(rules, name)
        out[name] = (table.entries.tolist(), table._starts.tolist(), table._shift, table._dict)
    facts = rules.vehicle_facts
    if facts is not None:
        out["facts"] = (facts.base, facts.info.tolist(), facts.grants,
                        [facts.ids[i] for i in range(len(facts.ids))])
    return out


def _both(src: MemoryRuleSource, monkeypatch: pytest.MonkeyPatch,
          **depths: int) -> tuple[dict[str, Any], dict[str, Any]]:
    python = RuleIndex.build(src, **depths)
    with monkeypatch.context() as m:
        m.setattr(index_module, "_VECTORISE_FROM", -1)  # every table vectorised
        vectorised = RuleIndex.build(src, **depths)
    return _state(python), _state(vectorised)


plates = st.text(alphabet=ALPHABET, min_size=0, max_size=18) | st.sampled_from(HOSTILE)
depth = st.integers(0, 2)


@settings(max_examples=80, deadline=None)
@given(st.lists(plates, max_size=40), st.lists(plates, max_size=10),
       st.lists(plates, max_size=10), st.lists(plates, max_size=10), depth, depth, depth)
def test_small_sets_build_alike(vehicles: list[str], passes: list[str], deny: list[str],
                                tags: list[str], d0: int, d1: int, d2: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        python, vectorised = _both(_source(vehicles, passes, deny, tags), monkeypatch,
                                   deny_depth=d0, resident_depth=d1, pass_depth=d2)
    assert python == vectorised


@pytest.mark.parametrize("depths", [(2, 1, 1), (2, 2, 2), (0, 0, 0)])
def test_bucketed_tables_build_alike(depths: tuple[int, int, int],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(sum(depths))

    def plate() -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(4, 9)))

    src = _source([plate() for _ in range(9_000)] + HOSTILE, [plate() for _ in range(900)],
                  [plate() for _ in range(300)], [plate() for _ in range(2_000)], seed=1)
    python, vectorised = _both(src, monkeypatch, deny_depth=depths[0],
                               resident_depth=depths[1], pass_depth=depths[2])
    if depths != (0, 0, 0):
        assert python["_table"][3] is None  # large enough for bucket starts
    assert python == vectorised


def test_the_python_build_does_not_import_numpy() -> None:
    """A medium rule set is indexed without numpy; a table past the threshold loads it."""
    script = """
import sys
import gated.rules.index as ix
from gated.rules.index import RuleIndex
from tests.core.test_index_builds import _source
src = _source([f"AB{i:05d}" for i in range(20_000)], ["ZZ999"], ["DD111"], ["1234"])
rules = RuleIndex.build(src)
assert rules.lookup("resident", "AB00042")
print("numpy" in sys.modules, end=" ")
ix._VECTORISE_FROM = 1000
RuleIndex.build(src)
print("numpy" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.split() == ["False", "True"]
