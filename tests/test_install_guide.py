"""The Raspberry Pi install guide runs top to bottom: each command finds what it needs."""

from __future__ import annotations

import re
from pathlib import Path

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "install-raspberry-pi.md"


def _commands() -> list[str]:
    """The shell lines of the guide's sh blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _first(commands: list[str], pattern: str) -> int:
    for i, line in enumerate(commands):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"the guide never runs {pattern!r}")


def test_state_folder_and_user_exist_before_a_command_uses_them() -> None:
    commands = _commands()
    user = _first(commands, r"useradd .*\bgated$")
    state = _first(commands, r"install -d -o gated -g gated -m 0750 /var/lib/gated")
    first_as_gated = _first(commands, r"-u gated|-g gated|-o gated")
    first_import = _first(commands, r"gated rules import")
    first_start = _first(commands, r"systemctl .*(start|--now)")
    assert user < first_as_gated
    assert state < first_import < first_start


def test_commands_run_as_gated_read_only_what_gated_may_read() -> None:
    for line in _commands():
        if "sudo -u gated" in line and "rules import" in line:
            # a file in the installer's home is not readable by the service user
            target = line.split("rules import", 1)[1].split()[0]
            assert target.startswith("/etc/gated/"), line


def test_gpio_group_is_said_to_exist_only_on_raspberry_pi_os() -> None:
    text = GUIDE.read_text()
    assert any("gpio" in line for line in _commands() if "usermod" in line)
    assert re.search(r"`gpio` group exists only on Raspberry Pi OS", text)
    assert "groupadd --system gpio" in text
