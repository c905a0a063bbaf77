"""Validate protocol messages against gated/sync/schemas/*.json (JSON Schema Draft 2020-12)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "gated" / "sync" / "schemas"


@cache
def _registry(folder: Path = SCHEMAS) -> tuple[Registry, dict[str, dict[str, Any]]]:
    by_name: dict[str, dict[str, Any]] = {}
    resources = []
    for path in sorted(folder.glob("*.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        by_name[path.stem] = schema
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources), by_name


@cache
def validator(name: str, folder: Path = SCHEMAS) -> Draft202012Validator:
    """A validator for schema `name` (the file's stem in `folder`), the others resolvable."""
    registry, by_name = _registry(folder)
    return Draft202012Validator(by_name[name], registry=registry)


def validate(name: str, message: Any) -> Any:
    """Raise jsonschema.ValidationError unless message fits schema `name`; return message."""
    validator(name).validate(message)
    return message


TYPE_SCHEMA = {
    "io.gated.access.v1": "access",
    "io.gated.audit.v1": "audit",
    "io.gated.head.v1": "head",
    "io.gated.heartbeat.v1": "heartbeat",
    "io.gated.ack.v1": "ack",
    "io.gated.rules.announce.v1": "rules_announce",
    "io.gated.command.v1": "command",
    "io.gated.command.result.v1": "command_result",
}


def validate_event(event: dict[str, Any]) -> dict[str, Any]:
    """Validate a CloudEvent against the schema of its `type`."""
    validate("cloudevent", event)
    return validate(TYPE_SCHEMA[event["type"]], event)
