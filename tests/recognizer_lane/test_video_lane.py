"""A lane fed by a plain camera (a video file), through `gated run` and the real recogniser.

The video is an empty street, then a car (bench.plate_scenes) sliding into view and
standing. Recognition runs only on motion; three agreeing reads make the plate; the
lane opens for a resident and journals the read with the frame as its snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import (
    LCUS_ON,
    PtyPort,
    Site,
    lcus_frames,
    lcus_relay,
    running,
    wait_until,
)
from tests.recognizer_lane.video import car_passage, empty_street

pytestmark = pytest.mark.slow


def lane(relay: str, video: Path, extra: str = "") -> str:
    return f"""
[[lanes]]
id = "drive-in"
direction = "in"
[lanes.relay]
{relay}
[[lanes.sources]]
kind = "camera"
name = "drive-cam"
url = "{video}"
fps_limit = 10
trigger = "motion"
roi = [0.0, 0.2, 1.0, 1.0]
tail_s = 1.5
at_end = "stop"
consensus = {{ reads = 3, window_s = 4 }}
{extra}
"""


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-tty")
    yield port
    port.close()


def metric(site: Site, name: str) -> int | None:
    """A counter from the daemon's metrics textfile (None before it is written)."""
    path = site.root / "gated.prom"
    if not path.exists():
        return None
    m = re.search(rf'^{name}{{camera="drive-cam"}} (\d+)', path.read_text(), re.M)
    return int(m.group(1)) if m else None


def configure(site: Site, relay_port: PtyPort, video: Path, plate: str | None) -> None:
    site.write_config(lane(lcus_relay(relay_port), video),
                      f'[metrics]\ntextfile = "{site.root / "gated.prom"}"\ninterval_s = 1')
    vehicles = [{"id": "v-1", "plate": plate, "resident_id": "r-1"}] if plate else []
    site.import_rules({"residents": [{"id": "r-1", "name": "Ann", "access_points": "*"}],
                       "vehicles": vehicles})


def test_a_residents_car_on_video_opens_once_and_is_journaled_with_its_picture(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    video, plate = car_passage(tmp_path / "resident.avi", seed=1)
    configure(site, relay_port, video, plate)
    with running(site):
        (row,) = site.wait_rows(1, timeout_s=30)
        assert wait_until(lambda: metric(site, "gated_camera_frames_recognised_total"), 5)
        frames = lcus_frames(relay_port.drain(1.0))
        assert wait_until(lambda: (metric(site, "gated_camera_frames_total") or 0) >= 40, 10)
        assert len(site.rows()) == 1  # the car stood in view: one event, not one per frame
    assert frames.count(LCUS_ON) == 1
    assert (row["vehicle_plate"], row["decision_reason"], row["gate_opened"]) == (
        plate, "resident", 1)
    assert row["snapshot_path"] and (site.snapshots / row["snapshot_path"]).stat().st_size > 1000
    meta = json.loads(row["metadata"])
    assert meta["source"] == "drive-cam" and meta["vendor"] == "gated"
    assert meta["consensus"]["reads"] >= 3 and meta["consensus"]["by"] == "reads"


def test_an_unknown_car_on_video_is_denied_and_nothing_opens(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    video, plate = car_passage(tmp_path / "visitor.avi", seed=2)
    configure(site, relay_port, video, None)
    with running(site):
        (row,) = site.wait_rows(1, timeout_s=30)
        assert wait_until(lambda: (metric(site, "gated_camera_frames_total") or 0) >= 40, 10)
        frames = lcus_frames(relay_port.drain(1.0))
        assert len(site.rows()) == 1
    assert LCUS_ON not in frames
    assert (row["vehicle_plate"], row["event_type"], row["decision_reason"]) == (
        plate, "denied", "unknown_plate")
    assert row["gate_opened"] is None and row["snapshot_path"]


def test_an_empty_street_costs_no_recognition_and_no_rows(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    video = empty_street(tmp_path / "empty.avi", seconds=3.0)
    configure(site, relay_port, video, "AB123CD")
    with running(site):
        assert wait_until(lambda: (metric(site, "gated_camera_frames_total") or 0) >= 30, 15)
        assert metric(site, "gated_camera_frames_triggered_total") == 0
        assert metric(site, "gated_camera_frames_recognised_total") == 0
        assert site.rows() == []
    assert LCUS_ON not in relay_port.drain(0.3)


@pytest.mark.parametrize("content", [None, b"this is not a video"], ids=["missing", "corrupt"])
def test_a_missing_or_corrupt_video_is_a_clear_error_and_the_daemon_keeps_running(
    tmp_path: Path, relay_port: PtyPort, content: bytes | None
) -> None:
    site = Site(tmp_path)
    video = tmp_path / "gate.avi"
    if content is not None:
        video.write_bytes(content)
    configure(site, relay_port, video, "AB123CD")
    # OpenCV refuses to open most garbage; what it opens but cannot decode gives no frames.
    said = re.compile(r"camera drive-cam: (cannot open video file|video file gave no frames)")
    with running(site) as daemon:
        assert wait_until(lambda: said.search(daemon.log()), 10), daemon.log()
        prom = site.root / "gated.prom"
        assert wait_until(lambda: prom.exists() and re.search(
            r'^gated_component_up\{component="camera-drive-cam"\} 0', prom.read_text(), re.M), 5)
        assert daemon.alive()
    assert site.rows() == []
