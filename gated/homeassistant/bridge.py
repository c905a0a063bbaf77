"""The Home Assistant bridge: discovery, entity states and commands over one MQTT connection.

Its own connection (client id `<base>-ha`), even to the sync's broker: a connection
has one last will, and Home Assistant's availability needs its own ("offline" on
`P/availability`, retained, when gated vanishes without saying goodbye).

What it publishes comes from two places and nowhere else: decisions from the journal's
commit feed (an event is announced only once its row is committed, as the status
page's live feed does), and gate states, modes and alarms from the lanes' status,
compared every `status_interval_s` and published when they change.

Commands arrive on `P/<lane>/<what>/set` from whoever may publish there: the broker's
ACL is the only authentication (docs/home-assistant.md). Each action is off until
enabled in [home_assistant.commands]; a disabled one is refused through the control
plane, which audits it like any refused action; an enabled one goes through the control
plane with actor type home_assistant. Retained command messages are refused (a stale
"OPEN" re-delivered on every reconnect must not open the gate), junk payloads are counted
and logged at a bounded rate, and a flood beyond `commands_per_minute` is dropped with
one audit row a minute saying how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gated.config import Config, MqttConfig
from gated.control import Action, Actor, ActorType, Result
from gated.errors import GatedError, SyncError
from gated.homeassistant.discovery import (
    LANE_BINARY,
    OFF,
    OFFLINE,
    ON,
    ONLINE,
    Topics,
    alert_rule_names,
    component_ids,
    discovery_payload,
    removal_payload,
)
from gated.mqttlink import MqttLink, MqttMessage, Will

__all__ = ["HomeAssistantBridge", "LaneView", "decision_event"]

log = logging.getLogger(__name__)

READ_BATCH = 200
COMMAND_MAX_BYTES = 16  # "OPEN", "CLOSE", "ON", "OFF": anything longer is junk
CONFIG_READBACK_MAX_BYTES = 512 * 1024
COMMAND_QUEUE_MAX = 32
SIGN_OFF_WAIT_S = 2.0
DROPPED_REPORT_S = 60.0
_LANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MANUAL_METHODS = frozenset({"manual_guard", "guard_button", "remote"})

# (topic level, payload) → (action, the [home_assistant.commands] key that enables it)
COMMANDS: Mapping[tuple[str, str], tuple[Action, str]] = {
    ("gate", "OPEN"): (Action.OPEN, "open"),
    ("gate", "CLOSE"): (Action.RELEASE, "hold"),
    ("hold_open", "ON"): (Action.HOLD, "hold"),
    ("hold_open", "OFF"): (Action.RELEASE, "hold"),
    ("lockdown", "ON"): (Action.LOCKDOWN_ON, "lockdown"),
    ("lockdown", "OFF"): (Action.LOCKDOWN_OFF, "lockdown"),
}


@dataclass(frozen=True, slots=True)
class LaneView:
    """What the bridge reads of one running lane: its display name and status()."""

    name: str
    status: Mapping[str, Any]


class _Commits(Protocol):
    seq: int

    async def wait(self, seq: int) -> int: ...


class JournalFeed(Protocol):
    """The journal's read side the bridge follows (gated.journal.Journal provides it)."""

    @property
    def commits(self) -> _Commits:
        """The commit feed."""
        ...

    async def after(self, seq: int, limit: int = ...) -> list[dict[str, Any]]:
        """Rows of both streams after seq, oldest first."""
        ...


class Control(Protocol):
    """The control plane's actions the bridge uses (gated.control.ControlPlane)."""

    async def open(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """Open once."""
        ...

    async def hold(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """Hold open."""
        ...

    async def release(self, actor: Actor, lane: str, reason: str | None = None) -> Result:
        """End a hold."""
        ...

    async def lockdown(self, actor: Actor, on: bool, lane: str | None = None,
                       reason: str | None = None) -> Result:
        """Lockdown on or off."""
        ...

    async def refuse(self, action: Action, actor: Actor, why: str,
                     lane: str | None = None) -> Result:
        """Refuse and audit."""
        ...


Lanes = Callable[[], Mapping[str, LaneView]]
Names = Callable[[str | None, str | None], Mapping[str, str]]
Audit = Callable[..., Awaitable[int]]


def decision_event(row: Mapping[str, Any], *, expose_plates: bool, expose_names: bool,
                   names: Names | None = None) -> dict[str, Any]:
    """The event entity's payload for a committed access row (personal data as configured)."""
    reason = str(row.get("decision_reason"))
    if reason == "unread_plate":
        event_type = "unread"
    elif row.get("authorization_method") in _MANUAL_METHODS:
        event_type = "manual"
    elif row.get("event_type") == "denied":
        event_type = "denied"
    else:
        event_type = "allowed"
    meta = row.get("metadata")
    match = meta.get("match") if isinstance(meta, dict) else None
    created = row.get("created_at")
    payload: dict[str, Any] = {
        "event_type": event_type,
        "lane": row.get("access_point"),
        "reason": reason,
        "direction": row.get("direction"),
        "match_kind": match.get("kind") if isinstance(match, dict) else None,
        "confidence": row.get("confidence_score"),
        "gate_opened": row.get("gate_opened"),
        "resident_id": row.get("resident_id"),
        "pass_id": row.get("pass_id"),
        "event_id": row.get("event_id"),
        "at": _iso(created) if isinstance(created, int | float) else None,
    }
    if expose_plates:
        payload["plate"] = row.get("vehicle_plate")
    if expose_names:
        payload["visitor_name"] = row.get("visitor_name")
        payload["authorized_by"] = row.get("authorized_by")
        if names is not None and (row.get("resident_id") or row.get("pass_id")):
            with contextlib.suppress(Exception):  # a name lookup must not stop the event
                payload.update({f"{k}_name": v for k, v in
                                names(row.get("resident_id"), row.get("pass_id")).items()})
    return payload


def lane_states(topics: Topics, lane_id: str, status: Mapping[str, Any]) -> dict[str, str]:
    """Retained state topic → payload for one lane's status()."""
    gate = str(status.get("gate", "unknown"))
    alarms = set(status.get("alarms") or ())
    mode = status.get("mode")
    states = {
        # "None" is the cover's documented payload for "unknown" (no reading yet).
        topics.lane(lane_id, "gate"): gate if gate != "unknown" else "None",
        topics.lane(lane_id, "lockdown"): ON if mode == "lockdown" else OFF,
        topics.lane(lane_id, "hold_open"): ON if mode == "hold_open" else OFF,
        topics.lane(lane_id, "relay_fault"): ON if status.get("relay_fault") else OFF,
    }
    for alarm in LANE_BINARY:
        if alarm != "relay_fault":
            states[topics.lane(lane_id, alarm)] = ON if alarm in alarms else OFF
    return states


class HomeAssistantBridge:
    """Announces the device to Home Assistant, keeps its entities current, takes commands."""

    name = "home-assistant"

    def __init__(
        self,
        cfg: Config,
        *,
        control: Control,
        journal: JournalFeed,
        lanes: Lanes,
        audit: Audit,
        problems: Callable[[], list[str]] | None = None,
        names: Names | None = None,
        on_link_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.ha = cfg.home_assistant
        mqtt_cfg = self.ha.mqtt or cfg.mqtt
        if mqtt_cfg is None:
            raise GatedError("home_assistant: no MQTT broker configured")
        self.topics = Topics.of(self.ha, cfg.site)
        self._control = control
        self._journal = journal
        self._lanes = lanes
        self._audit = audit
        self._problems = problems
        self._names = names
        self._on_link_state = on_link_state
        client_id = (mqtt_cfg.client_id or f"gated-{cfg.site.device_id}") + "-ha"
        self.link = MqttLink(
            mqtt_cfg, client_id, name="home-assistant", on_state=self._link_state,
            will=Will(self.topics.availability, OFFLINE.encode(), qos=1, retain=True))
        self.actor = Actor(ActorType.HOME_ASSISTANT, id="mqtt",
                           address=_address(mqtt_cfg))
        self._announce = asyncio.Event()  # (re)send discovery, availability and every state
        self._poke = asyncio.Event()  # compare the lanes' states now (after a command)
        self._retained: dict[str, str] = {}  # state topic → the payload last published
        self._known: dict[str, str] = {}  # component id → platform, published or read back
        self._announced_lanes: frozenset[str] | None = None  # lanes of the last discovery
        self._commands: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue(COMMAND_QUEUE_MAX)
        self._window_start = 0.0
        self._window_count = 0
        self.dropped = 0  # commands dropped by the rate limit or a full queue, not yet audited
        self.counts: dict[str, int] = {"events": 0, "events_skipped": 0, "commands": 0,
                                       "announcements": 0}
        self.link.subscribe(self.topics.ha_status, self._on_ha_status)
        self.link.subscribe(self.topics.config, self._on_config_readback)
        if self.ha.discovery:
            self.link.subscribe(self.topics.command_filter, self._on_command)

    # --- the service ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep Home Assistant current until cancelled; says "offline" at the end."""
        link = asyncio.create_task(self.link.run(), name="home-assistant-link")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._announcer())
                if self.ha.discovery:
                    tg.create_task(self._follow_commits())
                    tg.create_task(self._watch_states())
                    tg.create_task(self._take_commands())
                    tg.create_task(self._report_dropped())
                await _until_link_ends(link)
        finally:
            await self._sign_off()
            link.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link

    async def _sign_off(self) -> None:
        """Publish "offline" ourselves on a clean stop (the last will covers the rest)."""
        if not self.link.stats.connected:
            return
        with contextlib.suppress(SyncError, TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(
                self.link.publish(self.topics.availability, OFFLINE, qos=1, retain=True),
                SIGN_OFF_WAIT_S)

    def _link_state(self, up: bool, detail: str) -> None:
        if up:
            self._announce.set()
        if self._on_link_state is not None:
            self._on_link_state(up, detail)

    # --- discovery -------------------------------------------------------------------

    async def _announcer(self) -> None:
        while True:
            await self._announce.wait()
            self._announce.clear()
            if not self.link.stats.connected:
                continue
            try:
                self._announce_now()
            except SyncError as err:  # the link went down meanwhile: the reconnect repeats it
                log.info("home assistant: announcement not sent: %s", err)

    def _announce_now(self) -> None:
        """Discovery (or its removal), availability and every state, all retained."""
        self.counts["announcements"] += 1
        if not self.ha.discovery:
            self.link.publish_nowait(self.topics.config, removal_payload(), qos=1, retain=True)
            log.info("home assistant: discovery disabled: removal published on %s",
                     self.topics.config)
            return
        lanes = self._lanes()
        if not lanes and self.cfg.lanes:
            # The lanes are being built (start-up, a reload): announcing none now would
            # delete their entities from Home Assistant for a moment. _watch_states
            # announces once they run.
            return
        self._announced_lanes = frozenset(lanes)
        removed = dict(self._known)
        payload = discovery_payload(self.ha, self.cfg.site,
                                    {lane_id: view.name for lane_id, view in lanes.items()},
                                    alert_rules=alert_rule_names(), removed=removed)
        current = component_ids(payload)
        gone = {cid: p for cid, p in removed.items() if cid not in current}
        self._known = current
        self.link.publish_nowait(self.topics.config, json.dumps(payload, separators=(",", ":")),
                                 qos=1, retain=True)
        if gone:
            log.info("home assistant: removed %d component(s) no longer configured: %s",
                     len(gone), ", ".join(sorted(gone)))
        self.link.publish_nowait(self.topics.availability, ONLINE, qos=1, retain=True)
        self._retained.clear()  # every state again: Home Assistant may have lost them
        self._publish_states(lanes)

    def _on_ha_status(self, message: MqttMessage) -> None:
        """Home Assistant's birth message ("online") asks every integration to announce again."""
        text = message.payload[:16].decode("utf-8", "replace").strip()
        if text == ONLINE and len(message.payload) <= 16:
            log.info("home assistant came online: announcing the device again")
            self._announce.set()
        elif text != OFFLINE or len(message.payload) > 16:
            self.link.malformed(self.topics.ha_status, "expected online or offline")

    def _on_config_readback(self, message: MqttMessage) -> None:
        """Our retained discovery from an earlier run: components it had that we no longer have."""
        if not message.retain or not message.payload:
            return  # our own publication echoed live, or nothing announced before
        if len(message.payload) > CONFIG_READBACK_MAX_BYTES:
            self.link.malformed(self.topics.config, "retained discovery message too large")
            return
        try:
            previous = component_ids(json.loads(message.payload))
        except (ValueError, AttributeError):
            self.link.malformed(self.topics.config, "retained discovery message is not JSON")
            return
        stale = {cid: p for cid, p in previous.items() if cid not in self._known}
        if stale and self.ha.discovery:
            self._known = {**stale, **self._known}
            self._announce.set()

    # --- states --------------------------------------------------------------------

    async def _watch_states(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.ha.status_interval_s)
            self._poke.clear()
            if not self.link.stats.connected:
                continue
            try:
                lanes = self._lanes()
                if lanes and frozenset(lanes) != self._announced_lanes:
                    self._announce.set()  # lanes started, or a reload changed them
                    continue
                self._publish_states(lanes)
            except SyncError as err:
                log.debug("home assistant: states not published: %s", err)

    def _publish_states(self, lanes: Mapping[str, LaneView]) -> None:
        states: dict[str, str] = {}
        for lane_id, view in lanes.items():
            states.update(lane_states(self.topics, lane_id, view.status))
        problems = sorted(self._problems()) if self._problems is not None else []
        states[self.topics.problem] = ON if problems else OFF
        states[f"{self.topics.problem}/attributes"] = json.dumps({"components": problems})
        for topic, payload in states.items():
            if self._retained.get(topic) != payload:
                self.link.publish_nowait(topic, payload, qos=1, retain=True)
                self._retained[topic] = payload

    # --- decisions -----------------------------------------------------------------

    async def _follow_commits(self) -> None:
        commits = self._journal.commits
        seq = commits.seq  # from now on: Home Assistant is told what happens, not history
        while True:
            try:
                await commits.wait(seq + 1)
            except EOFError:
                return
            while True:
                rows = await self._journal.after(seq, READ_BATCH)
                if not rows:
                    break
                seq = rows[-1]["seq"]
                for row in rows:
                    if row.get("stream") == "access":
                        self._publish_decision(row)
                if len(rows) < READ_BATCH:
                    break
            self._poke.set()  # a decision moved the gate: its state follows at once

    def _publish_decision(self, row: Mapping[str, Any]) -> None:
        if not self.link.stats.connected:
            # Not queued: paho would hold them in memory for as long as the broker is gone.
            # The journal keeps every event; Home Assistant is told what happens while up.
            self.counts["events_skipped"] += 1
            return
        lane_id = str(row.get("access_point"))
        event = decision_event(row, expose_plates=self.ha.expose_plates,
                               expose_names=self.ha.expose_names, names=self._names)
        try:
            self.link.publish_nowait(self.topics.lane(lane_id, "decision"),
                                     json.dumps(event, default=str), qos=1, retain=False)
            if self.ha.expose_plates and event.get("plate"):
                attributes = {k: v for k, v in event.items() if k != "plate"}
                attributes["decision"] = attributes.pop("event_type")
                self.link.publish_nowait(self.topics.lane(lane_id, "plate/attributes"),
                                         json.dumps(attributes, default=str), qos=1, retain=True)
                self.link.publish_nowait(self.topics.lane(lane_id, "plate"), str(event["plate"]),
                                         qos=1, retain=True)
        except SyncError as err:
            self.counts["events_skipped"] += 1
            log.debug("home assistant: decision not published: %s", err)
            return
        self.counts["events"] += 1

    # --- commands ------------------------------------------------------------------

    def _on_command(self, message: MqttMessage) -> None:
        """A message on P/<lane>/<what>/set: checked here, carried out by _take_commands."""
        rest = message.topic[len(self.topics.prefix) + 1:]
        lane_id, _, what = rest.removesuffix("/set").partition("/")
        payload = message.payload
        text = (payload.decode("utf-8", "replace").strip().upper()
                if len(payload) <= COMMAND_MAX_BYTES else "")
        if not _LANE_ID.fullmatch(lane_id) or (what, text) not in COMMANDS:
            self.link.malformed(self.topics.command_filter,
                                f"unknown command {what[:24]!r} {payload[:24]!r}")
            return
        if not self._take_one():
            return
        try:
            self._commands.put_nowait((lane_id, f"{what}:{text}", message.retain))
        except asyncio.QueueFull:
            self.dropped += 1

    def _take_one(self) -> bool:
        """The rate limit: at most commands_per_minute in any one-minute window."""
        now = time.monotonic()
        if now - self._window_start >= 60.0:
            self._window_start, self._window_count = now, 0
        if self._window_count >= self.ha.commands_per_minute:
            self.dropped += 1
            return False
        self._window_count += 1
        return True

    async def _take_commands(self) -> None:
        while True:
            lane_id, key, retained = await self._commands.get()
            what, _, text = key.partition(":")
            action, enabling_key = COMMANDS[(what, text)]
            self.counts["commands"] += 1
            try:
                result = await self._carry_out(lane_id, action, enabling_key, retained)
            except GatedError as err:  # the journal refused the audit row: logged, not fatal
                log.error("home assistant: %s on %s not audited: %s", action.value, lane_id, err)
                continue
            log.info("home assistant: %s on %s: %s (%s)", action.value, lane_id,
                     result.outcome.value, result.message)
            self._poke.set()

    async def _carry_out(self, lane_id: str, action: Action, enabling_key: str,
                         retained: bool) -> Result:
        actor = self.actor
        if retained:
            return await self._control.refuse(
                action, actor, "retained command message: stale, never carried out", lane_id)
        if not getattr(self.ha.commands, enabling_key):
            return await self._control.refuse(
                action, actor, f"home_assistant.commands.{enabling_key} is off", lane_id)
        reason = "from Home Assistant"
        if action == Action.OPEN:
            return await self._control.open(actor, lane_id, reason)
        if action == Action.HOLD:
            return await self._control.hold(actor, lane_id, reason)
        if action == Action.RELEASE:
            return await self._control.release(actor, lane_id, reason)
        return await self._control.lockdown(actor, action == Action.LOCKDOWN_ON, lane_id, reason)

    async def _report_dropped(self) -> None:
        """One audit row a minute for commands dropped by the rate limit, not one each."""
        while True:
            await asyncio.sleep(DROPPED_REPORT_S)
            await self.report_dropped()

    async def report_dropped(self) -> None:
        """Audit (and log) the commands dropped since the last report, if any."""
        if self.dropped:
            count, self.dropped = self.dropped, 0
            log.warning("home assistant: %d command(s) dropped: more than %d a minute",
                        count, self.ha.commands_per_minute)
            with contextlib.suppress(GatedError):
                await self._audit(
                    "home_assistant_commands_dropped", "control",
                    **self.actor.audit_fields(), status="failure",
                    error_message=f"{count} command(s) over {self.ha.commands_per_minute} "
                                  "a minute dropped",
                    metadata={"dropped": count,
                              "commands_per_minute": self.ha.commands_per_minute})


async def _until_link_ends(link: asyncio.Task[None]) -> None:
    """Wait on the link task; its failure ends the bridge (the supervisor restarts it).

    Shielded: cancelling the bridge must leave the link up long enough to say "offline".
    """
    await asyncio.shield(link)


def _address(cfg: MqttConfig) -> str:
    return f"mqtt://{cfg.host}:{cfg.port}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
