"""What an alert looks like on the wire: the JSON record, ntfy and Slack shapes, the signature.

Pure apart from nothing: every function takes the time it needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ago",
    "alert_from_row",
    "is_alert_row",
    "message_text",
    "sign",
    "webhook_body",
    "wire_record",
]

ALERT_ACTION = "alert_raised"
NTFY_PRIORITY = {"critical": "5", "warning": "4", "info": "3"}
NTFY_TAGS = {"critical": "rotating_light", "warning": "warning", "info": "information_source"}


def is_alert_row(row: Mapping[str, Any]) -> bool:
    """True for the journal's `alert_raised` audit rows."""
    return row.get("stream") == "audit" and row.get("action") == ALERT_ACTION


def alert_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The alert an `alert_raised` row records (its metadata, with the row's time and site)."""
    meta = row.get("metadata") if isinstance(row.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return {
        "id": str(meta.get("alert_id") or row.get("event_id")),
        "rule": str(meta.get("rule") or row.get("resource_id") or "unknown"),
        "subject": str(meta.get("subject") or ""),
        "severity": str(meta.get("severity") or "warning"),
        "title": str(meta.get("title") or "gated alert"),
        "message": str(meta.get("message") or ""),
        "count": int(meta.get("count") or 1),
        "first_at": meta.get("first_at"),
        "last_at": meta.get("last_at"),
        "details": dict(meta.get("details") or {}),
        "test": bool(meta.get("test", False)),
        "personal": dict(meta.get("personal") or {}),
        "raised_at": float(row.get("created_at") or 0.0),
        "clock_unsynced": bool(row.get("clock_unsynced")),
        "site": {"tenant_id": row.get("tenant_id"), "site_id": row.get("site_id"),
                 "device_id": row.get("device_id")},
        "seq": row.get("seq"),
    }


def rfc3339(ts: float) -> str:
    """A wall-clock time as RFC 3339 UTC."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ago(age_s: float) -> str:
    """An age in words a phone notification can carry: "40 s", "12 min", "2 h", "3 days"."""
    if age_s < 90:
        return f"{max(0, round(age_s))} s"
    if age_s < 90 * 60:
        return f"{round(age_s / 60)} min"
    if age_s < 48 * 3600:
        return f"{round(age_s / 3600)} h"
    return f"{round(age_s / 86_400)} days"


def wire_record(alert: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The JSON alert every channel carries (webhook "json", MQTT, Home Assistant)."""
    age = max(0.0, now - float(alert["raised_at"]))
    return {
        "event_type": alert["rule"],
        "id": alert["id"],
        "rule": alert["rule"],
        "subject": alert["subject"],
        "severity": alert["severity"],
        "title": alert["title"],
        "message": alert["message"],
        "raised_at": rfc3339(float(alert["raised_at"])),
        "age_s": round(age, 1),
        "folded": max(0, int(alert["count"]) - 1),
        "count": int(alert["count"]),
        "first_at": rfc3339(float(alert["first_at"])) if alert.get("first_at") else None,
        "last_at": rfc3339(float(alert["last_at"])) if alert.get("last_at") else None,
        "clock_unsynced": alert.get("clock_unsynced", False),
        "test": alert.get("test", False),
        "site": alert.get("site", {}),
        "details": alert.get("details", {}),
    }


def message_text(record: Mapping[str, Any], late_after_s: float) -> str:
    """The one-paragraph text of an alert for people: message, fold count, lateness."""
    text = str(record["message"])
    if record["count"] > 1:
        text += f" ({record['count']} times since the last alert)"
    if record["age_s"] >= late_after_s:
        text += f" (raised {ago(float(record['age_s']))} ago)"
    return text


def _ascii(text: str) -> str:
    # HTTP header values are Latin-1 at best: keep what survives as ASCII.
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())[:200]


def webhook_body(fmt: str, record: Mapping[str, Any],
                 late_after_s: float) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of one webhook POST in the channel's format."""
    text = message_text(record, late_after_s)
    if fmt == "ntfy":
        # ntfy's publish-by-POST: the body is the message, headers carry the rest.
        headers = {"Title": _ascii(str(record["title"])) or "gated alert",
                   "Priority": NTFY_PRIORITY.get(str(record["severity"]), "3"),
                   "Tags": f"{NTFY_TAGS.get(str(record['severity']), 'warning')},gated",
                   "Content-Type": "text/plain; charset=utf-8"}
        return text.encode("utf-8"), headers
    if fmt == "slack":
        doc = {
            "text": f"{record['title']}: {text}",
            "blocks": [
                {"type": "section",
                 "text": {"type": "mrkdwn", "text": f"*{record['title']}*\n{text}"}},
                {"type": "context", "elements": [{
                    "type": "mrkdwn",
                    "text": f"{record['severity']} · {record['rule']} · id {record['id']}"}]},
            ],
        }
        return _json(doc), {"Content-Type": "application/json"}
    return _json(record), {"Content-Type": "application/json"}


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Gated-Signature value: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()
