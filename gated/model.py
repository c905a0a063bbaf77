"""Plain values shared by every layer: reads, decisions, journal records.

Nothing here does IO or reads a clock; constructors that need a time take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Direction(StrEnum):
    """Which way a vehicle passes an access point."""

    IN = "in"
    OUT = "out"


class Mode(StrEnum):
    """Operating mode of an access point."""

    NORMAL = "normal"
    LOCKDOWN = "lockdown"  # no automated entry; guards and signed commands still work
    HOLD_OPEN = "hold_open"  # gate held open; every read is still journaled


class CredentialKind(StrEnum):
    """What a read presents: a licence plate or an RFID tag."""

    PLATE = "plate"
    TAG = "tag"


class MatchKind(StrEnum):
    """How a read matched a stored plate."""

    EXACT = "exact"  # same normalised text
    CONFUSION = "confusion"  # same OCR-confusion key (0/O, 1/I, 8/B …)
    FUZZY = "fuzzy"  # within the configured edit distance


class AntiPassback(StrEnum):
    """Anti-passback enforcement level."""

    OFF = "off"
    SOFT = "soft"  # allow, but flag the event
    HARD = "hard"  # deny


class Reason(StrEnum):
    """Stable reason codes of a decision; the central service keys reports on them."""

    RESIDENT = "resident"
    VISITOR_PASS = "visitor_pass"
    UNKNOWN_PLATE = "unknown_plate"
    DENY_LISTED = "deny_listed"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NOT_PERMITTED = "not_permitted"  # known, but not for this access point
    INACTIVE = "inactive"  # resident or vehicle suspended
    PASS_NOT_YET_VALID = "pass_not_yet_valid"
    PASS_EXPIRED = "pass_expired"
    PASS_USED_UP = "pass_used_up"
    LOW_CONFIDENCE = "low_confidence"
    ANTI_PASSBACK = "anti_passback"
    LOCKDOWN = "lockdown"
    HOLD_OPEN = "hold_open"
    NEEDS_GUARD = "needs_guard"  # a match that must be confirmed by a guard (e.g. fuzzy visitor)
    GUARD_OVERRIDE = "guard_override"  # opened by a guard button or logged-in guard
    REMOTE_COMMAND = "remote_command"  # opened by a signed upstream command
    UNREAD_PLATE = "unread_plate"  # a vehicle seen without a readable plate: never opens
    STALE_READ = "stale_read"  # captured too long ago, or a retained/re-delivered message
    WRONG_DIRECTION = "wrong_direction"  # travelling against the lane (source config: journal)
    NO_CONSENSUS = "no_consensus"  # the source's reads of one passage never agreed (consensus)
    CLOCK_UNSYNCED = "clock_unsynced"  # needs a schedule or pass window; the clock is unknown


class EventType(StrEnum):
    """event_type of an access_logs row (seed design), plus what an edge device needs."""

    ENTRY = "entry"
    EXIT = "exit"
    DENIED = "denied"
    VISITOR_ENTRY = "visitor_entry"


class AuthorizationMethod(StrEnum):
    """authorization_method of an access_logs row."""

    AUTO_PLATE = "auto_plate"
    AUTO_TAG = "auto_tag"
    MANUAL_GUARD = "manual_guard"  # logged-in guard on the status page
    GUARD_BUTTON = "guard_button"  # physical button wired to the device
    REMOTE = "remote"  # signed command from the central service
    HOLD_OPEN = "hold_open"


@dataclass(frozen=True, slots=True)
class SiteIdentity:
    """Who this device is; travels with every record (tenant isolation)."""

    tenant_id: str
    site_id: str
    device_id: str


@dataclass(frozen=True, slots=True)
class PlateRead:
    """One read of a plate or tag, as a source reported it."""

    access_point: str  # id of the lane / access point the source serves
    text: str  # raw text as read (normalised later, by plates.normalise)
    source: str  # id of the camera or reader
    read_at: float  # wall-clock epoch seconds (device clock; may be unsynchronised)
    received_mono: float  # time.monotonic() when gated received it, for latency
    confidence: float | None = None  # 0..1, None when the source gives none
    kind: CredentialKind = CredentialKind.PLATE
    # The direction the lane resolved for this read (gated.ingest, from camera_direction
    # and the source's config); sources leave it None. decide() uses it, else the lane's.
    direction: Direction | None = None
    snapshot: bytes | None = None  # JPEG from the payload, if the source sent one
    vendor: str = ""  # "hikvision", "axis", "platerecognizer", "generic", "frigate", "serial", …
    extra: Mapping[str, Any] = field(default_factory=dict)  # vendor metadata (country, colour …)
    # The camera's own capture time (epoch seconds by the camera's clock), None when the
    # source gives none. Journaled beside the device time; decides staleness.
    captured_at: float | None = None
    # The direction exactly as the camera reported it ("forward", "reverse", "in", "out",
    # "approach" …), lower-cased; the lane maps it per source config. None: not reported.
    camera_direction: str | None = None
    # Arrived as a retained / re-delivered message (MQTT retain flag): never opens.
    retained: bool = False


@dataclass(frozen=True, slots=True)
class Edit:
    """One character-level difference between a read and a stored plate."""

    op: str  # "sub", "ins" (read has an extra char), "del" (read lacks a char)
    position: int  # index in the read's normalised text
    read: str  # character in the read ("" for del)
    stored: str  # character in the stored plate ("" for ins)


@dataclass(frozen=True, slots=True)
class Match:
    """How a read matched an entry of the rule set."""

    kind: MatchKind
    list: str  # "resident", "visitor_pass", "deny", "tag"
    stored: str  # the stored plate/tag (normalised)
    distance: int = 0
    edits: tuple[Edit, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of policy.decide: everything needed to explain and replay it."""

    allowed: bool
    reason: Reason
    access_point: str
    rules_version: int
    match: Match | None = None
    resident_id: str | None = None
    vehicle_id: str | None = None
    pass_id: str | None = None
    visitor_name: str | None = None
    flags: tuple[str, ...] = ()  # e.g. ("anti_passback_soft",)
    inputs: Mapping[str, Any] = field(default_factory=dict)  # normalised plate, mode, now …

    @property
    def event_type(self) -> EventType:
        """The access_logs event_type this decision produces."""
        if not self.allowed:
            return EventType.DENIED
        if self.inputs.get("direction") == Direction.OUT:
            return EventType.EXIT
        if self.pass_id is not None:
            return EventType.VISITOR_ENTRY
        return EventType.ENTRY


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One access_logs row before the journal numbers and chains it."""

    event_id: str  # UUIDv7
    tenant_id: str
    site_id: str
    device_id: str
    created_at: float  # wall-clock epoch seconds
    event_type: str  # EventType value
    access_point: str
    authorization_method: str  # AuthorizationMethod value
    decision_reason: str  # Reason value
    rules_version: int
    direction: str | None = None
    resident_id: str | None = None
    vehicle_id: str | None = None
    pass_id: str | None = None
    visitor_name: str | None = None  # personal field (erasable)
    vehicle_plate: str | None = None  # personal field (erasable)
    authorized_by: str | None = None
    confidence_score: float | None = None
    snapshot_path: str | None = None  # relative to the snapshot dir; None when none/missing
    snapshot_sha256: str | None = None
    snapshot_missing: bool = False  # a snapshot was expected but could not be stored
    read_to_relay_ms: float | None = None
    clock_unsynced: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The camera's own capture time (epoch s, camera clock); None when it gave none.
    captured_at: float | None = None
    # Did the gate open for this event? None: no opening was asked (a denial);
    # False: allowed (or ordered by a guard) but the relay failed; True: opened or held.
    gate_opened: bool | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit_logs row before the journal numbers and chains it."""

    event_id: str  # UUIDv7
    tenant_id: str
    site_id: str
    device_id: str
    created_at: float
    action: str  # "relay_pulse", "button_press", "rules_import", "login", "config_reload" …
    resource_type: str  # "gate", "relay", "rules", "config", "session" …
    actor_type: str  # "system", "guard_button", "guard", "remote", "installer", "camera"
    resource_id: str | None = None
    actor_id: str | None = None
    actor_role: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    old_values: Mapping[str, Any] | None = None  # secrets redacted by the caller
    new_values: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    status: str = "success"  # success / failure / partial
    error_message: str | None = None
    duration_ms: float | None = None
    clock_unsynced: bool = False
