"""The plain-camera example of docs/cameras.md, as written, opens the gate for its plate.

The config and the rule file are taken from the page; only the paths (state folder,
relay port, video file) and the example plate are replaced by the test's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import LCUS_ON, PtyPort, Site, gated, lcus_frames, running
from tests.recognizer_lane.video import car_passage

DOC = Path(__file__).resolve().parents[2] / "docs" / "cameras.md"
pytestmark = pytest.mark.slow


def blocks(section: str) -> dict[str, str]:
    """The first toml and json code blocks of a section of docs/cameras.md."""
    text = DOC.read_text().split(f"## {section}", 1)[1]
    found: dict[str, str] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        found.setdefault(lang, body)
    return found


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-tty")
    yield port
    port.close()


def test_the_documented_plain_camera_lane_opens_for_its_plate(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    doc = blocks("Plain cameras: on-device recognition")
    _, plate = car_passage(tmp_path / "drive.avi", seed=1)  # where the docs put the video
    site = Site(tmp_path)
    config = doc["toml"].replace("/var/lib/gated", str(tmp_path))
    config = config.replace("/dev/ttyUSB0", str(relay_port.link))
    # The example's control socket is the system one; a test must not take it.
    site.config.write_text(config + f'\n[control]\nsocket = "{tmp_path / "ctl.sock"}"\n')
    checked = gated("check-config", str(site.config))
    assert checked.returncode == 0, checked.stderr
    rules = tmp_path / "rules.json"
    rules.write_text(doc["json"].replace("AB123CD", plate))
    gated("rules", "import", str(rules), "--config", str(site.config), check=True)
    with running(site):
        (row,) = site.wait_rows(1, timeout_s=30)
        frames = lcus_frames(relay_port.drain(1.0))
    assert LCUS_ON in frames
    assert (row["vehicle_plate"], row["decision_reason"], row["gate_opened"]) == (
        plate, "resident", 1)
    assert (tmp_path / "snapshots" / row["snapshot_path"]).is_file()
