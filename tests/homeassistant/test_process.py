"""`gated run` and `gated demo --mqtt` as processes against a real Mosquitto: availability on
connect, the last will on kill -9, "offline" on a clean stop, the demo's discovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.daemon.harness import RESIDENT_RULES, Site, generic_lane, running
from tests.homeassistant.conftest import Subscriber, validate
from tests.support.broker import Broker

P = "gated/d-test"
CONFIG_TOPIC = "homeassistant/device/d-test/config"


def ha_section(broker: Broker) -> str:
    """[mqtt] on the test broker and [home_assistant] on."""
    return f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
keepalive_s = 5

[home_assistant]
enabled = true
"""


def test_availability_online_then_last_will_on_kill_9_then_back(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    site = Site(tmp_path)
    site.write_config(generic_lane('kind = "fake"'), ha_section(broker))
    site.import_rules(RESIDENT_RULES)
    ha = subscriber_factory("homeassistant/#", f"{P}/availability")
    with running(site) as daemon:
        daemon.wait_ready()
        ha.wait_state(f"{P}/availability", "online")
        validate("device", ha.wait(CONFIG_TOPIC).json())
        ha.clear()
        os.kill(daemon.proc.pid, signal.SIGKILL)  # no goodbye: the broker says it for us
        daemon.proc.wait(10)
        offline = ha.wait(f"{P}/availability", lambda m: m.payload == b"offline", timeout_s=15)
        assert not ha.on(CONFIG_TOPIC)  # the device stays known, only unavailable
        assert offline.payload == b"offline"
    # A late subscriber (Home Assistant restarting now) finds the retained "offline".
    late = subscriber_factory(f"{P}/availability")
    assert late.wait(f"{P}/availability").retain
    late.wait_state(f"{P}/availability", "offline")

    (tmp_path / "notify.sock").unlink(missing_ok=True)  # left by the killed run's harness
    with running(site) as daemon:
        daemon.wait_ready()
        ha.wait_state(f"{P}/availability", "online")
        ha.wait(CONFIG_TOPIC)  # announced again on connect
        ha.clear()
        assert daemon.terminate() == 0, daemon.log()
        # A clean stop says "offline" itself (the will is only for a connection lost).
        ha.wait_state(f"{P}/availability", "offline")


def test_demo_with_mqtt_appears_in_home_assistant(
        tmp_path: Path, broker: Broker, subscriber_factory: Callable[..., Subscriber]) -> None:
    ha = subscriber_factory("homeassistant/#", "gated/demo-gate/#")
    result = subprocess.run(
        [sys.executable, "-m", "gated", "demo", "--dir", str(tmp_path / "demo"),
         "--mqtt", f"{broker.host}:{broker.port}", "--duration", "6", "--interval", "0.5",
         "--port", "0", "--web-port", "0"],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "homeassistant/device/demo-gate/config" in result.stdout
    config = validate("device", ha.wait("homeassistant/device/demo-gate/config").json())
    assert {"main_in_gate", "main_out_gate", "alert"} <= set(config["cmps"])
    assert config["cmps"]["main_in_gate"]["command_topic"] == "gated/demo-gate/main-in/gate/set"
    decision = ha.wait("gated/demo-gate/main-in/decision").json()
    validate("decision", decision)
    ha.wait_state("gated/demo-gate/availability", "offline")  # the demo stopped cleanly
