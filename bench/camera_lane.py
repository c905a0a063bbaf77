"""CPU and memory of a lane fed by a plain camera: idle, an empty street, a car passing.

    python -m bench.camera_lane [--seconds 20] [--fps 5]

Runs `gated run` three times on a fake relay: without a camera, with a video file of
an empty street (only the motion check runs), and with a video of a car sliding into
view every 3 s (bench.plate_scenes; recognition runs while it moves and for `tail_s`).
Prints one JSON line: the daemon's CPU share over the measured seconds, its RSS, the
frames kept and recognised, milliseconds per recognised frame, and the mean time from
a frame's capture to the relay command for the openings (three agreeing frames).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._site import rss_mb
from tests.daemon.harness import Site, running
from tests.recognizer_lane.video import car_passage, empty_street


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def measure(kind: str, seconds: float, fps: float) -> dict[str, Any]:
    """One daemon run; its figures."""
    root = Path(tempfile.mkdtemp(prefix="gated-camera-bench-"))
    site = Site(root)
    source = ""
    if kind != "none":
        video = (empty_street(root / "v.avi", 5.0) if kind == "empty"
                 else car_passage(root / "v.avi", 1, empty_s=1, drive_s=1, stand_s=1)[0])
        source = (f'[[lanes.sources]]\nkind = "camera"\nname = "cam"\nurl = "{video}"\n'
                  f"fps_limit = {fps}\ntail_s = 1.0\n")
    site.write_config(f'[[lanes]]\nid = "a"\n[lanes.relay]\nkind = "fake"\n{source}',
                      f'[metrics]\ntextfile = "{root}/m.prom"\ninterval_s = 1\n'
                      f'[control]\nsocket = "{root}/ctl.sock"')
    if kind == "car":
        plate = car_passage(root / "v.avi", 1, empty_s=1, drive_s=1, stand_s=1)[1]
        site.import_rules({"residents": [{"id": "r", "name": "R", "access_points": "*"}],
                           "vehicles": [{"id": "v", "plate": plate, "resident_id": "r"}]})
    with running(site) as daemon:
        time.sleep(3)
        cpu0, t0 = _cpu_s(daemon.proc.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = _cpu_s(daemon.proc.pid), time.monotonic()
        rss = rss_mb(daemon.proc.pid)
        time.sleep(1.2)
        prom = (root / "m.prom").read_text()
    out: dict[str, Any] = {"cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                           "rss_mb": round(rss, 1)}
    if kind != "none":
        recognised = _metric(prom, "gated_camera_frames_recognised_total") or 0
        busy = _metric(prom, "gated_camera_recognise_seconds_total") or 0
        out |= {"frames": _metric(prom, "gated_camera_frames_total"),
                "recognised": recognised,
                "ms_per_recognition": round(1000 * busy / recognised, 1) if recognised else None}
        count = _metric(prom, "gated_read_to_relay_seconds_count")
        total = _metric(prom, "gated_read_to_relay_seconds_sum")
        if count:
            out |= {"openings": count, "frame_to_relay_ms_mean": round(1000 * total / count, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.camera_lane")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=5.0)
    args = parser.parse_args(argv)
    figures = {kind: measure(kind, args.seconds, args.fps) for kind in ("none", "empty", "car")}
    print(json.dumps({"bench": "camera_lane", "seconds": args.seconds, "fps": args.fps,
                      **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
