"""config/mosquitto/home-assistant.acl on a real Mosquitto: only Home Assistant's account may
publish gate commands; the gate's account publishes its states and reads its commands."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.homeassistant.conftest import Subscriber
from tests.support.broker import mosquitto_available, mosquitto_broker

ACL = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "home-assistant.acl"
USERS = {"gated-gate-1": "pw-g", "homeassistant": "pw-h", "someone": "pw-s"}


def test_only_home_assistant_may_command_the_gate(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not mosquitto_available() or not Path(tool).exists():
        pytest.skip("mosquitto (with mosquitto_passwd) is not installed")
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in USERS.items():
        subprocess.run([tool, "-b", str(passwd), user, password], check=True)
    extra = (f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\nuser root")
    with mosquitto_broker(tmp_path / "broker", extra_config=extra) as broker:
        gate = Subscriber(broker, "gated/gate-1/+/+/set", user="gated-gate-1",
                          password=USERS["gated-gate-1"])
        ha = Subscriber(broker, "gated/gate-1/#", user="homeassistant",
                        password=USERS["homeassistant"])
        someone = Subscriber(broker, user="someone", password=USERS["someone"])
        try:
            someone.publish("gated/gate-1/main-in/gate/set", "OPEN")  # denied by the ACL
            gate.publish("gated/gate-1/main-in/gate/set", "OPEN")  # the gate cannot either
            ha.publish("gated/gate-1/main-in/gate/set", "OPEN")
            gate.wait("gated/gate-1/main-in/gate/set")
            gate.publish("gated/gate-1/main-in/gate", "closed")
            ha.wait("gated/gate-1/main-in/gate")
            time.sleep(0.5)
            # Exactly one command reached the gate: Home Assistant's.
            assert len(gate.on("gated/gate-1/main-in/gate/set")) == 1
        finally:
            for client in (gate, ha, someone):
                client.close()
