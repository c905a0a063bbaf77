"""Frigate through the daemon and a real Mosquitto: only a live car opens the gate.

Messages are shaped as Frigate documents them (`frigate/events`,
`frigate/tracked_object_update` type "lpr") and published the way Frigate does.
The daemon runs in-process with a fake relay, so each opening is counted
exactly; the journal is read back from its SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gated.app import Daemon
from gated.config import Config, parse_config
from gated.health import Health, SystemdNotifier
from gated.rules.files import import_rules
from gated.rules.store import RuleStore
from tests.support.broker import (
    MOSQUITTO,
    Broker,
    mosquitto_available,
    mosquitto_broker,
    wait_until_accepting,
)

PLATES = ["AB123CD", "GH456JK", "MN789PQ", "XY555ZZ", "KL222MN", "RS333TU", "DE444FG", "PQ777RS"]
RULES = {
    "format": "gated-rules",
    "format_version": 1,
    "residents": [{"id": "r-1", "name": "Ann", "access_points": "*"}],
    "vehicles": [
        {"id": f"v-{i}", "plate": plate, "resident_id": "r-1"} for i, plate in enumerate(PLATES)
    ],
}
# The documentation's own example time (December 2020).
DOCS_TIMESTAMP = 1607123958.748393


class SynchronisedClock:
    """The device clock as NTP-synchronised (a test container's kernel may say otherwise)."""

    def unsynced(self) -> bool:
        """Never unsynchronised: the capture-age rule applies."""
        return False


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto keeping retained messages across a restart, as a default install does."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    store = tmp_path / "broker-db"
    store.mkdir()
    # Mosquitto started as root would switch to its own user, which cannot write tmp_path.
    extra = f"persistence true\npersistence_location {store}/\nuser root\n"
    with mosquitto_broker(tmp_path / "broker", extra_config=extra) as running:
        yield running


def lpr(oid: str, plate: str, score: float, timestamp: float, name: str | None = None) -> bytes:
    """A tracked_object_update of type lpr, as Frigate 0.16 publishes it."""
    doc = {
        "type": "lpr",
        "id": oid,
        "name": name,
        "plate": plate,
        "score": score,
        "camera": "driveway",
        "timestamp": timestamp,
    }
    return json.dumps(doc).encode()


def event(kind: str, oid: str, plate: str | None, score: float | None, **more: Any) -> bytes:
    """A frigate/events message with the documented object fields."""
    now = time.time()
    after: dict[str, Any] = {
        "id": oid,
        "camera": "driveway",
        "frame_time": now,
        "snapshot_time": now,
        "label": "car",
        "sub_label": None,
        "top_score": 0.95,
        "false_positive": False,
        "start_time": now - 2,
        "end_time": None,
        "score": 0.9,
        "box": [424, 500, 536, 712],
        "area": 23744,
        "ratio": 2.1,
        "region": [264, 450, 667, 853],
        "current_zones": ["gate"],
        "entered_zones": ["gate"],
        "thumbnail": None,
        "has_snapshot": False,
        "has_clip": False,
        "active": True,
        "stationary": False,
        "motionless_count": 0,
        "position_changes": 1,
        "attributes": {},
        "current_attributes": [],
        "recognized_license_plate": plate,
        "recognized_license_plate_score": score,
    }
    after.update(more)
    return json.dumps({"type": kind, "before": after, "after": after}).encode()


class Publisher:
    """A client publishing as Frigate does (and as anyone else on the broker could)."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-frigate-nvr")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish and wait until the broker has it."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def rows(journal: Path) -> list[dict[str, Any]]:
    """Every access row, in order."""
    if not journal.exists():
        return []
    conn = sqlite3.connect(journal)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM access_logs ORDER BY seq")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def until(predicate: Callable[[], object], timeout_s: float = 20.0) -> None:
    """Poll a condition, failing the test after timeout_s."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the state lives in another process/thread
            await asyncio.sleep(0.05)


def site_config(tmp_path: Path, broker: Broker) -> Config:
    """One lane fed by Frigate camera "driveway", a fake relay, a short coalescing window."""
    return parse_config(
        {
            "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
            "journal": {
                "path": str(tmp_path / "journal.sqlite3"),
                "snapshot_dir": str(tmp_path / "snaps"),
            },
            "rules": {"path": str(tmp_path / "rules.sqlite3")},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1.0,
            },
            "lanes": [
                {
                    "id": "main-in",
                    "dedup_window_s": 1.0,
                    "sources": [{"kind": "frigate", "name": "frigate-1", "camera": "driveway"}],
                }
            ],
        }
    )


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Daemon]:
    """The daemon, ready and subscribed to Frigate's topics; stopped at the end."""
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    daemon.clock = SynchronisedClock()  # type: ignore[assignment]
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        assert daemon.generation is not None
        link = daemon.generation.mqtt_links["frigate"]
        await until(lambda: link.connected and link.last_resubscribe_s is not None)
        yield daemon
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


def pulses(daemon: Daemon) -> int:
    """How often the lane's relay was told to open."""
    assert daemon.generation is not None
    return daemon.generation.relays["main-in"].actions.count("pulse")


def of(journal: Path, plate: str) -> list[dict[str, Any]]:
    """The rows of one plate."""
    return [r for r in rows(journal) if r["vehicle_plate"] == plate]


@pytest.mark.slow
async def test_only_a_live_car_opens_the_gate(tmp_path: Path, broker: Broker) -> None:
    (tmp_path / "rules.json").write_text(json.dumps(RULES))
    with RuleStore(tmp_path / "rules.sqlite3") as store:
        import_rules(store, tmp_path / "rules.json")
    cfg = site_config(tmp_path, broker)
    journal = Path(cfg.journal.path)
    frigate = Publisher(broker)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        async with running(cfg) as daemon:
            # A live car, now: the gate opens (the rig can open, so the "never" below counts).
            frigate.send(
                "frigate/tracked_object_update", lpr("live.1", "AB123CD", 0.95, time.time())
            )
            await until(lambda: of(journal, "AB123CD"))
            assert pulses(daemon) == 1

            # Stale: the documentation's 2020 example, a car 3 h ago, a car 5 h ago.
            docs_id = "1607123955.475377-mxklsc"
            frigate.send(
                "frigate/tracked_object_update", lpr(docs_id, "GH456JK", 0.95, DOCS_TIMESTAMP)
            )
            three_h = event("update", "old.3h", "MN789PQ", 0.95, frame_time=time.time() - 3 * 3600)
            frigate.send("frigate/events", three_h)
            frigate.send(
                "frigate/tracked_object_update",
                lpr("old.5h", "XY555ZZ", 0.95, time.time() - 5 * 3600),
            )
            await until(lambda: all(of(journal, p) for p in ("GH456JK", "MN789PQ", "XY555ZZ")))

            # Wrong objects: a person (with a face-recognition name) and a dog with a plate.
            person = event(
                "update",
                "person.1",
                "KL222MN",
                0.95,
                label="person",
                sub_label=["John Smith", 0.79],
            )
            frigate.send("frigate/events", person)
            frigate.send("frigate/events", event("update", "dog.1", "KL222MN", 0.95, label="dog"))
            frigate.send("frigate/events", b"{not json")

            # Forgotten objects: a car opens once; end; a late lpr update and the end
            # re-delivered after the lane's coalescing window must not open it again.
            frigate.send("frigate/events", event("update", "car.2", "RS333TU", 0.9))
            await until(lambda: of(journal, "RS333TU"))
            end = event("end", "car.2", "RS333TU", 0.9, end_time=time.time())
            frigate.send("frigate/events", end)
            await asyncio.sleep(1.5)  # past dedup_window_s: only the source can remember
            frigate.send(
                "frigate/tracked_object_update", lpr("car.2", "RS333TU", 0.97, time.time())
            )
            frigate.send("frigate/events", end)

            # Better reads: 0.55 is denied low_confidence; Frigate's 0.93 must be decided again.
            frigate.send("frigate/events", event("update", "car.3", "DE444FG", 0.55))
            await until(lambda: of(journal, "DE444FG"))
            frigate.send("frigate/events", event("update", "car.3", "DE444FG", 0.93))
            await until(lambda: len(of(journal, "DE444FG")) == 2)

            link = daemon.generation.mqtt_links["frigate"]  # type: ignore[union-attr]
            await until(lambda: sum(link.messages.values()) >= 12)
            assert pulses(daemon) == 3  # AB123CD, RS333TU once, DE444FG at 0.93
            assert daemon.health.components["mqtt-frigate"].ok
            metrics = daemon.metrics_text()
            assert 'gated_mqtt_connected{link="frigate"} 1' in metrics
            assert 'gated_mqtt_malformed_total{link="frigate",topic="frigate/events"} 1' in metrics
            assert 'gated_mqtt_dropped_total{link="frigate",reason="label"} 2' in metrics
            assert 'gated_mqtt_dropped_total{link="frigate",reason="ended"} 2' in metrics

        # Replayed: a retained message, fresh by its own time, published while gated was down.
        frigate.send(
            "frigate/tracked_object_update",
            lpr("ret.1", "PQ777RS", 0.95, time.time()),
            retain=True,
        )
        async with running(cfg) as daemon:  # daemon restart: re-delivered on subscribe
            await until(lambda: len(of(journal, "PQ777RS")) == 1)
            frigate.close()
            broker.process.terminate()  # broker restart: re-delivered on resubscribe
            broker.process.wait(5)
            link = daemon.generation.mqtt_links["frigate"]  # type: ignore[union-attr]
            await until(lambda: not link.connected)
            restarted = await asyncio.to_thread(_restart, broker)
            # Re-delivered with the retain flag once the subscription is back; the source
            # still remembers object ret.1, so it is a repeat and never reaches the lane.
            await until(lambda: link.messages["frigate/tracked_object_update"] == 2)
            await until(lambda: link.dropped["repeat"] == 1)
            frigate = Publisher(broker)
            frigate.send(
                "frigate/tracked_object_update", lpr("live.2", "AB123CD", 0.95, time.time())
            )
            await until(lambda: len(of(journal, "AB123CD")) == 2)
            assert pulses(daemon) == 1  # only the live car after the restart
    finally:
        frigate.close()
        if restarted is not None:
            restarted.terminate()
            restarted.wait(5)

    def outcome(plate: str) -> list[tuple[str, str]]:
        return [(r["event_type"], r["decision_reason"]) for r in of(journal, plate)]

    assert outcome("AB123CD") == [("entry", "resident"), ("entry", "resident")]
    for plate in ("GH456JK", "MN789PQ", "XY555ZZ", "PQ777RS"):
        assert {row[0] for row in outcome(plate)} == {"denied"}, plate
        assert {row[1] for row in outcome(plate)} == {"stale_read"}, plate
    assert outcome("PQ777RS") == [("denied", "stale_read")]  # journaled, never opened
    assert of(journal, "KL222MN") == []  # plates on a person and a dog
    assert outcome("RS333TU") == [("entry", "resident")]
    assert outcome("DE444FG") == [("denied", "low_confidence"), ("entry", "resident")]
    frigate_rows = [r for r in rows(journal) if "frigate" in (r["metadata"] or "")]
    assert frigate_rows and not any("John" in (r["metadata"] or "") for r in rows(journal))


def _restart(broker: Broker) -> subprocess.Popen[bytes]:
    """Mosquitto again on the same port, with its retained messages from disk."""
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(broker.config_path)], stderr=subprocess.DEVNULL
    )
    assert wait_until_accepting(broker.host, broker.port)
    return process
