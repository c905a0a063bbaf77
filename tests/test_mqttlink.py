"""MqttLink against a real Mosquitto: messages, retained flag, PUBACK, credentials, outages."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.config import MqttConfig
from gated.errors import SyncError
from gated.mqttlink import MqttLink, MqttMessage
from tests.support.broker import (
    MOSQUITTO,
    Broker,
    mosquitto_available,
    mosquitto_broker,
    wait_until_accepting,
)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "broker") as running:
        yield running


def publish_retained(broker: Broker, topic: str, payload: bytes) -> None:
    """Publish a retained message from another client, as Frigate or an attacker would."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-retainer")
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


async def until(predicate: Callable[[], object], limit_s: float = 20.0) -> None:
    """Wait for a condition set by the link's callbacks, failing after limit_s."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - state changes in callbacks
            await asyncio.sleep(0.02)


def restart(broker: Broker) -> subprocess.Popen[bytes]:
    """Start Mosquitto again with the same config (same port)."""
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(broker.config_path)], stderr=subprocess.DEVNULL
    )
    assert wait_until_accepting(broker.host, broker.port)
    return process


async def test_subscribe_publish_and_puback(broker: Broker) -> None:
    got: list[MqttMessage] = []
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port), "gated-test-link")
    link.subscribe("gated/test/#", got.append)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.subscribed.wait(), 15)
        await asyncio.wait_for(link.publish("gated/test/a", b"one"), 10)  # PUBACK came back
        await until(lambda: got)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert got == [MqttMessage("gated/test/a", b"one", 1, False)]
    assert link.stats.messages["gated/test/#"] == 1
    assert link.stats.connects == 1 and not link.stats.connected


async def test_retained_message_arrives_flagged(broker: Broker) -> None:
    publish_retained(broker, "gated/test/r", b"old news")
    got: list[MqttMessage] = []
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port), "gated-test-retained")
    link.subscribe("gated/test/#", got.append)
    task = asyncio.create_task(link.run())
    try:
        await until(lambda: got)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert got[0].retain is True and got[0].payload == b"old news"


async def test_publish_fails_when_link_is_not_running() -> None:
    link = MqttLink(MqttConfig(), "gated-test-idle")
    with pytest.raises(SyncError):
        await link.publish("x", b"y")


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    """A Mosquitto password file with user gated / s3cret."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    path = tmp_path / "passwd"
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), "gated", "s3cret"], check=True)
    path.chmod(0o600)
    return path


async def test_credentials_refused_then_accepted(tmp_path: Path, passwords: Path) -> None:
    states: list[tuple[bool, str]] = []
    # Running as root Mosquitto would drop to its own user, which cannot read tmp_path.
    extra = f"allow_anonymous false\npassword_file {passwords}\nuser root\n"
    with mosquitto_broker(tmp_path / "broker", extra_config=extra) as broker:
        wrong = MqttLink(
            MqttConfig(
                host=broker.host,
                port=broker.port,
                username="gated",
                password="nope",
                reconnect_min_s=0.05,
                reconnect_max_s=0.2,
            ),
            "gated-test-wrong",
        )
        task = asyncio.create_task(wrong.run())
        try:
            await until(lambda: wrong.stats.connect_failures >= 3)
            detail = wrong.stats.detail
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert wrong.stats.connects == 0 and detail == "broker refused: Not authorized"
        right = MqttLink(
            MqttConfig(host=broker.host, port=broker.port, username="gated", password="s3cret"),
            "gated-test-right",
            on_state=lambda up, detail: states.append((up, detail)),
        )
        right.subscribe("x/#", lambda _m: None)
        task = asyncio.create_task(right.run())
        try:
            await asyncio.wait_for(right.subscribed.wait(), 15)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert states == [(True, "connected"), (False, "stopped")]


def test_malformed_counted_every_time_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    link = MqttLink(MqttConfig(), "gated-test-malformed", monotonic=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="gated.mqttlink"):
        for _ in range(5):
            link.malformed("frigate/events", "invalid JSON")
        now[0] += 61
        link.malformed("frigate/events", "invalid JSON")
        link.malformed("frigate/tracked_object_update", "not an object")
    assert link.stats.malformed == {"frigate/events": 6, "frigate/tracked_object_update": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # first on each topic, then one report a minute later
    assert "4 more since the last report" in lines[1]


@pytest.mark.slow
async def test_broker_killed_and_restarted_resubscribes_within_the_cap(broker: Broker) -> None:
    """SIGKILL the broker, keep it down past the cap, restart on the same port."""
    cfg = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.2, reconnect_max_s=2.0)
    got: list[MqttMessage] = []
    link = MqttLink(cfg, "gated-test-outage")
    link.subscribe("gated/test/#", got.append)
    task = asyncio.create_task(link.run())
    restarted: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.wait_for(link.subscribed.wait(), 15)
        broker.process.kill()
        broker.process.wait(5)
        await until(lambda: not link.subscribed.is_set())
        await asyncio.sleep(8)  # long enough for an uncapped doubling back-off to pass 4 s
        restarted = await asyncio.to_thread(restart, broker)
        back_at = time.monotonic()
        await asyncio.wait_for(link.subscribed.wait(), 30)
        resubscribed_after_s = time.monotonic() - back_at
        await asyncio.wait_for(link.publish("gated/test/back", b"hello"), 10)
        await until(lambda: got)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if restarted is not None:
            restarted.terminate()
            restarted.wait(5)
    print(f"resubscribed {resubscribed_after_s:.2f} s after the broker accepted again")
    assert got[-1].payload == b"hello"
    assert max(link.stats.delays) <= cfg.reconnect_max_s
    assert link.stats.disconnects == 1 and link.stats.reconnects == 1
    assert link.stats.connect_failures >= 3  # it kept trying while the broker was gone


@pytest.mark.slow
async def test_qos1_publish_during_outage_completes_after_reconnect(broker: Broker) -> None:
    cfg = MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5)
    link = MqttLink(cfg, "gated-test-queued")
    task = asyncio.create_task(link.run())
    restarted: subprocess.Popen[bytes] | None = None
    try:
        await until(lambda: link.stats.connected)
        broker.process.kill()
        broker.process.wait(5)
        await until(lambda: not link.stats.connected)
        sent = asyncio.create_task(link.publish("gated/test/queued", b"later"))
        await asyncio.sleep(0.5)
        assert not sent.done()  # no PUBACK without a broker
        restarted = await asyncio.to_thread(restart, broker)
        await asyncio.wait_for(sent, 15)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if restarted is not None:
            restarted.terminate()
            restarted.wait(5)
