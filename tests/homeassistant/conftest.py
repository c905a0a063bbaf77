"""Real peers for the Home Assistant tests: Mosquitto, a subscriber that records what a
Home Assistant would receive, and the JSON Schemas written from Home Assistant's MQTT docs."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.broker import Broker, mosquitto_available, mosquitto_broker
from tests.support.schemas import validator

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def validate(name: str, document: Any) -> Any:
    """Raise jsonschema.ValidationError unless document fits tests/homeassistant/schemas/NAME."""
    validator(name, SCHEMAS).validate(document)
    return document


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "broker") as running:
        yield running


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """The payload decoded as JSON."""
        return json.loads(self.payload)


class Subscriber:
    """What Home Assistant's MQTT client would see: every message under the given filters."""

    def __init__(self, broker: Broker, *filters: str, user: str | None = None,
                 password: str | None = None) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        connected, subscribed = threading.Event(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"ha-test-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(10)
        if filters:
            self.client.subscribe([(f, 1) for f in filters])
            assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload),
                                          bool(message.retain)))

    def on(self, topic: str) -> list[Received]:
        """Every message received on topic so far."""
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str) -> Received | None:
        """The latest message on topic, or None."""
        found = self.on(topic)
        return found[-1] if found else None

    def wait(self, topic: str, predicate: Callable[[Received], bool] = lambda m: True,
             timeout_s: float = 15.0) -> Received:
        """The first message on topic (oldest first) that satisfies predicate."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.on(topic):
                if predicate(message):
                    return message
            time.sleep(0.02)
        seen = [(m.topic, m.payload[:80]) for m in self.messages[-20:]]
        raise AssertionError(f"nothing on {topic} satisfied the check in {timeout_s} s; "
                             f"last messages: {seen}")

    def wait_state(self, topic: str, payload: str, timeout_s: float = 15.0) -> None:
        """Until the latest message on topic is payload."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.last(topic)
            if last is not None and last.payload == payload.encode():
                return
            time.sleep(0.02)
        last = self.last(topic)
        raise AssertionError(f"{topic}: expected {payload!r}, last "
                             f"{last.payload if last else None!r}")

    def clear(self) -> None:
        """Forget what was received."""
        with self._lock:
            self.messages.clear()

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait until it went out (as Home Assistant would command)."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber_factory(broker: Broker) -> Iterator[Callable[..., Subscriber]]:
    """Make subscribers on the broker; all are closed at the end."""
    made: list[Subscriber] = []

    def make(*filters: str, **kwargs: Any) -> Subscriber:
        sub = Subscriber(broker, *filters, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()
