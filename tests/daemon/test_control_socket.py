"""The control plane through its local front ends: `gated ctl` and the raw Unix socket.

A `gated run` subprocess with an LCUS relay on a pty; each action is driven the way an
installer (the `gated ctl` command) or another local tool (line-delimited JSON on the
socket) would, and checked on the relay's bytes and in the journal's audit rows.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.harness import (
    LCUS_OFF,
    LCUS_ON,
    RESIDENT_RULES,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_frames,
    lcus_relay,
    running,
    wait_audit,
)

ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def control_site(tmp_path: Path, relay_port: PtyPort) -> tuple[Site, Path]:
    sock = tmp_path / "run" / "control.sock"
    site = Site(tmp_path)
    site.write_config(
        generic_lane(lcus_relay(relay_port, 150)),
        extra=f'[control]\nsocket = "{sock}"\n',
    )
    site.import_rules(RESIDENT_RULES)
    return site, sock


def ctl(sock: Path, *args: str) -> Any:
    return gated("ctl", "--socket", str(sock), *args)


def raw(sock: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Send lines as another local tool would; the answers, one per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(sock))
        answers = []
        for line in lines:
            s.sendall(line)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            answers.append(json.loads(buf) if buf else {})
        return answers


@pytest.mark.slow
def test_ctl_actions_move_the_relay_and_are_audited(tmp_path: Path, relay_port: PtyPort) -> None:
    site, sock = control_site(tmp_path, relay_port)
    with running(site) as daemon:
        assert daemon.wait_log("control socket listening")
        assert oct(sock.stat().st_mode & 0o777) == "0o660"
        relay_port.drain()

        status = ctl(sock, "status")
        assert status.returncode == 0, status.stderr
        assert "main-in: mode normal" in status.stdout

        opened = ctl(sock, "open", "main-in", "--reason", "delivery van")
        assert opened.returncode == 0, opened.stderr
        assert lcus_frames(relay_port.read(8, 5)) == [LCUS_ON, LCUS_OFF]
        [row] = wait_audit(site, "gate_open")
        assert row["actor_type"] == "local_user" and row["actor_id"] == ME
        assert row["status"] == "success" and row["ip_address"].startswith(f"uid={os.getuid()}")
        meta = json.loads(row["metadata"])
        assert meta["reason"] == "delivery van" and meta["outcome"] == "success"
        [event] = site.wait_rows(1)
        assert event["event_id"] == meta["access_event_id"]
        assert event["authorization_method"] == "manual_guard"

        assert ctl(sock, "hold", "main-in").returncode == 0
        assert relay_port.read(4, 5) == LCUS_ON
        assert ctl(sock, "release", "main-in").returncode == 0
        assert relay_port.read(4, 5) == LCUS_OFF
        assert [r["status"] for r in wait_audit(site, "gate_hold")] == ["success"]
        assert [r["status"] for r in wait_audit(site, "gate_release")] == ["success"]

        assert ctl(sock, "lockdown", "on").returncode == 0
        # a relay test would open a gate that is locked down: refused, one line, audited
        refused = ctl(sock, "relay-test", "main-in", "--ms", "100")
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            "gated ctl: refused: lane main-in is in lockdown; test the relay in normal mode"
        ]
        assert relay_port.drain() == b""
        [test_row] = wait_audit(site, "relay_test")
        assert test_row["status"] == "failure" and "refused" in test_row["error_message"]
        assert ctl(sock, "lockdown", "off").returncode == 0
        assert [r["status"] for r in wait_audit(site, "lockdown_on")] == ["success"]

        tested = ctl(sock, "relay-test", "main-in", "--ms", "100")
        assert tested.returncode == 0, tested.stderr
        assert lcus_frames(relay_port.read(8, 5)) == [LCUS_ON, LCUS_OFF]
        assert len(site.rows()) == 1  # a relay test is no access event

        unknown = ctl(sock, "open", "back-gate")
        assert unknown.returncode == 1 and "unknown lane 'back-gate'" in unknown.stderr
        assert daemon.terminate() == 0
    verify = gated("journal", "verify", "--db", str(site.journal))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.slow
def test_socket_answers_bad_requests_and_keeps_running(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site, sock = control_site(tmp_path, relay_port)
    with running(site) as daemon:
        assert daemon.wait_log("control socket listening")
        relay_port.drain()
        answers = raw(
            sock,
            b"not json\n",
            b"[1, 2]\n",
            b'{"no": "action"}\n',
            b'{"action": "open"}\n',
            b'{"action": "open", "lane": "main-in", "actor": "someone-else"}\n',
            b'{"action": "relay_test", "lane": "main-in", "ms": 999999}\n',
            b'{"action": "lockdown", "on": "yes"}\n',
            b'{"action": "format_disk", "id": 7}\n',
            b'{"action": "open", "lane": "main-in", "reason": "\xff\xfe"}\n',
        )
        assert [a["ok"] for a in answers] == [False] * len(answers)
        assert all(a["outcome"] == "refused" and a["message"] for a in answers)
        assert "unexpected argument(s): actor" in answers[4]["message"]
        assert answers[7]["id"] == "7"
        assert relay_port.drain() == b""  # nothing moved
        big = raw(sock, b'{"action": "status", "pad": "' + b"x" * 100_000 + b'"}\n')
        assert big[0]["ok"] is False
        # still serving, and each refusal that named an action is audited with its actor
        ok = raw(sock, b'{"action": "open", "lane": "main-in", "id": "r-1"}\n')[0]
        assert ok["ok"] and ok["id"] == "r-1"
        assert lcus_frames(relay_port.read(8, 5)) == [LCUS_ON, LCUS_OFF]
        opens = wait_audit(site, "gate_open", 3)
        assert [r["status"] for r in opens] == ["failure", "failure", "success"]
        assert opens[-1]["request_id"] == "r-1"
        assert audit(site, "control_refused")[0]["actor_id"] == ME
        assert daemon.terminate() == 0


def test_ctl_without_a_daemon_says_so_in_one_line(tmp_path: Path) -> None:
    result = ctl(tmp_path / "nothing.sock", "status")
    assert result.returncode == 69
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no daemon answering" in result.stderr
