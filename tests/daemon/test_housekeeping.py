"""Daemon housekeeping: snapshots kept under quota, old anti-passback state forgotten."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier
from gated.model import PlateRead


def _rows(path: Path, table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
    finally:
        conn.close()


def _big_jpeg(seed: int) -> bytes:
    # Noise does not compress: ~300 kB each, so four of them overflow a 1 MB quota.
    image = np.random.default_rng(seed).integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


async def _until(predicate: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_over_quota_oldest_synced_first_then_unsynced_audited(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite3"
    cfg = parse_config(
        {
            "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
            "journal": {
                "path": str(journal),
                "snapshot_dir": str(tmp_path / "snaps"),
                "snapshot_quota_mb": 1,
            },
            "rules": {"path": str(tmp_path / "rules.sqlite3")},
            "lanes": [{"id": "main-in", "dedup_window_s": 0}],
        }
    )
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    daemon.snapshot_quota_check_s = 0.1
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        lane = daemon.lane("main-in")
        for i in range(6):
            read = PlateRead(
                "main-in",
                f"ZZ{i}00ZZ",
                "cam",
                time.time(),
                time.monotonic(),
                0.9,
                snapshot=_big_jpeg(i),
            )
            lane.on_read(read)
            assert await _until(lambda n=i: len(_rows(journal, "access_logs")) == n + 1)
            if i == 1:
                # The upstream acknowledged the second event: its picture is the first to go.
                await daemon.journal.mark_synced(
                    "access", [_rows(journal, "access_logs")[1]["event_id"]]
                )
        rows = _rows(journal, "access_logs")
        assert await _until(
            lambda: any(a["action"] == "snapshot_removed" for a in _rows(journal, "audit_logs"))
        )
        await asyncio.sleep(0.3)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    removed = [a for a in _rows(journal, "audit_logs") if a["action"] == "snapshot_removed"]
    first = removed[0]
    assert first["resource_id"] == rows[1]["event_id"] and first["status"] == "success"
    # Then the oldest unsynced go, each loudly audited as lost evidence.
    for audit in removed[1:]:
        assert audit["status"] == "failure" and "unsynced" in audit["error_message"]
    assert removed[1]["resource_id"] == rows[0]["event_id"]
    used = sum(f.stat().st_size for f in (tmp_path / "snaps").rglob("*") if f.is_file())
    assert used <= 1024 * 1024
    newest = rows[-1]
    assert (tmp_path / "snaps" / newest["snapshot_path"]).exists()
    assert json.loads(first["metadata"])["synced"] is True


async def test_old_passages_are_forgotten(tmp_path: Path) -> None:
    from gated.model import Direction

    cfg = parse_config(
        {
            "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
            "journal": {"path": str(tmp_path / "j.sqlite3"), "snapshot_dir": str(tmp_path / "s")},
            "rules": {"path": str(tmp_path / "r.sqlite3")},
            "policy": {"anti_passback": "hard", "anti_passback_reset_s": 60},
            "lanes": [{"id": "main-in"}],
        }
    )
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    daemon.state_prune_s = 0.05
    daemon.state.record_passage("v-old", Direction.IN, time.time() - 3600)
    daemon.state.record_passage("v-new", Direction.IN, time.time())
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        assert await _until(lambda: daemon.state.last_passage("v-old") is None, timeout_s=5)
        assert daemon.state.last_passage("v-new") is not None
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
