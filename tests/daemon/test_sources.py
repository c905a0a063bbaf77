"""Every plate source kind wired through the daemon's composition root to a journal row."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.app import Daemon
from gated.config import parse_config
from gated.hardware.readers import encode_rdm6300_frame
from gated.health import Health, SystemdNotifier
from gated.rules.files import import_rules
from gated.rules.store import RuleStore
from tests.daemon.harness import PtyPort
from tests.support.broker import Broker, mosquitto_available, mosquitto_broker

TAG = 0x0045_6123  # printed on the card as its 10-digit decimal
RULES = {
    "format": "gated-rules",
    "format_version": 1,
    "residents": [{"id": "r-1", "name": "Ann", "access_points": "*"}],
    "vehicles": [
        {"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"},
        {"id": "v-2", "plate": "FR1GATE", "resident_id": "r-1"},
    ],
    "tags": [{"id": "t-1", "tag": f"{TAG:010d}", "resident_id": "r-1"}],
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "broker") as running:
        yield running


def _rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM access_logs ORDER BY seq")]
    finally:
        conn.close()


async def _until(predicate: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def test_serial_rfid_and_frigate_sources_reach_the_journal(
    tmp_path: Path, broker: Broker
) -> None:
    (tmp_path / "rules.json").write_text(json.dumps(RULES))
    with RuleStore(tmp_path / "rules.sqlite3") as store:
        import_rules(store, tmp_path / "rules.json")
    rfid = PtyPort(tmp_path / "rfid")
    reader = PtyPort(tmp_path / "plate-reader")
    journal = tmp_path / "journal.sqlite3"
    cfg = parse_config(
        {
            "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
            "journal": {"path": str(journal), "snapshot_dir": str(tmp_path / "snaps")},
            "rules": {"path": str(tmp_path / "rules.sqlite3")},
            "mqtt": {"host": broker.host, "port": broker.port},
            "lanes": [
                {
                    "id": "main-in",
                    "dedup_window_s": 0,
                    "sources": [
                        {"kind": "rdm6300", "name": "rfid-1", "port": str(rfid.link)},
                        {"kind": "serial_line", "name": "reader-1", "port": str(reader.link)},
                        {"kind": "frigate", "name": "frigate-1", "camera": "driveway"},
                    ],
                }
            ],
        }
    )
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-frigate")
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        await asyncio.sleep(0.5)  # the serial threads open their ports
        os.write(rfid.master, encode_rdm6300_frame(0x62, TAG))
        assert await _until(lambda: len(_rows(journal)) == 1)
        os.write(reader.master, b"AB-123-CD\r\n")
        assert await _until(lambda: len(_rows(journal)) == 2)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        lpr = {
            "type": "lpr",
            "id": "1.1-a",
            "plate": "FR1GATE",
            "score": 0.95,
            "camera": "driveway",
            "timestamp": time.time(),
            "name": None,
        }
        # Frigate publishes once the source is subscribed; retry until it is.
        for _ in range(100):
            publisher.publish(
                "frigate/tracked_object_update", json.dumps(lpr), qos=1
            ).wait_for_publish(5)
            if await _until(lambda: len(_rows(journal)) == 3, timeout_s=0.2):
                break
            lpr["id"] = f"{lpr['id']}x"  # a new tracked object each time
    finally:
        publisher.loop_stop()
        daemon.request_stop()
        status = await asyncio.wait_for(task, 20)
        rfid.close()
        reader.close()
    assert status == 0
    tag, plate, frigate = _rows(journal)[:3]
    assert tag["authorization_method"] == "auto_tag" and tag["decision_reason"] == "resident"
    assert tag["vehicle_plate"] == f"{TAG:010d}" and tag["resident_id"] == "r-1"
    assert plate["authorization_method"] == "auto_plate" and plate["vehicle_id"] == "v-1"
    assert json.loads(plate["metadata"])["vendor"] == "serial"
    assert frigate["vehicle_id"] == "v-2" and json.loads(frigate["metadata"])["vendor"] == "frigate"
