"""Decision replay: what would today's rule set decide for a recorded read?

Runs the pure `gated.policy.decide` on the inputs the journal row recorded (plate as
normalised, credential kind, confidence, direction, lane, mode and the decision time)
against the rule index the lane uses now. History that is not a rule — anti-passback
passages and visitor-pass uses — is left out (a fresh state), so the two answers differ
only by what changed in the rules; the page says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gated.model import CredentialKind, Decision, Direction, Mode, PlateRead
from gated.policy import AccessPoint, decide

__all__ = ["DecisionContext", "replay"]

# lane id → (the lane's access point, the rule index it decides with now), None if no lane
DecisionContext = Callable[[str], "tuple[AccessPoint, Any] | None"]


class _RecordedState:
    """The mode recorded with the decision; no passages and no pass uses."""

    def __init__(self, mode: Mode) -> None:
        self._mode = mode

    def mode(self, access_point_id: str) -> Mode:
        return self._mode

    def last_passage(self, subject: str) -> tuple[Direction, float] | None:
        return None

    def pass_uses(self, pass_id: str) -> int:
        return 0


def replay(row: Mapping[str, Any], context: DecisionContext) -> dict[str, Any]:
    """Both answers for an access row: as recorded and as the current rules decide."""
    meta = row.get("metadata") or {}
    inputs = meta.get("inputs") or {} if isinstance(meta, dict) else {}
    recorded = {"allowed": row["event_type"] != "denied", "reason": row["decision_reason"],
                "rules_version": row["rules_version"], "resident_id": row.get("resident_id"),
                "vehicle_id": row.get("vehicle_id"), "pass_id": row.get("pass_id")}
    if row.get("authorization_method") not in ("auto_plate", "auto_tag"):
        return {"recorded": recorded, "replayed": None,
                "why_not": "a person opened the gate: there is no automatic decision to replay"}
    plate = row.get("vehicle_plate")
    if not plate:
        return {"recorded": recorded, "replayed": None,
                "why_not": "the plate was erased or never read: nothing to decide on"}
    found = context(row["access_point"])
    if found is None:
        return {"recorded": recorded, "replayed": None,
                "why_not": f"lane {row['access_point']} is not running now"}
    access_point, rules = found
    try:
        mode = Mode(inputs.get("mode", "normal"))
    except ValueError:
        mode = Mode.NORMAL
    direction = row.get("direction")
    when = float(inputs.get("now") or row["created_at"])
    read = PlateRead(
        access_point=row["access_point"], text=str(plate), source=str(meta.get("source", "")),
        read_at=when, received_mono=0.0, confidence=row.get("confidence_score"),
        kind=CredentialKind(inputs.get("kind", "plate")),
        direction=Direction(direction) if direction in ("in", "out") else None,
    )
    decision = decide(read, access_point, rules, _RecordedState(mode), when)
    return {"recorded": recorded, "replayed": _answer(decision), "why_not": None,
            "same": _answer(decision)["allowed"] == recorded["allowed"]
            and decision.reason.value == recorded["reason"]}


def _answer(decision: Decision) -> dict[str, Any]:
    match = decision.match
    return {
        "allowed": decision.allowed, "reason": decision.reason.value,
        "rules_version": decision.rules_version, "resident_id": decision.resident_id,
        "vehicle_id": decision.vehicle_id, "pass_id": decision.pass_id,
        "match": None if match is None else {
            "kind": match.kind.value, "list": match.list, "distance": match.distance,
            "edits": [{"op": e.op, "position": e.position, "read": e.read, "stored": e.stored}
                      for e in match.edits]},
        "flags": list(decision.flags),
    }
