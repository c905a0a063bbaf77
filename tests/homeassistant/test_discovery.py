"""Discovery messages and decision payloads as values: personal data only as configured,
commands offered only when enabled, removed components, config errors naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from gated.config import parse_config
from gated.errors import ConfigError
from gated.homeassistant.bridge import decision_event, lane_states
from gated.homeassistant.discovery import (
    Topics,
    alert_rule_names,
    component_ids,
    discovery_payload,
    node_id,
)
from tests.homeassistant.conftest import validate

SITE = {"tenant_id": "t", "site_id": "s", "device_id": "gate.7"}


def config(**ha: Any) -> Any:
    """A config with [mqtt] and [home_assistant] as given."""
    return parse_config({"site": SITE, "mqtt": {}, "home_assistant": {"enabled": True, **ha}})


def payload(lanes: dict[str, str] | None = None, **ha: Any) -> dict[str, Any]:
    """The discovery message for these lanes under this [home_assistant]."""
    cfg = config(**ha)
    return discovery_payload(cfg.home_assistant, cfg.site, lanes or {"in": "Entry"},
                             alert_rules=["forced_open", "relay_fault"])


ROW = {
    "seq": 4, "stream": "access", "event_id": "e-1", "created_at": 0.0, "access_point": "in",
    "event_type": "visitor_entry", "direction": "in", "decision_reason": "visitor_pass",
    "authorization_method": "auto_plate", "vehicle_plate": "KL77MN", "visitor_name": "Plumber",
    "resident_id": None, "pass_id": "p-1", "confidence_score": 0.9, "gate_opened": True,
    "authorized_by": None, "metadata": {"match": {"kind": "confusion", "list": "visitor_pass"}},
}


def test_every_variant_fits_the_schemas() -> None:
    for ha in ({}, {"expose_plates": False}, {"commands": {"open": True}},
               {"commands": {"hold": True}}, {"commands": {"open": True, "hold": True,
                                                           "lockdown": True}}):
        validate("device", payload(**ha))


def test_topics_and_ids_follow_the_config() -> None:
    cfg = config(topic_prefix="site/north", discovery_prefix="ha")
    topics = Topics.of(cfg.home_assistant, cfg.site)
    assert topics.config == "ha/device/gate_7/config" and topics.ha_status == "ha/status"
    assert topics.lane("in", "gate/set") == "site/north/in/gate/set"
    assert topics.command_filter == "site/north/+/+/set"
    assert Topics.of(config().home_assistant, cfg.site).prefix == "gated/gate.7"
    assert node_id("a b/c+#") == "a_b_c__"


def test_plates_off_means_no_plate_anywhere() -> None:
    cmps = payload(expose_plates=False)["cmps"]
    assert "in_plate" not in cmps
    event = decision_event(ROW, expose_plates=False, expose_names=False)
    assert "plate" not in event and "visitor_name" not in event
    assert validate("decision", event)["event_type"] == "allowed"
    assert event["match_kind"] == "confusion" and event["pass_id"] == "p-1"


def test_names_only_when_exposed() -> None:
    def names(resident_id: str | None, pass_id: str | None) -> dict[str, str]:
        return {"pass_holder": "Plumber", "host": "Ann Jansen"} if pass_id == "p-1" else {}

    hidden = decision_event(ROW, expose_plates=True, expose_names=False, names=names)
    assert hidden["plate"] == "KL77MN"
    assert not {"visitor_name", "pass_holder_name", "host_name"} & set(hidden)
    shown = validate("decision", decision_event(ROW, expose_plates=True, expose_names=True,
                                                names=names))
    assert shown["visitor_name"] == "Plumber" and shown["host_name"] == "Ann Jansen"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"decision_reason": "unread_plate", "event_type": "denied"}, "unread"),
    ({"decision_reason": "unknown_plate", "event_type": "denied"}, "denied"),
    ({"decision_reason": "guard_override", "authorization_method": "manual_guard"}, "manual"),
    ({"decision_reason": "remote_command", "authorization_method": "remote"}, "manual"),
    ({}, "allowed"),
])
def test_event_types(changes: dict[str, Any], expected: str) -> None:
    assert decision_event({**ROW, **changes}, expose_plates=True,
                          expose_names=False)["event_type"] == expected


def test_commands_are_offered_only_when_enabled() -> None:
    off = payload()["cmps"]
    assert "command_topic" not in off["in_gate"]
    assert off["in_lockdown"]["p"] == off["in_hold_open"]["p"] == "binary_sensor"
    hold = payload(commands={"hold": True})["cmps"]
    assert hold["in_gate"]["payload_open"] is None and hold["in_gate"]["payload_close"] == "CLOSE"
    assert hold["in_hold_open"]["p"] == "switch" and hold["in_lockdown"]["p"] == "binary_sensor"


def test_removed_components_are_sent_with_only_their_platform() -> None:
    before = component_ids(payload({"in": "Entry", "out": "Exit"}))
    cfg = config()
    after = discovery_payload(cfg.home_assistant, cfg.site, {"in": "Entry"},
                              alert_rules=["x"], removed=before)
    assert after["cmps"]["out_gate"] == {"p": "cover"}
    assert after["cmps"]["in_gate"]["p"] == "cover" and len(after["cmps"]["in_gate"]) > 1
    assert "out_gate" not in component_ids(after)  # a removal is not a component any more
    validate("device", after)


def test_lane_states_follow_the_status() -> None:
    topics = Topics.of(config().home_assistant, config().site)
    states = lane_states(topics, "in", {"gate": "unknown", "mode": "lockdown",
                                        "alarms": ["held_open"], "relay_fault": "port gone"})
    assert states["gated/gate.7/in/gate"] == "None"
    assert states["gated/gate.7/in/lockdown"] == "ON"
    assert states["gated/gate.7/in/hold_open"] == "OFF"
    assert states["gated/gate.7/in/held_open"] == "ON"
    assert states["gated/gate.7/in/forced_open"] == "OFF"
    assert states["gated/gate.7/in/relay_fault"] == "ON"


def test_alert_entity_uses_the_alert_rules() -> None:
    names = alert_rule_names()
    assert "forced_open" in names and len(names) == len(set(names))


@pytest.mark.parametrize(("ha", "key"), [
    ({"topic_prefix": "gated/#"}, "home_assistant.topic_prefix"),
    ({"discovery_prefix": ""}, "home_assistant.discovery_prefix"),
    ({"topic_prefix": "/lead"}, "home_assistant.topic_prefix"),
    ({"commands": {"open": "yes"}}, "home_assistant.commands.open"),
    ({"commands": {"reboot": True}}, "home_assistant.commands.reboot"),
    ({"commands_per_minute": 0}, "home_assistant.commands_per_minute"),
])
def test_bad_settings_name_the_key(ha: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config(**ha)


def test_enabled_needs_a_broker() -> None:
    with pytest.raises(ConfigError, match=r"home_assistant\.mqtt"):
        parse_config({"site": SITE, "home_assistant": {"enabled": True}})
    own = parse_config({"site": SITE, "home_assistant": {"enabled": True,
                                                         "mqtt": {"host": "10.0.0.2"}}})
    assert own.home_assistant.mqtt is not None and own.mqtt is None
