"""Relay outputs: a GPIO pin (gpiozero), LCUS/CH340 USB serial boards, Modbus RTU boards.

Every relay implements gated.hardware.base.Relay and shares one behaviour (`RelayCore`):

* `pulse(ms)` energises and returns at once; the release is scheduled on the
  event loop. A second pulse extends (never shortens) the running one; a pulse
  on a held relay changes nothing.
* `hold()` energises until `release()`; `release()` cancels any pulse.
* Serial relays own a port. While the port is gone (USB unplugged, cable cut,
  board silent) `fault` says why, commands raise HardwareError, and `run()`
  reopens it with capped, jittered backoff. A reopened board is first driven to
  *released*: a reconnect never leaves the relay energised (the daemon re-issues
  a hold-open after the `on_fault(name, None)` recovery callback if it wants one).
* Serial IO runs on one dedicated worker thread per relay, so a slow port never
  blocks the event loop and never queues behind other work in the default
  executor; the hop costs tens of microseconds.

`run()` must be owned by the daemon's TaskGroup for serial relays: it opens the
port, watches it while idle (so an unplugged board raises the alarm before the
next car arrives, not when it does) and reconnects.

Exercised here with gpiozero MockFactory pins, pty pairs and a fake Modbus
slave only; no real relay board has been driven by these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import serial

from gated.backoff import Backoff
from gated.config import (
    FakeRelayConfig,
    GpioRelayConfig,
    LcusRelayConfig,
    ModbusRelayConfig,
    RelayConfig,
)
from gated.errors import HardwareError
from gated.hardware.relay_core import FaultCallback, RelayCore

if TYPE_CHECKING:
    from gated.hardware.base import Relay

__all__ = [
    "FaultCallback",
    "GpioRelay",
    "LcusRelay",
    "ModbusRefusedError",
    "ModbusRelay",
    "check_write_coil_reply",
    "crc16_modbus",
    "lcus_frame",
    "make_pin_factory",
    "make_relay",
    "modbus_write_coil",
]

log = logging.getLogger(__name__)



# --- frames (pure) -------------------------------------------------------------

LCUS_START = 0xA0


def lcus_frame(channel: int, on: bool) -> bytes:
    """The 4-byte LCUS command `A0 <channel> <state> <sum>` (sum = first three bytes & 0xFF)."""
    if not 1 <= channel <= 0xFF:
        raise ValueError(f"channel must be 1..255, got {channel}")
    state = 0x01 if on else 0x00
    return bytes((LCUS_START, channel, state, (LCUS_START + channel + state) & 0xFF))


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _with_crc(body: bytes) -> bytes:
    """Append the CRC, low byte first as Modbus RTU sends it."""
    return body + crc16_modbus(body).to_bytes(2, "little")


WRITE_SINGLE_COIL = 0x05


def modbus_write_coil(address: int, coil: int, on: bool) -> bytes:
    """Modbus RTU function 05 Write Single Coil: ON = FF 00, OFF = 00 00."""
    if not 1 <= address <= 247:
        raise ValueError(f"slave address must be 1..247, got {address}")
    if not 0 <= coil <= 0xFFFF:
        raise ValueError(f"coil must be 0..65535, got {coil}")
    value = b"\xff\x00" if on else b"\x00\x00"
    return _with_crc(bytes((address, WRITE_SINGLE_COIL)) + coil.to_bytes(2, "big") + value)


MODBUS_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "slave device failure",
    5: "acknowledge",
    6: "slave device busy",
}


class ModbusRefusedError(HardwareError):
    """The board answered with a Modbus exception: it understood and refused."""


def check_write_coil_reply(request: bytes, reply: bytes) -> None:
    """Raise HardwareError unless `reply` is the correct echo of a Write Single Coil `request`."""
    if len(reply) >= 5 and reply[1] == WRITE_SINGLE_COIL | 0x80:
        if crc16_modbus(reply[:3]).to_bytes(2, "little") != reply[3:5]:
            raise HardwareError("modbus exception reply with bad CRC")
        code = reply[2]
        text = MODBUS_EXCEPTIONS.get(code, "unknown")
        raise ModbusRefusedError(f"modbus exception {code:#04x} ({text})")
    if not reply:
        raise HardwareError("modbus timeout: no reply")
    if len(reply) < len(request):
        raise HardwareError(f"modbus timeout: short reply ({len(reply)} of {len(request)} bytes)")
    if crc16_modbus(reply[:-2]).to_bytes(2, "little") != reply[-2:]:
        raise HardwareError("modbus reply with bad CRC")
    if reply[0] != request[0]:
        raise HardwareError(f"modbus reply from slave {reply[0]}, expected {request[0]}")
    if reply != request:
        raise HardwareError("modbus reply does not echo the request")


# --- GPIO ----------------------------------------------------------------------


class GpioRelay(RelayCore):
    """A relay module on a GPIO pin via gpiozero DigitalOutputDevice.

    Most opto-isolated relay modules are active-low (set active_high=False);
    the pin starts released. Tested only with gpiozero MockFactory pins.
    """

    def __init__(
        self,
        name: str,
        pin: int,
        *,
        active_high: bool = True,
        pin_factory: Any = None,
        on_fault: FaultCallback | None = None,
    ) -> None:
        super().__init__(name, on_fault=on_fault)
        # imported here: gpiozero is slow to import on a Pi and serial-only sites skip it
        from gpiozero import DigitalOutputDevice, GPIOZeroError

        try:
            self._device = DigitalOutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
            )
        except (GPIOZeroError, OSError, RuntimeError) as err:
            raise HardwareError(f"relay {name}: cannot use GPIO{pin}: {err}") from err

    async def _drive(self, on: bool) -> None:
        # a GPIO write is a register or ioctl write: microseconds, fine on the loop thread
        try:
            if on:
                self._device.on()
            else:
                self._device.off()
        except Exception as err:
            raise HardwareError(f"GPIO write failed: {err}") from err

    async def _free(self) -> None:
        self._device.close()


# --- serial boards -------------------------------------------------------------


class _SerialRelay(RelayCore):
    """A relay behind a serial port: open, watch, reconnect with backoff."""

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        *,
        timeout_s: float,
        on_fault: FaultCallback | None = None,
        reconnect_base_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        check_interval_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(name, on_fault=on_fault)
        self._port_name = port
        self._baudrate = baudrate
        self._timeout_s = timeout_s
        self._reconnect_base_s = reconnect_base_s
        self._reconnect_max_s = reconnect_max_s
        self._check_interval_s = check_interval_s
        self._rng = rng
        self._serial: serial.SerialBase | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"relay-{name}")
        self._lost = asyncio.Event()
        self._fault = f"{port}: not open yet"  # not reported: nothing has failed yet

    @property
    def port(self) -> str:
        """The configured port path or pyserial URL."""
        return self._port_name

    async def open(self) -> None:
        """Open the port and drive the relay to released; raises HardwareError."""
        if self._closed:
            raise HardwareError(f"relay {self.name}: closed")
        async with self._lock:
            if self._serial is None:
                self._serial = await self._in_thread(self._open_port)
            try:
                await self._in_thread(self._exchange, False)
            except (HardwareError, serial.SerialException, OSError) as err:
                await self._drop_port()
                raise HardwareError(f"{self._port_name}: {err}") from err
            self._energised = False
            self._held = False
        self._set_fault(None)

    async def run(self) -> None:
        """Open the port, watch it while idle, reopen it with backoff; until cancelled."""
        delays: Backoff | None = None
        while not self._closed:
            if self._serial is None:
                try:
                    await self.open()
                    delays = None
                except HardwareError as err:
                    if self._closed:
                        return
                    self._set_fault(str(err))
                    if delays is None:
                        delays = Backoff(
                            self._reconnect_base_s, self._reconnect_max_s, rng=self._rng
                        )
                    await asyncio.sleep(delays.next_delay())
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_interval_s)
            self._lost.clear()
            ser = self._serial
            if ser is not None and not self._port_alive(ser):
                async with self._lock:
                    if self._serial is ser:
                        await self._lose(f"{self._port_name}: port vanished")

    async def _lose(self, reason: str) -> None:
        self._set_fault(reason)
        await self._drop_port()
        self._lost.set()

    async def _drop_port(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            await self._in_thread(_close_quietly, ser)

    async def _drive(self, on: bool) -> None:
        if self._serial is None:
            raise HardwareError(f"{self._port_name}: not open")
        try:
            await self._in_thread(self._exchange, on)
        except (serial.SerialException, OSError) as err:
            raise HardwareError(f"{self._port_name}: {err}") from err

    async def _free(self) -> None:
        await self._drop_port()
        self._executor.shutdown(wait=False)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as err:  # the worker was shut down by aclose()
            raise HardwareError(f"relay {self.name}: closed") from err

    def _open_port(self) -> serial.SerialBase:
        """Open the port (worker thread)."""
        try:
            return serial.serial_for_url(
                self._port_name,
                baudrate=self._baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self._timeout_s,
                write_timeout=1.0,
                exclusive=True,  # a second process driving the same board is a wiring fault
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise HardwareError(f"cannot open {self._port_name}: {err}") from err

    def _exchange(self, on: bool) -> None:
        """Send one command (worker thread); raise on any failure."""
        raise NotImplementedError

    def _port_alive(self, ser: serial.SerialBase) -> bool:
        """Whether an idle port still exists: its path is there and the tty has not hung up."""
        if "://" in self._port_name:
            return True  # pyserial URL handlers (loop://, rfc2217://) have no device node
        if not os.path.exists(self._port_name):
            return False
        fd = getattr(ser, "fd", None)
        if fd is None:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLHUP | select.POLLERR)
        try:
            events = poller.poll(0)
        except OSError:
            return False
        return not any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events)


def _close_quietly(ser: serial.SerialBase) -> None:
    with contextlib.suppress(Exception):
        ser.close()


class LcusRelay(_SerialRelay):
    """One channel of an LCUS-1/2/4/8 (CH340) USB relay board; the board sends no reply.

    Because there is no acknowledgement, an unplugged board is noticed by the
    write failing or by the idle watch (device node gone, tty hung up).
    """

    def __init__(
        self,
        name: str,
        port: str,
        *,
        channel: int = 1,
        baudrate: int = 9600,
        on_fault: FaultCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, port, baudrate, timeout_s=0.1, on_fault=on_fault, **kwargs)
        self._on_frame = lcus_frame(channel, True)
        self._off_frame = lcus_frame(channel, False)

    def _exchange(self, on: bool) -> None:
        assert self._serial is not None
        # no flush/drain: 4 bytes into an empty tty buffer; waiting for the wire
        # would add ~4 ms at 9600 baud to every gate opening for no information
        self._serial.write(self._on_frame if on else self._off_frame)


class ModbusRelay(_SerialRelay):
    """One coil of a Modbus RTU relay board (function 05); every write must be echoed.

    A bad CRC, an exception response or silence past timeout_ms (after `retries`
    repeats, safe because writing a coil is idempotent) faults the relay.
    """

    def __init__(
        self,
        name: str,
        port: str,
        *,
        address: int = 1,
        coil: int = 0,
        baudrate: int = 9600,
        timeout_ms: int = 200,
        retries: int = 1,
        on_fault: FaultCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name, port, baudrate, timeout_s=timeout_ms / 1000.0, on_fault=on_fault, **kwargs
        )
        self._on_frame = modbus_write_coil(address, coil, True)
        self._off_frame = modbus_write_coil(address, coil, False)
        self._retries = retries

    def _exchange(self, on: bool) -> None:
        request = self._on_frame if on else self._off_frame
        last: HardwareError | None = None
        for _ in range(self._retries + 1):
            try:
                self._once(request)
                return
            except ModbusRefusedError:
                raise  # the board understood and refused: repeating will not help
            except HardwareError as err:
                last = err
        assert last is not None
        raise last

    def _once(self, request: bytes) -> None:
        ser = self._serial
        assert ser is not None
        ser.reset_input_buffer()  # a late reply to an earlier, timed-out request is stale
        ser.write(request)
        head = ser.read(5)  # an exception reply is 5 bytes; a normal echo is 8
        if len(head) == 5 and head[1] != WRITE_SINGLE_COIL | 0x80:
            head += ser.read(len(request) - 5)
        check_write_coil_reply(request, head)


# --- construction --------------------------------------------------------------


def make_relay(
    name: str,
    cfg: RelayConfig,
    *,
    pin_factory: Any = None,
    on_fault: FaultCallback | None = None,
) -> Relay:
    """Build the relay a lane's config describes (serial relays open in run())."""
    if isinstance(cfg, GpioRelayConfig):
        return GpioRelay(
            name, cfg.pin, active_high=cfg.active_high, pin_factory=pin_factory, on_fault=on_fault
        )
    if isinstance(cfg, LcusRelayConfig):
        return LcusRelay(
            name, cfg.port, channel=cfg.channel, baudrate=cfg.baudrate, on_fault=on_fault
        )
    if isinstance(cfg, ModbusRelayConfig):
        return ModbusRelay(
            name,
            cfg.port,
            address=cfg.address,
            coil=cfg.coil,
            baudrate=cfg.baudrate,
            timeout_ms=cfg.timeout_ms,
            on_fault=on_fault,
        )
    if isinstance(cfg, FakeRelayConfig):
        from gated.hardware.fake import FakeRelay

        return FakeRelay(name, on_fault=on_fault)
    raise HardwareError(f"relay {name}: unsupported relay config {type(cfg).__name__}")


def make_pin_factory(kind: str) -> Any:
    """A gpiozero pin factory for [gpio].pin_factory ("auto" → None: gpiozero chooses)."""
    if kind == "auto":
        return None
    try:
        if kind == "mock":
            from gpiozero.pins.mock import MockFactory

            return MockFactory()
        if kind == "lgpio":
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        if kind == "rpigpio":
            from gpiozero.pins.rpigpio import RPiGPIOFactory

            return RPiGPIOFactory()
        if kind == "pigpio":
            from gpiozero.pins.pigpio import PiGPIOFactory

            return PiGPIOFactory()
        if kind == "native":
            from gpiozero.pins.native import NativeFactory

            return NativeFactory()
    except Exception as err:  # ImportError, or the library found no GPIO chip
        raise HardwareError(f"gpio.pin_factory {kind!r} is not usable here: {err}") from err
    raise HardwareError(f"gpio.pin_factory: unknown pin factory {kind!r}")
