"""The rule-set forms of the status page: which fields each kind has, form → import document.

A form becomes the same JSON document `gated rules import` reads (docs/rules-format.md),
with each value as a CSV cell would hold it, so the import's checks (ids, plates,
references, schedules) apply unchanged and its problems name the field. What is checked
here is only what a form adds: lengths, control characters, the required fields.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "FormError", "document_for", "problem_text"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEXT_MAX = 200
LONG_MAX = 2000  # a schedule's windows and exceptions


class FormError(ValueError):
    """A form field that cannot be used; the message starts with the field's name."""


@dataclass(frozen=True)
class Field:
    """One form field: its import key, label, a hint, whether it must be given."""

    key: str
    label: str
    hint: str = ""
    required: bool = False
    max: int = TEXT_MAX


@dataclass(frozen=True)
class Kind:
    """One rule list: its words, fields, and the prefix of ids made up for new entries."""

    title: str
    one: str
    fields: tuple[Field, ...]
    id_prefix: str | None  # None: the admin must choose the id (others refer to it)


_ACTIVE = Field("active", "Active", "yes or no")
KINDS: dict[str, Kind] = {
    "residents": Kind("Residents", "resident", (
        Field("name", "Name", required=True), Field("unit", "Unit"), _ACTIVE,
        Field("groups", "Groups", "group ids, comma separated"),
        Field("access_points", "Access points", "* for all, or lane ids; empty: groups only"),
        Field("schedule_id", "Schedule", "schedule id; empty: at any time"),
    ), "r-web"),
    "vehicles": Kind("Vehicles", "vehicle", (
        Field("plate", "Plate", required=True, max=32),
        Field("resident_id", "Resident", "resident id", required=True, max=64), _ACTIVE,
        Field("description", "Description"),
    ), "v-web"),
    "tags": Kind("Tags", "tag", (
        Field("tag", "Tag number", required=True, max=32),
        Field("resident_id", "Resident", "resident id", required=True, max=64), _ACTIVE,
    ), "t-web"),
    "groups": Kind("Groups", "group", (
        Field("name", "Name"),
        Field("access_points", "Access points", "* for all, or lane ids"),
        Field("schedule_id", "Schedule", "schedule id; empty: at any time"),
    ), None),
    "schedules": Kind("Schedules", "schedule", (
        Field("name", "Name"),
        Field("windows", "Windows", "mon-fri 07:00-19:00; sat 08:00-12:00", max=LONG_MAX),
        Field("exceptions", "Exceptions", "2025-12-25 closed; 2025-12-24 07:00-13:00",
              max=LONG_MAX),
    ), None),
}
# A new resident's first vehicle, from the same form (one version for both).
FIRST_PLATE = Field("plate", "Vehicle plate", "optional: the resident's first vehicle", max=32)


def _value(form: Mapping[str, str], fld: Field) -> str:
    value = (form.get(fld.key) or "").strip()
    if len(value) > fld.max:
        raise FormError(f"{fld.key}: at most {fld.max} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FormError(f"{fld.key}: no tabs, line breaks or control characters")
    if fld.required and not value:
        raise FormError(f"{fld.key}: required")
    return value


def document_for(kind: str, form: Mapping[str, str],
                 entry_id: str | None) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """The import document one form makes (merged by id), and the id it saves."""
    spec = KINDS[kind]
    if entry_id is None:
        given = (form.get("id") or "").strip()
        if not given:
            if spec.id_prefix is None:
                raise FormError("id: required (others refer to it)")
            given = f"{spec.id_prefix}-{secrets.token_hex(4)}"
    else:
        given = entry_id
    if not _ID.match(given):
        raise FormError("id: 1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")
    element: dict[str, Any] = {"id": given}
    for fld in spec.fields:
        value = _value(form, fld)
        if fld.key == "active":
            value = value.lower() or "yes"
            if value not in ("yes", "no", "true", "false"):
                raise FormError("active: yes or no")
        if value:  # an absent key means what an empty cell means
            element[fld.key] = value
    document: dict[str, list[dict[str, Any]]] = {kind: [element]}
    if kind == "residents" and entry_id is None:
        plate = _value(form, FIRST_PLATE)
        if plate:
            document["vehicles"] = [{"id": f"v-web-{secrets.token_hex(4)}", "plate": plate,
                                     "resident_id": given}]
    return document, given


def problem_text(err: Exception) -> str:
    """An import's refusal in one line, each problem led by its field (`name: …`)."""
    problems = getattr(err, "problems", None)
    if not problems:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    parts = []
    for p in problems[:5]:
        where = str(getattr(p, "field", "") or "")
        kind_prefix = re.match(r"^([a-z_]+)\[\d+\]\.?", where)
        if kind_prefix:
            where = where[kind_prefix.end():] or kind_prefix.group(1)  # residents[0].name → name
        parts.append(f"{where}: {getattr(p, 'message', p)}" if where else
                     str(getattr(p, "message", p)))
    return "; ".join(parts)
