"""Sampled conditions and gate alarms through the real daemon: `gated run` with an upstream
that is down, a camera that cannot open, a clock this machine does not call synchronised and
a gate switch on gpiozero's mock pins (left alone they never read "closed"; one test drives
them), alerts delivered to a webhook receiver on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.alerts.receiver import Receiver
from tests.alerts.test_daemon import RULES, push
from tests.daemon.harness import (
    DaemonProcess,
    NotifySocket,
    Site,
    generic_lane,
    wait_audit,
)
from tests.support.broker import free_port

pytestmark = pytest.mark.slow

WATCHED = ["sync_backlog", "clock_unsynced", "camera_fault", "held_open", "forced_open",
           "disk_full"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def conditions_site(tmp_path: Path, receiver: Receiver, *, backlog_hours: float,
                    fault_after_s: float, held_open_alarm_s: float,
                    disk_percent: float = 100.0, pin_factory: str = "mock") -> Site:
    """One lane with a missing camera file and a mock-pin gate switch, syncing to nowhere."""
    secret = tmp_path / "hook.secret"
    secret.write_bytes(receiver.secret)
    site = Site(tmp_path)
    lane = generic_lane('kind = "fake"\npulse_ms = 200', dedup_window_s=0, extra=f"""
[lanes.camera]
url = "{tmp_path / "no-such-video.avi"}"
[lanes.sensors]
closed_pin = 17
held_open_alarm_s = {held_open_alarm_s}
""")
    site.write_config(lane, f"""
[gpio]
pin_factory = "{pin_factory}"

[mqtt]
host = "127.0.0.1"
port = {free_port()}
reconnect_min_s = 0.05
reconnect_max_s = 0.3

[sync]
enabled = true
retry_min_s = 0.05
retry_max_s = 0.5

[alerts]
retry_min_s = 0.1
retry_max_s = 0.5

[alerts.rules]
sync_backlog = {{ backlog_hours = {backlog_hours} }}
clock_unsynced = {{ fault_after_s = {fault_after_s} }}
camera_fault = {{ fault_after_s = {fault_after_s} }}
disk_full = {{ disk_percent = {disk_percent} }}

[[alerts.channels]]
name = "hook"
type = "webhook"
url = "{receiver.url}"
secret_file = "{secret}"
rules = {json.dumps(WATCHED)}
timeout_s = 2.0
""")
    site.import_rules(RULES)
    return site


def test_a_backlog_an_unsynced_clock_a_camera_fault_and_a_held_gate_alert_once_each(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    # 0.0001 h (0.36 s): any event the upstream has not taken for a moment is "old".
    site = conditions_site(tmp_path, receiver, backlog_hours=0.0001, fault_after_s=1.0,
                           held_open_alarm_s=1.0)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        push(site, "AB123CD")  # a journaled read the closed upstream port never takes
        assert receiver.wait_for(4, timeout_s=60), (dict(receiver.seen), daemon.log())
        time.sleep(3.0)  # several more samples: an episode alerts once, not every second
        docs = {d["event_type"]: d for d in receiver.alerts.values()}
        assert sorted(docs) == ["camera_fault", "clock_unsynced", "held_open", "sync_backlog"]
        assert set(receiver.seen.values()) == {1} and receiver.bad_signatures == 0

        backlog = docs["sync_backlog"]
        assert backlog["subject"] == "upstream" and backlog["severity"] == "warning"
        assert backlog["details"]["oldest_age_s"] >= 0
        assert "(alert at 0.0001 h)" in backlog["message"]

        clock = docs["clock_unsynced"]
        assert clock["subject"] == "clock" and clock["details"]["lasted_s"] >= 1.0

        camera = docs["camera_fault"]
        assert camera["subject"] == "main-in-camera" == camera["details"]["camera"]
        assert camera["details"]["lane"] == "main-in"
        assert camera["details"]["lasted_s"] >= 1.0

        held = docs["held_open"]
        assert held["subject"] == "main-in" and held["details"] == {"lane": "main-in"}
        assert wait_audit(site, "gate_alarm", 1)  # raised from the lane's own alarm row

        rows = [json.loads(r["metadata"]) for r in wait_audit(site, "alert_raised", 4)]
        assert sorted(m["rule"] for m in rows) == sorted(docs)
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_below_their_thresholds_the_same_conditions_raise_nothing(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    # disk_full at 1 %: proof that the conditions were sampled while the others stayed quiet.
    site = conditions_site(tmp_path, receiver, backlog_hours=24.0, fault_after_s=3600.0,
                           held_open_alarm_s=3600.0, disk_percent=1.0)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        push(site, "AB123CD")
        assert receiver.wait_for(1, timeout_s=60)
        time.sleep(4.0)  # several samples with every other condition present
        assert [d["event_type"] for d in receiver.alerts.values()] == ["disk_full"]
        assert daemon.terminate() == 0
    finally:
        daemon.close()


# `gated run` as the command line runs it, with gpiozero's default (mock) pin factory and a
# thread that drives the mock pin to the level last written to a file: the gate's switch.
PIN_DRIVER = """
import os, runpy, sys, threading, time
import gpiozero
level_file, pin = sys.argv[1], int(sys.argv[2])
def drive():
    applied = None
    while True:
        try:
            with open(level_file) as f:
                level = f.read().strip()
        except OSError:
            level = ""
        if level in ("low", "high") and level != applied:
            try:
                p = gpiozero.Device.pin_factory.pin(pin)
            except Exception:  # the daemon has not opened its pins yet
                p = None
            if p is not None:
                if level == "low":
                    p.drive_low()
                else:
                    p.drive_high()
                applied = level
        time.sleep(0.05)
threading.Thread(target=drive, daemon=True).start()
sys.argv = ["gated", *sys.argv[3:]]
runpy.run_module("gated", run_name="__main__", alter_sys=True)
"""


class SwitchedDaemon(DaemonProcess):
    """DaemonProcess whose gate switch pin (pull-up: low means closed) the test drives."""

    def __init__(self, site: Site, pin: int) -> None:
        # DaemonProcess's own attributes, with the daemon started behind the pin driver.
        self.site = site
        self.level_file = site.root / "switch-level"
        self.notify = NotifySocket(site.root / "notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1",
                   GPIOZERO_PIN_FACTORY="mock")
        self.log_path = site.root / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PIN_DRIVER, str(self.level_file), str(pin),
             "run", "--config", str(site.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def switch(self, closed: bool) -> None:
        """Set the gate's position switch: closed (pin pulled low) or open."""
        tmp = self.level_file.with_suffix(".tmp")
        tmp.write_text("low" if closed else "high")
        tmp.replace(self.level_file)


def test_a_gate_held_open_then_forced_open_alerts_once_for_each(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    # "auto": gpiozero's default factory, which the driver's environment makes its mock one.
    site = conditions_site(tmp_path, receiver, backlog_hours=24.0, fault_after_s=3600.0,
                           held_open_alarm_s=1.0, pin_factory="auto")
    daemon = SwitchedDaemon(site, pin=17)
    try:
        daemon.wait_ready()
        # The switch reads open from the start: held open once its second has passed.
        assert receiver.wait_for(1, timeout_s=60), daemon.log()
        [held] = receiver.alerts.values()
        assert held["event_type"] == "held_open" and held["subject"] == "main-in"
        daemon.switch(closed=True)
        assert wait_audit(site, "gate_alarm_cleared", 1, timeout_s=30), daemon.log()
        assert len(receiver.alerts) == 1  # closing the gate is no alert
        daemon.switch(closed=False)  # and it leaves closed with no open order
        assert receiver.wait_for(2, timeout_s=60), daemon.log()
        time.sleep(2.0)  # time for a wrong second delivery to show
        docs = sorted(receiver.alerts.values(), key=lambda d: d["raised_at"])
        assert [d["event_type"] for d in docs] == ["held_open", "forced_open"]
        forced = docs[1]
        assert forced["subject"] == "main-in" and forced["severity"] == "critical"
        assert forced["details"] == {"lane": "main-in"}
        assert set(receiver.seen.values()) == {1}
        alarms = [json.loads(r["metadata"])["alarm"] for r in wait_audit(site, "gate_alarm", 2)]
        # Held open again a second later: an alarm row, folded into held_open's interval.
        assert alarms[:2] == ["held_open", "forced_open"]
        assert daemon.terminate() == 0
    finally:
        daemon.close()
