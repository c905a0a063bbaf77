"""What ingest stores is what the viewer shows: events, pictures, the witness, heartbeats."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg

from gated.central.admin import enrol_device
from gated.central.snapshots import LocalSnapshotStore
from gated.central.store import Store
from tests.central.viewer_support import running_viewer
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer


async def test_ingested_events_pictures_and_health_show_per_tenant(
        pg_server: PgServer, pg_db: str, tmp_path: Path, store: Store,
        owner: psycopg.Connection[Any]) -> None:
    pictures = LocalSnapshotStore(tmp_path / "pictures")
    acme, globex = SimDevice("acme", "hq", "gate-1"), SimDevice("globex", "plant", "gate-1")
    for device in (acme, globex):
        enrol_device(owner, device.tenant_id, device.device_id, device.site_id,
                     device.public_b64)
    body = b"\xff\xd8ingested picture\xff\xd9"
    sha = hashlib.sha256(body).hexdigest()
    relative, _ = pictures.put(sha, body)
    assert store.snapshot_kept("acme", "gate-1", sha, relative, len(body))
    first = acme.event(vehicle_plate="ACME1", snapshot_sha256=sha)
    events = [first, *(acme.event(vehicle_plate=f"ACME{n}") for n in range(2, 5)),
              acme.event("audit", actor_id="ops:zed")]
    outcome = store.ingest("acme", "gate-1", events, [acme.signed_head()])
    assert len(outcome.stored) == 5 and outcome.head["head_status"] == "countersigned"
    store.ingest("globex", "gate-1", [globex.event(vehicle_plate="GLOBEX1")])
    store.heartbeat("acme", "gate-1", {"backlog": {"access": 3, "audit": 1},
                                       "rules_version": 12, "version": "2.0.1",
                                       "healthy": True})

    async with running_viewer(pg_server, pg_db, pictures.root) as viewer:
        await viewer.add_user("acme", "ada", "auditor")
        ada = await viewer.login("acme", "ada")
        events_page = (await ada.get("/events")).text
        assert all(f"ACME{n}" in events_page for n in range(1, 5))
        assert "GLOBEX1" not in events_page
        page = await ada.get(f"/events/{first['id']}")
        assert page.status_code == 200
        assert "witnessed" in page.text and "not yet witnessed" not in page.text
        assert f"/snapshots/{sha}.jpg" in page.text
        assert (await ada.get(f"/snapshots/{sha}.jpg")).content == body
        assert "ops:zed" in (await ada.get("/audit")).text
        devices = (await ada.get("/devices")).text
        row = devices.split('id="device-gate-1"', 1)[1].split("</tr>", 1)[0]
        assert ">online<" in row and "<td>4" in row and "<td>12</td>" in row
        assert "up to seq 5" in row and "v2.0.1" in row
