"""CloudEvents 1.0 envelopes for what the device sends, and parsing of the service's acks.

docs/protocol.md, sections 2, 3 and 9, is the contract; the JSON Schemas in
gated/sync/schemas/ hold the tests to it. Incoming messages are checked here by hand
(jsonschema is a test dependency only): a malformed ack is counted and dropped.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gated.ids import new_event_id
from gated.model import SiteIdentity

__all__ = [
    "Ack",
    "access_or_audit",
    "ack_from",
    "encode",
    "head_event",
    "heartbeat_event",
    "rfc3339",
    "source_of",
    "status_message",
    "topic_prefix",
]

SPECVERSION = "1.0"
TYPES = {"access": "io.gated.access.v1", "audit": "io.gated.audit.v1"}
HEAD_TYPE = "io.gated.head.v1"
HEARTBEAT_TYPE = "io.gated.heartbeat.v1"
ACK_TYPE = "io.gated.ack.v1"
# Row columns that never leave the device: the sync state and the personal-field salt.
_NOT_SENT = frozenset({"synced_at", "pii_salt", "stream"})
# Flags the journal stores as 0/1 and hashes as such (public rows hand them out as bools).
_FLAGS = ("clock_unsynced", "snapshot_missing", "gate_opened")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_encoder = msgspec.json.Encoder()


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with microseconds (`2024-11-30T15:54:00.123456Z`)."""
    # What datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") gives (the
    # microseconds rounded half to even, as it does), with the date and time of day
    # formatted once per second: a backlog drain stamps thousands of events a second.
    try:
        frac, whole = math.modf(ts)
        micros = round(frac * 1e6)
        second = int(whole)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        elif micros < 0:
            second, micros = second - 1, micros + 1_000_000
        return f"{_second_text(second)}.{micros:06d}Z"
    except (OverflowError, OSError, ValueError):  # a wild clock must not stop the sync
        return "1970-01-01T00:00:00.000000Z"


@functools.lru_cache(maxsize=64)
def _second_text(second: int) -> str:
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def source_of(identity: SiteIdentity) -> str:
    """The CloudEvents `source` of this device."""
    return f"gated://{identity.tenant_id}/{identity.site_id}/{identity.device_id}"


def topic_prefix(identity: SiteIdentity) -> str:
    """`gated/v1/{tenant_id}/{device_id}/`: every MQTT topic of this device starts so."""
    return f"gated/v1/{identity.tenant_id}/{identity.device_id}/"


def _envelope(kind: str, source: str, event_id: str, at: float, data: Any) -> dict[str, Any]:
    return {"specversion": SPECVERSION, "id": event_id, "source": source, "type": kind,
            "time": rfc3339(at), "datacontenttype": "application/json", "data": data}


def access_or_audit(row: Mapping[str, Any], source: str,
                    snapshot: str | None = None) -> dict[str, Any]:
    """The CloudEvent of one journal row (a public row: JSON columns decoded, with "stream")."""
    stream = row["stream"]
    data = dict(row)  # a C-level copy, then the few columns that stay home taken out
    for name in _NOT_SENT:
        data.pop(name, None)
    for name in _FLAGS:
        value = data.get(name)
        if isinstance(value, bool):
            data[name] = int(value)
    event = _envelope(TYPES[stream], source, row["event_id"], row["created_at"], data)
    subject = row.get("access_point") if stream == "access" else row.get("action")
    if subject:
        event["subject"] = subject
    event["gatedseq"] = row["seq"]
    event["gatedstream"] = stream
    if snapshot is not None:
        event["gatedsnapshot"] = snapshot
    return event


def head_event(signed_head: Mapping[str, Any], source: str, now: float) -> dict[str, Any]:
    """The CloudEvent carrying a signed chain head."""
    return _envelope(HEAD_TYPE, source, new_event_id(), now, dict(signed_head))


def heartbeat_event(data: Mapping[str, Any], source: str, now: float) -> dict[str, Any]:
    """The CloudEvent of one heartbeat."""
    return _envelope(HEARTBEAT_TYPE, source, new_event_id(), now, dict(data))


def status_message(device_id: str, status: str, reason: str,
                   now: float | None = None) -> bytes:
    """The retained status payload (not a CloudEvent: the offline one is the last will)."""
    body: dict[str, Any] = {"device_id": device_id, "status": status, "reason": reason}
    if now is not None:
        body["at"] = rfc3339(now)
    return _encoder.encode(body)


def encode(message: Any) -> bytes:
    """JSON bytes of a message."""
    return _encoder.encode(message)


# --- the service's answers -------------------------------------------------------------------


@dataclass(slots=True)
class Ack:
    """What the service said about events and a head (an MQTT ack or an HTTP 2xx body)."""

    stored: list[str] = field(default_factory=list)  # stored now or before (duplicates too)
    rejected: list[tuple[str, str, bool]] = field(default_factory=list)  # (id, reason, retryable)
    head: dict[str, Any] | None = None  # a countersignature
    head_status: str | None = None
    head_seq: int | None = None
    head_reason: str | None = None


def _ids(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(i, str) and _UUID.match(i)
                                              for i in value):
        raise ValueError(f"{name}: expected a list of event ids")
    return list(value)


def ack_from(body: Any) -> Ack:
    """An Ack from the `data` of an ack CloudEvent or an HTTP answer; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    ack = Ack(stored=_ids(body.get("stored"), "stored") + _ids(body.get("duplicate"),
                                                               "duplicate"))
    for item in body.get("rejected") or []:
        if not (isinstance(item, dict) and isinstance(item.get("id"), str)
                and _UUID.match(item["id"])):
            raise ValueError("rejected: expected objects with an event id")
        ack.rejected.append((item["id"], str(item.get("reason", ""))[:500],
                             bool(item.get("retryable", False))))
    head = body.get("head")
    if head is not None and not isinstance(head, dict):
        raise ValueError("head: expected an object")
    ack.head = head
    status = body.get("head_status")
    if status not in (None, "countersigned", "pending", "refused"):
        raise ValueError(f"head_status: unknown value {status!r}")
    ack.head_status = status
    seq = body.get("head_seq")
    ack.head_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    reason = body.get("head_reason")
    ack.head_reason = str(reason)[:500] if reason is not None else None
    return ack


def ack_from_event(payload: bytes, expect_source_prefix: str = "gated-service://"
                   ) -> Ack:
    """Parse an `io.gated.ack.v1` CloudEvent (MQTT `…/acks`); ValueError if malformed."""
    try:
        event = msgspec.json.decode(payload)
    except msgspec.DecodeError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(event, dict) or event.get("type") != ACK_TYPE:
        raise ValueError("not an io.gated.ack.v1 CloudEvent")
    if event.get("specversion") != SPECVERSION:
        raise ValueError("specversion: expected 1.0")
    if not str(event.get("source", "")).startswith(expect_source_prefix):
        raise ValueError("source: not the service")
    return ack_from(event.get("data"))
