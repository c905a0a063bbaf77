"""The real `gated run`: the decision and the journal row agree, before and after a restart.

A camera's direction, the lane's configured handling of a read travelling the wrong
way, hard anti-passback and single-use visitor passes, seen through HTTP pushes to
the daemon, its LCUS relay on a pty, and the journal file it writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon.harness import (
    LCUS_OFF,
    LCUS_ON,
    PAYLOADS,
    DaemonProcess,
    PtyPort,
    Site,
    lcus_relay,
    running,
)

LANE_PATH = "/anpr/main-in"
RULES = {
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [{"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"}],
    "visitor_passes": [
        {
            "id": "p-1",
            "plate": "VS11TOR",
            "host_resident_id": "r-1",
            "valid_from": "2020-01-01T00:00:00+00:00",
            "valid_until": "2099-01-01T00:00:00+00:00",
            "max_uses": 1,
            "access_points": "*",
        }
    ],
}


def lane(relay: str, fmt: str, source: str = "") -> str:
    """One inbound lane (no coalescing) with one camera of the given format."""
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
{relay}
[[lanes.sources]]
kind = "anpr_http"
name = "cam"
format = "{fmt}"
path = "{LANE_PATH}"
{source}
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-tty")
    yield port
    port.close()


def axis(direction: str, plate: str = "AB123CD") -> bytes:
    """An Axis FF-LPR push as the camera sends it, captured now, moving `direction`."""
    doc = json.loads((PAYLOADS / "axis_new.json").read_text())
    doc.update(
        plateText=plate,
        plateUnicode=plate,
        plateUTF8=plate,
        carMoveDirection=direction,
        capture_timestamp=int(time.time() * 1000),
    )
    return json.dumps(doc).encode()


def push(site: Site, body: bytes) -> int:
    """POST a camera body; the HTTP status (sent only once the row has committed)."""
    url = f"http://127.0.0.1:{site.listener_port}{LANE_PATH}"
    headers = {"Content-Type": "application/json"}
    return httpx.post(url, content=body, headers=headers, timeout=15).status_code


def generic(plate: str, direction: str) -> bytes:
    return json.dumps({"plate": plate, "confidence": 0.95, "direction": direction}).encode()


@pytest.mark.parametrize(
    ("wrong_direction", "expected"),
    [
        ("journal", {"event_type": "denied", "decision_reason": "wrong_direction"}),
        ("decide", {"event_type": "exit", "decision_reason": "resident", "gate_opened": 1}),
        ("ignore", None),
    ],
)
def test_an_axis_out_read_on_an_in_lane_is_handled_as_the_source_says(
    tmp_path: Path, relay_port: PtyPort, wrong_direction: str, expected: dict[str, Any] | None
) -> None:
    site = Site(tmp_path)
    site.write_config(
        lane(lcus_relay(relay_port), "axis", f'wrong_direction = "{wrong_direction}"')
    )
    site.import_rules(RULES)
    with running(site):
        relay_port.drain()
        assert push(site, axis("out")) == 200
        frames = relay_port.drain()  # what the out read did to the relay
        # A read of the same car the right way afterwards: once its row is there, the
        # out read has been dealt with (the answer waits for its commit).
        assert push(site, axis("in")) == 200
        rows = site.rows()
    along = rows[-1]
    assert (along["direction"], along["event_type"], along["gate_opened"]) == ("in", "entry", 1)
    if expected is None:
        assert len(rows) == 1
        assert LCUS_ON not in frames
        return
    against = rows[0]
    assert len(rows) == 2
    assert against["direction"] == "out"  # what the decision used, not the lane's default
    assert {k: against[k] for k in expected} == expected
    assert json.loads(against["metadata"])["camera_direction"] == "out"
    assert (LCUS_ON in frames) == (wrong_direction == "decide")


# (plate, direction as the camera says it) pushed in order; the answers expected.
SEQUENCE = [
    ("AB123CD", "out", ("exit", "resident")),
    ("AB123CD", "out", ("denied", "anti_passback")),  # hard: the same way twice
    ("VS11TOR", "out", ("exit", "visitor_pass")),  # leaving does not use the pass up
    ("VS11TOR", "in", ("visitor_entry", "visitor_pass")),  # its one entry
    ("VS11TOR", "in", ("denied", "pass_used_up")),
    ("AB123CD", "in", ("entry", "resident")),
]


def run_sequence(tmp_path: Path, relay_port: PtyPort, *, restart_between: bool) -> list[Any]:
    tmp_path.mkdir()
    site = Site(tmp_path)
    site.write_config(
        lane(lcus_relay(relay_port), "generic", 'wrong_direction = "decide"'),
        policy='anti_passback = "hard"\nanti_passback_reset_s = 3600',
    )
    site.import_rules(RULES)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        for i, (plate, direction, _) in enumerate(SEQUENCE):
            if restart_between and i:
                assert daemon.terminate() == 0
                (site.root / "notify.sock").unlink()  # the next daemon's systemd socket
                daemon = DaemonProcess(site)
                daemon.wait_ready()
            assert push(site, generic(plate, direction)) == 200
    finally:
        daemon.terminate()
    return [(r["event_type"], r["decision_reason"], r["direction"]) for r in site.rows()]


def test_hard_anti_passback_and_single_use_passes_answer_the_same_across_restarts(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    expected = [(*answer, direction) for _, direction, answer in SEQUENCE]
    live = run_sequence(tmp_path / "live", relay_port, restart_between=False)
    restarted = run_sequence(tmp_path / "restarted", relay_port, restart_between=True)
    assert live == expected
    assert restarted == expected


def test_ready_and_camera_listener_wait_for_the_relay_board(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    """READY=1 (and a listener that accepts) only once the relay board is open."""
    site = Site(tmp_path)
    site.write_config(lane(lcus_relay(relay_port), "generic"))
    site.import_rules(RULES)
    relay_port.unplug()
    daemon = DaemonProcess(site)
    try:
        time.sleep(1.5)  # the board is still unplugged: nothing may be ready yet
        assert daemon.alive()
        assert "READY=1" not in daemon.notify.collect(0.1)
        with pytest.raises(httpx.TransportError):
            push(site, generic("AB123CD", "in"))
        relay_port.replug()
        daemon.wait_ready()
        # The board was opened (and released, its first frame) before READY=1 was sent.
        assert LCUS_OFF in relay_port.drain()
        assert push(site, generic("AB123CD", "in")) == 200
        [row] = site.rows()
        assert row["gate_opened"] == 1
    finally:
        daemon.terminate()


def test_an_allowed_read_with_the_board_unplugged_is_journaled_as_not_opened(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    site.write_config(lane(lcus_relay(relay_port), "generic"))
    site.import_rules(RULES)
    with running(site):
        relay_port.drain()
        relay_port.unplug()
        assert push(site, generic("AB123CD", "in")) == 200
        [row] = site.rows()
    assert (row["event_type"], row["decision_reason"]) == ("entry", "resident")
    assert row["gate_opened"] == 0
    assert "relay_error" in json.loads(row["metadata"])
