"""The witness's pure parts: row hashes as the protocol defines them, the prefix walk."""

from __future__ import annotations

import copy

from gated.central.witness import ChainRow, extend, general_row_hash, row_hash
from tests.support.device_sim import SimDevice
from tests.support.receiver import recompute_row_hash


def test_the_fast_row_hash_equals_the_protocols_definition() -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    for stream in ("access", "audit", "access", "audit"):
        data = sim.event(stream, metadata={"f": 1e-7, "n": 3, "s": "ü\n", "z": [1.5, None]})[
            "data"]
        assert row_hash(stream, data) == general_row_hash(stream, data) == recompute_row_hash(
            stream, data) == data["row_hash"]
        legacy = copy.deepcopy(data)
        if stream == "access":
            legacy["captured_at"] = legacy["gate_opened"] = None
            assert row_hash(stream, legacy) == recompute_row_hash(stream, legacy)
        newer = dict(data, future_column=7)  # unknown data fields are hashed too
        assert row_hash(stream, newer) == recompute_row_hash(stream, newer) != data["row_hash"]
        erased = dict(data, **({"vehicle_plate": None} if stream == "access" else
                               {"ip_address": None}))
        assert row_hash(stream, erased) == data["row_hash"]  # personal text is not hashed


def test_the_prefix_extends_over_contiguous_linking_rows_only() -> None:
    rows = [ChainRow("a", 1, "0" * 64, "h1"), ChainRow("b", 2, "h1", "h2"),
            ChainRow("d", 4, "h3", "h4")]
    walk = extend(0, "0" * 64, rows)
    assert (walk.seq, walk.hash, walk.linked, walk.fork) == (2, "h2", ["a", "b"], None)
    walk = extend(2, "h2", [ChainRow("c", 3, "hX", "h3")])
    assert walk.seq == 2 and walk.fork is not None and "does not link" in walk.fork[1]
