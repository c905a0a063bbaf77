"""Serial plate/credential readers (line-based, RDM6300 RFID) and the read simulator.

Every source here implements base.PlateSource: `await source.run(emit)` produces
PlateReads until cancelled, calling `emit` on the event-loop thread.

Serial ports are owned by one thread each (`SerialLink`): pyserial's blocking
read never touches the event loop, and received bytes cross into asyncio
through one helper, `gated.hardware.threads.call_in_loop`. A port that
disappears (USB unplugged) is reopened with capped, jittered backoff; the log
says "port lost" once and "recovered" once, never once per retry.

The byte-level parsers (`LineParser`, `Rdm6300Parser`) are pure: they take
bytes and return values, count what they drop, and never raise on bad input.
`parse_line` and `parse_rdm6300_frame` validate one unit and raise
PayloadError with a clear message; the stream parsers count those by reason.

Exercised here only through pseudo-terminal pairs and pyserial: no physical
RDM6300 or serial ANPR reader was attached while this was written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import string
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import serial

from gated.backoff import Backoff
from gated.config import Rdm6300SourceConfig, SerialLineSourceConfig, SimulatorSourceConfig
from gated.errors import HardwareError, PayloadError
from gated.hardware.base import Emit
from gated.hardware.threads import call_in_loop, run_in_thread
from gated.model import CredentialKind, PlateRead

__all__ = [
    "LineMatch",
    "LineParser",
    "Rdm6300Parser",
    "Rdm6300Reader",
    "RepeatFilter",
    "SerialLineReader",
    "SerialLink",
    "SimulatorSource",
    "SourceStatus",
    "TagFrame",
    "call_in_loop",
    "encode_rdm6300_frame",
    "parse_line",
    "parse_rdm6300_frame",
    "render_plate_jpeg",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# --- small shared helpers ------------------------------------------------------


@dataclass(slots=True)
class SourceStatus:
    """Live counters of one serial source, for the status page and /metrics."""

    connected: bool = False
    reconnects: int = 0  # successful reopenings after a loss
    reads: int = 0  # reads emitted
    repeats_suppressed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> count


# --- line-based readers ----------------------------------------------------------

_CONFIDENCE_GROUP = "confidence"


@dataclass(frozen=True, slots=True)
class LineMatch:
    """The credential a line carried, and the confidence if the pattern captured one."""

    text: str
    confidence: float | None = None


def parse_line(line: bytes, pattern: re.Pattern[str]) -> LineMatch:
    """Extract the credential from one line (terminator already removed); PayloadError if none.

    `pattern` must have a named group `text`; an optional group `confidence`
    may hold 0..1 or a percentage (0..100, with or without `%`).
    """
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError(f"serial line is not valid UTF-8 at byte {err.start}") from err
    decoded = decoded.strip().strip("\x00")
    m = pattern.search(decoded)
    if m is None:
        raise PayloadError(f"serial line does not match the pattern ({len(decoded)} chars)")
    text = (m.group("text") or "").strip()
    if not text:
        raise PayloadError("serial line matched but the text group is empty")
    confidence = None
    if _CONFIDENCE_GROUP in pattern.groupindex and m.group(_CONFIDENCE_GROUP):
        confidence = _parse_confidence(m.group(_CONFIDENCE_GROUP))
    return LineMatch(text, confidence)


def _parse_confidence(raw: str) -> float:
    """0..1 as is; 1..100 (optionally with %) as a percentage; anything else is an error."""
    cleaned = raw.strip().rstrip("%").strip()
    try:
        value = float(cleaned)
    except ValueError as err:
        raise PayloadError(f"confidence {raw[:16]!r} is not a number") from err
    if not 0.0 <= value <= 100.0 or value != value:  # NaN fails the comparison anyway
        raise PayloadError(f"confidence {value} is outside 0..1 and 0..100")
    return value / 100.0 if value > 1.0 or raw.strip().endswith("%") else value


class LineParser:
    """Splits a byte stream into CR / LF / CRLF lines and parses each; pure, never raises.

    A line longer than `max_line` bytes is garbage (a wrong baud rate, a stuck
    reader): its bytes are dropped up to the next terminator and counted.
    """

    def __init__(self, pattern: str | re.Pattern[str], max_line: int = 256) -> None:
        self._pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        if "text" not in self._pattern.groupindex:
            raise ValueError("pattern needs a named group (?P<text>…)")
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._max_line = max_line
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: skip to the next terminator
        self.dropped: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[LineMatch]:
        """Consume bytes; return the credentials of every complete, valid line."""
        out: list[LineMatch] = []
        for chunk in _split_keep_terminators(data):
            if chunk in (b"\r", b"\n"):
                self._end_line(out)
                continue
            if self._discarding:
                continue
            self._buf += chunk
            if len(self._buf) > self._max_line:
                self.dropped["line_too_long"] += 1
                self._buf.clear()
                self._discarding = True
        return out

    def _end_line(self, out: list[LineMatch]) -> None:
        if self._discarding:
            self._discarding = False
            return
        if not self._buf:
            return  # the LF of a CRLF, or blank lines
        line = bytes(self._buf)
        self._buf.clear()
        try:
            out.append(parse_line(line, self._pattern))
        except PayloadError as err:
            self._note_drop(_reason_of(err), err)

    def _note_drop(self, reason: str, err: PayloadError) -> None:
        self.dropped[reason] += 1
        log.debug("serial line dropped: %s", err)


_TERMINATORS = re.compile(rb"(\r|\n)")


def _split_keep_terminators(data: bytes) -> Iterator[bytes]:
    """Yield the runs of data between terminators, and each terminator byte on its own."""
    for part in _TERMINATORS.split(data):
        if part:
            yield part


def _reason_of(err: PayloadError) -> str:
    """A short counter key for a parse error."""
    msg = str(err)
    if "UTF-8" in msg:
        return "not_utf8"
    if "confidence" in msg:
        return "bad_confidence"
    if "empty" in msg:
        return "empty_text"
    return "no_match"


# --- RDM6300 ---------------------------------------------------------------------

STX = 0x02
ETX = 0x03
_RDM_BODY = 12  # 10 hex data chars (version byte + 4 tag bytes) + 2 hex checksum chars
_HEX = frozenset(b"0123456789ABCDEFabcdef")


@dataclass(frozen=True, slots=True)
class TagFrame:
    """One valid RDM6300 frame: the version (customer) byte and the 32-bit tag number."""

    version: int
    tag: int

    @property
    def text(self) -> str:
        """The tag as most 125 kHz cards print it: the 4 tag bytes as a 10-digit decimal."""
        return f"{self.tag:010d}"

    @property
    def hex(self) -> str:
        """All 5 data bytes as 10 upper-case hex digits, as the reader sent them."""
        return f"{self.version:02X}{self.tag:08X}"


def encode_rdm6300_frame(version: int, tag: int) -> bytes:
    """The 14-byte frame an RDM6300 sends for this card (for tests and fake readers)."""
    if not 0 <= version <= 0xFF or not 0 <= tag <= 0xFFFF_FFFF:
        raise ValueError("version must fit 1 byte and tag 4 bytes")
    data = bytes([version]) + tag.to_bytes(4, "big")
    checksum = 0
    for b in data:
        checksum ^= b
    return bytes([STX]) + f"{data.hex().upper()}{checksum:02X}".encode("ascii") + bytes([ETX])


def parse_rdm6300_frame(frame: bytes) -> TagFrame:
    """Validate one complete frame (STX … ETX, 14 bytes); PayloadError says what is wrong.

    Format (checked against public RDM6300 drivers): STX, 10 ASCII hex data
    characters (1 version byte + 4 tag bytes), 2 ASCII hex characters of the XOR
    of the 5 data bytes, ETX; 9600 baud 8N1.
    """
    if len(frame) != _RDM_BODY + 2:
        raise PayloadError(f"RDM6300 frame has {len(frame)} bytes, expected 14")
    if frame[0] != STX or frame[-1] != ETX:
        raise PayloadError("RDM6300 frame does not start with STX and end with ETX")
    body = frame[1:-1]
    if not all(b in _HEX for b in body):
        raise PayloadError("RDM6300 frame has a non-hex character")
    raw = bytes.fromhex(body.decode("ascii"))
    data, sent = raw[:5], raw[5]
    computed = 0
    for b in data:
        computed ^= b
    if computed != sent:
        raise PayloadError(f"RDM6300 checksum mismatch (sent {sent:02X}, computed {computed:02X})")
    return TagFrame(version=data[0], tag=int.from_bytes(data[1:], "big"))


class Rdm6300Parser:
    """Finds RDM6300 frames in a byte stream; resynchronises on garbage; pure, never raises.

    Any STX restarts a frame (the data characters are ASCII hex, so a real STX
    can never occur inside one): a frame cut short by noise or a reset costs
    only itself, and the next frame is read intact.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self.dropped: Counter[str] = Counter()

    def feed(self, data: bytes) -> list[TagFrame]:
        """Consume bytes; return every frame with a valid checksum, in order."""
        out: list[TagFrame] = []
        for b in data:
            if b == STX:
                if self._in_frame and self._buf:
                    self.dropped["truncated"] += 1
                self._in_frame = True
                self._buf.clear()
                continue
            if not self._in_frame:
                if b not in (0x0D, 0x0A):  # some clones add CR/LF between frames: not noise
                    self.dropped["garbage_bytes"] += 1
                continue
            self._buf.append(b)
            if len(self._buf) == _RDM_BODY + 1:
                self._in_frame = False
                frame = bytes([STX]) + bytes(self._buf)
                self._buf.clear()
                try:
                    out.append(parse_rdm6300_frame(frame))
                except PayloadError as err:
                    reason = "bad_checksum" if "checksum" in str(err) else "malformed"
                    self.dropped[reason] += 1
                    log.debug("RDM6300 frame dropped: %s", err)
        return out


class RepeatFilter:
    """Suppresses a credential repeated within `window_s` of its previous sighting.

    An RDM6300 repeats its frame for as long as a card is held to it; the window
    slides with each repeat, so a held card yields one read and presenting it
    again after a pause yields a new one. Pure: pass `now` (monotonic seconds).
    """

    def __init__(self, window_s: float) -> None:
        self._window = window_s
        self._last_text: str | None = None
        self._last_seen = 0.0

    def accept(self, text: str, now: float) -> bool:
        """True when this sighting is new, False when it repeats the previous one."""
        repeat = (
            text == self._last_text
            and self._window > 0
            and 0.0 <= now - self._last_seen <= self._window
        )
        self._last_text = text
        self._last_seen = now
        return not repeat


# --- the port thread -----------------------------------------------------------------

OnData = Callable[[bytes, float, float], None]  # (bytes, received monotonic, received wall)
Opener = Callable[[], serial.SerialBase]


class SerialLink:
    """Owns one serial port in a thread; hands received bytes to the event loop.

    The port is opened exclusively (flock), so a second daemon on the same reader
    fails loudly instead of stealing half the bytes.
    """

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        *,
        opener: Opener | None = None,
        reopen_initial_s: float = 0.5,
        reopen_max_s: float = 30.0,
        read_timeout_s: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self._opener = opener or (
            lambda: serial.serial_for_url(
                port, baudrate=baudrate, timeout=read_timeout_s, exclusive=True
            )
        )
        self._reopen_initial = reopen_initial_s
        self._reopen_max = reopen_max_s
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._serial: serial.SerialBase | None = None
        self.connected = False
        self.reconnects = 0
        self._state = "new"  # new -> up <-> down; logged on change only
        self._ever_up = False

    async def run(self, on_data: OnData) -> None:
        """Read until cancelled, calling on_data(bytes, mono, wall) on the loop thread."""
        loop = asyncio.get_running_loop()
        self._stop.clear()

        def interrupt() -> None:
            port = self._serial
            if port is not None and hasattr(port, "cancel_read"):
                with contextlib.suppress(Exception):
                    port.cancel_read()

        failure = await run_in_thread(
            f"serial-{self.name}",
            lambda: self._pump(loop, on_data),
            self._stop,
            interrupt=interrupt,
        )
        if failure is not None:
            raise HardwareError(f"serial reader {self.name}: reader thread failed") from failure
        raise HardwareError(f"serial reader {self.name}: reader thread stopped")

    def _pump(self, loop: asyncio.AbstractEventLoop, on_data: OnData) -> None:
        backoff = Backoff(self._reopen_initial, self._reopen_max, rng=self._rng)
        while not self._stop.is_set():
            try:
                port = self._opener()
            except (serial.SerialException, OSError, ValueError) as err:
                self._lost(err)
                self._stop.wait(backoff.next_delay())
                continue
            backoff.reset()
            self._serial = port
            self._up()
            try:
                while not self._stop.is_set():
                    data = port.read(1)
                    if not data:
                        continue
                    waiting = port.in_waiting
                    if waiting:
                        data += port.read(waiting)
                    if not call_in_loop(loop, on_data, data, time.monotonic(), time.time()):
                        return
            except (serial.SerialException, OSError) as err:
                self._lost(err)
            finally:
                self._serial = None
                with contextlib.suppress(Exception):
                    port.close()

    def _up(self) -> None:
        if self._state == "down":
            self.reconnects += self._ever_up  # a first open after failures is not a reconnect
            log.warning("serial reader %s: port %s recovered", self.name, self.port)
        elif self._state == "new":
            log.info("serial reader %s: port %s open", self.name, self.port)
        self._state = "up"
        self._ever_up = True
        self.connected = True

    def _lost(self, err: BaseException) -> None:
        self.connected = False
        if self._stop.is_set() or self._state == "down":
            return  # closing on purpose is not a loss; retries are not news
        what = "lost" if self._state == "up" else "cannot be opened"
        log.warning("serial reader %s: port %s %s: %s", self.name, self.port, what, err)
        self._state = "down"


# --- the sources ---------------------------------------------------------------------


class _SerialSource:
    """Shared plumbing of the serial sources: a SerialLink and emit-side bookkeeping."""

    vendor = "serial"

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        access_point: str,
        *,
        opener: Opener | None = None,
        reopen_initial_s: float = 0.5,
        reopen_max_s: float = 30.0,
    ) -> None:
        self.name = name
        self.access_point = access_point
        self._link = SerialLink(
            name,
            port,
            baudrate,
            opener=opener,
            reopen_initial_s=reopen_initial_s,
            reopen_max_s=reopen_max_s,
        )
        self._status = SourceStatus()
        self._emit: Emit | None = None

    @property
    def status(self) -> SourceStatus:
        """Connection state and counters (a live object; read, do not modify)."""
        self._status.connected = self._link.connected
        self._status.reconnects = self._link.reconnects
        return self._status

    async def run(self, emit: Emit) -> None:
        """Produce reads until cancelled; raises HardwareError if the port thread dies."""
        self._emit = emit
        await self._link.run(self._on_data)

    def _on_data(self, data: bytes, mono: float, wall: float) -> None:
        raise NotImplementedError

    def _deliver(self, read: PlateRead) -> None:
        assert self._emit is not None
        self._status.reads += 1
        try:
            self._emit(read)
        except Exception:  # a consumer bug must not kill the reader; it is loud in the log
            log.exception("serial reader %s: emit failed", self.name)


class SerialLineReader(_SerialSource):
    """A line-based serial plate or credential reader (one credential per CR/LF line).

    The config's `pattern` picks the credential out of each line with a named
    group `text`; a group named `confidence` is used when present.
    """

    def __init__(
        self,
        cfg: SerialLineSourceConfig,
        access_point: str,
        *,
        max_line: int = 256,
        opener: Opener | None = None,
        reopen_initial_s: float = 0.5,
        reopen_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            cfg.name,
            cfg.port,
            cfg.baudrate,
            access_point,
            opener=opener,
            reopen_initial_s=reopen_initial_s,
            reopen_max_s=reopen_max_s,
        )
        self._parser = LineParser(cfg.pattern, max_line=max_line)
        self._kind = CredentialKind.TAG if cfg.credential == "tag" else CredentialKind.PLATE
        self._status.dropped = self._parser.dropped  # one live counter, shared

    def _on_data(self, data: bytes, mono: float, wall: float) -> None:
        for m in self._parser.feed(data):
            self._deliver(
                PlateRead(
                    access_point=self.access_point,
                    text=m.text,
                    source=self.name,
                    read_at=wall,
                    received_mono=mono,
                    confidence=m.confidence,
                    kind=self._kind,
                    vendor=self.vendor,
                )
            )


class Rdm6300Reader(_SerialSource):
    """An RDM6300 125 kHz RFID reader; emits one TAG read per presentation of a card.

    Read text is the 10-digit zero-padded decimal of the 4 tag bytes (what
    EM4100 cards and key fobs usually have printed on them, and what ESPHome
    and most access-control software show); `extra` keeps the full hex
    (`tag_hex`, version byte included) for sites that enrolled hex numbers.
    """

    vendor = "rdm6300"

    def __init__(
        self,
        cfg: Rdm6300SourceConfig,
        access_point: str,
        *,
        repeat_window_s: float = 1.0,
        opener: Opener | None = None,
        reopen_initial_s: float = 0.5,
        reopen_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            cfg.name,
            cfg.port,
            cfg.baudrate,
            access_point,
            opener=opener,
            reopen_initial_s=reopen_initial_s,
            reopen_max_s=reopen_max_s,
        )
        self._parser = Rdm6300Parser()
        self._repeats = RepeatFilter(repeat_window_s)
        self._status.dropped = self._parser.dropped

    def _on_data(self, data: bytes, mono: float, wall: float) -> None:
        for frame in self._parser.feed(data):
            if not self._repeats.accept(frame.hex, mono):
                self._status.repeats_suppressed += 1
                continue
            self._deliver(
                PlateRead(
                    access_point=self.access_point,
                    text=frame.text,
                    source=self.name,
                    read_at=wall,
                    received_mono=mono,
                    confidence=1.0,  # checksummed: the reader either has the number or nothing
                    kind=CredentialKind.TAG,
                    vendor=self.vendor,
                    extra={"tag_hex": frame.hex},
                )
            )


# --- the simulator ---------------------------------------------------------------------

# Shapes of plates seen at European gates: L = letter, D = digit, others literal.
_PLATE_SHAPES = ("LLDDLLL", "LL-DDD-L", "D-LLL-DD", "LLL-DD-D", "LDDLLL", "LLDDDD")
# Letters real plates avoid, so generated plates look plausible.
_PLATE_LETTERS = "".join(c for c in string.ascii_uppercase if c not in "IOQU")
# What OCR engines commonly swap (both directions).
_CONFUSIONS = {
    "0": "O", "O": "0", "1": "I", "I": "1", "8": "B", "B": "8", "5": "S", "S": "5",
    "2": "Z", "Z": "2", "6": "G", "G": "6", "D": "0", "M": "N", "N": "M",
}  # fmt: skip


class SimulatorSource:
    """Scripted or random plate reads for demos and tests; optionally with a JPEG snapshot.

    With `plates` configured it cycles through them exactly, at the configured
    confidence. Without, a seeded RNG makes realistic plates; a car is often
    read twice in a row, sometimes with an OCR-style confusion (0/O, 8/B …) and
    a lower confidence, which exercises the read coalescer and fuzzy matching.
    """

    vendor = "simulator"

    def __init__(
        self,
        cfg: SimulatorSourceConfig,
        access_point: str,
        *,
        snapshots: bool = True,
        clock: Clock = time.time,
        mono: Clock = time.monotonic,
    ) -> None:
        self.name = cfg.name
        self.access_point = access_point
        self._cfg = cfg
        self._snapshots = snapshots
        self._clock = clock
        self._mono = mono
        self._rng = random.Random(cfg.seed)
        self._index = 0
        self._last_plate: str | None = None

    def next_read(self) -> PlateRead:
        """The next simulated read (deterministic for a given seed)."""
        if self._cfg.plates:
            text = self._cfg.plates[self._index % len(self._cfg.plates)]
            self._index += 1
            confidence = self._cfg.confidence
        else:
            text, confidence = self._random_read()
        # The picture comes with the read, as a camera's does: rendering it is not
        # part of the read → relay latency the daemon measures from received_mono.
        snapshot = render_plate_jpeg(text) if self._snapshots else None
        return PlateRead(
            access_point=self.access_point,
            text=text,
            source=self.name,
            read_at=self._clock(),
            received_mono=self._mono(),
            confidence=confidence,
            snapshot=snapshot,
            vendor=self.vendor,
        )

    async def run(self, emit: Emit) -> None:
        """Emit one read every interval_s until cancelled."""
        while True:
            await asyncio.sleep(self._cfg.interval_s)
            emit(self.next_read())

    def _random_read(self) -> tuple[str, float]:
        rng = self._rng
        base = self._cfg.confidence
        if self._last_plate is not None and rng.random() < 0.35:
            plate, self._last_plate = self._last_plate, None  # the same car, read again
        else:
            plate = _random_plate(rng)
            self._last_plate = plate
        text = plate
        confidence = min(1.0, max(0.0, base + rng.uniform(-0.08, 0.05)))
        if rng.random() < 0.2:
            text = _confuse(plate, rng)
            confidence = max(0.0, confidence - rng.uniform(0.1, 0.3))
        return text, round(confidence, 3)


def _random_plate(rng: random.Random) -> str:
    shape = rng.choice(_PLATE_SHAPES)
    return "".join(
        rng.choice(_PLATE_LETTERS) if c == "L" else str(rng.randrange(10)) if c == "D" else c
        for c in shape
    )


def _confuse(plate: str, rng: random.Random) -> str:
    spots = [i for i, c in enumerate(plate) if c in _CONFUSIONS]
    if not spots:
        return plate
    i = rng.choice(spots)
    return plate[:i] + _CONFUSIONS[plate[i]] + plate[i + 1 :]


def render_plate_jpeg(text: str, size: Sequence[int] = (320, 160), quality: int = 80) -> bytes:
    """A small synthetic JPEG of a plate with `text` on it (for demo journals)."""
    import cv2  # imported here: OpenCV costs import time the serial readers should not pay
    import numpy as np

    width, height = int(size[0]), int(size[1])
    img = np.full((height, width, 3), 70, dtype=np.uint8)  # grey "car"
    x0, y0, x1, y1 = width // 8, height // 3, width - width // 8, height - height // 4
    cv2.rectangle(img, (x0, y0), (x1, y1), (240, 240, 240), thickness=-1)
    cv2.rectangle(img, (x0, y0), (x1, y1), (20, 20, 20), thickness=2)
    scale = max(0.4, (x1 - x0) / (30.0 * max(1, len(text))))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
    origin = (x0 + max(2, ((x1 - x0) - tw) // 2), y0 + ((y1 - y0) + th) // 2)
    cv2.putText(img, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (10, 10, 10), 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise HardwareError("could not encode the simulated snapshot")
    return buf.tobytes()
