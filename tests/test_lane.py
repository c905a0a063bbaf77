"""One lane with real parts (journal, rule store, snapshot store) and a fake relay."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
import zoneinfo
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gated.audit import Auditor
from gated.clock import ClockWatch
from gated.config import LaneConfig, PolicyConfig
from gated.hardware.fake import FakeRelay
from gated.journal import Journal
from gated.lane import Lane, LaneParts, RulesHolder
from gated.model import Direction, Mode, PlateRead, SiteIdentity
from gated.policy import AccessPoint, MemoryPolicyState
from gated.rules import RuleStore
from gated.rules_io import import_rules
from gated.ruleset import RuleSet
from gated.snapshots import SnapshotStore

RULES = {
    "format": "gated-rules",
    "format_version": 1,
    "residents": [{"id": "r-1", "name": "Ann", "access_points": "*"}],
    "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"}],
}


class Rig:
    """A lane and the things it writes to."""

    def __init__(self, lane: Lane, relay: FakeRelay, journal: Journal, path: Path) -> None:
        self.lane, self.relay, self.journal, self.path = lane, relay, journal, path

    def rows(self, table: str = "access_logs") -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
        finally:
            conn.close()

    async def settle(self) -> None:
        await self.lane.drain()
        self.lane._accepting = True  # drain() closes the lane; these tests keep feeding it

    def read(self, plate: str, confidence: float = 0.95) -> None:
        self.lane.on_read(
            PlateRead("main-in", plate, "cam", time.time(), time.monotonic(), confidence)
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "rules.json").write_text(json.dumps(RULES))
    store = RuleStore(tmp_path / "rules.sqlite3")
    import_rules(store, tmp_path / "rules.json")
    ruleset = RuleSet.build(store)
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    identity = SiteIdentity("t", "s", "d")
    relay = FakeRelay("main-in-relay")
    cfg = LaneConfig(id="main-in", dedup_window_s=30.0)
    parts = LaneParts(
        identity=identity,
        access_point=AccessPoint(
            "main-in", Direction.IN, PolicyConfig(min_confidence=0.8), zoneinfo.ZoneInfo("UTC")
        ),
        rules=RulesHolder(ruleset),
        state=MemoryPolicyState(),
        relay=relay,
        append=journal.append,
        snapshots=SnapshotStore(tmp_path / "snaps", 10 * 1024 * 1024),
        auditor=Auditor(journal.append, identity, ClockWatch()),
        clock=ClockWatch(),
    )
    yield Rig(Lane(cfg, parts), relay, journal, tmp_path / "journal.sqlite3")
    await journal.close()
    store.close()


async def test_duplicates_in_the_window_make_one_event(rig: Rig) -> None:
    for _ in range(5):
        rig.read("AB-123-CD")
    await rig.settle()
    [row] = rig.rows()
    assert row["decision_reason"] == "resident"
    assert rig.relay.pulses_ms == [800]
    assert rig.lane.metrics.duplicates == 4


async def test_a_better_read_turns_a_denial_into_an_opening_once(rig: Rig) -> None:
    rig.read("AB123CD", confidence=0.5)  # too blurred to open by itself
    await rig.settle()
    rig.read("AB123CD", confidence=0.97)  # the camera's next, better read of the same car
    await rig.settle()
    rig.read("AB123CD", confidence=0.99)  # better still, but it is already open
    await rig.settle()
    first, second = rig.rows()
    assert first["decision_reason"] == "low_confidence" and first["event_type"] == "denied"
    assert second["decision_reason"] == "resident"
    assert json.loads(second["metadata"])["updates_event_id"] == first["event_id"]
    assert rig.relay.pulses_ms == [800]
    assert rig.lane.metrics.updates == 1


class SlowRelay(FakeRelay):
    """A relay whose command takes a while to go out, as a serial board's does."""

    async def pulse(self, ms: int) -> None:
        await asyncio.sleep(0.05)
        await super().pulse(ms)


async def test_racing_update_never_opens_twice(rig: Rig) -> None:
    rig.relay = SlowRelay("slow")
    rig.lane = Lane(rig.lane.cfg, dataclasses.replace(rig.lane.p, relay=rig.relay))
    # Two better reads arrive while the first opening is still being commanded.
    rig.read("AB123CD", confidence=0.9)
    rig.read("AB123CD", confidence=0.95)
    rig.read("AB123CD", confidence=0.99)
    await rig.settle()
    assert rig.relay.pulses_ms == [800]
    assert len(rig.rows()) == 1


async def test_relay_fault_still_journals_and_audits(rig: Rig) -> None:
    rig.relay.fail("board unplugged")
    rig.read("AB123CD")
    await rig.settle()
    [row] = rig.rows()
    assert row["event_type"] == "entry" and row["read_to_relay_ms"] is None
    assert "board unplugged" in json.loads(row["metadata"])["relay_error"]
    [audit] = [a for a in rig.rows("audit_logs") if a["action"] == "relay_pulse"]
    assert (
        audit["status"] == "failure"
        and json.loads(audit["metadata"])["event_id"] == row["event_id"]
    )


async def test_hold_open_allows_without_pulsing(rig: Rig) -> None:
    await rig.lane.set_mode(Mode.HOLD_OPEN, actor_type="guard", actor_id="g1")
    assert rig.relay.energised
    rig.read("ZZ999ZZ")
    await rig.settle()
    [row] = rig.rows()
    assert row["decision_reason"] == "hold_open" and row["event_type"] == "entry"
    assert rig.relay.pulses_ms == []
    await rig.lane.set_mode(Mode.NORMAL, actor_type="guard", actor_id="g1")
    assert not rig.relay.energised
    modes = [
        json.loads(a["new_values"])["mode"]
        for a in rig.rows("audit_logs")
        if a["action"] == "mode_change"
    ]
    assert modes == ["hold_open", "normal"]


async def test_metadata_keeps_personal_data_in_erasable_columns(rig: Rig) -> None:
    rig.read("AB-123-C D")
    await rig.settle()
    [row] = rig.rows()
    assert row["vehicle_plate"] == "AB123CD"
    assert "AB123CD" not in row["metadata"] and "AB-123" not in row["metadata"]


async def test_open_manually_is_an_access_event_and_an_audit_row(rig: Rig) -> None:
    from gated.model import AuthorizationMethod

    await rig.lane.open_manually(
        method=AuthorizationMethod.GUARD_BUTTON, actor_type="guard_button", actor_id="btn-1"
    )
    await asyncio.sleep(0)
    [row] = rig.rows()
    assert row["authorization_method"] == "guard_button" and row["authorized_by"] == "btn-1"
    assert row["decision_reason"] == "guard_override"
    assert [a["action"] for a in rig.rows("audit_logs")] == ["gate_open"]


async def test_oversized_or_broken_picture_is_recorded_as_missing(rig: Rig) -> None:
    huge = b"\xff\xd8" + b"\x00" * (3 * 1024 * 1024)  # over the store's 2 MiB limit
    for plate, picture in (("AB123CD", huge), ("QQ111QQ", b"not a jpeg")):
        rig.lane.on_read(
            PlateRead(
                "main-in", plate, "cam", time.time(), time.monotonic(), 0.95, snapshot=picture
            )
        )
    await rig.settle()
    rows = rig.rows()
    assert [r["snapshot_missing"] for r in rows] == [1, 1]
    assert all(r["snapshot_path"] is None and r["snapshot_sha256"] is None for r in rows)
    assert rig.relay.pulses_ms == [800]  # the gate opened anyway
    assert rig.lane.metrics.snapshots_missing == 2


async def test_out_of_range_confidence_is_journaled_not_retried_forever(rig: Rig) -> None:
    for plate, confidence in (("AB123CD", float("nan")), ("QQ1QQ", 7.0)):
        rig.lane.on_read(
            PlateRead("main-in", plate, "cam", time.time(), time.monotonic(), confidence)
        )
    await asyncio.wait_for(rig.settle(), 10)
    rows = rig.rows()
    assert [r["confidence_score"] for r in rows] == [None, None]
    assert [r["decision_reason"] for r in rows] == ["low_confidence", "low_confidence"]
    assert rig.relay.pulses_ms == []
