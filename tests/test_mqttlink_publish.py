"""MqttLink's unawaited publishes against a real Mosquitto: PUBACKs reach their callbacks once
each, beside awaited publishes, in bursts and across a broker restart."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


async def until(predicate: Callable[[], object], limit_s: float = 30.0) -> None:
    """Wait for a condition set by the link's callbacks, failing after limit_s."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - state changes in callbacks
            await asyncio.sleep(0.02)


def restart(broker: Broker) -> subprocess.Popen[bytes]:
    """Start Mosquitto again with the same config (same port)."""
    process = subprocess.Popen([MOSQUITTO, "-c", str(broker.config_path)],
                               stderr=subprocess.DEVNULL)
    assert wait_until_accepting(broker.host, broker.port)
    return process


async def test_every_puback_reaches_its_callback_once_beside_awaited_publishes(
    broker: Broker,
) -> None:
    acked: Counter[int] = Counter()
    got: list[MqttMessage] = []
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port), "gated-test-nowait",
                    max_inflight=256)
    link.subscribe("gated/test/#", got.append)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.subscribed.wait(), 15)
        for i in range(2000):  # a burst: PUBACKs come back many per hand-over
            link.publish_nowait("gated/test/n", str(i).encode(), qos=1,
                                on_acked=lambda i=i: acked.update([i]))
            if i % 500 == 0:  # awaited publishes in the same stream still complete
                await asyncio.wait_for(link.publish("gated/test/a", b"awaited"), 15)
        link.publish_nowait("gated/test/q", b"no callback", qos=1)
        await until(lambda: len(acked) == 2000 and len(got) == 2005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert set(acked) == set(range(2000)) and set(acked.values()) == {1}
    assert sorted(int(m.payload) for m in got if m.topic == "gated/test/n") == list(range(2000))


@pytest.mark.slow
async def test_unawaited_publishes_during_an_outage_are_acked_after_the_reconnect(
    broker: Broker,
) -> None:
    acked: list[int] = []
    link = MqttLink(MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1,
                               reconnect_max_s=0.5), "gated-test-nowait-outage",
                    clean_start=False, session_expiry_s=300)
    task = asyncio.create_task(link.run())
    try:
        await until(lambda: link.stats.connected)
        broker.process.kill()
        broker.process.wait(5)
        await until(lambda: not link.stats.connected)
        for i in range(10):
            link.publish_nowait("gated/test/o", b"x", qos=1, on_acked=lambda i=i: acked.append(i))
        process = await asyncio.to_thread(restart, broker)
        try:
            await until(lambda: len(acked) == 10)
        finally:
            process.terminate()
            process.wait(5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sorted(acked) == list(range(10))


def test_publish_nowait_refused_when_the_link_is_not_running() -> None:
    link = MqttLink(MqttConfig(), "gated-test-nowait-idle")
    with pytest.raises(SyncError):
        link.publish_nowait("gated/test/x", b"x", qos=1)
