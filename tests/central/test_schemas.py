"""The compiled (fast) validators agree with jsonschema, the reference, on good and bad input."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gated.central.schemas import SchemaError, fast_validator, validate, validate_event, validator
from tests.support.device_sim import SimDevice

ODD_VALUES: list[Any] = [None, "", "x" * 5000, -1, 0, 1.5, True, [], {}, "not-a-uuid",
                         "0" * 64, 2**70]


def _mutations(event: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for where in (event, event["data"]):
        for key in list(where):
            gone = copy.deepcopy(event)
            target = gone if where is event else gone["data"]
            del target[key]
            out.append(gone)
            for value in ODD_VALUES:
                changed = copy.deepcopy(event)
                (changed if where is event else changed["data"])[key] = value
                out.append(changed)
    for banned in ("synced_at", "pii_salt"):
        extra = copy.deepcopy(event)
        extra["data"][banned] = 1.0
        out.append(extra)
    extra = copy.deepcopy(event)
    extra["Bad-Name"] = 1
    out.append(extra)
    return out


@pytest.mark.parametrize("stream", ["access", "audit"])
def test_fast_and_reference_validators_agree(stream: str) -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    fast = fast_validator(stream)
    reference = validator(stream)
    cases = [sim.event(stream) for _ in range(3)] + _mutations(sim.event(stream))
    verdicts = {"valid": 0, "invalid": 0}
    for case in cases:
        expected = reference.is_valid(case)
        assert fast.is_valid(case) == expected, case
        verdicts["valid" if expected else "invalid"] += 1
    assert verdicts["valid"] >= 3 and verdicts["invalid"] >= 100


def test_head_and_batch_agree_and_errors_are_worded() -> None:
    sim = SimDevice("acme", "hq", "gate-1")
    events = [sim.event() for _ in range(3)]
    head = sim.signed_head()
    assert validate("batch", [*events, head])
    for case in _mutations(head):
        assert validator("head").is_valid(case) == _fast_ok("head", case), case
    with pytest.raises(SchemaError, match="seq"):
        bad = copy.deepcopy(events[0])
        bad["data"]["seq"] = "x"
        validate_event(bad)
    with pytest.raises(SchemaError, match="unknown type"):
        validate_event({"type": "io.gated.other.v1"})


def _fast_ok(name: str, message: Any) -> bool:
    return bool(fast_validator(name).is_valid(message))


def test_a_trailing_newline_does_not_pass_a_pattern() -> None:
    """JSON Schema's `$` is ECMA-262's (the end); Python's also matches before a final
    newline, so the reference alone would take this hash: the refusal stands, worded."""
    event = SimDevice("acme", "hq", "gate-1").event()
    event["data"]["row_hash"] += "\n"
    with pytest.raises(SchemaError, match="row_hash"):
        validate_event(event)
