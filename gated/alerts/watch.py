"""The watcher: observes what happens at the gate and raises alerts into the journal.

Two inputs. The journal's rows, followed through its commit feed as the status page's
live feed follows them (deny-listed and lockdown reads, gate alarms, a failed journal
check, refused attempts with an address); and lasting conditions sampled every second
from the daemon (relay and camera faults, disk use, the upstream backlog, the clock).
The rule engine (gated.alerts.rules) decides; each alert becomes one `alert_raised` audit
row with a fresh UUIDv7 id, and delivery reads it from there (gated.alerts.deliver).

The watcher's place in the journal (observed_seq) is kept in the alerts' state file, and
never behind the row an alert was last raised from: a restart neither misses the rows
written while it was down nor raises an alert twice for one row.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gated.alerts.payload import ALERT_ACTION
from gated.alerts.rules import (
    AlertDecision,
    AlertEngine,
    RuleSettings,
    happenings_from_row,
    refusals_from_row,
)
from gated.alerts.state import AlertState
from gated.ids import new_event_id

log = logging.getLogger(__name__)

TICK_S = 1.0
READ_BATCH = 200
SAVE_EVERY_S = 30.0  # the observed cursor is written at least this often when it moved


@dataclass(frozen=True, slots=True)
class Condition:
    """One sample of a lasting condition (relay fault, disk use …)."""

    rule: str
    subject: str
    active: bool
    title: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


Record = Callable[..., Awaitable[int]]
Conditions = Callable[[], Awaitable[list[Condition]]]


class AlertWatcher:
    """Feeds the rule engine and raises its decisions as journal rows."""

    def __init__(self, engine: AlertEngine, journal: Any, record: Record, state: AlertState,
                 *, conditions: Conditions | None = None, tick_s: float = TICK_S,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.journal = journal
        self.record = record
        self.state = state
        self.conditions = conditions
        self.tick_s = tick_s
        self.monotonic = monotonic
        self.wall = wall
        self.raised = 0
        self._saved_at = 0.0

    async def start_seq(self) -> int:
        """Where to resume: the state file's cursor, never behind the last alert's source row."""
        seq = self.state.observed_seq
        if seq is None:
            # First start: from this daemon start on (its own journal check included), not
            # the site's history.
            seq = self.journal.commits.seq
            start = await self.journal.find("audit", equals={"action": "daemon_start"},
                                            limit=1)
            if start:
                seq = min(seq, int(start[0]["seq"]) - 1)
        last = await self.journal.find("audit", equals={"action": ALERT_ACTION}, limit=1)
        if last:
            meta = last[0].get("metadata") or {}
            source = meta.get("source_seq") if isinstance(meta, dict) else None
            if isinstance(source, int):
                seq = max(seq, source)
        return int(seq)

    async def run(self) -> None:
        """Observe until cancelled."""
        seq = await self.start_seq()
        self.state.observed_seq = seq
        await self.state.save()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(seq))
            tg.create_task(self._tick())

    async def _follow(self, seq: int) -> None:
        commits = self.journal.commits
        while True:
            rows = await self.journal.after(seq, READ_BATCH)
            for row in rows:
                await self.observe(row)
                seq = row["seq"]
                self.state.observed_seq = seq
            if rows and self.monotonic() - self._saved_at >= SAVE_EVERY_S:
                self._saved_at = self.monotonic()
                await self.state.save()
            if len(rows) < READ_BATCH:
                try:
                    await commits.wait(seq + 1)
                except EOFError:
                    return

    async def observe(self, row: Mapping[str, Any]) -> None:
        """Offer one journal row's happenings to the engine; raise what it decides."""
        now = self.monotonic()
        for happening in happenings_from_row(row):
            decision = self.engine.offer(happening, now)
            if decision is not None:
                await self.raise_alert(decision)
        refused = refusals_from_row(row)
        if refused is not None:
            decision = self.engine.refusals(refused[0], refused[1], now)
            if decision is not None:
                await self.raise_alert(decision)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.monotonic()
            for decision in self.engine.due(now):
                await self.raise_alert(decision)
            self.engine.forget_idle(now)
            if self.conditions is None:
                continue
            try:
                samples = await self.conditions()
            except Exception as err:  # a failed sample must not end the watcher (or alerts)
                log.warning("alert conditions not sampled: %s: %s", type(err).__name__, err)
                continue
            for c in samples:
                sampled = self.engine.condition(c.rule, c.subject, c.active, now, c.title,
                                                c.message, self.wall(), c.details)
                if sampled is not None:
                    await self.raise_alert(sampled)

    async def raise_alert(self, decision: AlertDecision, *, test: bool = False) -> str:
        """Journal one alert (an `alert_raised` audit row); its id."""
        alert_id = new_event_id()
        subject, title, message = decision.subject, decision.title, decision.message
        for name, (value, *_) in decision.personal.items():
            # Audit rows are hash-chained whole: a plate or address in one could never be
            # erased. The row keeps a placeholder and where the erasable text lives.
            subject, title, message = (text.replace(value, "{" + name + "}")
                                       for text in (subject, title, message))
        await self.record(
            ALERT_ACTION, "alert", resource_id=decision.rule,
            status="success",
            metadata={
                "alert_id": alert_id, "rule": decision.rule, "subject": subject[:128],
                "severity": decision.severity, "title": title[:200],
                "message": message[:1000], "count": decision.count,
                "personal": {name: list(where) for name, (_, *where)
                             in decision.personal.items()},
                "folded": decision.folded, "first_at": decision.first_at,
                "last_at": decision.last_at, "details": dict(decision.details),
                "source_seq": decision.source_seq, "test": test,
            })
        self.raised += 1
        log.warning("alert %s: %s", decision.rule, title)  # without plate or address
        if decision.source_seq is not None:
            # Never behind the row this alert came from (see start_seq); written now so a
            # crash right after cannot raise it again.
            self.state.observed_seq = max(self.state.observed_seq or 0, decision.source_seq)
            self._saved_at = self.monotonic()
            await self.state.save()
        return alert_id


async def daemon_conditions(daemon: Any, engine_settings: Mapping[str, RuleSettings]
                            ) -> list[Condition]:
    """Sample the daemon's lasting conditions: relays, cameras, disk, backlog, clock."""
    out: list[Condition] = []
    gen = daemon.generation
    if gen is not None:
        for relay in gen.relays.values():
            comp = daemon.health.components.get(relay.name)
            bad = comp is not None and not comp.ok
            out.append(Condition(
                "relay_fault", relay.name, bad, f"Relay fault: {relay.name}",
                f"Relay {relay.name} has a fault: {comp.detail if comp else ''}".strip(),
                {"relay": relay.name}))
        for lane_id, lane in gen.lanes.items():
            camera = lane.parts.camera
            status = getattr(camera, "status", None)  # a frame source without one: no rule
            if status is None or not hasattr(status, "connected"):
                continue
            name = getattr(camera, "name", f"{lane_id}-camera")
            out.append(Condition(
                "camera_fault", name, not status.connected, f"Camera down: {name}",
                f"Camera {name} of {lane_id} is not streaming"
                + (f": {status.last_error}" if status.last_error else "."),
                {"camera": name, "lane": lane_id}))
    percent: float | None = None
    if daemon.state_usage is not None and daemon.state_usage[1]:
        used, quota = daemon.state_usage
        percent = 100.0 * used / quota
        where = "the state quota"
    else:
        try:
            usage = await asyncio.to_thread(shutil.disk_usage,
                                            Path(daemon.cfg.journal.path).parent)
            percent = 100.0 * usage.used / usage.total if usage.total else None
            where = "the journal's disk"
        except OSError:
            percent = None
    if percent is not None:
        limit = engine_settings["disk_full"].disk_percent
        exhausted = bool(getattr(daemon, "_quota_exhausted", False))
        out.append(Condition(
            "disk_full", "state", percent >= limit or exhausted, "Disk nearly full",
            f"{percent:.0f} % of {where} is used (alert at {limit:g} %).",
            {"percent": round(percent, 1)}))
    if daemon.cfg.sync.enabled:
        _, oldest = await daemon.journal.backlog()
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        hours = engine_settings["sync_backlog"].backlog_hours
        out.append(Condition(
            "sync_backlog", "upstream", age >= hours * 3600, "Upstream backlog",
            f"The oldest event not yet upstream is {age / 3600:.1f} h old "
            f"(alert at {hours:g} h).", {"oldest_age_s": round(age)}))
    unsynced = daemon.clock.unsynced()
    out.append(Condition("clock_unsynced", "clock", unsynced, "Clock not synchronised",
                         "The device's clock is not synchronised: schedules and passes "
                         "that need the time are refused."))
    return out
