"""End to end through `gated run`: a Hikvision camera push opens an LCUS relay on a pty, and the
journal holds the event with its snapshot."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon.harness import (
    LCUS_OFF,
    LCUS_ON,
    PtyPort,
    Site,
    gated,
    hikvision_alarm,
    make_jpeg,
    running,
)

RULES = {
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [{"id": "v-1", "plate": "AB-123-CD", "resident_id": "r-1"}],
    "deny_list": [{"id": "d-1", "plate": "XX-000-X", "reason": "stolen"}],
}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, PtyPort]]:
    port = PtyPort(tmp_path / "relay-board")
    s = Site(tmp_path)
    s.write_config(
        f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0.5
[lanes.relay]
kind = "lcus"
port = "{port.link}"
channel = 1
pulse_ms = 300
[[lanes.sources]]
kind = "anpr_http"
name = "cam-main-in"
format = "hikvision"
path = "/anpr/main-in"
[lanes.sources.auth]
username = "camera"
password = "s3cret-camera-pw"
"""
    )
    s.import_rules(RULES)
    yield s, port
    port.close()


def post(
    site: Site,
    body: bytes,
    ctype: str,
    auth: tuple[str, str] | None = ("camera", "s3cret-camera-pw"),
) -> int:
    url = f"http://127.0.0.1:{site.listener_port}/anpr/main-in"
    return httpx.post(
        url, content=body, headers={"Content-Type": ctype}, auth=auth, timeout=10
    ).status_code


@pytest.mark.slow
def test_camera_push_opens_the_relay_and_is_journaled(site: tuple[Site, PtyPort]) -> None:
    s, port = site
    with running(s) as daemon:
        # On opening the board gated sends "release" first: a reconnect never leaves a gate open.
        assert LCUS_OFF in port.drain()

        # 1. An allowed plate: the exact on frame, then the off frame after pulse_ms.
        picture = make_jpeg(seed=7)
        body, ctype = hikvision_alarm("AB123CD", picture)
        assert post(s, body, ctype) == 200
        assert port.read(8, timeout_s=5) == LCUS_ON + LCUS_OFF
        [row] = s.wait_rows(1)
        assert row["event_type"] == "entry"
        assert row["decision_reason"] == "resident"
        assert row["authorization_method"] == "auto_plate"
        assert row["vehicle_plate"] == "AB123CD"
        assert row["vehicle_id"] == "v-1" and row["resident_id"] == "r-1"
        assert row["tenant_id"] == "t-test" and row["device_id"] == "d-test"
        assert row["rules_version"] == 1
        assert row["read_to_relay_ms"] is not None and row["read_to_relay_ms"] > 0
        snapshot = s.snapshots / row["snapshot_path"]
        assert snapshot.read_bytes() == picture
        assert row["snapshot_sha256"] == hashlib.sha256(picture).hexdigest()

        # 2. A deny-listed plate: no bytes at all on the relay port, a denied row.
        body, ctype = hikvision_alarm("XX000X", make_jpeg(seed=8))
        assert post(s, body, ctype) == 200
        rows = s.wait_rows(2)
        assert rows[1]["event_type"] == "denied" and rows[1]["decision_reason"] == "deny_listed"
        assert port.drain(0.5) == b""

        # 3. An unknown plate is denied too.
        body, ctype = hikvision_alarm("QQ999QQ", make_jpeg(seed=9))
        assert post(s, body, ctype) == 200
        assert s.wait_rows(3)[2]["decision_reason"] == "unknown_plate"

        # 4. Malformed payloads: 4xx, nothing journaled, the daemon keeps serving.
        assert post(s, b"--MIME_boundary_gated_test\r\ntruncated", ctype) == 400
        assert post(s, b"<EventNotificationAlert><eventType>ANPR", "text/xml") == 400
        assert post(s, body, ctype, auth=("camera", "wrong")) == 401
        assert post(s, body, ctype, auth=None) == 401
        assert daemon.alive()
        time.sleep(0.3)
        assert len(s.rows()) == 3
        assert port.drain(0.3) == b""

        # 5. The refused pushes are audited, without the password.
        audit = s.rows("audit_logs")
        refused = [a for a in audit if a["action"] == "camera_push_refused"]
        # one row per address and interval: the first refusal at once, the rest summarised
        assert len(refused) == 1 and refused[0]["ip_address"] == "127.0.0.1"
        assert "s3cret-camera-pw" not in repr(audit)

        # 6. Still working after the bad input.
        body, ctype = hikvision_alarm("AB-123-CD", make_jpeg(seed=10))
        time.sleep(0.6)  # past the dedup window of the first read
        assert post(s, body, ctype) == 200
        assert port.read(8, timeout_s=5) == LCUS_ON + LCUS_OFF

        status = daemon.terminate()
        messages = daemon.notify.messages
    assert status == 0, daemon.log()
    assert "READY=1" in messages and "STOPPING=1" in messages
    assert "s3cret-camera-pw" not in daemon.log()
    verify = gated("journal", "verify", "--db", str(s.journal))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    actions = [a["action"] for a in s.rows("audit_logs")]
    assert actions[:2] == ["rules_import", "daemon_start"] and actions[-1] == "daemon_stop"


@pytest.mark.slow
def test_invalid_config_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "gated.toml"
    bad.write_text(
        '[site]\ntenant_id = "t"\nsite_id = "s"\ndevice_id = "d"\n[[lanes]]\nid = "a"\n'
        '[lanes.relay]\nkind = "lcus"\nport = "/dev/x"\npulse_ms = 0\n'
    )
    result = gated("run", "--config", str(bad))
    assert result.returncode == 78
    assert "lanes[0].relay.pulse_ms" in result.stderr
    check = gated("check-config", str(bad))
    assert check.returncode == 78 and "lanes[0].relay.pulse_ms: expected int >= 1" in check.stderr
