"""A GPIO relay's polarity is a choice the installer makes: a wrong guess holds a gate open."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gated.config import GpioRelayConfig, load_config, parse_config
from gated.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gated.example.toml"
SITE = {"site": {"tenant_id": "t1", "site_id": "s1", "device_id": "d1"}}


def _lane(relay: dict[str, object]) -> dict[str, object]:
    return {**SITE, "lanes": [{"id": "a", "relay": relay}]}


def test_gpio_relay_without_polarity_is_refused_naming_the_choice() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_lane({"kind": "gpio", "pin": 17}), "gated.toml")
    message = str(info.value)
    assert message.startswith("gated.toml: lanes[0].relay.active_high: ")
    assert "false" in message and "active-low" in message  # which to pick, and for what
    assert "\n" not in message


@pytest.mark.parametrize("active_high", [False, True])
def test_gpio_relay_polarity_as_chosen(active_high: bool) -> None:
    cfg = parse_config(_lane({"kind": "gpio", "pin": 17, "active_high": active_high}))
    relay = cfg.lanes[0].relay
    assert isinstance(relay, GpioRelayConfig) and relay.active_high is active_high


def test_example_config_picks_the_common_active_low_module() -> None:
    relay = tomllib.loads(EXAMPLE.read_text())["lanes"][0]["relay"]
    assert relay["kind"] == "gpio" and relay["active_high"] is False
    relay_cfg = load_config(EXAMPLE).lanes[0].relay
    assert isinstance(relay_cfg, GpioRelayConfig) and relay_cfg.active_high is False
