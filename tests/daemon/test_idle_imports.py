"""`gated run` loads only what its config uses: without a camera, neither OpenCV nor numpy
is mapped into the daemon, even holding the 40,000 vehicles of the footprint goal
(docs/operations.md, "Idle footprint"); a camera brings both in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.harness import Site, gated, running, wait_until, write_video

pytestmark = pytest.mark.slow

VEHICLES = 40_000


def _lanes(camera: str = "") -> str:
    """The demo's two lanes on fake relays, without plate sources."""
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
paired_lane = "main-out"
{camera}
[lanes.relay]
kind = "fake"

[[lanes]]
id = "main-out"
direction = "out"
paired_lane = "main-in"
[lanes.relay]
kind = "fake"
"""


def _site(root: Path, camera: str = "") -> Site:
    site = Site(root)
    site.write_config(_lanes(camera), f'[control]\nsocket = "{root / "control.sock"}"')
    return site


def mapped(pid: int) -> set[str]:
    """Which of numpy and OpenCV (cv2) have files mapped into process `pid`."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            found.update({"numpy", "cv2"}.intersection(Path(fields[5]).parts))
    return found


def test_without_a_camera_neither_opencv_nor_numpy_is_loaded(tmp_path: Path) -> None:
    site = _site(tmp_path)
    site.import_rules({
        "residents": [{"id": f"r{i}", "name": f"Resident {i}", "access_points": "*"}
                      for i in range(VEHICLES // 2)],
        "vehicles": [{"id": f"v{i}", "plate": f"{i // 10000:02d}{i % 10000:04d}X",
                      "resident_id": f"r{i % (VEHICLES // 2)}"} for i in range(VEHICLES)],
    })
    with running(site) as daemon:
        assert mapped(daemon.proc.pid) == set(), daemon.log()
        # the rule set was indexed (the rules component is healthy) and the daemon runs on
        status = gated("ctl", "--socket", str(tmp_path / "control.sock"), "status")
        assert "health: all components healthy" in status.stdout, status.stdout + status.stderr
        assert mapped(daemon.proc.pid) == set()


def test_a_camera_brings_opencv_and_numpy(tmp_path: Path) -> None:
    video = tmp_path / "camera.avi"
    write_video(video)
    site = _site(tmp_path, f'[lanes.camera]\nurl = "{video}"\nfps_limit = 5')
    with running(site) as daemon:
        assert wait_until(lambda: mapped(daemon.proc.pid) == {"numpy", "cv2"}, 10), (
            mapped(daemon.proc.pid), daemon.log())
