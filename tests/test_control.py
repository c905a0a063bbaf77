"""The control plane over a real lane, fake relay and real journal: every action, every refusal,
and the one audit row each writes."""

from __future__ import annotations

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
from gated.control import PERMITTED, Action, Actor, ActorType, ControlPlane, Outcome
from gated.hardware.fake import FakeRelay
from gated.journal import Journal
from gated.lane import Lane, LaneParts, RulesHolder
from gated.model import Direction, Mode, SiteIdentity
from gated.policy import AccessPoint, MemoryPolicyState
from gated.rules.index import RuleIndex
from gated.rules.store import RuleStore
from gated.snapshots import SnapshotStore

GUARD = Actor(ActorType.GUARD, id="g-7", role="guard", address="10.0.0.9", request_id="req-1")
INSTALLER = Actor(ActorType.LOCAL_USER, id="ann", address="uid=1000 gid=1000 pid=1")
HA = Actor(ActorType.HOME_ASSISTANT, id="ha")


class Site:
    def __init__(self, control: ControlPlane, lanes: dict[str, Lane], relays: dict[str, FakeRelay],
                 path: Path) -> None:
        self.control, self.lanes, self.relays, self.path = control, lanes, relays, path
        self.reloads = 0

    def rows(self, table: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
        finally:
            conn.close()

    def audits(self) -> list[dict[str, Any]]:
        return self.rows("audit_logs")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    store = RuleStore(tmp_path / "rules.sqlite3")
    index = RuleIndex.build(store)
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    identity = SiteIdentity("t", "s", "d")
    auditor = Auditor(journal.append, identity, ClockWatch())
    lanes: dict[str, Lane] = {}
    relays: dict[str, FakeRelay] = {}
    for lane_id in ("main-in", "main-out"):
        relays[lane_id] = FakeRelay(f"{lane_id}-relay")
        lanes[lane_id] = Lane(
            LaneConfig(id=lane_id),
            LaneParts(
                identity=identity,
                access_point=AccessPoint(lane_id, Direction.IN, PolicyConfig(),
                                         zoneinfo.ZoneInfo("UTC")),
                rules=RulesHolder(index),
                state=MemoryPolicyState(),
                relay=relays[lane_id],
                append=journal.append,
                snapshots=SnapshotStore(tmp_path / "snaps", 1024 * 1024),
                auditor=auditor,
                clock=ClockWatch(),
            ),
        )
    holder: dict[str, Site] = {}

    async def reload_rules() -> int:
        holder["site"].reloads += 1
        return 4

    control = ControlPlane(lambda: lanes, auditor, reload_rules=reload_rules)
    holder["site"] = Site(control, lanes, relays, tmp_path / "journal.sqlite3")
    try:
        yield holder["site"]
    finally:
        await journal.close()
        store.close()


async def test_open_pulses_journals_and_audits_once(site: Site) -> None:
    result = await site.control.open(GUARD, "main-in", reason="  courier\n at the gate ")
    assert result.ok and result.outcome == Outcome.SUCCESS
    assert site.relays["main-in"].pulses_ms == [800]
    [event] = site.rows("access_logs")
    assert event["authorization_method"] == "manual_guard" and event["authorized_by"] == "g-7"
    [row] = site.audits()
    assert row["action"] == "gate_open" and row["resource_id"] == "main-in"
    assert (row["actor_type"], row["actor_id"], row["actor_role"]) == ("guard", "g-7", "guard")
    assert (row["ip_address"], row["request_id"]) == ("10.0.0.9", "req-1")
    meta = json.loads(row["metadata"])
    assert meta == {"outcome": "success", "lane": "main-in",
                    "access_event_id": event["event_id"], "reason": "courier at the gate"}


async def test_relay_failure_is_a_failed_outcome(site: Site) -> None:
    site.relays["main-in"].fail("board unplugged")
    result = await site.control.open(GUARD, "main-in")
    assert result.outcome == Outcome.FAILED and "board unplugged" in result.message
    [row] = site.audits()
    assert row["status"] == "failure" and row["error_message"].startswith("failed: relay")
    assert site.rows("access_logs")[0]["gate_opened"] == 0


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda c: c.open(GUARD, "back-gate"), "unknown lane 'back-gate'"),
        (lambda c: c.relay_test(GUARD, "main-in"), "relay_test is not permitted for guard"),
        (lambda c: c.relay_test(INSTALLER, "main-in", ms=0), "ms must be a whole number"),
        (lambda c: c.relay_test(INSTALLER, "main-in", ms=60_000), "ms must be a whole number"),
        (lambda c: c.reload_rules(HA), "reload_rules is not permitted for home_assistant"),
        (lambda c: c.open(GUARD, "main-in", reason="x" * 501), "longer than 500"),
        (lambda c: c.perform("open", GUARD, {"lane": "main-in", "as": "root"}),
         "unexpected argument(s): as"),
        (lambda c: c.perform("open", GUARD, {"lane": ["main-in"]}), "unknown lane"),
        (lambda c: c.perform("open", GUARD, {"lane": "main-in", "reason": 5}), "reason must be"),
    ],
)
async def test_refusals_change_nothing_and_are_audited(site: Site, call: Any, why: str) -> None:
    result = await call(site.control)
    assert result.outcome == Outcome.REFUSED and why in result.message
    assert all(r.actions == [] for r in site.relays.values())
    assert site.rows("access_logs") == []
    [row] = site.audits()
    assert row["status"] == "failure" and row["error_message"] == f"refused: {result.message}"
    assert json.loads(row["metadata"])["outcome"] == "refused"


async def test_unknown_action_is_refused_and_audited(site: Site) -> None:
    result = await site.control.perform("format_disk", INSTALLER, {})
    assert result.outcome == Outcome.REFUSED
    [row] = site.audits()
    assert row["action"] == "control_refused" and row["actor_id"] == "ann"


async def test_lockdown_refuses_automation_but_not_people(site: Site) -> None:
    assert (await site.control.lockdown(GUARD, True)).ok  # every lane
    assert {lane.mode for lane in site.lanes.values()} == {Mode.LOCKDOWN}
    refused = await site.control.open(HA, "main-in")
    assert refused.outcome == Outcome.REFUSED and "in lockdown" in refused.message
    assert (await site.control.hold(GUARD, "main-in")).outcome == Outcome.REFUSED
    assert (await site.control.relay_test(INSTALLER, "main-in")).outcome == Outcome.REFUSED
    assert (await site.control.open(GUARD, "main-in")).ok  # a guard still may
    assert (await site.control.lockdown(GUARD, False, "main-out")).ok
    assert site.lanes["main-out"].mode == Mode.NORMAL
    assert site.lanes["main-in"].mode == Mode.LOCKDOWN
    actions = [(r["action"], r["status"]) for r in site.audits()]
    assert actions == [
        ("lockdown_on", "success"), ("gate_open", "failure"), ("gate_hold", "failure"),
        ("relay_test", "failure"), ("gate_open", "success"), ("lockdown_off", "success"),
    ]


async def test_hold_release_and_idempotence(site: Site) -> None:
    relay = site.relays["main-in"]
    assert (await site.control.hold(GUARD, "main-in")).ok
    assert relay.energised
    again = await site.control.hold(GUARD, "main-in")
    assert again.ok and again.data["changed"] == []
    assert (await site.control.release(GUARD, "main-in")).ok
    assert not relay.energised
    assert (await site.control.release(GUARD, "main-in")).data["changed"] == []
    # lockdown off on a lane that is not locked down changes nothing
    assert (await site.control.lockdown(GUARD, False, "main-in")).data["changed"] == []
    assert len(site.audits()) == 5


async def test_relay_test_pulses_without_an_access_event(site: Site) -> None:
    result = await site.control.relay_test(INSTALLER, "main-out", ms=120)
    assert result.ok and site.relays["main-out"].pulses_ms == [120]
    assert site.rows("access_logs") == []
    [row] = site.audits()
    assert row["action"] == "relay_test" and json.loads(row["metadata"])["ms"] == 120


async def test_reload_rules_and_status(site: Site) -> None:
    assert (await site.control.reload_rules(INSTALLER)).data == {"rules_version": 4}
    assert site.reloads == 1
    status = await site.control.status()
    assert status["lanes"]["main-in"]["mode"] == "normal"
    assert status["lanes"]["main-in"]["gate"] == "unknown"
    assert time.time() - status["at"] < 60
    assert [r["action"] for r in site.audits()] == ["rules_reload"]  # status is not audited


def test_permission_table_covers_every_action() -> None:
    assert set(PERMITTED) == set(Action)
    assert PERMITTED[Action.RELAY_TEST] == {ActorType.LOCAL_USER}
