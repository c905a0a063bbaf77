"""Wired inputs with gpiozero MockFactory pins: debounce, long press, polarity, sensors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.config import ButtonConfig, GateSensorsConfig
from gated.errors import HardwareError
from gated.hardware.base import InputEvent, InputSource
from gated.hardware.fake import FakeInputs
from gated.hardware.inputs import GateSensors, GuardButton, sensor_input, split_sensor_input


class Events:
    """Collects emitted events; lets a test wait for the next one or for silence."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[InputEvent] = asyncio.Queue()
        self.seen: list[InputEvent] = []

    def __call__(self, event: InputEvent) -> None:
        self.seen.append(event)
        self.queue.put_nowait(event)

    async def next(self) -> InputEvent:
        async with asyncio.timeout(5):
            return await self.queue.get()

    async def none_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.queue.get()
        except TimeoutError:
            return True
        return False


@contextlib.asynccontextmanager
async def running(source: InputSource, events: Events) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(source.run(events))
    await asyncio.sleep(0.01)  # let run() open its pins
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def button(**kw: Any) -> ButtonConfig:
    cfg: dict[str, Any] = {"name": "guard-open", "pin": 22, "action": "open", "bounce_ms": 20}
    cfg.update(kw)
    return ButtonConfig(**cfg)


async def test_press_is_reported_once_after_bounce() -> None:
    factory = MockFactory()
    events = Events()
    async with running(GuardButton(button(), pin_factory=factory), events):
        pin = factory.pin(22)
        assert pin.state is True  # pulled up: not pressed
        for _ in range(5):  # contact chatter
            pin.drive_low()
            pin.drive_high()
        pin.drive_low()
        event = await events.next()
        assert (event.input, event.kind) == ("guard-open", "press")
        pin.drive_high()  # releasing a plain button emits nothing
        assert await events.none_within(0.1)


async def test_spike_shorter_than_bounce_is_ignored() -> None:
    factory = MockFactory()
    events = Events()
    async with running(GuardButton(button(bounce_ms=50), pin_factory=factory), events):
        pin = factory.pin(22)
        pin.drive_low()
        await asyncio.sleep(0.01)
        pin.drive_high()
        assert await events.none_within(0.15)


async def test_long_press_needs_the_hold() -> None:
    factory = MockFactory()
    events = Events()
    cfg = button(long_press_s=0.15, bounce_ms=10)
    async with running(GuardButton(cfg, pin_factory=factory), events):
        pin = factory.pin(22)
        pin.drive_low()  # a bump: released well before long_press_s
        await asyncio.sleep(0.04)
        pin.drive_high()
        assert await events.none_within(0.3)
        pin.drive_low()  # a deliberate hold
        event = await events.next()
        assert event.kind == "long_press"
        assert await events.none_within(0.3)  # once per press, however long it is held
        pin.drive_high()
    assert [e.kind for e in events.seen] == ["long_press"]


async def test_pull_down_polarity() -> None:
    factory = MockFactory()
    events = Events()
    async with running(GuardButton(button(pull_up=False), pin_factory=factory), events):
        pin = factory.pin(22)
        assert pin.state is False
        pin.drive_high()
        assert (await events.next()).kind == "press"


async def test_edge_from_another_thread_reaches_the_loop() -> None:
    factory = MockFactory()
    events = Events()
    async with running(GuardButton(button(bounce_ms=0), pin_factory=factory), events):
        await asyncio.to_thread(factory.pin(22).drive_low)  # gpiozero calls back on its thread
        assert (await events.next()).kind == "press"


async def test_a_failing_emit_does_not_stop_the_button() -> None:
    factory = MockFactory()
    events = Events()
    calls = 0

    def flaky(event: InputEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("daemon bug")
        events(event)

    task = asyncio.create_task(GuardButton(button(bounce_ms=0), pin_factory=factory).run(flaky))
    await asyncio.sleep(0.01)
    pin = factory.pin(22)
    pin.drive_low()
    pin.drive_high()
    await asyncio.sleep(0.01)
    pin.drive_low()
    assert (await events.next()).kind == "press"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_run_can_restart_after_cancel() -> None:
    factory = MockFactory()
    events = Events()
    source = GuardButton(button(bounce_ms=0), pin_factory=factory)
    async with running(source, events):
        pass
    async with running(source, events):  # pins were freed: the restart can claim them
        factory.pin(22).drive_low()
        assert (await events.next()).kind == "press"


async def test_pin_in_use_is_a_hardware_error() -> None:
    factory = MockFactory()
    events = Events()
    async with running(GuardButton(button(), pin_factory=factory), events):
        with pytest.raises(HardwareError, match="GPIO22"):
            await GuardButton(button(name="other"), pin_factory=factory).run(events)


async def test_gate_sensors_report_start_level_then_changes() -> None:
    factory = MockFactory()
    events = Events()
    cfg = GateSensorsConfig(closed_pin=23, presence_pin=24)
    sensors = GateSensors("main-in", cfg, pin_factory=factory, bounce_ms=10)
    assert sensors.wired == ("closed", "presence")
    async with running(sensors, events):
        first = [await events.next(), await events.next()]
        assert {(e.input, e.kind) for e in first} == {
            ("main-in:closed", "inactive"),
            ("main-in:presence", "inactive"),
        }
        factory.pin(23).drive_low()  # reed switch to ground: the gate reached closed
        e = await events.next()
        assert (e.input, e.kind) == ("main-in:closed", "active")
        factory.pin(24).drive_low()
        factory.pin(24).drive_high()
        factory.pin(24).drive_low()  # loop detector relay chatter settles active
        e = await events.next()
        assert (e.input, e.kind) == ("main-in:presence", "active")
        assert await events.none_within(0.1)
        factory.pin(23).drive_high()
        e = await events.next()
        assert (e.input, e.kind) == ("main-in:closed", "inactive")


async def test_gate_sensors_without_pins_emit_nothing() -> None:
    events = Events()
    sensors = GateSensors("lane", GateSensorsConfig(), pin_factory=MockFactory())
    assert sensors.wired == ()
    async with running(sensors, events):
        assert await events.none_within(0.05)


def test_sensor_names_round_trip() -> None:
    assert sensor_input("main-in", "closed") == "main-in:closed"
    assert split_sensor_input("main-in:presence") == ("main-in", "presence")
    assert split_sensor_input("guard-open") is None
    assert split_sensor_input(":closed") is None
    assert split_sensor_input("lane:other") is None


async def test_fake_inputs_queue_until_run() -> None:
    fake = FakeInputs()
    fake.press("guard-open")
    events = Events()
    async with running(fake, events):
        fake.set_active("lane:presence", True)
        fake.press("guard-open", long=True)
        kinds = [(await events.next()).kind for _ in range(3)]
    assert kinds == ["press", "active", "long_press"]
