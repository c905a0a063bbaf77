"""Serial sources over real pseudo-terminal pairs: reads, bad frames, unplug and replug."""

from __future__ import annotations

import asyncio
import logging
import os
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gated.config import Rdm6300SourceConfig, SerialLineSourceConfig
from gated.errors import HardwareError
from gated.hardware.base import PlateSource
from gated.hardware.readers import Rdm6300Reader, SerialLineReader, encode_rdm6300_frame
from gated.model import CredentialKind, PlateRead

GOLDEN = encode_rdm6300_frame(0x62, 0xE3086CED)


@dataclass
class FakeDevice:
    """A pty pair whose slave is reachable through a stable symlink, like /dev/serial/by-id."""

    link: Path
    master: int = -1
    slave: int = -1

    def plug(self) -> None:
        """Create a fresh pty pair and point the link at it (a device appearing)."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo / line editing before gated opens the port
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(self.link)

    def unplug(self) -> None:
        """Close both ends and remove the link (the USB adapter pulled out)."""
        self.link.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1

    def write(self, data: bytes) -> None:
        """Bytes from the reader hardware towards gated."""
        os.write(self.master, data)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[FakeDevice]:
    dev = FakeDevice(tmp_path / "ttyREADER")
    dev.plug()
    yield dev
    dev.unplug()


async def until(pred: Callable[[], bool]) -> None:
    """Wait until pred() holds (state set by the port thread); fail when it never does."""
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition never became true")


async def start(source: PlateSource) -> tuple[asyncio.Task[None], list[PlateRead]]:
    reads: list[PlateRead] = []
    task = asyncio.create_task(source.run(reads.append))
    return task, reads


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_line_reader_emits_plate_reads(device: FakeDevice) -> None:
    cfg = SerialLineSourceConfig(name="lpr-1", port=str(device.link))
    src = SerialLineReader(cfg, "main-in")
    assert isinstance(src, PlateSource)
    task, reads = await start(src)
    await until(lambda: src.status.connected)
    device.write(b"AB-123-C\r\n!!garbage!!\r\nXY99ZZ\n")
    await until(lambda: len(reads) == 2)
    await stop(task)
    assert [r.text for r in reads] == ["AB-123-C", "XY99ZZ"]
    first = reads[0]
    assert first.access_point == "main-in"
    assert first.source == "lpr-1"
    assert first.vendor == "serial"
    assert first.kind is CredentialKind.PLATE
    assert first.confidence is None
    assert src.status.dropped["no_match"] == 1


async def test_line_reader_as_tag_reader_with_confidence(device: FakeDevice) -> None:
    cfg = SerialLineSourceConfig(
        name="wiegand-bridge",
        port=str(device.link),
        pattern=r"^ID:(?P<text>\d{4,12}) Q:(?P<confidence>\d+)$",
        credential="tag",
    )
    src = SerialLineReader(cfg, "side-door")
    task, reads = await start(src)
    await until(lambda: src.status.connected)
    device.write(b"ID:0012345678 Q:97\r")
    await until(lambda: len(reads) == 1)
    await stop(task)
    assert reads[0].kind is CredentialKind.TAG
    assert reads[0].text == "0012345678"
    assert reads[0].confidence == pytest.approx(0.97)


async def test_rdm6300_held_card_is_one_read_and_bad_frames_are_counted(
    device: FakeDevice,
) -> None:
    src = Rdm6300Reader(Rdm6300SourceConfig(name="rfid-1", port=str(device.link)), "gate-2")
    task, reads = await start(src)
    await until(lambda: src.status.connected)
    corrupt = GOLDEN[:11] + b"00" + b"\x03"  # checksum wrong
    device.write(b"\xff\x00" + GOLDEN[:6] + GOLDEN + GOLDEN + corrupt + GOLDEN)
    other = encode_rdm6300_frame(0x13, 0x005D1D4D)
    device.write(other)
    await until(lambda: len(reads) == 2)
    await until(lambda: src.status.repeats_suppressed == 2)
    await stop(task)
    assert [r.text for r in reads] == ["3808980205", "0006102349"]
    assert reads[0].kind is CredentialKind.TAG
    assert reads[0].vendor == "rdm6300"
    assert reads[0].extra["tag_hex"] == "62E3086CED"
    assert src.status.dropped["bad_checksum"] == 1
    assert src.status.dropped["truncated"] == 1
    assert src.status.dropped["garbage_bytes"] == 2


async def test_unplugged_reader_is_reopened_and_logs_only_state_changes(
    device: FakeDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gated.hardware.readers")
    src = Rdm6300Reader(
        Rdm6300SourceConfig(name="rfid-1", port=str(device.link)),
        "gate-2",
        reopen_initial_s=0.01,
        reopen_max_s=0.05,
    )
    task, reads = await start(src)
    await until(lambda: src.status.connected)
    device.write(GOLDEN)
    await until(lambda: len(reads) == 1)

    device.unplug()
    await until(lambda: not src.status.connected)
    await asyncio.sleep(0.3)  # several failed reopen attempts happen in this time
    device.plug()
    await until(lambda: src.status.connected)
    device.write(encode_rdm6300_frame(1, 42))
    await until(lambda: len(reads) == 2)
    await stop(task)

    assert reads[1].text == "0000000042"
    assert src.status.reconnects == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lost" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1


async def test_missing_port_at_start_is_retried_until_it_appears(tmp_path: Path) -> None:
    dev = FakeDevice(tmp_path / "ttyLATE")
    src = SerialLineReader(
        SerialLineSourceConfig(name="lpr-late", port=str(dev.link)),
        "main-in",
        reopen_initial_s=0.01,
        reopen_max_s=0.05,
    )
    task, reads = await start(src)
    await asyncio.sleep(0.1)
    assert not src.status.connected
    dev.plug()
    try:
        await until(lambda: src.status.connected)
        dev.write(b"LATE01\n")
        await until(lambda: len(reads) == 1)
    finally:
        await stop(task)
        dev.unplug()
    assert src.status.reconnects == 0  # a first successful open is not a reconnect


async def test_port_is_exclusive(device: FakeDevice) -> None:
    cfg = Rdm6300SourceConfig(name="rfid-1", port=str(device.link))
    first = Rdm6300Reader(cfg, "gate-2")
    second = Rdm6300Reader(cfg, "gate-2", reopen_initial_s=0.01, reopen_max_s=0.02)
    t1, _ = await start(first)
    await until(lambda: first.status.connected)
    t2, _ = await start(second)
    await asyncio.sleep(0.2)
    assert not second.status.connected
    await stop(t2)
    await stop(t1)


async def test_emit_failure_does_not_stop_the_reader(
    device: FakeDevice, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[PlateRead] = []

    def flaky(read: PlateRead) -> None:
        if not got and read.text == "BOOM01":
            got.append(read)
            raise RuntimeError("consumer bug")
        got.append(read)

    src = SerialLineReader(SerialLineSourceConfig(name="lpr-1", port=str(device.link)), "x")
    task = asyncio.create_task(src.run(flaky))
    await until(lambda: src.status.connected)
    device.write(b"BOOM01\nFINE02\n")
    await until(lambda: len(got) == 2)
    await stop(task)
    assert [r.text for r in got] == ["BOOM01", "FINE02"]
    assert "emit failed" in caplog.text


async def test_crashing_port_thread_surfaces_as_hardware_error() -> None:
    def broken_opener() -> object:
        raise RuntimeError("driver bug")

    src = SerialLineReader(
        SerialLineSourceConfig(name="lpr-1", port="/nonexistent"),
        "x",
        opener=broken_opener,  # type: ignore[arg-type]
    )
    with pytest.raises(HardwareError, match="lpr-1"):
        await asyncio.wait_for(src.run(lambda r: None), 5)
