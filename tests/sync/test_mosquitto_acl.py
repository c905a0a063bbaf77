"""The shipped broker config and ACL (config/mosquitto/) on a real Mosquitto: a device publishes
and subscribes only under its own prefix; the service reads every uplink and writes downlink."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import Broker, mosquitto_available, mosquitto_broker

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
# Lines of the shipped gated.conf that name the production listener, TLS files and paths;
# the test broker has its own loopback listener and temporary files instead.
_SITE_SPECIFIC = ("listener", "certfile", "keyfile", "cafile", "persistence",
                  "persistence_location", "autosave_interval", "password_file", "acl_file")
USERS = {"acme/gate-1": "pw-1", "acme/gate-2": "pw-2", "gated-service": "pw-s"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto running the shipped config and ACL, with three accounts."""
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not mosquitto_available() or not Path(passwd_tool).exists():
        pytest.skip("mosquitto (with mosquitto_passwd) is not installed")
    passwd = tmp_path / "gated.passwd"
    passwd.touch()
    for user, password in USERS.items():
        subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True)
    acl = tmp_path / "gated.acl"
    shutil.copy(SHIPPED / "gated.acl", acl)
    kept = [line for line in (SHIPPED / "gated.conf").read_text().splitlines()
            if line.split(" ", 1)[0] not in _SITE_SPECIFIC]
    # "user root": run by root (CI), Mosquitto would drop to "mosquitto", which cannot read
    # the pytest folder the password file is in.
    extra = "\n".join([*kept, f"password_file {passwd}", f"acl_file {acl}", "user root"])
    with mosquitto_broker(tmp_path / "broker", extra_config=extra) as running:
        yield running


class Client:
    """A blocking MQTT 5 client that records what it receives and its PUBACK reason codes."""

    def __init__(self, broker: Broker, user: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"x-{uuid.uuid4().hex}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, USERS[user])
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_publish = self._on_publish
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def _on_publish(self, _c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        self.acks[mid] = int(getattr(reason, "value", 0))

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 taken, 135 not authorised)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        deadline = time.monotonic() + 10
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _settle(*clients: Client, want: int, limit_s: float = 10.0) -> None:
    """Wait until the clients together received `want` messages (or the limit passed)."""
    deadline = time.monotonic() + limit_s
    while sum(len(c.received) for c in clients) < want and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_device_cannot_publish_into_another_devices_topics(broker: Broker) -> None:
    service = Client(broker, "gated-service")
    gate1, gate2 = Client(broker, "acme/gate-1"), Client(broker, "acme/gate-2")
    try:
        service.subscribe("gated/v1/+/+/#")
        gate2.subscribe("gated/v1/acme/gate-2/commands")
        gate2.subscribe("gated/v1/acme/gate-2/acks")
        assert gate1.publish("gated/v1/acme/gate-1/events", b"own") == 0
        for topic in ("gated/v1/acme/gate-2/events", "gated/v1/acme/gate-2/heads",
                      "gated/v1/acme/gate-2/status", "gated/v1/acme/gate-2/commands",
                      "gated/v1/acme/gate-2/acks", "gated/v1/acme/gate-2/rules",
                      "gated/v1/other/gate-1/events",
                      # nor may it write what only the service sends it
                      "gated/v1/acme/gate-1/commands", "gated/v1/acme/gate-1/rules",
                      "gated/v1/acme/gate-1/acks"):
            assert gate1.publish(topic, b"forged") == 135, topic  # not authorised
        canary = gate1.publish("gated/v1/acme/gate-1/heartbeat", b"last")
        assert canary == 0
        _settle(service, gate2, want=2)
        assert sorted(service.received) == [("gated/v1/acme/gate-1/events", b"own"),
                                            ("gated/v1/acme/gate-1/heartbeat", b"last")]
        assert gate2.received == []
    finally:
        for c in (service, gate1, gate2):
            c.close()


def test_a_device_reads_only_its_own_downlink_and_the_service_reaches_it(
    broker: Broker,
) -> None:
    service = Client(broker, "gated-service")
    gate1, gate2 = Client(broker, "acme/gate-1"), Client(broker, "acme/gate-2")
    try:
        gate1.subscribe("gated/v1/#")  # tries to read everything
        gate2.subscribe("gated/v1/acme/gate-2/commands")
        for topic in ("gated/v1/acme/gate-2/commands", "gated/v1/acme/gate-2/rules",
                      "gated/v1/acme/gate-1/commands"):
            assert service.publish(topic, b"signed command") == 0
        assert gate2.publish("gated/v1/acme/gate-2/events", b"gate-2 event") == 0
        _settle(gate1, gate2, want=2)
        assert gate1.received == [("gated/v1/acme/gate-1/commands", b"signed command")]
        assert gate2.received == [("gated/v1/acme/gate-2/commands", b"signed command")]
        # The service may not pose as a device.
        assert service.publish("gated/v1/acme/gate-1/events", b"forged") == 135
    finally:
        for c in (service, gate1, gate2):
            c.close()
