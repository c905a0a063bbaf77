"""The daemon's Home Assistant integration against a real Mosquitto, as Home Assistant sees it.

In-process Daemon (real journal, control plane, gate machine; a fake relay and gpiozero
mock pins for the position switch), a paho subscriber standing in for Home Assistant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.app import Daemon
from gated.config import parse_config
from gated.control import Actor, ActorType
from gated.health import Health, SystemdNotifier
from gated.model import Mode, PlateRead
from gated.rules.files import import_rules
from gated.rules.store import RuleStore
from tests.homeassistant.conftest import Subscriber, validate
from tests.support.broker import Broker

CONFIG_TOPIC = "homeassistant/device/d-test/config"
P = "gated/d-test"
SWITCH_PIN = 5
RULES = {
    "format": "gated-rules", "format_version": 1,
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"}],
}


def site_config(tmp_path: Path, broker: Broker, **ha: Any) -> dict[str, Any]:
    """Two fake-relay lanes (one with a position switch) and [home_assistant] enabled."""
    return {
        "site": {"tenant_id": "t-test", "site_id": "s-test", "device_id": "d-test"},
        "journal": {"path": str(tmp_path / "journal.sqlite3"),
                    "snapshot_dir": str(tmp_path / "snapshots")},
        "rules": {"path": str(tmp_path / "rules.sqlite3")},
        "control": {"socket": ""},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5},
        "lanes": [
            {"id": "main-in", "name": "Main gate", "dedup_window_s": 0,
             "relay": {"kind": "fake", "pulse_ms": 100}, "sensors": {"open_time_s": 0.4}},
            {"id": "side", "dedup_window_s": 0, "relay": {"kind": "fake", "pulse_ms": 100},
             "sensors": {"closed_pin": SWITCH_PIN, "open_time_s": 0.4,
                         "held_open_alarm_s": 600}},
        ],
        "home_assistant": {"enabled": True, "status_interval_s": 0.05, **ha},
    }


@dataclass
class Live:
    """A running daemon and the subscriber standing in for Home Assistant."""

    daemon: Daemon
    ha: Subscriber
    pins: MockFactory
    journal: Path

    def audits(self, action: str) -> list[dict[str, Any]]:
        """Audit rows with this action, oldest first."""
        conn = sqlite3.connect(self.journal)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(
                "SELECT * FROM audit_logs WHERE action = ? ORDER BY seq", (action,))]
        finally:
            conn.close()

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 15.0) -> Any:
        """Poll predicate without blocking the daemon's loop."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(sqlite3.OperationalError):
                value = predicate()
                if value:
                    return value
            if time.monotonic() >= deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)

    async def wait(self, topic: str, predicate: Callable[..., bool] = lambda m: True) -> Any:
        """The first message on topic satisfying predicate (waited for in a thread)."""
        return await asyncio.to_thread(self.ha.wait, topic, predicate)

    async def wait_on(self, subscriber: Subscriber, topic: str) -> Any:
        """The first message another subscriber received on topic."""
        return await asyncio.to_thread(subscriber.wait, topic)

    async def state(self, topic: str, payload: str) -> None:
        """Until the latest state on topic is payload."""
        await asyncio.to_thread(self.ha.wait_state, topic, payload)


@contextlib.asynccontextmanager
async def live_daemon(tmp_path: Path, broker: Broker, make_subscriber: Callable[..., Subscriber],
                      **ha: Any) -> AsyncIterator[Live]:
    """Start the daemon with the subscriber already listening; stop it at the end."""
    cfg = parse_config(site_config(tmp_path, broker, **ha))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    with RuleStore(cfg.rules.path) as store:
        import_rules(store, rules, actor="test")
    subscriber = make_subscriber("homeassistant/#", "gated/#")
    pins = MockFactory()
    daemon = Daemon(cfg, pin_factory=pins, health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    live = Live(daemon, subscriber, pins, Path(cfg.journal.path))
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        # The side gate is closed (its switch to ground) once its input is set up: the
        # pull-up would undo a level driven before.
        await live.until(lambda: pins.pin(SWITCH_PIN).when_changed)
        pins.pin(SWITCH_PIN).drive_low()
        await live.wait(CONFIG_TOPIC)
        await live.state(f"{P}/availability", "online")
        yield live
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def test_discovery_payload_as_a_subscriber_sees_it(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    async with live_daemon(tmp_path, broker, subscriber_factory) as live:
        config = validate("device", live.ha.last(CONFIG_TOPIC).json())  # type: ignore[union-attr]
        cmps = config["cmps"]
        assert config["dev"]["ids"] == ["gated_d-test"] and config["o"]["name"] == "gated"
        assert config["availability_topic"] == f"{P}/availability"
        platforms = {cid: c["p"] for cid, c in cmps.items()}
        for lane in ("main-in", "side"):
            key = lane.replace("-", "_")
            assert platforms[f"{key}_gate"] == "cover"
            assert cmps[f"{key}_gate"]["device_class"] == "gate"
            # Commands are off by default: no command topic, the switches only show state.
            assert "command_topic" not in cmps[f"{key}_gate"]
            assert platforms[f"{key}_lockdown"] == platforms[f"{key}_hold_open"] == "binary_sensor"
            assert cmps[f"{key}_decision"]["event_types"] == ["allowed", "denied", "unread",
                                                             "manual"]
            assert platforms[f"{key}_plate"] == "sensor"
            for alarm in ("forced_open", "held_open", "no_movement", "relay_fault"):
                assert platforms[f"{key}_{alarm}"] == "binary_sensor"
        assert cmps["main_in_gate"]["name"] == "Main gate gate"
        assert platforms["alert"] == "event" and cmps["alert"]["state_topic"] == f"{P}/alert"
        assert platforms["problem"] == "binary_sensor"
        unique = [c["unique_id"] for c in cmps.values()]
        assert len(unique) == len(set(unique))

        # Retained, so a Home Assistant that starts later finds it (and the availability).
        late = Subscriber(broker, CONFIG_TOPIC, f"{P}/availability", f"{P}/main-in/gate")
        try:
            assert (await live.wait_on(late, CONFIG_TOPIC)).retain
            assert (await live.wait_on(late, f"{P}/availability")).payload == b"online"
            # No order yet and no switch on main-in: the cover's "unknown".
            assert (await live.wait_on(late, f"{P}/main-in/gate")).payload == b"None"
        finally:
            late.close()
        await live.state(f"{P}/side/gate", "closed")  # the switch reads closed


async def test_states_follow_a_read_a_guard_action_and_a_forced_open_alarm(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    async with live_daemon(tmp_path, broker, subscriber_factory) as live:
        lane = live.daemon.lane("main-in")

        # A resident's read: the decision event, the last plate, the gate opening then closed.
        lane.on_read(PlateRead("main-in", "AB123CD", "cam", time.time(), time.monotonic(), 0.93))
        allowed = (await live.wait(f"{P}/main-in/decision")).json()
        validate("decision", allowed)
        assert allowed["event_type"] == "allowed" and allowed["plate"] == "AB123CD"
        assert allowed["reason"] == "resident" and allowed["match_kind"] == "exact"
        assert allowed["resident_id"] == "r-1" and allowed["confidence"] == pytest.approx(0.93)
        assert "visitor_name" not in allowed and "resident_name" not in allowed  # names off
        await live.state(f"{P}/main-in/plate", "AB123CD")
        attributes = live.ha.last(f"{P}/main-in/plate/attributes").json()  # type: ignore[union-attr]
        assert attributes["decision"] == "allowed" and attributes["lane"] == "main-in"
        await live.wait(f"{P}/main-in/gate", lambda m: m.payload == b"opening")
        await live.state(f"{P}/main-in/gate", "closed")
        assert not live.ha.on(f"{P}/main-in/decision")[0].retain

        # An unknown plate: denied; a read without a plate: unread.
        lane.on_read(PlateRead("main-in", "ZZ999ZZ", "cam", time.time(), time.monotonic(), 0.9))
        denied = (await live.wait(f"{P}/main-in/decision",
                                  lambda m: m.json()["event_type"] == "denied")).json()
        assert denied["plate"] == "ZZ999ZZ" and denied["reason"] == "unknown_plate"

        # A guard on the status page opens it: a "manual" event, the cover moves again.
        await live.state(f"{P}/side/forced_open", "OFF")
        live.ha.clear()
        result = await live.daemon.control.open(  # type: ignore[union-attr]
            Actor(ActorType.GUARD, id="guard-1"), "main-in", "delivery")
        assert result.ok
        manual = (await live.wait(f"{P}/main-in/decision")).json()
        assert manual["event_type"] == "manual" and manual["reason"] == "guard_override"
        assert "authorized_by" not in manual  # a guard's login is a name: off by default
        await live.wait(f"{P}/main-in/gate", lambda m: m.payload == b"opening")
        await live.state(f"{P}/main-in/gate", "closed")

        # The side gate is pushed open with no order: forced_open, then cleared on closing.
        live.pins.pin(SWITCH_PIN).drive_high()
        await live.state(f"{P}/side/forced_open", "ON")
        assert live.ha.last(f"{P}/side/gate").payload in (b"opening", b"open")  # type: ignore[union-attr]
        assert await live.until(lambda: live.audits("gate_alarm"))
        live.pins.pin(SWITCH_PIN).drive_low()
        await live.state(f"{P}/side/forced_open", "OFF")
        await live.state(f"{P}/side/gate", "closed")


async def test_each_command_only_when_enabled_and_audited_either_way(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    async with live_daemon(tmp_path, broker, subscriber_factory,
                           commands={"open": True, "hold": False, "lockdown": True}) as live:
        config = validate("device", live.ha.last(CONFIG_TOPIC).json())  # type: ignore[union-attr]
        gate = config["cmps"]["main_in_gate"]
        # What is enabled is offered, what is not is hidden: open yes, close (= release) no.
        assert gate["command_topic"] == f"{P}/main-in/gate/set"
        assert gate["payload_open"] == "OPEN" and gate["payload_close"] is None
        assert config["cmps"]["main_in_lockdown"]["p"] == "switch"
        assert config["cmps"]["main_in_hold_open"]["p"] == "binary_sensor"
        lane = live.daemon.lane("main-in")
        relay = live.daemon.generation.relays["main-in"]  # type: ignore[union-attr]

        # open (enabled): through the control plane, actor home_assistant, the relay pulses.
        live.ha.publish(f"{P}/main-in/gate/set", "OPEN")
        [opened] = await live.until(lambda: live.audits("gate_open"))
        assert opened["actor_type"] == "home_assistant" and opened["status"] == "success"
        assert opened["resource_id"] == "main-in"
        assert relay.pulses_ms == [100]
        manual = (await live.wait(f"{P}/main-in/decision")).json()
        assert manual["event_type"] == "manual" and manual["reason"] == "remote_command"

        # hold (disabled): refused, audited, nothing moves; also the cover's CLOSE.
        live.ha.publish(f"{P}/main-in/hold_open/set", "ON")
        [held] = await live.until(lambda: live.audits("gate_hold"))
        assert held["actor_type"] == "home_assistant" and held["status"] == "failure"
        assert json.loads(held["metadata"])["outcome"] == "refused"
        assert "home_assistant.commands.hold is off" in held["error_message"]
        live.ha.publish(f"{P}/main-in/gate/set", "CLOSE")
        [released] = await live.until(lambda: live.audits("gate_release"))
        assert json.loads(released["metadata"])["outcome"] == "refused"
        assert lane.mode == Mode.NORMAL and relay.pulses_ms == [100]

        # lockdown (enabled): on, the switch follows; an open is then refused by the plane.
        live.ha.publish(f"{P}/main-in/lockdown/set", "ON")
        await live.until(lambda: lane.mode == Mode.LOCKDOWN)
        await live.state(f"{P}/main-in/lockdown", "ON")
        live.ha.publish(f"{P}/main-in/gate/set", "OPEN")
        refused = await live.until(lambda: live.audits("gate_open")[1:])
        assert "lockdown" in refused[0]["error_message"] and relay.pulses_ms == [100]
        live.ha.publish(f"{P}/main-in/lockdown/set", "OFF")
        await live.state(f"{P}/main-in/lockdown", "OFF")
        [on, off] = await live.until(
            lambda: live.audits("lockdown_on") + live.audits("lockdown_off"))
        assert on["actor_type"] == off["actor_type"] == "home_assistant"
        assert on["status"] == off["status"] == "success"

        # Hostile payloads: counted and dropped, never audited, the daemon carries on.
        assert live.daemon.home_assistant is not None
        link = live.daemon.home_assistant.link
        before = sum(link.stats.malformed.values())
        for topic, payload in [
            (f"{P}/main-in/gate/set", b"EXPLODE"), (f"{P}/main-in/gate/set", b"\xff\xfe"),
            (f"{P}/main-in/gate/set", b"OPEN" * 10_000), (f"{P}/main-in/nothing/set", b"ON"),
            (f"{P}/../gate/set", b"OPEN"), ("homeassistant/status", b"\x00junk" * 1000),
        ]:
            live.ha.publish(topic, payload)
        await live.until(lambda: sum(link.stats.malformed.values()) >= before + 6)
        await asyncio.sleep(0.3)
        assert len(live.audits("gate_open")) == 2 and relay.pulses_ms == [100]

        # The link is in the metrics beside the others.
        metrics = live.daemon.metrics_text()
        assert 'gated_mqtt_connected{link="home-assistant"} 1' in metrics

        # Home Assistant's birth message: the device is announced again.
        count = len(live.ha.on(CONFIG_TOPIC))
        live.ha.publish("homeassistant/status", "online")
        await live.until(lambda: len(live.ha.on(CONFIG_TOPIC)) > count)
        await live.state(f"{P}/availability", "online")


async def test_a_retained_command_is_stale_refused_and_audited(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    # Left on the broker before gated connects: delivered with the retain flag on subscribe,
    # as it would be again after every reconnect. It must never open the gate.
    publisher = subscriber_factory()
    publisher.publish(f"{P}/main-in/gate/set", "OPEN", retain=True)
    async with live_daemon(tmp_path, broker, subscriber_factory,
                           commands={"open": True}) as live:
        [stale] = await live.until(lambda: live.audits("gate_open"))
        assert stale["actor_type"] == "home_assistant" and stale["status"] == "failure"
        assert "retained command message" in stale["error_message"]
        assert live.daemon.generation.relays["main-in"].pulses_ms == []  # type: ignore[union-attr]
        # The same command sent live (Home Assistant's own, retain off) is carried out.
        live.ha.publish(f"{P}/main-in/gate/set", "OPEN")
        await live.until(lambda: len(live.audits("gate_open")) == 2)
        assert live.audits("gate_open")[1]["status"] == "success"


async def test_a_command_flood_is_cut_to_the_rate_and_audited_once(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    async with live_daemon(tmp_path, broker, subscriber_factory, commands_per_minute=3,
                           commands={"lockdown": True}) as live:
        bridge = live.daemon.home_assistant
        assert bridge is not None
        for i in range(20):
            live.ha.publish(f"{P}/main-in/lockdown/set", "ON" if i % 2 == 0 else "OFF")
        await live.until(lambda: bridge.dropped == 17)
        await asyncio.sleep(0.3)
        done = live.audits("lockdown_on") + live.audits("lockdown_off")
        assert len(done) == 3  # the first three, each through the control plane
        await bridge.report_dropped()
        [dropped] = live.audits("home_assistant_commands_dropped")
        assert dropped["actor_type"] == "home_assistant" and dropped["status"] == "failure"
        assert json.loads(dropped["metadata"])["dropped"] == 17
        await bridge.report_dropped()  # nothing new: no second row
        assert len(live.audits("home_assistant_commands_dropped")) == 1


async def test_a_lane_taken_out_is_removed_and_discovery_off_removes_the_device(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    async with live_daemon(tmp_path, broker, subscriber_factory):
        pass
    # The next start has only main-in: side's components go, read back from the broker.
    cfg = site_config(tmp_path, broker)
    cfg["lanes"] = cfg["lanes"][:1]
    daemon = Daemon(parse_config(cfg), health=Health(SystemdNotifier(env={})))
    ha = subscriber_factory(CONFIG_TOPIC)
    ha.clear()
    task = asyncio.create_task(daemon.run())
    try:
        message = await asyncio.to_thread(
            ha.wait, CONFIG_TOPIC, lambda m: "side_gate" in m.json()["cmps"]
            and m.json()["cmps"]["side_gate"] == {"p": "cover"})
        cmps = validate("device", message.json())["cmps"]
        assert cmps["side_forced_open"] == {"p": "binary_sensor"}
        assert cmps["main_in_gate"]["p"] == "cover" and len(cmps["main_in_gate"]) > 1
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0

    # discovery = false: an empty retained config, the device is gone from Home Assistant.
    cfg["home_assistant"]["discovery"] = False
    daemon = Daemon(parse_config(cfg), health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.to_thread(ha.wait, CONFIG_TOPIC, lambda m: m.payload == b"")
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    late = subscriber_factory(CONFIG_TOPIC)
    await asyncio.sleep(0.5)
    assert late.on(CONFIG_TOPIC) == []  # nothing retained any more
