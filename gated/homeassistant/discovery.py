"""Home Assistant MQTT discovery: the device's one config message and its topics. Pure.

One device per gate controller, announced with device-based discovery
(`<discovery_prefix>/device/<node_id>/config`: `dev`, `o` and a `cmps` map of
components). Every component reads a plain payload from its own state topic
(no templates), so what Home Assistant shows is exactly what gated published and
a test can check it without evaluating Jinja. The topics, per lane L under
`topic_prefix` P (default `gated/<device_id>`):

    P/availability            online / offline (retained; "offline" is the last will)
    P/L/gate                  cover state: open, opening, closed, closing, None (unknown)
    P/L/gate/set              cover commands: OPEN, CLOSE
    P/L/decision              event: JSON {"event_type": allowed|denied|unread|manual, …}
    P/L/plate                 sensor: the last plate read (when expose_plates)
    P/L/plate/attributes      its JSON attributes
    P/L/forced_open, held_open, no_movement, relay_fault   binary sensors: ON / OFF
    P/L/lockdown, P/L/hold_open                            switches: ON / OFF
    P/L/lockdown/set, P/L/hold_open/set                    switch commands: ON / OFF
    P/problem (+ /attributes) device binary sensor: a component is unhealthy
    P/alert                   device event: alerts (published by gated.alerts)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gated import __version__
from gated.config import AlertRulesConfig, HomeAssistantConfig, SiteConfig

__all__ = [
    "DECISION_EVENT_TYPES",
    "Topics",
    "alert_rule_names",
    "component_ids",
    "discovery_payload",
    "node_id",
    "removal_payload",
]

DECISION_EVENT_TYPES = ("allowed", "denied", "unread", "manual")
ONLINE, OFFLINE = "online", "offline"
ON, OFF = "ON", "OFF"
# The lane binary sensors: state key → (name, device_class).
LANE_BINARY = {
    "forced_open": ("Forced open", "safety"),
    "held_open": ("Held open", "problem"),
    "no_movement": ("Gate did not move", "problem"),
    "relay_fault": ("Relay fault", "problem"),
}


def node_id(device_id: str) -> str:
    """The discovery node id: the device id with anything but [A-Za-z0-9_-] made '_'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", device_id)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the integration publishes on or listens to."""

    prefix: str  # topic_prefix: state and command topics
    discovery_prefix: str
    node: str

    @classmethod
    def of(cls, ha: HomeAssistantConfig, site: SiteConfig) -> Topics:
        """The topics of this device under this config."""
        prefix = ha.topic_prefix or f"gated/{site.device_id}"
        return cls(prefix, ha.discovery_prefix, node_id(site.device_id))

    @property
    def config(self) -> str:
        """Where the device's discovery message is published (retained)."""
        return f"{self.discovery_prefix}/device/{self.node}/config"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and last-will topic."""
        return f"{self.discovery_prefix}/status"

    @property
    def availability(self) -> str:
        """online / offline of this device (offline is the connection's last will)."""
        return f"{self.prefix}/availability"

    @property
    def alert(self) -> str:
        """Alerts (gated.alerts publishes here; non-retained, QoS 1)."""
        return f"{self.prefix}/alert"

    @property
    def problem(self) -> str:
        """ON while a component of the daemon is unhealthy."""
        return f"{self.prefix}/problem"

    def lane(self, lane_id: str, what: str) -> str:
        """A lane's topic: gate, decision, plate, forced_open, lockdown, … (+ "/set")."""
        return f"{self.prefix}/{lane_id}/{what}"

    @property
    def command_filter(self) -> str:
        """The subscription that receives every lane's commands."""
        return f"{self.prefix}/+/+/set"


def alert_rule_names() -> list[str]:
    """The alert rule names for the Alert event entity (the [alerts.rules] keys)."""
    return list(AlertRulesConfig.__struct_fields__)


def _lane_components(topics: Topics, lane_id: str, lane_name: str, ha: HomeAssistantConfig,
                     device_key: str) -> dict[str, dict[str, Any]]:
    """The components of one lane, keyed by component id."""
    uid = f"gated_{device_key}_{_slug(lane_id)}"
    label = lane_name or lane_id
    allowed = ha.commands
    out: dict[str, dict[str, Any]] = {}
    gate: dict[str, Any] = {
        "p": "cover", "unique_id": f"{uid}_gate", "name": f"{label} gate",
        "device_class": "gate", "state_topic": topics.lane(lane_id, "gate"),
        "state_open": "open", "state_opening": "opening", "state_closed": "closed",
        "state_closing": "closing",
        # A gate that closes by itself cannot be stopped from here.
        "payload_stop": None,
    }
    if allowed.open or allowed.hold:
        gate["command_topic"] = topics.lane(lane_id, "gate/set")
        gate["payload_open"] = "OPEN" if allowed.open else None
        # CLOSE ends a hold-open: the gate closes by itself once nothing holds it.
        gate["payload_close"] = "CLOSE" if allowed.hold else None
    out[f"{_slug(lane_id)}_gate"] = gate
    out[f"{_slug(lane_id)}_decision"] = {
        "p": "event", "unique_id": f"{uid}_decision", "name": f"{label} decision",
        "state_topic": topics.lane(lane_id, "decision"),
        "event_types": list(DECISION_EVENT_TYPES),
    }
    if ha.expose_plates:
        out[f"{_slug(lane_id)}_plate"] = {
            "p": "sensor", "unique_id": f"{uid}_plate", "name": f"{label} last plate",
            "icon": "mdi:car", "state_topic": topics.lane(lane_id, "plate"),
            "json_attributes_topic": topics.lane(lane_id, "plate/attributes"),
        }
    for key, (name, device_class) in LANE_BINARY.items():
        out[f"{_slug(lane_id)}_{key}"] = {
            "p": "binary_sensor", "unique_id": f"{uid}_{key}", "name": f"{label} {name.lower()}",
            "device_class": device_class, "state_topic": topics.lane(lane_id, key),
            "payload_on": ON, "payload_off": OFF,
        }
    for key, name, enabled in (("lockdown", "lockdown", allowed.lockdown),
                               ("hold_open", "hold open", allowed.hold)):
        switch: dict[str, Any] = {
            "p": "switch", "unique_id": f"{uid}_{key}", "name": f"{label} {name}",
            "icon": "mdi:gate-alert" if key == "lockdown" else "mdi:gate-open",
            "state_topic": topics.lane(lane_id, key), "state_on": ON, "state_off": OFF,
        }
        if enabled:
            switch.update(command_topic=topics.lane(lane_id, f"{key}/set"),
                          payload_on=ON, payload_off=OFF)
        else:
            # No command topic: Home Assistant shows the state and offers no toggle.
            switch["p"] = "binary_sensor"
            switch.pop("state_on")
            switch.pop("state_off")
            switch.update(payload_on=ON, payload_off=OFF)
        out[f"{_slug(lane_id)}_{key}"] = switch
    return out


def discovery_payload(ha: HomeAssistantConfig, site: SiteConfig,
                      lanes: Mapping[str, str], *, alert_rules: Sequence[str],
                      removed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The device's discovery message: `lanes` maps lane id → display name.

    `removed` (component id → platform) lists components published before and gone
    now (a lane taken out of the config): each is sent with only its platform, which
    is how Home Assistant is told to delete it.
    """
    topics = Topics.of(ha, site)
    device_key = node_id(site.device_id)
    components: dict[str, dict[str, Any]] = {
        "problem": {
            "p": "binary_sensor", "unique_id": f"gated_{device_key}_problem",
            "name": "Problem", "device_class": "problem", "entity_category": "diagnostic",
            "state_topic": topics.problem, "payload_on": ON, "payload_off": OFF,
            "json_attributes_topic": f"{topics.problem}/attributes",
        },
        "alert": {
            "p": "event", "unique_id": f"gated_{device_key}_alert", "name": "Alert",
            "state_topic": topics.alert, "event_types": list(alert_rules),
        },
    }
    for lane_id, name in lanes.items():
        components.update(_lane_components(topics, lane_id, name, ha, device_key))
    for component_id, platform in (removed or {}).items():
        if component_id not in components:
            components[component_id] = {"p": platform}
    return {
        "dev": {
            "ids": [f"gated_{device_key}"],
            "name": f"gated {site.device_id}",
            "mf": "gated",
            "mdl": "gate controller",
            "sw": __version__,
        },
        "o": {"name": "gated", "sw": __version__},
        "cmps": components,
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
    }


def component_ids(payload: Mapping[str, Any]) -> dict[str, str]:
    """Component id → platform of a discovery message (one read back from the broker)."""
    cmps = payload.get("cmps")
    if not isinstance(cmps, dict):
        return {}
    return {str(k): str(v["p"]) for k, v in cmps.items()
            if isinstance(v, dict) and isinstance(v.get("p"), str) and len(v) > 1}


def removal_payload() -> bytes:
    """What removes the device from Home Assistant: an empty retained config message."""
    return b""
