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

import msgspec
import pytest

from gated.audit import Auditor
from gated.clock import ClockWatch
from gated.config import LaneConfig, PolicyConfig
from gated.hardware.fake import FakeRelay
from gated.journal import Journal
from gated.lane import Lane, LaneParts, RulesHolder
from gated.model import Direction, Mode, PlateRead, SiteIdentity
from gated.policy import AccessPoint, MemoryPolicyState
from gated.rules.files import import_rules
from gated.rules.index import RuleIndex
from gated.rules.store import RuleStore
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
    index = RuleIndex.build(store)
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    identity = SiteIdentity("t", "s", "d")
    relay = FakeRelay("main-in-relay")
    cfg = LaneConfig(id="main-in", dedup_window_s=30.0)
    parts = LaneParts(
        identity=identity,
        access_point=AccessPoint(
            "main-in", Direction.IN, PolicyConfig(min_confidence=0.8), zoneinfo.ZoneInfo("UTC")
        ),
        rules=RulesHolder(index),
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
    rig.lane = Lane(rig.lane.cfg, dataclasses.replace(rig.lane.parts, relay=rig.relay))
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
    assert await rig.lane.set_mode(Mode.HOLD_OPEN) is None
    assert rig.relay.energised
    rig.read("ZZ999ZZ")
    await rig.settle()
    [row] = rig.rows()
    assert row["decision_reason"] == "hold_open" and row["event_type"] == "entry"
    assert rig.relay.pulses_ms == []
    assert await rig.lane.set_mode(Mode.NORMAL) is None
    assert not rig.relay.energised
    # the lane actuates; who asked is audited by gated.control (tests/test_control.py)
    assert rig.rows("audit_logs") == []


async def test_metadata_keeps_personal_data_in_erasable_columns(rig: Rig) -> None:
    rig.read("AB-123-C D")
    await rig.settle()
    [row] = rig.rows()
    assert row["vehicle_plate"] == "AB123CD"
    assert "AB123CD" not in row["metadata"] and "AB-123" not in row["metadata"]


async def test_open_manually_is_an_access_event(rig: Rig) -> None:
    from gated.model import AuthorizationMethod

    event = await rig.lane.open_manually(method=AuthorizationMethod.GUARD_BUTTON, actor_id="btn-1")
    [row] = rig.rows()
    assert row["event_id"] == event.event_id and row["gate_opened"] == 1
    assert row["authorization_method"] == "guard_button" and row["authorized_by"] == "btn-1"
    assert row["decision_reason"] == "guard_override"
    assert rig.relay.pulses_ms == [rig.lane.pulse_ms]


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


# --- the decision and the record agree; acknowledged means kept -----------------------------


class SyncedClock(ClockWatch):
    """A device clock known to be synchronised (injected; the test machine's may not be)."""

    def unsynced(self) -> bool:
        return False


def lane_with(rig: Rig, *, clock: ClockWatch | None = None, **source: Any) -> Lane:
    """The rig's lane again, with one generic camera "cam" configured as given."""
    cfg = msgspec.convert(
        {
            "id": "main-in",
            "dedup_window_s": 30.0,
            "sources": [
                {"kind": "anpr_http", "name": "cam", "format": "generic", "path": "/a", **source}
            ],
        },
        LaneConfig,
    )
    parts = dataclasses.replace(rig.lane.parts, clock=clock or rig.lane.parts.clock)
    rig.lane = Lane(cfg, parts)
    return rig.lane


def plate_read(plate: str, **kw: Any) -> PlateRead:
    return PlateRead("main-in", plate, "cam", time.time(), time.monotonic(), 0.95, **kw)


async def test_a_capture_older_than_max_age_is_journaled_stale_and_a_live_read_still_opens(
    rig: Rig,
) -> None:
    lane = lane_with(rig, clock=SyncedClock(), max_age_s=10.0)
    old = time.time() - 3 * 3600  # a message replayed three hours later
    seq = await lane.on_read(plate_read("AB123CD", captured_at=old))
    live = await lane.on_read(plate_read("AB123CD", captured_at=time.time()))
    await rig.settle()
    stale, opened = rig.rows()
    assert stale["seq"] == seq and opened["seq"] == live
    assert (stale["event_type"], stale["decision_reason"]) == ("denied", "stale_read")
    assert stale["captured_at"] == pytest.approx(old) and stale["gate_opened"] is None
    assert "camera_clock_skew" in json.loads(stale["metadata"])["flags"]
    assert opened["decision_reason"] == "resident" and opened["gate_opened"] == 1
    assert rig.relay.pulses_ms == [800]  # only the live car opened


async def test_a_retained_message_never_opens(rig: Rig) -> None:
    lane = lane_with(rig)
    await lane.on_read(plate_read("AB123CD", retained=True))
    await rig.settle()
    [row] = rig.rows()
    assert row["decision_reason"] == "stale_read" and rig.relay.pulses_ms == []
    assert "retained" in json.loads(row["metadata"])["flags"]


async def test_a_camera_clock_off_by_more_than_the_skew_is_flagged(rig: Rig) -> None:
    lane = lane_with(rig, clock=SyncedClock(), max_age_s=0.0, max_clock_skew_s=5.0)
    await lane.on_read(plate_read("AB123CD", captured_at=time.time() + 3 * 3600))
    await rig.settle()
    [row] = rig.rows()
    meta = json.loads(row["metadata"])
    assert row["decision_reason"] == "resident"  # max_age_s = 0: no age check
    assert "camera_clock_skew" in meta["flags"] and meta["camera_skew_s"] > 3 * 3600 - 60


@pytest.mark.parametrize("text", ["", "---", " . ", "<script>alert(1)</script>", "<b>AB123CD"])
async def test_an_unread_vehicle_is_journaled_denied_with_its_picture(rig: Rig, text: str) -> None:
    lane = lane_with(rig)
    jpeg = b"\xff\xd8\xff\xe0" + b"x" * 64 + b"\xff\xd9"
    seq = await lane.on_read(plate_read(text, snapshot=jpeg))
    await rig.settle()
    [row] = rig.rows()
    assert row["seq"] == seq
    assert (row["event_type"], row["decision_reason"]) == ("denied", "unread_plate")
    assert row["vehicle_plate"] is None  # never the raw text, never markup
    assert row["snapshot_path"] and not row["snapshot_missing"]
    assert rig.relay.pulses_ms == []


async def test_unread_vehicles_can_be_ignored_by_config(rig: Rig) -> None:
    lane = lane_with(rig, unread="ignore")
    assert await lane.on_read(plate_read("")) is None
    await rig.settle()
    assert rig.rows() == [] and lane.metrics.ignored == 1


async def test_snapshots_are_filed_by_the_device_date_not_the_camera_date(rig: Rig) -> None:
    lane = lane_with(rig, max_age_s=0.0)
    jpeg = b"\xff\xd8\xff\xe0" + b"y" * 64 + b"\xff\xd9"
    await lane.on_read(plate_read("AB123CD", snapshot=jpeg, captured_at=1_588_291_200.0))
    await rig.settle()
    [row] = rig.rows()
    device_day = time.strftime("%Y/%m/%d", time.gmtime(row["created_at"]))
    assert row["snapshot_path"].startswith(device_day)
    assert row["captured_at"] == 1_588_291_200.0


async def test_an_allowed_read_whose_relay_failed_says_the_gate_did_not_open(rig: Rig) -> None:
    lane = lane_with(rig)
    rig.relay.fail("board unplugged")
    await lane.on_read(plate_read("AB123CD"))
    await rig.settle()
    [row] = rig.rows()
    assert row["decision_reason"] == "resident" and row["event_type"] == "entry"
    assert row["gate_opened"] == 0 and "relay_error" in json.loads(row["metadata"])
    # Nobody went through: the live anti-passback state has no passage for the car ...
    assert rig.lane.parts.state.last_passage("v-1") is None
    # ... and neither has the state rebuilt from the journal after a restart.
    assert await rig.journal.last_passages(0.0) == {}


async def test_every_read_is_answered_with_the_seq_of_the_row_that_keeps_it(rig: Rig) -> None:
    lane = lane_with(rig)
    first = lane.on_read(plate_read("AB123CD"))
    merged = lane.on_read(plate_read("AB-123-CD"))  # merged into the first read's event
    assert not first.done()  # the answer waits for the commit, the relay does not
    assert await first == await merged
    [row] = rig.rows()
    assert row["seq"] == await first


async def test_stale_reads_never_push_a_live_vehicle_out_of_the_lane_memory(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of replayed messages must not make the lane forget the car at the gate."""
    monkeypatch.setattr("gated.lane._MAX_EVENTS", 4)
    lane = lane_with(rig)
    first = await lane.on_read(dataclasses.replace(plate_read("AB123CD"), confidence=0.9))
    for i in range(12):
        await lane.on_read(plate_read(f"ZZ{i:03d}ZZ", retained=True))
    # the same car, read better: its event is still known, so it neither opens again ...
    better = dataclasses.replace(plate_read("AB123CD"), confidence=0.97)
    assert await lane.on_read(better) == first
    await rig.settle()
    assert rig.relay.pulses_ms == [800]
    # ... nor is a second row written for it
    assert [r["decision_reason"] for r in rig.rows()].count("resident") == 1
