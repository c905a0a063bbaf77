"""Consensus: a plate is accepted after N agreeing reads of one passage, or one confident read."""

from __future__ import annotations

from gated.consensus import Consensus, ConsensusRule, VerdictKind
from gated.model import PlateRead

RULE = ConsensusRule(reads=3, unless_confidence=0.9, window_s=4.0)


def read(text: str, confidence: float | None = 0.7, *, source: str = "cam", lane: str = "in",
         captured_at: float | None = None) -> PlateRead:
    return PlateRead(lane, text, source, 0.0, 0.0, confidence, captured_at=captured_at)


def test_off_passes_every_read_and_remembers_nothing() -> None:
    c = Consensus()
    verdict = c.offer(read("AB123CD"), ConsensusRule(), 0.0)
    assert verdict.kind is VerdictKind.PASS and verdict.passage == ""
    assert len(c) == 0 and c.expire(100.0) == []


def test_three_fuzzy_equal_reads_agree_on_the_most_read_text() -> None:
    c = Consensus()
    kinds = [c.offer(read(t, conf), RULE, i * 0.2).kind
             for i, (t, conf) in enumerate([("AB123CD", 0.6), ("A8123CD", 0.8), ("AB123CD", 0.7)])]
    assert kinds == [VerdictKind.HOLD, VerdictKind.HOLD, VerdictKind.ACCEPT]
    c2 = Consensus()
    for i, (t, conf) in enumerate([("AB123CD", 0.6), ("A8123CD", 0.8)]):
        c2.offer(read(t, conf), RULE, i * 0.2)
    verdict = c2.offer(read("AB123CD", 0.7), RULE, 0.5)
    assert verdict.read.text == "AB123CD" and verdict.read.confidence == 0.7
    assert verdict.agreement is not None
    assert (verdict.agreement.reads, verdict.agreement.of, verdict.agreement.by) == (3, 3, "reads")
    assert [(x.text, x.reads) for x in verdict.agreement.candidates] == [("A8123CD", 1)]
    # Later reads of the agreed plate go straight on; the passage ended agreed.
    assert c2.offer(read("AB123CD"), RULE, 1.0).kind is VerdictKind.PASS
    ended = c2.expire(10.0)
    assert len(ended) == 1 and ended[0].agreed


def test_one_confident_read_is_enough_and_says_so() -> None:
    c = Consensus()
    verdict = c.offer(read("AB123CD", 0.95), RULE, 0.0)
    assert verdict.kind is VerdictKind.ACCEPT
    assert verdict.agreement is not None and verdict.agreement.by == "confidence"


def test_a_lone_badge_read_ends_unagreed_with_its_best_read() -> None:
    c = Consensus()
    assert c.offer(read("AUDI", 0.75), RULE, 0.0).kind is VerdictKind.HOLD
    assert c.expire(3.9) == []
    assert c.next_deadline() == 4.0
    (ended,) = c.expire(4.1)
    assert not ended.agreed and ended.read.text == "AUDI" and ended.agreement.by == "none"
    assert c.counts["unagreed"] == 1 and len(c) == 0


def test_a_resent_read_is_not_a_second_agreeing_read() -> None:
    c = Consensus()
    rule = ConsensusRule(reads=2, window_s=4.0)
    assert c.offer(read("AB123CD", captured_at=100.0), rule, 0.0).kind is VerdictKind.HOLD
    assert c.offer(read("AB123CD", captured_at=100.0), rule, 1.0).kind is VerdictKind.HOLD
    assert c.counts["repeats"] == 1
    assert c.offer(read("AB123CD", captured_at=100.5), rule, 1.5).kind is VerdictKind.ACCEPT


def test_different_plates_and_sources_and_lanes_never_agree_with_each_other() -> None:
    c = Consensus()
    rule = ConsensusRule(reads=2)
    assert c.offer(read("AB123CD"), rule, 0.0).kind is VerdictKind.HOLD
    assert c.offer(read("XY987ZZ"), rule, 0.1).kind is VerdictKind.HOLD
    assert c.offer(read("AB123CD", source="other"), rule, 0.2).kind is VerdictKind.HOLD
    assert c.offer(read("AB123CD", lane="out"), rule, 0.3).kind is VerdictKind.HOLD
    assert c.offer(read("AB123CD"), rule, 0.4).kind is VerdictKind.ACCEPT


def test_the_window_is_fixed_from_the_first_read() -> None:
    c = Consensus()
    rule = ConsensusRule(reads=2, window_s=1.0)
    c.offer(read("AB123CD"), rule, 0.0)
    # The second read comes after the first passage ended: a new passage, held again.
    assert c.offer(read("AB123CD"), rule, 1.5).kind is VerdictKind.HOLD
    (ended,) = c.expire(1.5)
    assert not ended.agreed


def test_memory_is_bounded_per_lane() -> None:
    c = Consensus(max_passages_per_lane=4)
    rule = ConsensusRule(reads=2, window_s=60.0)
    for i in range(10):
        c.offer(read("AB123CD", source=f"cam{i}"), rule, float(i))
    assert len(c) == 4
    assert len(c.expire(5.0)) == 6  # the evicted ones are reported, not lost
    for i in range(100):
        c.offer(read(f"{i:03d}{i:03d}X"), rule, 20.0)  # a flood of distinct texts
    assert len(c) == 4 and len(c.expire(20.0)) == 100


def test_a_second_cars_lone_read_is_not_swallowed_by_the_first_cars_agreement() -> None:
    c = Consensus()
    rule = ConsensusRule(reads=2, window_s=4.0)
    c.offer(read("AB123CD"), rule, 0.0)
    assert c.offer(read("AB123CD"), rule, 0.5).kind is VerdictKind.ACCEPT
    assert c.offer(read("XY987ZZ"), rule, 1.0).kind is VerdictKind.HOLD  # the next car
    assert c.next_deadline() == 4.0
    (first,) = c.expire(4.1)
    assert first.agreed and first.read.text == "AB123CD"
    (second,) = c.expire(5.1)  # its own window, from its own first read
    assert not second.agreed and second.read.text == "XY987ZZ"
    assert [x.text for x in second.agreement.candidates] == []


def test_metadata_describes_candidates_without_their_text() -> None:
    c = Consensus()
    for t in ("AB123CD", "AB123CO", "AB123CD", "ZZ999ZZZZZ"):
        verdict = c.offer(read(t), ConsensusRule(reads=4), 0.0)
    assert verdict.kind is VerdictKind.HOLD  # the far text is its own reading
    verdict = c.offer(read("AB123CD"), ConsensusRule(reads=4), 0.1)
    assert verdict.agreement is not None
    meta = verdict.agreement.metadata("AB123CD")
    assert meta["reads"] == 4 and meta["of"] == 5
    assert "AB123CO" not in repr(meta) and "ZZ999" not in repr(meta)
    near, far = meta["candidates"]  # type: ignore[misc]
    assert near["distance"] == 1 and near["edits"] == [
        {"op": "sub", "position": 6, "read": "O", "stored": "D"}]
    assert far["distance"] is None and "edits" not in far
