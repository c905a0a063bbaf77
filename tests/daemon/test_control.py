"""Controlling the running daemon: SIGHUP config reload, rule-set hot reload, hold-open lanes,
guard buttons, the systemd watchdog.

Subprocess tests run `gated run` with LCUS relays on pty pairs; the guard-button test runs the
in-process Daemon with gpiozero MockFactory pins and a fake relay. No real GPIO, relay board
or systemd was involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier
from gated.model import Mode, PlateRead
from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_OFF,
    LCUS_ON,
    RESIDENT_RULES,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_frames,
    lcus_relay,
    post_until_accepted,
    running,
    wait_audit,
    wait_until,
)

PATH = CAMERA_PATH
LISTENING = "listening on 127.0.0.1"  # logged each time a generation's listener is bound

RULES = RESIDENT_RULES


def lane_config(port: PtyPort, *, mode: str = "normal", pulse_ms: int = 200) -> str:
    """One inbound lane: an LCUS relay on the pty, a generic JSON camera push."""
    return generic_lane(lcus_relay(port, pulse_ms), extra=f'mode = "{mode}"')


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def row_for(site: Site, plate: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The newest access row for this plate, waiting for it to be journaled."""

    def newest() -> dict[str, Any] | None:
        rows = [r for r in site.rows() if r["vehicle_plate"] == plate]
        return rows[-1] if rows else None

    row = wait_until(newest, timeout_s)
    assert row is not None, f"no journal row for {plate}"
    return row


def push(site: Site, plate: str, confidence: float = 0.95) -> dict[str, Any]:
    """Push a read (waiting for the listener if a new generation is starting); its row."""
    before = len([r for r in site.rows() if r["vehicle_plate"] == plate])
    assert post_until_accepted(site.listener_port, PATH, plate, confidence=confidence) == 200
    wait_until(lambda: len([r for r in site.rows() if r["vehicle_plate"] == plate]) > before)
    return row_for(site, plate)


def verify_journal(site: Site) -> None:
    """`gated journal verify` must accept the journal."""
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0, result.stdout + result.stderr


# --- 5. SIGHUP: config reload ---------------------------------------------------------


@pytest.mark.slow
def test_sighup_reloads_a_valid_config_and_refuses_a_broken_one(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    site.write_config(lane_config(relay_port), policy="min_confidence = 0.5")
    site.import_rules(RULES)
    with running(site) as daemon:
        assert daemon.wait_log(LISTENING)
        relay_port.drain()
        row = push(site, "AB123CD", confidence=0.7)
        assert row["decision_reason"] == "resident"
        assert relay_port.read(8) == LCUS_ON + LCUS_OFF

        # A stricter policy, applied by SIGHUP without a restart.
        site.write_config(lane_config(relay_port), policy="min_confidence = 0.9")
        daemon.proc.send_signal(signal.SIGHUP)
        [reload] = wait_audit(site, "config_reload")
        assert reload["status"] == "success"
        assert json.loads(reload["old_values"])["policy"]["min_confidence"] == 0.5
        assert json.loads(reload["new_values"])["policy"]["min_confidence"] == 0.9
        assert daemon.wait_log(LISTENING, count=2), daemon.log()  # the new generation runs
        # The relay's config is unchanged: the new generation keeps the open board
        # (nothing is sent to it), so a reload never glitches a gate.
        assert relay_port.drain() == b""

        assert push(site, "GH456JK", confidence=0.7)["decision_reason"] == "low_confidence"
        assert relay_port.drain(0.3) == b""
        assert push(site, "MN789PQ", confidence=0.95)["decision_reason"] == "resident"
        assert relay_port.read(8) == LCUS_ON + LCUS_OFF

        # A broken config: refused, audited with the key, the running config stays.
        site.config.write_text(site.config.read_text().replace("pulse_ms = 200", "pulse_ms = 0"))
        daemon.proc.send_signal(signal.SIGHUP)
        reloads = wait_audit(site, "config_reload", count=2)
        assert len(reloads) == 2 and reloads[1]["status"] == "failure"
        assert "lanes[0].relay.pulse_ms" in reloads[1]["error_message"]
        assert daemon.alive()
        time.sleep(0.6)  # past the dedup window of the earlier reads of these plates
        assert push(site, "AB123CD", confidence=0.7)["decision_reason"] == "low_confidence"
        assert push(site, "GH456JK", confidence=0.95)["decision_reason"] == "resident"
        assert relay_port.read(8) == LCUS_ON + LCUS_OFF
        assert daemon.log().count(LISTENING) == 2  # no generation was started for it
        status = daemon.terminate()
    assert status == 0, daemon.log()
    verify_journal(site)


# --- hold-open lanes keep their serial relay held ----------------------------------------


@pytest.mark.slow
def test_hold_open_lane_holds_its_serial_relay_at_start_reload_and_reconnect(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    site.write_config(lane_config(relay_port, mode="hold_open"))
    site.import_rules(RULES)
    with running(site) as daemon:
        # The board opens released, then the lane's hold-open energises it.
        assert relay_port.read(8) == LCUS_OFF + LCUS_ON, daemon.log()
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_audit(site, "config_reload")[0]["status"] == "success"
        assert daemon.wait_log(LISTENING, count=2), daemon.log()
        # The relay's config did not change: the new generation takes the board over
        # as it is, so the held gate is never dropped (at most "on" is said again).
        frames = lcus_frames(relay_port.drain(1.0))
        assert LCUS_OFF not in frames and set(frames) <= {LCUS_ON}, daemon.log()
        assert relay_port.drain(0.3) == b""  # and it stays held

        # Unplugged and plugged back: the reconnect releases, then the lane holds again.
        relay_port.unplug()
        assert wait_audit(site, "relay_fault"), daemon.log()
        relay_port.replug()
        assert wait_audit(site, "relay_recovered", timeout_s=15), daemon.log()
        assert relay_port.read(8, timeout_s=5) == LCUS_OFF + LCUS_ON, daemon.log()
        status = daemon.terminate()
        assert lcus_frames(relay_port.drain(0.3))[-1] == LCUS_OFF  # safe state on the way out
    assert status == 0, daemon.log()


# --- 6. rule-set hot reload ---------------------------------------------------------------


@pytest.mark.slow
def test_rules_imported_while_running_take_effect(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    site.write_config(lane_config(relay_port))
    site.import_rules(RULES)
    with running(site) as daemon:
        assert daemon.wait_log(LISTENING)
        relay_port.drain()
        first = push(site, "NW2024X")
        assert first["decision_reason"] == "unknown_plate" and first["rules_version"] == 1

        vehicles = [*RULES["vehicles"], {"id": "v-9", "plate": "NW2024X", "resident_id": "r-1"}]
        site.import_rules({**RULES, "vehicles": vehicles})  # the CLI, while the daemon runs
        assert audit(site, "rules_import")[-1]["status"] == "success"

        def opens() -> dict[str, Any] | None:
            time.sleep(0.6)  # past the dedup window: each push is a new arrival
            row = push(site, "NW2024X")
            return row if row["decision_reason"] == "resident" else None

        row = wait_until(opens, timeout_s=15)
        assert row is not None, daemon.log()
        assert row["rules_version"] == 2 and row["vehicle_id"] == "v-9"
        assert LCUS_ON + LCUS_OFF in relay_port.read(8, timeout_s=5)
        status = daemon.terminate()
    assert status == 0, daemon.log()
    verify_journal(site)


# --- 8. the systemd watchdog ----------------------------------------------------------------


@pytest.mark.slow
def test_watchdog_is_pinged_while_healthy(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    site.write_config(lane_config(relay_port))
    site.import_rules(RULES)
    with running(site, watchdog_usec=600_000) as daemon:
        pings = wait_until(
            lambda: daemon.notify.collect(0.2).count("WATCHDOG=1") >= 5, timeout_s=15
        )
        assert pings, f"watchdog pings: {daemon.notify.messages}\n{daemon.log()}"
        status = daemon.terminate()
    assert status == 0, daemon.log()


# --- 7. guard buttons (in-process daemon, gpiozero mock pins, fake relay) ------------------

OPEN_PIN, LOCKDOWN_PIN, HOLD_PIN = 17, 27, 22


def button_config(tmp_path: Path) -> dict[str, Any]:
    """A config with one fake-relay lane and three guard buttons."""
    return {
        "site": {"tenant_id": "t-test", "site_id": "s-test", "device_id": "d-test"},
        "journal": {
            "path": str(tmp_path / "journal.sqlite3"),
            "snapshot_dir": str(tmp_path / "snapshots"),
        },
        "rules": {"path": str(tmp_path / "rules.sqlite3")},
        "lanes": [
            {"id": "main-in", "dedup_window_s": 0, "relay": {"kind": "fake", "pulse_ms": 100}}
        ],
        "buttons": [
            {"name": "guard-open", "pin": OPEN_PIN, "action": "open", "bounce_ms": 10},
            {"name": "guard-lock", "pin": LOCKDOWN_PIN, "action": "lockdown", "bounce_ms": 10},
            {"name": "guard-hold", "pin": HOLD_PIN, "action": "hold_open", "bounce_ms": 10},
        ],
    }


async def poll(predicate: Any, timeout_s: float = 10.0) -> Any:
    """Await until predicate() is truthy (returned); None after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(sqlite3.OperationalError):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.02)


def journal_rows(path: Path, table: str) -> list[dict[str, Any]]:
    """Every row of a journal table in sequence order."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
    finally:
        conn.close()


async def test_guard_buttons_open_lock_down_and_hold(tmp_path: Path) -> None:
    cfg = parse_config(button_config(tmp_path))
    site = Site(tmp_path)
    site.write_config("")  # only for `gated rules import`: same journal and rules paths
    site.import_rules(RULES)
    journal = tmp_path / "journal.sqlite3"
    factory = MockFactory()
    daemon = Daemon(cfg, pin_factory=factory, health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())

    def audits(action: str) -> list[dict[str, Any]]:
        return [a for a in journal_rows(journal, "audit_logs") if a["action"] == action]

    async def press(pin_number: int) -> None:
        pin = factory.pin(pin_number)
        pin.drive_low()  # to ground through the button: active with the pull-up
        await asyncio.sleep(0.05)  # held past bounce_ms, as a finger does
        pin.drive_high()
        await asyncio.sleep(0.05)  # and let go for longer than a bounce too

    def read(plate: str) -> PlateRead:
        return PlateRead("main-in", plate, "test-camera", time.time(), time.monotonic(), 0.95)

    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        # The buttons' service tasks attach their callbacks once they run.
        pins = (OPEN_PIN, LOCKDOWN_PIN, HOLD_PIN)
        assert await poll(lambda: all(factory.pin(p).when_changed for p in pins))
        assert daemon.generation is not None
        relay = daemon.generation.relays["main-in"]
        lane = daemon.lane("main-in")

        # open: one pulse, an access event on the guard's authority, audited twice.
        await press(OPEN_PIN)
        assert await poll(lambda: audits("gate_open"))
        assert relay.pulses_ms == [100]
        [row] = journal_rows(journal, "access_logs")
        assert row["authorization_method"] == "guard_button"
        assert row["decision_reason"] == "guard_override" and row["authorized_by"] == "guard-open"
        [opened] = audits("gate_open")  # one row, by the control plane, naming the button
        assert opened["actor_type"] == "guard_button" and opened["actor_id"] == "guard-open"
        assert opened["status"] == "success" and opened["resource_id"] == "main-in"
        assert json.loads(opened["metadata"])["access_event_id"] == row["event_id"]

        # lockdown: a resident is refused until the second press.
        await press(LOCKDOWN_PIN)
        assert await poll(lambda: lane.mode == Mode.LOCKDOWN)
        lane.on_read(read("AB123CD"))
        assert await poll(lambda: len(journal_rows(journal, "access_logs")) == 2)
        denied = journal_rows(journal, "access_logs")[1]
        assert denied["event_type"] == "denied" and denied["decision_reason"] == "lockdown"
        assert relay.pulses_ms == [100]
        await press(LOCKDOWN_PIN)
        assert await poll(lambda: lane.mode == Mode.NORMAL)
        lane.on_read(read("GH456JK"))
        assert await poll(lambda: len(journal_rows(journal, "access_logs")) == 3)
        assert journal_rows(journal, "access_logs")[2]["decision_reason"] == "resident"
        assert relay.pulses_ms == [100, 100]
        assert [a["actor_id"] for a in audits("lockdown_on") + audits("lockdown_off")] == [
            "guard-lock", "guard-lock"
        ]

        # hold_open: energised until the second press.
        await poll(lambda: not relay.energised)  # the last pulse has ended
        await press(HOLD_PIN)
        assert await poll(lambda: lane.mode == Mode.HOLD_OPEN)
        assert relay.actions[-1] == "on" and "hold" in relay.actions and relay.energised
        await press(HOLD_PIN)
        assert await poll(lambda: lane.mode == Mode.NORMAL)
        assert await poll(lambda: not relay.energised)
        assert relay.actions[-2:] == ["release", "off"]
        assert [a["status"] for a in audits("gate_hold") + audits("gate_release")] == [
            "success", "success"
        ]
    finally:
        daemon.request_stop()
        status = await asyncio.wait_for(task, 20)
    assert status == 0
    verify = gated("journal", "verify", "--db", str(journal))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.slow
def test_reload_replaces_a_relay_whose_config_changed(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    site.write_config(lane_config(relay_port, pulse_ms=200))
    site.import_rules(RULES)
    with running(site) as daemon:
        assert daemon.wait_log(LISTENING)
        relay_port.drain()
        site.write_config(lane_config(relay_port, pulse_ms=300))
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_audit(site, "config_reload")[0]["status"] == "success"
        assert daemon.wait_log(LISTENING, count=2), daemon.log()
        # The old board object let go (release) and the new one opens released.
        frames = lcus_frames(relay_port.read(4, timeout_s=10) + relay_port.drain(1.5))
        assert frames and set(frames) == {LCUS_OFF}, daemon.log()
        assert push(site, "AB123CD")["decision_reason"] == "resident"
        assert relay_port.read(8) == LCUS_ON + LCUS_OFF
        status = daemon.terminate()
    assert status == 0, daemon.log()
