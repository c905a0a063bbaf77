"""[privacy] unknown_plate_hash_after_h through `gated run`: a plate that matched nobody is
erased from its row after its time, its picture blurred (or deleted), the chain still
verifies, and one personal_data_erased row records it without the plate. Known plates
and deny-listed plates keep everything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    Site,
    audit,
    gated,
    hikvision_alarm,
    make_jpeg,
    running,
    wait_audit,
)

pytestmark = pytest.mark.slow

LANE = f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
pulse_ms = 50
[[lanes.sources]]
kind = "anpr_http"
name = "cam"
format = "hikvision"
path = "{CAMERA_PATH}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def _site(tmp_path: Path, pictures: str) -> Site:
    site = Site(tmp_path)
    # 0.0005 h is 1.8 s: the pass every second finds the unknown read once it is that old.
    site.write_config(LANE, extra=f"""
[privacy]
unknown_plate_hash_after_h = 0.0005
unknown_plate_pictures = "{pictures}"
interval_s = 1
""")
    site.import_rules({**RESIDENT_RULES,
                       "deny_list": [{"id": "d-1", "plate": "ST0LEN1", "reason": "stolen"}]})
    return site


def _post(site: Site, plate: str, jpeg: bytes) -> int:
    body, ctype = hikvision_alarm(plate, jpeg)
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
    return httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=10).status_code


def _sharpness(data: bytes) -> float:
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(cv2.Laplacian(image, cv2.CV_64F).var())


def test_unknown_plates_are_erased_and_their_pictures_blurred_after_their_time(
        tmp_path: Path) -> None:
    site = _site(tmp_path, "blur")
    pictures = {p: make_jpeg(seed=i, width=320, height=240)
                for i, p in enumerate(["ZZ999ZZ", "AB123CD", "ST0LEN1"])}
    with running(site):
        for plate, jpeg in pictures.items():
            assert _post(site, plate, jpeg) == 200
        records = wait_audit(site, "personal_data_erased", timeout_s=30)
        rows = site.rows()
    assert len(records) == 1
    by_reason = {r["decision_reason"]: r for r in rows}
    unknown, known, denied = (by_reason["unknown_plate"], by_reason["resident"],
                              by_reason["deny_listed"])
    assert unknown["vehicle_plate"] is None and unknown["vehicle_plate_digest"]
    assert known["vehicle_plate"] == "AB123CD" and denied["vehicle_plate"] == "ST0LEN1"
    meta = json.loads(records[0]["metadata"])
    assert meta["selector"] == "unknown_plate_age"
    assert meta["event_ids"] == [unknown["event_id"]]
    assert meta["snapshot_sha256"] == [unknown["snapshot_sha256"]]
    assert "ZZ999ZZ" not in json.dumps(records[0])
    # The unknown car's picture was blurred in place; the others are untouched.
    blurred = (site.snapshots / unknown["snapshot_path"]).read_bytes()
    assert hashlib.sha256(blurred).hexdigest() == meta["blurred_sha256"][0]
    sharp_before = _sharpness(pictures["ZZ999ZZ"])
    sharp_after = _sharpness(blurred)
    print(f"\nLaplacian variance of the unknown car's picture: {sharp_before:.0f} -> "
          f"{sharp_after:.1f}")
    assert sharp_after < sharp_before / 100
    for row in (known, denied):
        data = (site.snapshots / row["snapshot_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["snapshot_sha256"]
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0 and "1 lawfully erased" in result.stdout, result.stdout


def test_delete_setting_removes_the_picture_and_a_second_pass_changes_nothing(
        tmp_path: Path) -> None:
    site = _site(tmp_path, "delete")
    with running(site) as daemon:
        assert _post(site, "QQ111QQ", make_jpeg(seed=5)) == 200
        assert wait_audit(site, "personal_data_erased", timeout_s=30)
        # Several more passes run; nothing is left to erase, so nothing more is recorded.
        assert daemon.wait_log("unknown plates: forgot 1 plate(s)")
        assert not daemon.wait_log("unknown plates: forgot", count=2, timeout_s=3)
        row = site.rows()[0]
    assert row["vehicle_plate"] is None
    assert not (site.snapshots / row["snapshot_path"]).exists()
    assert len(audit(site, "personal_data_erased")) == 1
    assert gated("journal", "verify", "--db", str(site.journal)).returncode == 0
