"""The watcher on a real journal: rows and conditions in, alert_raised rows out, resumed
after a restart without a second alert for one row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gated.alerts.rules import AlertEngine, RuleSettings
from gated.alerts.state import AlertState
from gated.alerts.watch import AlertWatcher, Condition
from gated.audit import Auditor
from gated.ids import new_event_id
from gated.journal import Journal
from gated.model import AccessEvent, SiteIdentity
from tests.alerts.test_webhook import until

IDENTITY = SiteIdentity("t-1", "s-1", "d-1")


def access(reason: str, plate: str, lane: str = "main-in") -> AccessEvent:
    return AccessEvent(
        event_id=new_event_id(), tenant_id="t-1", site_id="s-1", device_id="d-1",
        created_at=time.time(), event_type="denied", access_point=lane,
        authorization_method="auto_plate", decision_reason=reason, rules_version=1,
        direction="in", vehicle_plate=plate)


async def alerts(journal: Journal) -> list[dict[str, Any]]:
    rows = await journal.find("audit", equals={"action": "alert_raised"}, limit=500)
    return [row["metadata"] for row in reversed(rows)]


async def plates(journal: Journal) -> list[str]:
    """The plates the alert rows point at (through their erasable access rows)."""
    out = []
    for alert in await alerts(journal):
        stream, event_id, column = alert["personal"]["plate"]
        row = await journal.get(stream, event_id)
        assert row is not None
        out.append(row[column])
    return out


async def watching(tmp_path: Path, body: Callable[[Journal, Auditor, AlertWatcher],
                                                  Awaitable[None]],
                   *, settings: dict[str, RuleSettings] | None = None,
                   conditions: Callable[[], Awaitable[list[Condition]]] | None = None,
                   ) -> None:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    auditor = Auditor(journal.append, IDENTITY)
    watcher = AlertWatcher(AlertEngine(settings), journal, auditor.record,
                           AlertState(tmp_path / "alerts-state.json"),
                           conditions=conditions, tick_s=0.05)
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: watcher.state.observed_seq is not None)
        await body(journal, auditor, watcher)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await journal.close()


def test_journal_rows_raise_the_rules_they_match(tmp_path: Path) -> None:
    async def body(journal: Journal, auditor: Auditor, watcher: AlertWatcher) -> None:
        await journal.append(access("deny_listed", "XX000X"))
        await journal.append(access("resident", "AB123CD"))
        await journal.append(access("lockdown", "CD456EF"))
        await auditor.record("gate_alarm", "gate", resource_id="main-in", status="failure",
                             error_message="forced_open", metadata={"alarm": "forced_open"})
        await auditor.record("gate_alarm", "gate", resource_id="main-in", status="failure",
                             error_message="held_open", metadata={"alarm": "held_open"})
        await auditor.record("journal_check", "journal", status="failure",
                             error_message="row 12: row_hash does not match")
        await auditor.record("camera_push_refused", "camera", status="failure",
                             ip_address="10.9.8.7", actor_type="camera",
                             metadata={"count": 30})
        await auditor.record("login_failed", "web_session", status="failure",
                             ip_address="10.9.8.6", actor_type="guard")  # one: no flood
        await until(lambda: watcher.raised >= 6)
        await asyncio.sleep(0.3)
        found = await alerts(journal)
        assert [(a["rule"], a["subject"]) for a in found] == [
            ("deny_listed", "{plate}"), ("lockdown_read", "main-in"),
            ("forced_open", "main-in"), ("held_open", "main-in"),
            ("journal_check", "journal"), ("refusal_flood", "{address}")]
        # A plate or an address never enters an alert's (unerasable) audit row: the row
        # says where the erasable text is.
        text = json.dumps(found)
        assert "XX000X" not in text and "CD456EF" not in text and "10.9.8.7" not in text
        assert found[0]["title"] == "Deny-listed plate {plate} at main-in"
        assert found[0]["personal"]["plate"][0] == "access"
        assert found[5]["personal"]["address"][0] == "audit"
        assert len({a["alert_id"] for a in found}) == 6
        assert found[5]["details"]["refusals"] == 30
        assert "row_hash does not match" in found[4]["message"]

    asyncio.run(watching(tmp_path, body))


def test_lasting_conditions_alert_once_they_lasted(tmp_path: Path) -> None:
    state: dict[str, bool] = {"relay": False, "camera": True, "disk": False, "clock": True}

    async def conditions() -> list[Condition]:
        return [
            Condition("relay_fault", "main-in-relay", state["relay"], "Relay fault", "m"),
            Condition("camera_fault", "main-in-camera", state["camera"], "Camera down", "m"),
            Condition("disk_full", "state", state["disk"], "Disk nearly full", "m"),
            Condition("sync_backlog", "upstream", False, "Upstream backlog", "m"),
            Condition("clock_unsynced", "clock", state["clock"], "Clock", "m"),
        ]

    settings = {"relay_fault": RuleSettings(fault_after_s=0.5),
                "camera_fault": RuleSettings(fault_after_s=0.5),
                "clock_unsynced": RuleSettings(enabled=False)}

    async def body(journal: Journal, auditor: Auditor, watcher: AlertWatcher) -> None:
        state["relay"] = True
        state["disk"] = True
        await asyncio.sleep(0.25)
        early = [a["rule"] for a in await alerts(journal)]
        assert early == ["disk_full"]  # a threshold: at once; the faults must last first
        await until(lambda: watcher.raised >= 3)
        state["camera"] = False  # recovered
        await asyncio.sleep(0.5)
        found = await alerts(journal)
        assert sorted(a["rule"] for a in found) == ["camera_fault", "disk_full", "relay_fault"]
        relay = next(a for a in found if a["rule"] == "relay_fault")
        assert relay["details"]["lasted_s"] >= 0.5

    asyncio.run(watching(tmp_path, body, settings=settings, conditions=conditions))


def test_a_restart_resumes_after_the_last_row_without_raising_it_again(tmp_path: Path) -> None:
    async def first(journal: Journal, auditor: Auditor, watcher: AlertWatcher) -> None:
        await journal.append(access("deny_listed", "XX000X"))
        await until(lambda: watcher.raised == 1)

    async def second(journal: Journal, auditor: Auditor, watcher: AlertWatcher) -> None:
        await journal.append(access("deny_listed", "YY111Y"))
        await until(lambda: watcher.raised == 1)
        await asyncio.sleep(0.3)
        assert await plates(journal) == ["XX000X", "YY111Y"]

    asyncio.run(watching(tmp_path, first))

    # Rows written while no watcher ran are seen when it starts again.
    async def offline() -> None:
        journal = await Journal.open(tmp_path / "journal.sqlite3")
        await journal.append(access("deny_listed", "ZZ222Z"))
        await journal.close()

    asyncio.run(watching(tmp_path, second))
    asyncio.run(offline())

    async def third(journal: Journal, auditor: Auditor, watcher: AlertWatcher) -> None:
        await until(lambda: watcher.raised == 1)
        await asyncio.sleep(0.3)
        assert await plates(journal) == ["XX000X", "YY111Y", "ZZ222Z"]

    asyncio.run(watching(tmp_path, third))
