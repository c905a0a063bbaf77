"""A simulated gate for the central service's tests and benchmark: chained, signed events.

Rows are built like the journal's (seq, prev_hash, row_hash per docs/protocol.md section 8)
and wrapped in CloudEvents by gated.sync.envelope, so they validate against the schemas.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central.witness import GENESIS, row_hash
from gated.sync.envelope import access_or_audit, head_event
from gated.sync.signing import public_raw, sign


@dataclass
class SimDevice:
    """One device's identity, key and chain."""

    tenant_id: str
    site_id: str
    device_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    head: str = GENESIS

    @property
    def source(self) -> str:
        """The CloudEvents source of this device."""
        return f"gated://{self.tenant_id}/{self.site_id}/{self.device_id}"

    @property
    def prefix(self) -> str:
        """The MQTT topic prefix P."""
        return f"gated/v1/{self.tenant_id}/{self.device_id}/"

    @property
    def public_b64(self) -> str:
        """The public key as enrolment takes it."""
        return base64.b64encode(public_raw(self.key)).decode()

    def row(self, stream: str = "access", **overrides: Any) -> dict[str, Any]:
        """The next journal row (public form, with "stream"), chained to the last."""
        self.seq += 1
        now = time.time()
        row: dict[str, Any] = {
            "event_id": str(uuid.uuid4()), "tenant_id": self.tenant_id,
            "site_id": self.site_id, "device_id": self.device_id, "seq": self.seq,
            "prev_hash": self.head, "created_at": now, "clock_unsynced": 0, "metadata": {},
        }
        if stream == "access":
            row.update(event_type="entry", access_point="main-in", direction="in",
                       resident_id="r-1", vehicle_id="v-1", pass_id=None, visitor_name=None,
                       visitor_name_digest=None, vehicle_plate="ABC123",
                       vehicle_plate_digest="a" * 64, authorization_method="auto_plate",
                       authorized_by=None, decision_reason="resident", rules_version=1,
                       confidence_score=0.93, snapshot_path=None, snapshot_sha256=None,
                       snapshot_missing=0, read_to_relay_ms=41.5, captured_at=now - 0.05,
                       gate_opened=1)
        else:
            row.update(action="gate_open", resource_type="lane", resource_id="main-in",
                       actor_id="ops:ann", actor_type="user", actor_role="admin",
                       ip_address="192.0.2.1", ip_address_digest="b" * 64, user_agent=None,
                       user_agent_digest=None, request_id=str(uuid.uuid4()), old_values=None,
                       new_values={"lane": "main-in"}, status="success", error_message=None,
                       duration_ms=3.0)
        row.update(overrides)
        row["stream"] = stream
        data = {k: v for k, v in row.items() if k != "stream"}
        row["row_hash"] = overrides.get("row_hash") or row_hash(stream, data)
        self.head = row["row_hash"]
        return row

    def event(self, stream: str = "access", **overrides: Any) -> dict[str, Any]:
        """The next row as its CloudEvent."""
        return access_or_audit(self.row(stream, **overrides), self.source)

    def signed_head(self, seq: int | None = None, hash_: str | None = None,
                    key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """An io.gated.head.v1 event for the current (or a given) head."""
        head = sign({"device_id": self.device_id, "seq": self.seq if seq is None else seq,
                     "row_hash": hash_ or self.head,
                     "at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())},
                    key or self.key)
        return head_event(head, self.source, time.time())
