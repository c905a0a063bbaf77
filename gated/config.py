"""TOML configuration → typed, frozen, validated objects.

Every section is a msgspec Struct with `forbid_unknown_fields`, so a typo is an
error, not a silently ignored key. Errors are one line naming the file, the key
path (`lanes[1].relay.pulse_ms`, indices from 0) and what is wrong.
`config/gated.example.toml` documents every setting; tests keep the two in step.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from gated.errors import ConfigError
from gated.model import AntiPassback, Direction, Mode, SiteIdentity

EX_CONFIG = 78  # sysexits.h: configuration error
DEFAULT_CONFIG = "/etc/gated/gated.toml"  # where gated run and the CLI look without --config

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Ident = Annotated[str, msgspec.Meta(pattern=_ID)]
PositiveMs = Annotated[int, msgspec.Meta(ge=1, le=600_000)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=86_400 * 30)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
GpioPin = Annotated[int, msgspec.Meta(ge=0, le=53)]
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# A value as a camera reports it, lower-cased (sources lower-case what they receive).
CameraWord = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9 _.-]{0,31}$")]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config section: frozen, strict, keyword-only."""


# --- site, storage -----------------------------------------------------------


class SiteConfig(_Section, frozen=True):
    """Who this device is (tenant isolation) and where it is."""

    tenant_id: Ident
    site_id: Ident
    device_id: Ident
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(
                f"timezone: unknown time zone {self.timezone!r} "
                "(use an IANA name such as 'Europe/Amsterdam')"
            ) from err

    @property
    def identity(self) -> SiteIdentity:
        """The identity stamped on every record."""
        return SiteIdentity(self.tenant_id, self.site_id, self.device_id)


class JournalConfig(_Section, frozen=True):
    """Where the journal and snapshots live and how much disk they may use."""

    path: str = "/var/lib/gated/journal.sqlite3"
    snapshot_dir: str = "/var/lib/gated/snapshots"
    snapshot_quota_mb: Annotated[int, msgspec.Meta(ge=1)] = 2048
    snapshot_max_kb: Annotated[int, msgspec.Meta(ge=1, le=20_000)] = 2048
    # How often the chain head (seq, row_hash) is logged and put in the metrics: each
    # published head is an anchor a cut or rebuilt tail cannot match.
    head_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    # WAL bounds (docs/operations.md): a TRUNCATE checkpoint this often, and the size the
    # WAL file is cut back to after a checkpoint that could not truncate it.
    wal_checkpoint_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    wal_limit_mb: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    # Events the disk refused (full, I/O error) wait in memory, in order, up to this many;
    # past it the oldest go, counted and audited (gated.journal.hold, docs/operations.md).
    hold_max_events: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000


class RetentionConfig(_Section, frozen=True):
    """How long rows and snapshots are kept, and the disk quota of the whole state folder."""

    enabled: bool = True
    access_days: Annotated[float, msgspec.Meta(gt=0, le=36_500)] = 90.0
    audit_days: Annotated[float, msgspec.Meta(gt=0, le=36_500)] = 90.0
    snapshot_days: Annotated[float, msgspec.Meta(gt=0, le=36_500)] = 90.0
    # Only rows and pictures the upstream acknowledged are purged by age. false: purge by
    # age whether synced or not (for a device that never syncs; see docs/operations.md).
    require_synced: bool = True
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 3600.0
    # Disk quota of the journal's folder plus the snapshot folder; 0: no quota.
    state_quota_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    quota_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0


class PrivacyConfig(_Section, frozen=True):
    """How long the plate and picture of a read that matched nobody are kept."""

    # Hours after which an unknown plate's text is erased and its picture blurred or
    # deleted (docs/operations.md, "Unknown plates"); 0: kept like every other row.
    unknown_plate_hash_after_h: Annotated[float, msgspec.Meta(ge=0, le=876_000)] = 0.0
    unknown_plate_pictures: Literal["blur", "delete"] = "blur"
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 600.0


class RulesConfig(_Section, frozen=True):
    """Where the rule set is stored."""

    path: str = "/var/lib/gated/rules.sqlite3"


class PolicyConfig(_Section, frozen=True):
    """How reads are matched and when a read may open a gate by itself."""

    min_confidence: Fraction = 0.80
    resident_fuzzy_distance: Annotated[int, msgspec.Meta(ge=0, le=2)] = 1
    visitor_match: Literal["exact", "confusion"] = "exact"
    deny_fuzzy_distance: Annotated[int, msgspec.Meta(ge=0, le=2)] = 1
    anti_passback: AntiPassback = AntiPassback.OFF
    anti_passback_reset_s: Seconds = 4 * 3600
    plate_formats: list[str] = []  # optional regexes a normalised plate must match
    # Schedules and pass windows while the clock is not synchronised and no time base
    # from this boot exists: "deny" (reason clock_unsynced) or "wall" (trust the clock).
    unsynced_clock: Literal["deny", "wall"] = "deny"

    def __post_init__(self) -> None:
        for i, pattern in enumerate(self.plate_formats):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"plate_formats[{i}]: not a valid regex: {err}") from err


# --- relays ------------------------------------------------------------------


class GpioRelayConfig(_Section, frozen=True, tag_field="kind", tag="gpio"):
    """A relay on a GPIO pin (BCM numbering) via gpiozero."""

    pin: GpioPin
    # No default: the wrong polarity energises the relay (opens the gate) whenever gated is
    # not pulsing it, and most modules sold for a Pi are active-low while a guess of "high"
    # looks natural. The installer must say which board is wired.
    active_high: bool | None = None
    pulse_ms: PositiveMs = 800

    def __post_init__(self) -> None:
        if self.active_high is None:
            raise ValueError(
                "active_high: required for a GPIO relay: false for the common active-low "
                "modules (relay on when IN is low: most opto-isolated boards, jumper on L), "
                "true only for a module that switches on a high pin; the wrong choice holds "
                "the gate open while gated is idle (docs/hardware.md)"
            )


class LcusRelayConfig(_Section, frozen=True, tag_field="kind", tag="lcus"):
    """An LCUS/CH340 USB serial relay board channel (A0 ch state sum frames, 9600 8N1)."""

    port: str
    channel: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    baudrate: int = 9600
    pulse_ms: PositiveMs = 800


class ModbusRelayConfig(_Section, frozen=True, tag_field="kind", tag="modbus"):
    """A coil of a Modbus RTU relay board (function 05)."""

    port: str
    address: Annotated[int, msgspec.Meta(ge=1, le=247)] = 1
    coil: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    baudrate: int = 9600
    timeout_ms: PositiveMs = 200
    pulse_ms: PositiveMs = 800


class FakeRelayConfig(_Section, frozen=True, tag_field="kind", tag="fake"):
    """A simulated relay that records what was done to it (demo, tests)."""

    pulse_ms: PositiveMs = 800


RelayConfig = GpioRelayConfig | LcusRelayConfig | ModbusRelayConfig | FakeRelayConfig


# --- plate sources -----------------------------------------------------------


class CameraAuthConfig(_Section, frozen=True):
    """How a camera proves it may push reads: credentials, its address, or both."""

    username: str = ""
    password: str = ""  # secret: never logged
    token: str = ""  # shared secret sent as `Authorization: Bearer …` or `?token=…`
    allowed_ips: list[str] = []  # addresses/networks the camera pushes from, e.g. "10.0.5.21/32"

    def __post_init__(self) -> None:
        if self.username and not self.password:
            raise ValueError("password: required with username")
        for i, net in enumerate(self.allowed_ips):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as err:
                raise ValueError(f"allowed_ips[{i}]: {err}") from err

    @property
    def configured(self) -> bool:
        """True when at least one way of checking the camera is set."""
        return bool(self.username or self.token or self.allowed_ips)


class ConsensusConfig(_Section, frozen=True):
    """How many reads of one passage must agree before a plate is decided (gated.consensus)."""

    reads: Annotated[int, msgspec.Meta(ge=1, le=20)] = 1  # 1: off, every read is decided
    # A single read at or above this confidence is enough by itself; None: never alone.
    unless_confidence: Fraction | None = None
    # One passage lasts this long from its first read; unagreed by then: no_consensus.
    window_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 4.0


class _PlateSourceSection(_Section, frozen=True):
    """What every plate/tag source shares: how the lane treats its reads (gated.ingest)."""

    # What a direction reported by the camera means: "use" it (through direction_map;
    # "in" and "out" mean themselves), or "ignore" it (the lane's direction always).
    camera_direction: Literal["use", "ignore"] = "use"
    # Raw direction (lower case, as the camera says it) → "in" / "out", e.g.
    # {forward = "in", reverse = "out"} for a Hikvision camera facing arriving cars.
    # A raw value not listed (and not "in"/"out") leaves the lane's direction.
    direction_map: dict[CameraWord, Direction] = {}
    # A read travelling against the lane: "ignore" (not journaled), "journal" (denied,
    # reason wrong_direction; never opens) or "decide" (decided in its own direction).
    wrong_direction: Literal["ignore", "journal", "decide"] = "journal"
    # A vehicle seen without a readable plate: "journal" (denied, reason unread_plate,
    # with its picture) or "ignore".
    unread: Literal["journal", "ignore"] = "journal"
    # Older than this by the camera's capture time (device clock synchronised): stale,
    # journaled and never opens. 0 turns the age check off (retained messages stay stale).
    max_age_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 10.0
    # Flag a capture time further than this from the synchronised device clock.
    max_clock_skew_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 5.0
    # Reads of one passage that must agree before a plate is decided; off by default.
    consensus: ConsensusConfig = ConsensusConfig()


class AnprHttpSourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="anpr_http"
):
    """An ANPR camera that pushes reads to gated's HTTP listener."""

    name: Ident
    format: Literal["hikvision", "axis", "platerecognizer", "generic"]
    path: str  # e.g. "/anpr/main-in"; unique per listener
    port: Port | None = None  # default: [listener].port
    auth: CameraAuthConfig = CameraAuthConfig()

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError("path: must start with '/'")


class SerialLineSourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="serial_line"
):
    """A line-based serial plate/credential reader; `pattern` picks the credential out of a line."""

    name: Ident
    port: str
    baudrate: int = 9600
    pattern: str = r"^(?P<text>[A-Za-z0-9 -]{2,16})$"
    credential: Literal["plate", "tag"] = "plate"

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"pattern: not a valid regex: {err}") from err
        if "text" not in compiled.groupindex:
            raise ValueError("pattern: needs a named group (?P<text>…)")


class Rdm6300SourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="rdm6300"
):
    """An RDM6300 125 kHz RFID reader (STX, 10 hex data, 2 hex checksum, ETX at 9600 8N1)."""

    name: Ident
    port: str
    baudrate: int = 9600


# Frigate object labels that carry licence plates (Frigate runs LPR on vehicles).
FRIGATE_LABELS = ("car", "motorcycle", "truck", "bus")


class FrigateSourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="frigate"
):
    """Licence-plate reads from a Frigate NVR over MQTT."""

    name: Ident
    camera: str  # Frigate camera name whose plates belong to this lane
    topic_prefix: str = "frigate"
    # Frigate object labels whose plates are reads; a plate on anything else (a person,
    # a dog) is dropped and counted.
    labels: list[str] = msgspec.field(default_factory=lambda: list(FRIGATE_LABELS))

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError('labels: name at least one Frigate object label (e.g. "car")')
        for i, label in enumerate(self.labels):
            if not label.strip() or len(label) > 64:
                raise ValueError(f'labels[{i}]: expected a Frigate object label such as "car"')


class SimulatorSourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="simulator"
):
    """Scripted or random reads for demos and tests."""

    name: Ident
    plates: list[str] = []  # plates to cycle through; empty: generate
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    confidence: Fraction = 0.93
    seed: int = 0


class CameraConfig(_Section, frozen=True):
    """An OpenCV video stream (RTSP URL, USB device index, or file) used for snapshots."""

    url: str  # "rtsp://…", "/dev/video0", "0" or a file path
    fps_limit: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    stale_after_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    jpeg_quality: Annotated[int, msgspec.Meta(ge=10, le=100)] = 85


# Plate formats the on-device recogniser knows (gated.hardware.recognizer.formats).
PlateRegion = Literal["uk", "de", "fr", "it", "es", "nl", "us"]


class RecognizerConfig(_Section, frozen=True):
    """On-device plate recognition (docs/recognition.md): which backend, models and formats."""

    backend: Literal["rapidocr"] = "rapidocr"
    # A folder of installer-supplied model files; None: the models inside the installed package.
    model_dir: str | None = None
    regions: tuple[PlateRegion, ...] = ()  # plate formats accepted; empty: every known format
    # A read below this (0..1, the whole plate) is not reported: it could open a gate.
    min_confidence: Fraction = 0.6
    threads: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1  # CPU threads of the OCR runtime


class CameraSourceConfig(
    _PlateSourceSection, frozen=True, kw_only=True, tag_field="kind", tag="camera"
):
    """A plain camera (or a video file) whose frames gated reads plates from itself."""

    name: Ident
    url: str  # "rtsp://…", "/dev/video0", "0", or a video file
    fps_limit: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    stale_after_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    jpeg_quality: Annotated[int, msgspec.Meta(ge=10, le=100)] = 85
    # When to recognise: "motion" in the region of interest, "presence" (the lane's loop
    # detector, sensors.presence_pin), or "always" (every frame: for a camera that only
    # sees the lane, and costs the recogniser's CPU all the time).
    trigger: Literal["motion", "presence", "always"] = "motion"
    # The region watched for motion, as fractions of the frame: x0, y0, x1, y1.
    roi: tuple[Fraction, Fraction, Fraction, Fraction] = (0.0, 0.0, 1.0, 1.0)
    # Share of the region's pixels that must change between frames to count as motion.
    motion_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.02
    # Keep recognising this long after the trigger ends (the car stops at the barrier).
    tail_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 3.0
    # A video file at its end: "loop" (start again, for trying it out) or "stop".
    at_end: Literal["loop", "stop"] = "loop"
    recognizer: RecognizerConfig = RecognizerConfig()
    # On by default here, and no single frame is enough: a plate read off one frame may be
    # a badge or a sticker, or a plate cut off by the frame's edge, read as sure as a whole.
    consensus: ConsensusConfig = ConsensusConfig(reads=3)
    max_age_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 0.0  # frames are live

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.roi
        if not (x0 < x1 and y0 < y1):
            raise ValueError("roi: expected x0 < x1 and y0 < y1 (fractions of the frame)")


SourceConfig = (
    AnprHttpSourceConfig
    | SerialLineSourceConfig
    | Rdm6300SourceConfig
    | FrigateSourceConfig
    | SimulatorSourceConfig
    | CameraSourceConfig
)


# --- inputs and the gate -----------------------------------------------------


class ButtonConfig(_Section, frozen=True):
    """A guard button wired to a GPIO pin (to ground, internal pull-up by default)."""

    name: Ident
    pin: GpioPin
    action: Literal["open", "hold_open", "lockdown"]
    lanes: list[Ident] = []  # empty: every lane
    pull_up: bool = True
    long_press_s: Seconds = 0.0  # > 0: the action needs a press this long (guards against bumps)
    bounce_ms: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 50


class GateSensorsConfig(_Section, frozen=True):
    """Optional position switch and vehicle presence inputs of a lane, and gate timings."""

    closed_pin: GpioPin | None = None  # reed/limit switch, active when the gate is closed
    presence_pin: GpioPin | None = None  # loop detector or beam, active while a vehicle is there
    pull_up: bool = True
    open_time_s: Annotated[float, msgspec.Meta(gt=0)] = 8.0  # expected travel time
    held_open_alarm_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0


class LaneConfig(_Section, frozen=True):
    """One access point: its relay, its plate sources, its camera and its sensors."""

    id: Ident  # the access_point name recorded on every event
    name: str = ""
    direction: Direction = Direction.IN
    mode: Mode = Mode.NORMAL
    relay: RelayConfig = FakeRelayConfig()
    sources: list[SourceConfig] = []
    camera: CameraConfig | None = None
    sensors: GateSensorsConfig = GateSensorsConfig()
    dedup_window_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 6.0
    paired_lane: Ident | None = None  # the opposite-direction lane, for anti-passback


# --- services ----------------------------------------------------------------


class ListenerConfig(_Section, frozen=True):
    """The HTTP listener that ANPR cameras push to, and its limits against hostile clients."""

    # The address to listen on. No default: required when a lane has an anpr_http source,
    # so the device never listens on every interface unless the config says "0.0.0.0".
    host: str = ""
    port: Port = 8081
    max_body_kb: Annotated[int, msgspec.Meta(ge=16, le=65536)] = 8192
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    # How long an answer may wait for the journal row that keeps the read (then 503).
    ack_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 5.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_connections_per_address: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 16
    # Request bodies held at once across all connections (reading and parsing).
    max_inflight_mb: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32
    max_parsers: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    # Refusals (401/403) from one address within lockout_window_s before it is locked out.
    lockout_after: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 10
    lockout_window_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    lockout_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 300.0
    # Refusals are audited as one summary row per address and interval.
    refusal_audit_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0

    def __post_init__(self) -> None:
        if self.host:
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", self.host):
                    raise ValueError(
                        f"host: {self.host!r} is neither an IP address nor a host name"
                    ) from None


class MqttConfig(_Section, frozen=True):
    """The MQTT broker (Frigate input now; upstream sync later)."""

    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""
    password: str = ""  # secret: never logged
    client_id: str = ""  # default: "gated-<device_id>"
    tls: bool = False
    tls_ca_file: str = ""  # PEM CA bundle of a private broker CA; empty: the system's CAs
    # TLS client authentication (the broker's require_certificate): a PEM certificate and
    # its unencrypted PEM key. The broker's name is always verified: no "insecure" switch.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 30
    # Reconnect back-off (doubling, jittered): a broker that comes back is seen within
    # reconnect_max_s, so the gate is never blind for minutes after an outage.
    reconnect_min_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    reconnect_max_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0

    def __post_init__(self) -> None:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s: must not exceed reconnect_max_s")
        if self.tls_ca_file and not self.tls:
            raise ValueError("tls_ca_file: set tls = true to use a CA file")
        if self.tls_cert_file and not self.tls:
            raise ValueError("tls_cert_file: set tls = true to use a client certificate")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file: set tls_cert_file and tls_key_file together")
        if self.password and not self.username:
            raise ValueError("password: needs a username")


class SyncHttpConfig(_Section, frozen=True):
    """The service's HTTP API (docs/protocol.md, section 6)."""

    url: str = ""  # base URL, e.g. "https://gate-service.example/"; empty: no HTTP
    token: str = ""  # bearer token (secret: never logged)
    ca_file: str = ""  # PEM CA bundle of a private service CA; empty: the system's CAs
    client_cert: str = ""  # PEM client certificate (TLS client authentication)
    client_key: str = ""  # its PEM private key
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    # With transport = "http" there is no P/commands: the gate long-polls
    # GET …/commands for signed remote commands instead (docs/protocol.md, 11.8), as long
    # as [sync] remote_commands is true. false: this HTTP-only site takes no remote commands.
    commands: bool = True

    def __post_init__(self) -> None:
        if self.url and not re.match(r"^https?://[^/\s]+(/.*)?$", self.url):
            raise ValueError("url: expected an http:// or https:// URL")
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert: set client_cert and client_key together")


class SyncConfig(_Section, frozen=True):
    """Upstream sync: the journal's events to the central service (docs/protocol.md)."""

    enabled: bool = False
    transport: Literal["mqtt", "http"] = "mqtt"
    # "service": synced only on the service's ack of record; "broker": on the broker's
    # PUBACK (a broker that dies loses what it held: docs/protocol.md, section 4).
    ack: Literal["service", "broker"] = "service"
    mqtt: MqttConfig | None = None  # the upstream broker; default: the [mqtt] section
    mqtt_session_expiry_s: Annotated[int, msgspec.Meta(ge=0, le=4_294_967_295)] = 604_800
    # 1,000: drains a backlog ~1.8x faster than 256 (bench.sync) and fits Mosquitto's
    # default queue for a busy service (max_queued_messages 1000; docs/protocol.md, 4).
    mqtt_window: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 1000
    # Events per MQTT message when a batch is sent (the backlog): the broker's and the
    # service's cost is per message. 1: one plain event per message, for a service that
    # takes no arrays; 500 and 1 MiB are what a service must take (docs/protocol.md, 5).
    # The bytes' cap is 1 KiB short of 1 MiB: the topic and header must fit in the
    # broker's max_packet_size (1 MiB in config/mosquitto/gated.conf) beside the payload.
    mqtt_batch_max_events: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100
    mqtt_batch_max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=1_047_552)] = 262_144
    http: SyncHttpConfig = SyncHttpConfig()
    batch_max_events: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    batch_max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=64 * 1024 * 1024)] = 1_048_576
    ack_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    retry_min_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 0.5
    retry_max_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    snapshot_wait_s: Annotated[float, msgspec.Meta(ge=0, le=86_400 * 30)] = 300.0
    head_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0
    heartbeat_interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 60.0
    key_file: str = ""  # the device's Ed25519 key; default: device-ed25519.key beside the journal
    service_public_keys: list[str] = []  # base64 of each raw 32-byte Ed25519 public key
    # Downlink (docs/protocol.md, section 11): signed remote commands and rule bundles.
    remote_commands: bool = True  # take signed commands (open, hold, lockdown …) at all
    # A command valid for longer than this is refused: a captured one is worth minutes.
    command_max_age_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    # Tolerated difference between the service's clock and the device's.
    command_clock_skew_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    # Expiry cannot be judged on a clock nobody set: commands are refused while the kernel
    # (or systemd-timesyncd) does not report it synchronised. false trusts the wall clock as
    # it is, for a clock kept by means the kernel does not see (a container on a host that
    # keeps time, an RTC set by hand).
    commands_need_synchronised_clock: bool = True
    # Commands remembered against replay (each until it expires); when full, the one
    # expiring first is forgotten and anything expiring before it refused.
    replay_cache_size: Annotated[int, msgspec.Meta(ge=100, le=1_000_000)] = 10_000
    downlink_state_file: str = ""  # replay cache, active bundle; default: beside the journal
    rules_poll_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 300.0  # 0: announcements only
    rules_max_bundle_mb: Annotated[int, msgspec.Meta(ge=1, le=512)] = 64

    def __post_init__(self) -> None:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s: must not exceed retry_max_s")
        for i, text in enumerate(self.service_public_keys):
            try:
                raw = base64.b64decode(text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"service_public_keys[{i}]: not base64") from None
            if len(raw) != 32:
                raise ValueError(
                    f"service_public_keys[{i}]: expected 32 bytes of Ed25519 public key, "
                    f"got {len(raw)}")
        if self.enabled and self.transport == "http" and not self.http.url:
            raise ValueError("http.url: required with transport = \"http\"")


_HA_TOPIC = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


class HomeAssistantCommandsConfig(_Section, frozen=True):
    """What Home Assistant may do to the gate: each action off until enabled here.

    Anyone who can publish on the command topics can do what is enabled: restrict them
    in the broker's ACL (docs/home-assistant.md, config/mosquitto/home-assistant.acl).
    """

    open: bool = False  # open a lane's gate once (the cover's OPEN)
    hold: bool = False  # hold open and release (the hold-open switch, the cover's CLOSE)
    lockdown: bool = False  # lockdown on and off (the lockdown switch)


class HomeAssistantConfig(_Section, frozen=True):
    """Home Assistant: MQTT discovery, entity states and commands (docs/home-assistant.md)."""

    enabled: bool = False
    # false (with enabled = true): the device is removed from Home Assistant at start.
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    topic_prefix: str = ""  # state and command topics; default "gated/<device_id>"
    mqtt: MqttConfig | None = None  # Home Assistant's broker; default: the [mqtt] section
    expose_plates: bool = True  # the plate read, in events and the last-plate sensor
    expose_names: bool = False  # residents' and visitors' names
    commands: HomeAssistantCommandsConfig = HomeAssistantCommandsConfig()
    # Commands beyond this rate are dropped and counted (one audit row a minute says so):
    # a flood on the command topics must not become a flood of fsynced audit rows.
    commands_per_minute: Annotated[int, msgspec.Meta(ge=1, le=600)] = 30
    # How often the lanes' gate states, modes and alarms are compared and changes published.
    status_interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 0.5

    def __post_init__(self) -> None:
        for key in ("discovery_prefix", "topic_prefix"):
            value = getattr(self, key)
            if (value or key == "discovery_prefix") and (
                len(value) > 128 or not _HA_TOPIC.fullmatch(value)
            ):
                raise ValueError(
                    f"{key}: {value!r} is not a topic prefix (levels of letters, digits, "
                    "'_', '.' and '-' separated by '/'; no wildcards)"
                )


class GpioConfig(_Section, frozen=True):
    """Which gpiozero pin factory to use."""

    pin_factory: Literal["auto", "lgpio", "rpigpio", "pigpio", "native", "mock"] = "auto"


class SupervisorConfig(_Section, frozen=True):
    """How failing components are restarted before the process gives up."""

    restart_backoff_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    restart_backoff_max_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    max_failures: Annotated[int, msgspec.Meta(ge=1)] = 10
    failure_window_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class MetricsConfig(_Section, frozen=True):
    """Prometheus metrics written for node_exporter's textfile collector."""

    textfile: str = ""  # e.g. "/run/gated/gated.prom"; empty: not written
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 15.0


class ControlConfig(_Section, frozen=True):
    """The local control socket that `gated ctl` and other local tools use."""

    socket: str = "/run/gated/control.sock"  # Unix socket, mode 0660; empty: no socket
    socket_group: str = ""  # group that may connect (e.g. "gated-ctl"); empty: the daemon's


class WebConfig(_Section, frozen=True):
    """The local status page (docs/status-page.md): login, live gate view, guard actions."""

    enabled: bool = False
    host: str = "127.0.0.1"  # "0.0.0.0" to reach it from the LAN (then use TLS)
    port: Port = 8080
    users_file: str = "/var/lib/gated/web-users.json"  # written by `gated user add|passwd|remove`
    tls_cert: str = ""  # PEM certificate chain; with tls_key: HTTPS and Secure cookies
    tls_key: str = ""
    session_idle_s: Annotated[float, msgspec.Meta(ge=60, le=86_400 * 7)] = 3600.0
    session_max_s: Annotated[float, msgspec.Meta(ge=60, le=86_400 * 30)] = 43_200.0
    login_max_failures: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5  # per user and per address
    login_window_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    lockout_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    max_clients: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32  # live-feed connections at once

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key: give both for TLS, or neither")


# --- alerts (docs/alerts.md) ---------------------------------------------------


class AlertRuleConfig(_Section, frozen=True):
    """One alert rule: on or off, its folding interval, the thresholds it reads.

    Thresholds left unset take the rule's default (docs/alerts.md); a threshold a rule
    does not read is refused, so a misplaced key is an error, not a silent no-op.
    """

    enabled: bool = True
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    fault_after_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] | None = None
    disk_percent: Annotated[float, msgspec.Meta(ge=1, le=100)] | None = None
    backlog_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 365)] | None = None
    flood_count: Annotated[int, msgspec.Meta(ge=2, le=1_000_000)] | None = None
    flood_window_s: Annotated[float, msgspec.Meta(ge=1, le=86_400)] | None = None


class AlertChannelConfig(_Section, frozen=True):
    """Where alerts go: a webhook, an MQTT topic, or Home Assistant's alert topic."""

    name: Ident
    type: Literal["webhook", "mqtt", "home_assistant"]
    url: str = ""  # webhook: the http(s) URL alerts are POSTed to
    format: Literal["json", "ntfy", "slack"] = "json"  # webhook body shape
    secret_file: str = ""  # webhook: HMAC-SHA256 signing key (file, never logged)
    token_file: str = ""  # webhook: bearer token sent as Authorization (e.g. an ntfy token)
    topic: str = ""  # mqtt: the topic alerts are published to
    rules: list[str] = []  # only these rules; empty: every rule
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 10.0

    def __post_init__(self) -> None:
        if self.type == "webhook":
            if not self.url:
                raise ValueError("url: required for a webhook channel")
            if not re.match(r"^https?://[^/\s?#]+(/\S*)?$", self.url):
                raise ValueError(f"url: {self.url!r} is not an http:// or https:// URL")
        elif self.url:
            raise ValueError(f"url: only a webhook channel has a url (this is {self.type})")
        if self.type != "webhook" and (self.secret_file or self.token_file
                                       or self.format != "json"):
            raise ValueError("secret_file: secret_file, token_file and format are webhook "
                             "settings")
        if self.type == "mqtt" and not self.topic:
            raise ValueError("topic: required for an mqtt channel")
        if self.topic and not re.fullmatch(r"[^#+\s]+", self.topic):
            raise ValueError(f"topic: {self.topic!r} is not a topic to publish to "
                             "(no wildcards or spaces)")
        for key in ("secret_file", "token_file"):
            path = getattr(self, key)
            if not path:
                continue
            try:
                if not Path(path).read_bytes().strip():
                    raise ValueError(f"{key}: {path} is empty")
            except OSError as err:
                raise ValueError(f"{key}: cannot read {path}: {err.strerror or err}") from None
        names = AlertRulesConfig.__struct_fields__
        for i, rule in enumerate(self.rules):
            if rule not in names:
                raise ValueError(f"rules[{i}]: unknown rule {rule!r} "
                                 f"(one of: {', '.join(names)})")


# Which threshold keys each alert rule reads (the config refuses the others on that rule).
ALERT_THRESHOLDS: dict[str, frozenset[str]] = {
    "relay_fault": frozenset({"fault_after_s"}),
    "camera_fault": frozenset({"fault_after_s"}),
    "clock_unsynced": frozenset({"fault_after_s"}),
    "disk_full": frozenset({"disk_percent"}),
    "sync_backlog": frozenset({"backlog_hours"}),
    "refusal_flood": frozenset({"flood_count", "flood_window_s"}),
}


class AlertRulesConfig(_Section, frozen=True):
    """Every alert rule by name, in the order the docs list them; one not set keeps its defaults.

    The one list of rule names: gated.alerts.rules.RULE_NAMES is these fields.
    """

    deny_listed: AlertRuleConfig = AlertRuleConfig()  # a read of a deny-listed plate
    lockdown_read: AlertRuleConfig = AlertRuleConfig()  # a read at a lane in lockdown
    forced_open: AlertRuleConfig = AlertRuleConfig()  # the gate opened without an order
    held_open: AlertRuleConfig = AlertRuleConfig()  # the gate stayed open too long
    # the journal's chain or trigger check failed, or it was recovered
    journal_check: AlertRuleConfig = AlertRuleConfig()
    refusal_flood: AlertRuleConfig = AlertRuleConfig()  # many refused attempts from one address
    relay_fault: AlertRuleConfig = AlertRuleConfig()  # a relay fault lasting fault_after_s
    camera_fault: AlertRuleConfig = AlertRuleConfig()  # a camera away for fault_after_s
    disk_full: AlertRuleConfig = AlertRuleConfig()  # state folders' disk use >= disk_percent
    sync_backlog: AlertRuleConfig = AlertRuleConfig()  # oldest unsent event > backlog_hours old
    clock_unsynced: AlertRuleConfig = AlertRuleConfig()  # clock unsynchronised for fault_after_s
    test: AlertRuleConfig = AlertRuleConfig()  # `gated alert test` without a rule

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            rule = getattr(self, name)
            for key in ("fault_after_s", "disk_percent", "backlog_hours", "flood_count",
                        "flood_window_s"):
                if getattr(rule, key) is not None and key not in ALERT_THRESHOLDS.get(name, ()):
                    raise ValueError(f"{name}.{key}: not a setting of this rule")


class AlertsConfig(_Section, frozen=True):
    """Local alerts: which happenings alert and where they go (docs/alerts.md)."""

    enabled: bool = True  # with no channel nothing is raised either
    rules: AlertRulesConfig = AlertRulesConfig()  # by rule name; a rule not set: its defaults
    channels: list[AlertChannelConfig] = []
    state_file: str = ""  # delivery cursors; default: alerts-state.json beside the journal
    retry_min_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 1.0
    retry_max_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 300.0
    late_after_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 120.0  # then "(raised … ago)"

    def __post_init__(self) -> None:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s: must not exceed retry_max_s")
        seen: set[str] = set()
        for i, channel in enumerate(self.channels):
            if channel.name in seen:
                raise ValueError(f"channels[{i}].name: duplicate channel name {channel.name!r}")
            seen.add(channel.name)


class LogConfig(_Section, frozen=True):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section, frozen=True):
    """The whole configuration of one gated device."""

    site: SiteConfig
    journal: JournalConfig = JournalConfig()
    retention: RetentionConfig = RetentionConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    rules: RulesConfig = RulesConfig()
    policy: PolicyConfig = PolicyConfig()
    lanes: list[LaneConfig] = []
    buttons: list[ButtonConfig] = []
    cameras_listener: ListenerConfig = ListenerConfig()
    mqtt: MqttConfig | None = None
    gpio: GpioConfig = GpioConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    control: ControlConfig = ControlConfig()
    sync: SyncConfig = SyncConfig()
    web: WebConfig = WebConfig()
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()
    alerts: AlertsConfig = AlertsConfig()

    def __post_init__(self) -> None:
        _check_cross_references(self)

    def lane(self, lane_id: str) -> LaneConfig:
        """The lane with this id (KeyError when there is none)."""
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise KeyError(lane_id)


def _check_cross_references(cfg: Config) -> None:
    """Checks that span sections: unique ids, references that must exist."""
    lane_ids = [lane.id for lane in cfg.lanes]
    seen: set[str] = set()
    for i, lane_id in enumerate(lane_ids):
        if lane_id in seen:
            raise ValueError(f"lanes[{i}].id: duplicate lane id {lane_id!r}")
        seen.add(lane_id)
    source_names: set[str] = set()
    routes: set[tuple[int, str]] = set()
    pins: dict[int, str] = {}

    def claim_pin(pin: int | None, where: str) -> None:
        if pin is None:
            return
        if pin in pins:
            raise ValueError(f"{where}: GPIO pin {pin} is already used by {pins[pin]}")
        pins[pin] = where

    for i, lane in enumerate(cfg.lanes):
        if lane.paired_lane is not None and lane.paired_lane not in seen:
            raise ValueError(f"lanes[{i}].paired_lane: no lane with id {lane.paired_lane!r}")
        if isinstance(lane.relay, GpioRelayConfig):
            claim_pin(lane.relay.pin, f"lanes[{i}].relay.pin")
        claim_pin(lane.sensors.closed_pin, f"lanes[{i}].sensors.closed_pin")
        claim_pin(lane.sensors.presence_pin, f"lanes[{i}].sensors.presence_pin")
        for j, src in enumerate(lane.sources):
            if src.name in source_names:
                raise ValueError(
                    f"lanes[{i}].sources[{j}].name: duplicate source name {src.name!r}"
                )
            source_names.add(src.name)
            if isinstance(src, AnprHttpSourceConfig):
                if not cfg.cameras_listener.host:
                    raise ValueError(
                        "cameras_listener.host: required with an anpr_http source: the "
                        "address cameras push to (e.g. this device's camera-VLAN address, "
                        "or \"0.0.0.0\" for every interface)"
                    )
                if not src.auth.configured:
                    # A push for a resident's plate opens the gate: never from just anyone.
                    raise ValueError(
                        f"lanes[{i}].sources[{j}].auth: set username and password, a token, "
                        "or allowed_ips (nothing unauthenticated may open the gate)"
                    )
                route = (src.port or cfg.cameras_listener.port, src.path)
                if route in routes:
                    raise ValueError(
                        f"lanes[{i}].sources[{j}].path: {src.path!r} "
                        f"is already used on port {route[0]}"
                    )
                routes.add(route)
            if isinstance(src, CameraSourceConfig) and src.trigger == "presence" and (
                lane.sensors.presence_pin is None
            ):
                raise ValueError(
                    f"lanes[{i}].sources[{j}].trigger: \"presence\" needs the lane's "
                    "sensors.presence_pin (a loop detector or beam)"
                )
            if isinstance(src, FrigateSourceConfig) and cfg.mqtt is None:
                raise ValueError(
                    f"lanes[{i}].sources[{j}]: a frigate source needs an [mqtt] section"
                )
    if cfg.sync.enabled and cfg.sync.transport == "mqtt" and (
        cfg.sync.mqtt is None and cfg.mqtt is None
    ):
        raise ValueError("sync.mqtt: transport = \"mqtt\" needs a [sync.mqtt] or [mqtt] broker")
    if cfg.home_assistant.enabled and cfg.home_assistant.mqtt is None and cfg.mqtt is None:
        raise ValueError("home_assistant.mqtt: enabled needs a [home_assistant.mqtt] or [mqtt] "
                         "broker")
    ha_broker = getattr(getattr(cfg, "home_assistant", None), "mqtt", None)
    for i, channel in enumerate(cfg.alerts.channels):
        if channel.type == "mqtt" and cfg.mqtt is None:
            raise ValueError(f"alerts.channels[{i}]: an mqtt channel needs an [mqtt] broker")
        if channel.type == "home_assistant" and ha_broker is None and cfg.mqtt is None:
            raise ValueError(f"alerts.channels[{i}]: a home_assistant channel needs a "
                             "[home_assistant.mqtt] or [mqtt] broker")
    for i, button in enumerate(cfg.buttons):
        claim_pin(button.pin, f"buttons[{i}].pin")
        for lane_id in button.lanes:
            if lane_id not in seen:
                raise ValueError(f"buttons[{i}].lanes: no lane with id {lane_id!r}")


# --- loading -----------------------------------------------------------------

_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_KEY_PATH_RE = re.compile(r" - at `key` in `\$(?P<path>[^`]*)`$")


def _humanise(message: str) -> tuple[str, str]:
    """Split a msgspec message into (key path, plain-language problem)."""
    path = ""
    key_in = _KEY_PATH_RE.search(message)
    if key_in:  # a bad mapping key: name the mapping
        message = message[: key_in.start()].replace("Expected", "a key: expected", 1)
        message = f"{message} - at `${key_in.group('path')}`"
    m = _PATH_RE.search(message)
    if m:
        path = m.group("path").lstrip(".")
        message = message[: m.start()]
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        key = unknown.group(1)
        return (
            f"{path}.{key}" if path else key
        ), "unknown key (check the spelling against config/gated.example.toml)"
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        key = missing.group(1)
        return (f"{path}.{key}" if path else key), "required key is missing"
    message = message.replace("`", "")
    message = re.sub(r"^Expected (.+), got (.+)$", r"expected \1, got \2", message)
    message = re.sub(r"^Expected (.+)$", r"expected \1", message)
    message = message.replace("Invalid enum value", "invalid value").replace(
        "Invalid value", "invalid value"
    )
    # messages from __post_init__ may carry their own `key: ` prefix relative to the section
    inner = re.match(r"^([A-Za-z_][\w.\[\]]*): (.*)$", message)
    if inner:
        sub, message = inner.groups()
        path = f"{path}.{sub}" if path else sub
    return path or "(top level)", message


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document; raises ConfigError naming the key path."""
    try:
        return msgspec.convert(data, Config, strict=True)
    except msgspec.ValidationError as err:
        path, problem = _humanise(str(err))
        raise ConfigError(f"{source}: {path}: {problem}") from err


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; raises ConfigError with a one-line message."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror or err}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte {err.start})") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: TOML syntax error: {err}") from err
    return parse_config(data, str(p))


# Keys whose values must never be logged, journaled or shown.
SECRET_KEYS = frozenset({"password", "token", "secret", "private_key", "api_key"})


def _url_origin(url: str) -> str:
    """A URL as records show it: scheme and host only. Its user, path and query can be the
    credential (a Slack webhook's path, an ntfy topic, rtsp://user:password@camera)."""
    if "://" not in url:
        return url  # a file path, not a URL
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    hidden = "/***" if (parts.path not in ("", "/") or parts.query or parts.username) else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


def redacted(value: Any) -> Any:
    """A copy of a config value (Struct, dict, list) with every secret replaced by '***'."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v else
                    _url_origin(v) if k == "url" and isinstance(v, str) else redacted(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
