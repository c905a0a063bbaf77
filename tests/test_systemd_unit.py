"""The shipped systemd unit: valid for systemd, notify-type with a watchdog, sandboxed."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "gated.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_declares_notify_watchdog_restart_and_sandbox() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["WatchdogSec"].endswith("s")
    assert service["Restart"] == "on-failure"
    assert service["User"] == "gated"
    assert set(service["SupplementaryGroups"].split()) == {"gpio", "dialout", "video"}
    assert service["StateDirectory"] == "gated"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert "gated run --config" in service["ExecStart"]


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # The ExecStart binary does not exist on a build machine; point it at one that does.
    unit = tmp_path / "gated.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/gated/.venv/bin/gated", shutil.which("true") or "/bin/true")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr


def test_unit_sets_a_descriptor_limit_above_the_listener_cap() -> None:
    """Without LimitNOFILE the soft limit is 1024: slow clients exhausted it before."""
    from gated.config import ListenerConfig

    limit = int(_unit()["Service"]["LimitNOFILE"].split(":")[0])
    # every camera connection, plus the reserve the listener keeps for the rest
    assert limit >= ListenerConfig().max_connections + 128 + 512

