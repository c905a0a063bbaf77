"""A loop detector triggers recognition: the in-process daemon, gpiozero mock pins, the real
recogniser, a video file of a car standing in view.

Until the loop reports a vehicle no frame is recognised, whatever the camera sees;
once it does, the car's plate is read, agreed on and the gate opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier
from tests.daemon.harness import Site
from tests.recognizer_lane.video import car_passage

PRESENCE_PIN = 23
pytestmark = pytest.mark.slow


def rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM access_logs ORDER BY seq")]
    finally:
        conn.close()


async def poll(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(sqlite3.OperationalError):
            value = predicate()
            if value:
                return value
        await asyncio.sleep(0.05)
    return None


async def test_the_loop_detector_starts_recognition(tmp_path: Path) -> None:
    # A car that stands in view the whole time: motion would not tell, the loop does.
    video, plate = car_passage(tmp_path / "car.avi", 1, empty_s=0.1, drive_s=0.1, stand_s=3.0)
    cfg = parse_config({
        "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
        "journal": {"path": str(tmp_path / "journal.sqlite3"),
                    "snapshot_dir": str(tmp_path / "snapshots")},
        "rules": {"path": str(tmp_path / "rules.sqlite3")},
        "control": {"socket": ""},
        "lanes": [{
            "id": "drive-in",
            "relay": {"kind": "fake", "pulse_ms": 100},
            "sensors": {"presence_pin": PRESENCE_PIN},
            "sources": [{"kind": "camera", "name": "cam", "url": str(video), "fps_limit": 10,
                         "trigger": "presence", "tail_s": 1.0}],
        }],
    })
    site = Site(tmp_path)
    site.write_config("")  # for `gated rules import`: the same journal and rules paths
    site.import_rules({"residents": [{"id": "r-1", "name": "Ann", "access_points": "*"}],
                       "vehicles": [{"id": "v-1", "plate": plate, "resident_id": "r-1"}]})
    factory = MockFactory()
    daemon = Daemon(cfg, pin_factory=factory, health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        assert daemon.generation is not None
        (camera,) = daemon.generation.recognising
        assert await poll(lambda: camera.stats.frames >= 15)
        assert camera.stats.recognised == 0 and rows(tmp_path / "journal.sqlite3") == []
        factory.pin(PRESENCE_PIN).drive_low()  # the loop detector: a vehicle (pull-up, to ground)
        (row,) = await poll(lambda: rows(tmp_path / "journal.sqlite3"))
        assert camera.stats.recognised >= 3
        assert (row["vehicle_plate"], row["decision_reason"], row["gate_opened"]) == (
            plate, "resident", 1)
        # A vehicle stands on the loop: the gate machine holds the relay rather than pulse it.
        relay = daemon.generation.relays["drive-in"]
        assert relay.actions[:1] == ["hold"], relay.actions  # type: ignore[attr-defined]
        factory.pin(PRESENCE_PIN).drive_high()  # the car has gone: the tail, then nothing
        await asyncio.sleep(2.5)  # the 1 s tail and the frames already queued (slow under load)
        settled = camera.stats.recognised
        await asyncio.sleep(1.0)
        assert camera.stats.recognised == settled
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
