"""A lane whose source must agree with itself: held reads, agreement, the passage's end, a stop."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec

from gated.config import LaneConfig
from gated.lane import Lane
from gated.model import PlateRead
from tests.test_lane import Rig, rig  # noqa: F401 - the fixture, with its real journal

SOURCE = {"kind": "simulator", "name": "cam",
          "consensus": {"reads": 2, "unless_confidence": 0.97, "window_s": 0.3}}


def with_consensus(rig: Rig) -> Rig:  # noqa: F811 - the fixture's value
    cfg = msgspec.convert({"id": "main-in", "dedup_window_s": 30.0, "sources": [SOURCE]},
                          LaneConfig)
    rig.lane = Lane(cfg, rig.lane.parts)
    return rig


def read(rig: Rig, plate: str, confidence: float = 0.9) -> asyncio.Future[int | None]:  # noqa: F811
    return rig.lane.on_read(
        PlateRead("main-in", plate, "cam", time.time(), time.monotonic(), confidence))


async def test_a_held_read_is_answered_at_once_and_agreement_opens(rig: Rig) -> None:  # noqa: F811
    with_consensus(rig)
    first = read(rig, "AB123CD")
    assert first.done() and first.result() is None  # held: not journaled by itself
    assert rig.lane.metrics.held == 1 and rig.relay.pulses_ms == []
    second = read(rig, "AB123CD")
    assert await second is not None
    await rig.settle()
    (row,) = rig.rows()
    assert row["decision_reason"] == "resident" and rig.relay.pulses_ms == [800]
    assert json.loads(row["metadata"])["consensus"]["reads"] == 2


async def test_an_unagreed_passage_is_journaled_when_its_window_ends(rig: Rig) -> None:  # noqa: F811
    with_consensus(rig)
    read(rig, "AB123CD", 0.9)
    await asyncio.sleep(0.5)  # the lane's timer ends the 0.3 s passage
    await rig.settle()
    (row,) = rig.rows()
    assert (row["event_type"], row["decision_reason"]) == ("denied", "no_consensus")
    assert rig.relay.pulses_ms == [] and rig.lane.metrics.decisions["no_consensus"] == 1


async def test_a_stop_journals_held_reads_instead_of_dropping_them(rig: Rig) -> None:  # noqa: F811
    with_consensus(rig)
    read(rig, "XY999ZZ", 0.9)
    await rig.lane.drain()  # SIGTERM within the window
    (row,) = rig.rows()
    assert row["decision_reason"] == "no_consensus" and row["vehicle_plate"] == "XY999ZZ"
