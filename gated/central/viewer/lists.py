"""The viewer's lists: which columns each shows and which filters it takes (the whitelist)."""

from __future__ import annotations

from gated.central.viewer.query import Field, Listing

__all__ = ["ACCESS", "AUDIT", "COMMANDS", "CSV_ACCESS", "CSV_AUDIT", "EVENT_TYPES", "STATUSES"]

EVENT_TYPES = ("entry", "exit", "denied", "visitor_entry")
STATUSES = ("success", "failure", "partial")

ACCESS = Listing(
    table="access_logs",
    columns=("event_id", "created_at", "site_id", "device_id", "access_point", "event_type",
             "direction", "vehicle_plate", "visitor_name", "decision_reason",
             "authorization_method", "authorized_by", "confidence_score", "rules_version",
             "gate_opened", "snapshot_sha256", "captured_at", "seq"),
    fields=(
        Field("site", "site_id"),
        Field("gate", "device_id"),
        Field("lane", "access_point"),
        Field("plate", "vehicle_plate", "contains"),
        Field("type", "event_type", "choice", EVENT_TYPES),
        Field("reason", "decision_reason"),
        Field("method", "authorization_method"),
    ),
    time_column="created_at",
    key_column="event_id",
)

AUDIT = Listing(
    table="audit_logs",
    columns=("event_id", "created_at", "site_id", "device_id", "action", "resource_type",
             "resource_id", "actor_type", "actor_id", "actor_role", "ip_address", "status",
             "error_message", "origin", "seq"),
    fields=(
        Field("site", "site_id"),
        Field("gate", "device_id"),
        Field("action", "action"),
        Field("resource_type", "resource_type"),
        Field("actor", "actor_id", "contains"),
        Field("status", "status", "choice", STATUSES),
    ),
    time_column="created_at",
    key_column="event_id",
)

# The commands issued to one device (docs/central.md section 9), on the device's page. The
# device comes from the path, not the query string: the list takes only since/until and paging.
COMMANDS = Listing(
    table="commands",
    columns=("command_id", "device_id", "action", "args", "issued_by", "issued_at",
             "expires_at"),
    fields=(),
    time_column="issued_at",
    key_column="command_id",
)

# CSV columns: (header, column). Plates, names and actors are hostile text: every cell goes
# through gated.web.common.csv_cell.
CSV_ACCESS = (("created_at", "created_at"), ("site", "site_id"), ("gate", "device_id"),
              ("lane", "access_point"), ("event_type", "event_type"),
              ("direction", "direction"), ("plate", "vehicle_plate"),
              ("visitor_name", "visitor_name"), ("reason", "decision_reason"),
              ("method", "authorization_method"), ("authorized_by", "authorized_by"),
              ("confidence", "confidence_score"), ("rules_version", "rules_version"),
              ("gate_opened", "gate_opened"), ("seq", "seq"), ("event_id", "event_id"))
CSV_AUDIT = (("created_at", "created_at"), ("site", "site_id"), ("gate", "device_id"),
             ("action", "action"), ("resource_type", "resource_type"),
             ("resource_id", "resource_id"), ("actor_type", "actor_type"),
             ("actor", "actor_id"), ("actor_role", "actor_role"), ("address", "ip_address"),
             ("status", "status"), ("error", "error_message"), ("origin", "origin"),
             ("seq", "seq"), ("event_id", "event_id"))
