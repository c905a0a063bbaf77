"""Config: the example documents every key, errors name the key path, only ConfigError escapes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args, get_type_hints

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gated import config as cfgmod
from gated.config import Config, load_config, parse_config, redacted
from gated.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gated.example.toml"
SITE = {"site": {"tenant_id": "t1", "site_id": "s1", "device_id": "d1"}}


def _structs(tp: Any, seen: set[type]) -> None:
    for arg in get_args(tp) or (tp,):
        if isinstance(arg, type) and issubclass(arg, msgspec.Struct) and arg not in seen:
            seen.add(arg)
            for hint in get_type_hints(arg, include_extras=True).values():
                _structs(hint, seen)
        elif get_args(arg):
            _structs(arg, seen)


def test_example_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.site.identity.device_id == "gate-01"
    assert [lane.id for lane in cfg.lanes] == ["main-in", "main-out"]


def test_example_documents_every_setting() -> None:
    text = EXAMPLE.read_text()
    structs: set[type] = set()
    _structs(Config, structs)
    missing = []
    for struct in structs:
        for name in struct.__struct_fields__:
            if not re.search(rf"^\s*#?\s*{re.escape(name)}\s*=", text, re.M) and not re.search(
                rf"^\s*\[+[\w.]*\b{re.escape(name)}\]+", text, re.M
            ):
                missing.append(f"{struct.__name__}.{name}")
    assert not missing, f"settings not documented in gated.example.toml: {missing}"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"lanes": [{"id": "a", "relay": {"kind": "gpio", "pin": 99}}]},
            "lanes[0].relay.pin: expected int <= 53",
        ),
        (
            {
                "lanes": [
                    {"id": "a"},
                    {"id": "b", "relay": {"kind": "lcus", "port": "/dev/x", "pulse_ms": 0}},
                ]
            },
            "lanes[1].relay.pulse_ms: expected int >= 1",
        ),
        (
            {"lanes": [{"id": "a", "relay": {"kind": "gpio", "pin": 4, "pulse": 5}}]},
            "lanes[0].relay.pulse: unknown key",
        ),
        (
            {"lanes": [{"id": "a", "relay": {"kind": "solenoid"}}]},
            "lanes[0].relay.kind: invalid value 'solenoid'",
        ),
        ({"lanes": [{"id": "a"}, {"id": "a"}]}, "lanes[1].id: duplicate lane id 'a'"),
        ({"lanes": [{"id": "a", "paired_lane": "b"}]}, "lanes[0].paired_lane: no lane with id 'b'"),
        ({"policy": {"min_confidence": 1.5}}, "policy.min_confidence: expected float <= 1.0"),
        ({"policy": {"plate_formats": ["("]}}, "policy.plate_formats[0]: not a valid regex"),
        ({"policy": {"anti_passback": "maybe"}}, "policy.anti_passback: invalid value 'maybe'"),
        (
            {
                "lanes": [
                    {
                        "id": "a",
                        "sources": [
                            {"kind": "serial_line", "name": "s", "port": "/dev/x", "pattern": "abc"}
                        ],
                    }
                ]
            },
            "lanes[0].sources[0].pattern: needs a named group",
        ),
        (
            {"lanes": [{"id": "a", "sources": [{"kind": "frigate", "name": "f", "camera": "c"}]}]},
            "lanes[0].sources[0]: a frigate source needs an [mqtt] section",
        ),
        (
            {"mqtt": {"reconnect_min_s": 10.0, "reconnect_max_s": 2.0}},
            "mqtt.reconnect_min_s: must not exceed reconnect_max_s",
        ),
        ({"mqtt": {"reconnect_max_s": 600.0}}, "mqtt.reconnect_max_s: expected float <= 60"),
        ({"mqtt": {"tls_ca_file": "/etc/ca.pem"}}, "mqtt.tls_ca_file: set tls = true"),
        ({"mqtt": {"password": "x"}}, "mqtt.password: needs a username"),
        (
            {
                "mqtt": {},
                "lanes": [
                    {
                        "id": "a",
                        "sources": [{"kind": "frigate", "name": "f", "camera": "c", "labels": []}],
                    }
                ],
            },
            "lanes[0].sources[0].labels: name at least one Frigate object label",
        ),
        (
            {
                "lanes": [{"id": "a", "relay": {"kind": "gpio", "pin": 5, "active_high": False}}],
                "buttons": [{"name": "b", "pin": 5, "action": "open"}],
            },
            "buttons[0].pin: GPIO pin 5 is already used",
        ),
        (
            {"buttons": [{"name": "b", "pin": 5, "action": "open", "lanes": ["zz"]}]},
            "buttons[0].lanes: no lane with id 'zz'",
        ),
        ({"nonsense": 1}, "nonsense: unknown key"),
    ],
)
def test_errors_name_the_key_path(extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**SITE, **extra}, "gated.toml")
    message = str(info.value)
    assert message.startswith("gated.toml: ")
    assert expected in message
    assert "\n" not in message


def test_missing_site_and_bad_timezone() -> None:
    with pytest.raises(ConfigError, match=r"site: required key is missing"):
        parse_config({}, "x.toml")
    bad = {"site": {**SITE["site"], "timezone": "Mars/Olympus"}}
    with pytest.raises(ConfigError, match=r"site.timezone: unknown time zone"):
        parse_config(bad, "x.toml")


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text('[site\ntenant_id = "x"\n')
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(broken)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_config_is_frozen() -> None:
    cfg = parse_config(SITE)
    with pytest.raises(AttributeError):
        cfg.site.site_id = "other"  # type: ignore[misc]


def test_secrets_are_redacted() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    cfg = parse_config(data)
    shown = repr(redacted(cfg))
    assert "change-me" not in shown
    assert "'password': '***'" in shown


_toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    section=st.sampled_from(
        ["site", "journal", "policy", "lanes", "buttons", "mqtt", "gpio", "log", "x"]
    ),
    value=_toml_values,
)
def test_hostile_documents_only_raise_config_error(section: str, value: Any) -> None:
    try:
        parse_config({**SITE, section: value})
    except ConfigError as err:
        assert str(err)
    # anything else propagating is a bug: it would crash the daemon at start-up


def test_module_exit_code_constant() -> None:
    assert cfgmod.EX_CONFIG == 78
