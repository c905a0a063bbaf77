"""Decisions in words for the event page: reason, match kind, differing characters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["explain", "reason_words"]

REASONS = {
    "resident": "a resident's vehicle", "visitor_pass": "a valid visitor pass",
    "unknown_plate": "the plate is not in the rule set", "deny_listed": "the plate is deny-listed",
    "outside_schedule": "outside the allowed schedule",
    "not_permitted": "known, but not allowed at this lane",
    "inactive": "the resident or vehicle is suspended",
    "pass_not_yet_valid": "the pass is not valid yet",
    "pass_expired": "the pass has expired", "pass_used_up": "the pass is used up",
    "low_confidence": "the camera was not sure enough of the read",
    "anti_passback": "anti-passback: the last passage was in the same direction",
    "lockdown": "the lane is in lockdown", "hold_open": "the lane is held open",
    "needs_guard": "a guard must confirm this match", "guard_override": "opened by a guard",
    "remote_command": "opened by a signed remote command",
    "unread_plate": "a vehicle without a readable plate", "stale_read": "the read was too old",
    "wrong_direction": "travelling against the lane's direction",
    "no_consensus": "the camera's reads of the vehicle never agreed",
}
MATCHES = {"exact": "matched exactly",
           "confusion": "matched allowing for OCR look-alikes (0/O, 8/B …)",
           "fuzzy": "matched approximately"}


def reason_words(reason: Any) -> str:
    """A reason code as a guard reads it."""
    return REASONS.get(str(reason), str(reason))


def explain(row: Mapping[str, Any]) -> list[str]:
    """Sentences explaining an access row's decision."""
    meta = row.get("metadata") or {}
    allowed = row["event_type"] != "denied"
    out = [f"{'Allowed' if allowed else 'Denied'}: {reason_words(row['decision_reason'])}."]
    match = meta.get("match") if isinstance(meta, dict) else None
    if isinstance(match, dict):
        kind = MATCHES.get(str(match.get("kind")), str(match.get("kind")))
        out.append(f"The read {kind} on the {match.get('list')} list"
                   f" (distance {match.get('distance', 0)}).")
        for edit in match.get("edits") or []:
            pos = int(edit.get("position", 0)) + 1
            if edit.get("op") == "sub":
                out.append(f"Character {pos}: read {edit.get('read')!r}, stored "
                           f"{edit.get('stored')!r}.")
            elif edit.get("op") == "ins":
                out.append(f"Character {pos}: the read has an extra {edit.get('read')!r}.")
            else:
                out.append(f"Character {pos}: the read lacks {edit.get('stored')!r}.")
    for key, words in (("resident_id", "Resident"), ("vehicle_id", "Vehicle"),
                       ("pass_id", "Visitor pass")):
        if row.get(key):
            out.append(f"{words}: {row[key]}.")
    if row.get("authorized_by"):
        out.append(f"Authorised by {row['authorized_by']} ({row['authorization_method']}).")
    out.append(f"Rule-set version {row['rules_version']}.")
    if row.get("gate_opened") is False:
        out.append("The relay failed: the gate did not open.")
    flags = meta.get("flags") if isinstance(meta, dict) else None
    if flags:
        out.append("Flags: " + ", ".join(str(f) for f in flags) + ".")
    return out
