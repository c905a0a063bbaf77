"""Relays: golden frames over pty pairs, a fake Modbus slave, unplug/replug, gpiozero mock pins."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given
from hypothesis import strategies as st

from gated.config import FakeRelayConfig, GpioRelayConfig, LcusRelayConfig, ModbusRelayConfig
from gated.errors import HardwareError
from gated.hardware.base import Relay
from gated.hardware.fake import FakeRelay
from gated.hardware.relays import (
    GpioRelay,
    LcusRelay,
    ModbusRelay,
    check_write_coil_reply,
    crc16_modbus,
    lcus_frame,
    make_relay,
    modbus_write_coil,
)

ON_1 = bytes.fromhex("A0 01 01 A2")
OFF_1 = bytes.fromhex("A0 01 00 A1")
MB_ON = bytes.fromhex("01 05 00 00 FF 00 8C 3A")  # slave 1, coil 0, as printed in board manuals
MB_OFF = bytes.fromhex("01 05 00 00 00 00 CD CA")

FAST = {"reconnect_base_s": 0.01, "reconnect_max_s": 0.05, "check_interval_s": 0.02}


# --- a pty standing in for /dev/ttyUSB0 -------------------------------------------


class FakePort:
    """A pty pair behind a stable symlink, like udev's /dev/serial/by-id names."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()

    def plug(self) -> None:
        """(Re)create the device: a fresh pty, the symlink pointed at it."""
        master, slave = os.openpty()
        target = os.ttyname(slave)
        os.close(slave)  # the pts stays while the master is open
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(self.link)
        self.master = master

    def unplug(self) -> None:
        """Close the master: the pts node vanishes, the driver's fd hangs up."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.link.unlink(missing_ok=True)

    def read(self, n: int, timeout: float = 2.0) -> bytes:
        """Read exactly n bytes the driver wrote (fewer on timeout)."""
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            try:
                out += os.read(self.master, n - len(out))
            except OSError:
                time.sleep(0.01)  # EIO: no process has the slave side open (yet)
        return out

    async def aread(self, n: int, wait_s: float = 2.0) -> bytes:
        """read() without blocking the event loop."""
        return await asyncio.to_thread(self.read, n, wait_s)

    def pending(self) -> bytes:
        """Whatever is waiting right now."""
        ready, _, _ = select.select([self.master], [], [], 0.05)
        if not ready:
            return b""
        try:
            return os.read(self.master, 1024)
        except OSError:
            return b""


@pytest.fixture
def port(tmp_path: Path) -> Iterator[FakePort]:
    p = FakePort(tmp_path / "ttyUSB0")
    yield p
    p.unplug()


class FakeModbusSlave:
    """Answers Write Single Coil requests on the pty master: echo, exception, bad CRC, silence."""

    def __init__(self, port: FakePort) -> None:
        self.port = port
        self.mode = "echo"
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            fd = self.port.master
            try:
                request = self.port.read(8, timeout=0.05)
            except OSError:
                continue
            if len(request) < 8:
                continue
            self.requests.append(request)
            reply = b""
            if self.mode == "echo":
                reply = request
            elif self.mode == "exception":
                body = bytes((request[0], 0x85, 0x02))
                reply = body + crc16_modbus(body).to_bytes(2, "little")
            elif self.mode == "bad_crc":
                reply = request[:-1] + bytes(((request[-1] + 1) & 0xFF,))
            if reply:
                with contextlib.suppress(OSError):
                    os.write(fd, reply)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def slave(port: FakePort) -> Iterator[FakeModbusSlave]:
    s = FakeModbusSlave(port)
    yield s
    s.stop()


class Faults:
    """Collects on_fault callbacks and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self._changed = asyncio.Event()

    def __call__(self, name: str, fault: str | None) -> None:
        self.calls.append((name, fault))
        self._changed.set()

    async def wait_for(self, healthy: bool) -> None:
        async with asyncio.timeout(5):
            while not self.calls or (self.calls[-1][1] is None) != healthy:
                self._changed.clear()
                await self._changed.wait()


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (up to 5 s) until predicate() holds."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polling a driver property
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(relay: LcusRelay | ModbusRelay) -> AsyncIterator[None]:
    """Run the relay's supervision task for the duration of the block."""
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.aclose()


# --- pure frames -------------------------------------------------------------------


def test_lcus_frames_match_the_published_examples() -> None:
    assert lcus_frame(1, True) == ON_1
    assert lcus_frame(1, False) == OFF_1
    assert lcus_frame(2, True) == bytes.fromhex("A0 02 01 A3")
    assert lcus_frame(4, False) == bytes.fromhex("A0 04 00 A4")
    with pytest.raises(ValueError):
        lcus_frame(0, True)


def test_modbus_frames_and_crc() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # the CRC-16/MODBUS check value
    assert modbus_write_coil(1, 0, True) == MB_ON
    assert modbus_write_coil(1, 0, False) == MB_OFF
    assert modbus_write_coil(1, 1, True) == bytes.fromhex("01 05 00 01 FF 00 DD FA")
    assert modbus_write_coil(1, 2, False) == bytes.fromhex("01 05 00 02 00 00 6C 0A")
    with pytest.raises(ValueError):
        modbus_write_coil(0, 0, True)


def test_reply_checks() -> None:
    check_write_coil_reply(MB_ON, MB_ON)
    exc = bytes((1, 0x85, 0x02))
    exc += crc16_modbus(exc).to_bytes(2, "little")
    with pytest.raises(HardwareError, match="exception 0x02"):
        check_write_coil_reply(MB_ON, exc)
    with pytest.raises(HardwareError, match="bad CRC"):
        check_write_coil_reply(MB_ON, MB_ON[:-1] + b"\x00")
    with pytest.raises(HardwareError, match="no reply"):
        check_write_coil_reply(MB_ON, b"")
    with pytest.raises(HardwareError, match="short"):
        check_write_coil_reply(MB_ON, MB_ON[:6])
    other = modbus_write_coil(2, 0, True)
    with pytest.raises(HardwareError, match="slave 2"):
        check_write_coil_reply(MB_ON, other)
    with pytest.raises(HardwareError, match="echo"):
        check_write_coil_reply(MB_ON, MB_OFF)


@given(st.binary(max_size=32))
def test_any_reply_is_accepted_only_if_it_is_the_echo(reply: bytes) -> None:
    try:
        check_write_coil_reply(MB_ON, reply)
    except HardwareError:
        assert reply != MB_ON
    else:
        assert reply == MB_ON


# --- LCUS over a pty ------------------------------------------------------------------


async def test_lcus_open_releases_then_pulses(port: FakePort) -> None:
    relay = LcusRelay("gate", str(port.link), channel=1, **FAST)
    assert relay.fault is not None  # not open yet
    with pytest.raises(HardwareError):
        await relay.pulse(100)
    await relay.open()
    assert relay.fault is None
    assert await port.aread(4) == OFF_1  # a fresh port is driven to released first
    await relay.pulse(30)
    assert relay.energised
    assert await port.aread(4) == ON_1
    assert await port.aread(4) == OFF_1  # scheduled release
    await eventually(lambda: not relay.energised)  # state follows once the write returned
    await relay.aclose()


async def test_lcus_hold_release_and_channel(port: FakePort) -> None:
    relay = LcusRelay("gate", str(port.link), channel=3, **FAST)
    await relay.open()
    assert await port.aread(4) == bytes.fromhex("A0 03 00 A3")
    await relay.hold()
    await relay.pulse(10)  # a pulse on a held relay changes nothing
    await asyncio.sleep(0.05)
    assert await port.aread(4) == bytes.fromhex("A0 03 01 A4")
    assert port.pending() == b""
    await relay.release()
    assert await port.aread(4) == bytes.fromhex("A0 03 00 A3")
    await relay.aclose()


async def test_lcus_second_pulse_extends(port: FakePort) -> None:
    relay = LcusRelay("gate", str(port.link), **FAST)
    await relay.open()
    await port.aread(4)
    await relay.pulse(40)
    await relay.pulse(400)  # energised already: no second ON, release moves later
    assert await port.aread(4) == ON_1
    assert await port.aread(4, wait_s=0.1) == b""
    assert await port.aread(4) == OFF_1
    await relay.aclose()


async def test_lcus_unplug_and_replug(port: FakePort) -> None:
    faults = Faults()
    relay = LcusRelay("gate", str(port.link), on_fault=faults, **FAST)
    async with running(relay):
        assert await port.aread(4) == OFF_1
        await relay.hold()
        assert await port.aread(4) == ON_1
        port.unplug()
        await faults.wait_for(healthy=False)  # noticed while idle
        assert relay.fault is not None and "ttyUSB0" in relay.fault
        with pytest.raises(HardwareError):
            await relay.pulse(100)
        port.plug()
        await faults.wait_for(healthy=True)
        # the first thing the new port sees is a release: never energised by a reconnect
        assert await port.aread(4) == OFF_1
        assert relay.fault is None and not relay.energised
        await relay.pulse(20)
        assert await port.aread(8) == ON_1 + OFF_1
    assert [f is None for _, f in faults.calls] == [False, True]  # once per change


async def test_lcus_write_to_vanished_port_faults(port: FakePort) -> None:
    faults = Faults()
    relay = LcusRelay("gate", str(port.link), on_fault=faults, check_interval_s=60)
    await relay.open()
    port.unplug()
    with pytest.raises(HardwareError):
        await relay.pulse(100)
    assert faults.calls and faults.calls[-1][1] is not None
    await relay.aclose()


async def test_missing_port_at_start_is_a_fault_until_it_appears(tmp_path: Path) -> None:
    faults = Faults()
    link = tmp_path / "ttyACM0"
    relay = LcusRelay("gate", str(link), on_fault=faults, **FAST)
    async with running(relay):
        await faults.wait_for(healthy=False)
        assert "cannot open" in (relay.fault or "")
        p = FakePort(link)
        try:
            await faults.wait_for(healthy=True)
            assert await p.aread(4) == OFF_1
        finally:
            p.unplug()


async def test_loop_url_port() -> None:
    relay = LcusRelay("gate", "loop://", **FAST)
    await relay.open()
    await relay.pulse(10)
    await relay.aclose()
    assert relay.fault is None


# --- Modbus over a pty with a fake slave ----------------------------------------------------


async def test_modbus_golden_frames(port: FakePort, slave: FakeModbusSlave) -> None:
    relay = ModbusRelay("gate", str(port.link), address=1, coil=0, timeout_ms=300, **FAST)
    await relay.open()
    await relay.pulse(20)
    await eventually(lambda: not relay.energised)  # the scheduled release, echoed
    await relay.hold()
    await relay.release()
    await relay.aclose()
    # open, pulse on, pulse end, hold, release, and the final release of aclose()
    assert slave.requests == [MB_OFF, MB_ON, MB_OFF, MB_ON, MB_OFF, MB_OFF]


async def test_modbus_address_and_coil(port: FakePort, slave: FakeModbusSlave) -> None:
    relay = ModbusRelay("gate", str(port.link), address=17, coil=3, timeout_ms=300, **FAST)
    await relay.open()
    await relay.hold()
    await relay.aclose()
    assert slave.requests[:2] == [modbus_write_coil(17, 3, False), modbus_write_coil(17, 3, True)]
    assert slave.requests[1][:6] == bytes.fromhex("11 05 00 03 FF 00")


@pytest.mark.parametrize(
    ("mode", "words"),
    [("exception", "exception 0x02"), ("bad_crc", "bad CRC"), ("silent", "timeout")],
)
async def test_modbus_faults(port: FakePort, slave: FakeModbusSlave, mode: str, words: str) -> None:
    faults = Faults()
    relay = ModbusRelay("gate", str(port.link), timeout_ms=200, on_fault=faults, **FAST)
    async with running(relay):
        await eventually(lambda: relay.fault is None)  # opened by run()
        slave.mode = mode
        with pytest.raises(HardwareError, match=words):
            await relay.pulse(100)
        assert relay.fault is not None and words in relay.fault
        assert faults.calls[-1][1] is not None
        with pytest.raises(HardwareError):
            await relay.hold()
        before = len(slave.requests)
        slave.mode = "echo"
        await faults.wait_for(healthy=True)
        # recovery is confirmed by an echoed OFF, never by energising
        assert slave.requests[before:] and all(r == MB_OFF for r in slave.requests[before:])


async def test_modbus_exception_is_not_retried(port: FakePort, slave: FakeModbusSlave) -> None:
    relay = ModbusRelay("gate", str(port.link), timeout_ms=50, retries=2)
    await relay.open()
    slave.mode = "exception"
    before = len(slave.requests)
    with pytest.raises(HardwareError):
        await relay.hold()
    await asyncio.sleep(0.1)
    assert slave.requests[before:] == [MB_ON]
    await relay.aclose()


async def test_modbus_silence_is_retried_then_faults(
    port: FakePort, slave: FakeModbusSlave
) -> None:
    relay = ModbusRelay("gate", str(port.link), timeout_ms=40, retries=1)
    await relay.open()
    slave.mode = "silent"
    before = len(slave.requests)
    with pytest.raises(HardwareError, match="timeout"):
        await relay.hold()
    await asyncio.sleep(0.1)
    assert slave.requests[before:] == [MB_ON, MB_ON]
    await relay.aclose()


# --- GPIO with gpiozero mock pins --------------------------------------------------------


async def test_gpio_relay_active_high() -> None:
    factory = MockFactory()
    relay = GpioRelay("gate", 17, pin_factory=factory)
    pin = factory.pin(17)
    assert pin.state is False  # starts released
    await relay.pulse(30)
    assert pin.state is True  # energised when pulse() returns
    for _ in range(200):
        if not pin.state:
            break
        await asyncio.sleep(0.01)
    assert pin.state is False
    await relay.hold()
    assert pin.state is True
    await relay.release()
    assert pin.state is False
    await relay.aclose()
    assert relay.fault is None


async def test_gpio_relay_active_low_idles_high() -> None:
    factory = MockFactory()
    relay = GpioRelay("gate", 27, active_high=False, pin_factory=factory)
    pin = factory.pin(27)
    assert pin.state is True  # released: an active-low module sees high
    await relay.hold()
    assert pin.state is False
    await relay.aclose()


async def test_gpio_release_cancels_pulse() -> None:
    factory = MockFactory()
    relay = GpioRelay("gate", 17, pin_factory=factory)
    pin = factory.pin(17)
    await relay.pulse(20)
    await relay.release()
    await relay.hold()
    await asyncio.sleep(0.06)  # the cancelled pulse must not drop the hold
    assert pin.state is True
    await relay.aclose()


def test_gpio_pin_in_use_is_hardware_error() -> None:
    factory = MockFactory()
    first = GpioRelay("a", 5, pin_factory=factory)
    with pytest.raises(HardwareError, match="GPIO5"):
        GpioRelay("b", 5, pin_factory=factory)
    first._device.close()


async def test_closed_relay_refuses() -> None:
    relay = GpioRelay("gate", 6, pin_factory=MockFactory())
    await relay.aclose()
    with pytest.raises(HardwareError, match="closed"):
        await relay.pulse(10)


async def test_pulse_length_must_be_positive() -> None:
    relay = FakeRelay("gate")
    with pytest.raises(ValueError):
        await relay.pulse(0)


# --- factory and fake ------------------------------------------------------------------


async def test_make_relay_builds_each_kind(port: FakePort) -> None:
    factory = MockFactory()
    made = [
        make_relay("a", GpioRelayConfig(pin=4, active_high=False), pin_factory=factory),
        make_relay("b", LcusRelayConfig(port=str(port.link), channel=2)),
        make_relay("c", ModbusRelayConfig(port=str(port.link), address=2, coil=1)),
        make_relay("d", FakeRelayConfig()),
    ]
    assert [type(r) for r in made] == [GpioRelay, LcusRelay, ModbusRelay, FakeRelay]
    assert all(isinstance(r, Relay) for r in made)
    for r in made:
        await r.aclose()


async def test_fake_relay_records_and_faults() -> None:
    faults = Faults()
    relay = FakeRelay("gate", on_fault=faults)
    await relay.pulse(20)
    await relay.hold()
    await relay.release()
    assert relay.actions == ["pulse", "on", "hold", "release", "off"]
    relay.fail("unplugged")
    assert faults.calls == [("gate", "unplugged")]
    with pytest.raises(HardwareError, match="unplugged"):
        await relay.pulse(10)
    relay.recover()
    assert faults.calls[-1] == ("gate", None)
    await relay.pulse(10)
    await asyncio.sleep(0.05)
    assert relay.actions[-2:] == ["on", "off"]
    times = [t for t, _ in relay.records]
    assert times == sorted(times)
