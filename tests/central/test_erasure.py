"""Devices' lawful erasures applied by `gated central erasures` to stored rows and pictures."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gated.central import erasure
from gated.central.admin import enrol_device
from gated.central.cli import cmd_erasures
from gated.central.snapshots import LocalSnapshotStore
from gated.central.store import Store
from tests.support.device_sim import SimDevice
from tests.support.postgres import OWNER, PgServer

PLATE = "AB12CDE"
PICTURE = b"\xff\xd8the plate AB12CDE at the gate\xff\xd9"
OTHER = b"\xff\xd8another car\xff\xd9"
SHA, OTHER_SHA = hashlib.sha256(PICTURE).hexdigest(), hashlib.sha256(OTHER).hexdigest()


def _kept(store: Store, pictures: LocalSnapshotStore, tenant: str, body: bytes) -> str:
    sha = hashlib.sha256(body).hexdigest()
    path, _ = pictures.put(sha, body)
    store.snapshot_kept(tenant, "gate-1", sha, path, len(body))
    return path


def _erasure(sim: SimDevice, seqs: list[int], ids: list[str], shas: list[str]) -> dict[str, Any]:
    """The audit row `gated journal redact --plate` journals (never the plate itself)."""
    return sim.event("audit", action="personal_data_erased", resource_type="person",
                     resource_id=None, actor_type="local_user", actor_id="root",
                     ip_address=None, ip_address_digest=None, new_values=None,
                     metadata={"selector": "plate", "reason": "data subject request",
                               "event_ids": ids, "snapshot_sha256": shas,
                               "journal.erased_seqs": seqs})


def _rows(pg_server: PgServer, pg_db: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    with pg_server.connect(pg_db) as conn:
        found = conn.execute(
            "SELECT tenant_id, seq, vehicle_plate, visitor_name, vehicle_plate_digest, "
            "row_hash, prev_hash FROM access_logs").fetchall()
        found += conn.execute(
            "SELECT tenant_id, seq, ip_address, user_agent, ip_address_digest, row_hash, "
            "prev_hash FROM audit_logs WHERE origin = 'device'").fetchall()
    return {(r[0], r[1]): r[2:] for r in found}


def _hashed(pg_server: PgServer, pg_db: str) -> dict[tuple[str, int], Any]:
    """Every column of every device row but the personal text: what row_hash covers."""
    with pg_server.connect(pg_db) as conn:
        found = conn.execute("SELECT tenant_id, seq, to_jsonb(a) - 'vehicle_plate' "
                             "- 'visitor_name' FROM access_logs a").fetchall()
        found += conn.execute("SELECT tenant_id, seq, to_jsonb(a) - 'ip_address' "
                              "- 'user_agent' FROM audit_logs a WHERE origin = 'device'"
                              ).fetchall()
    return {(r[0], r[1]): r[2] for r in found}


@pytest.fixture
def scene(store: Store, owner: psycopg.Connection[Any], tmp_path: Path) -> dict[str, Any]:
    """acme's gate read PLATE twice (one picture), another car, an audit row with an IP;
    globex's gate-1 (same device id, same seqs) read the same plate, same picture bytes."""
    acme, globex = SimDevice("acme", "hq", "gate-1"), SimDevice("globex", "plant", "gate-1")
    for sim in (acme, globex):
        enrol_device(owner, sim.tenant_id, sim.device_id, sim.site_id, sim.public_b64)
    pictures = LocalSnapshotStore(tmp_path / "pictures")
    path = _kept(store, pictures, "acme", PICTURE)
    _kept(store, pictures, "acme", OTHER)
    _kept(store, pictures, "globex", PICTURE)
    first = acme.event(vehicle_plate=PLATE, snapshot_sha256=SHA, snapshot_path="a.jpg")
    second = acme.event(vehicle_plate=PLATE, visitor_name="Ann Example",
                        visitor_name_digest="c" * 64)
    other = acme.event(vehicle_plate="ZZ99ZZZ", snapshot_sha256=OTHER_SHA)
    audit = acme.event("audit", ip_address="192.0.2.7", user_agent="curl/8",
                       user_agent_digest="d" * 64)
    outcome = store.ingest("acme", "gate-1", [first, second, other, audit])
    assert len(outcome.stored) == 4
    g_first = globex.event(vehicle_plate=PLATE, snapshot_sha256=SHA)
    g_second = globex.event(vehicle_plate=PLATE, visitor_name="Ann Example")
    assert len(store.ingest("globex", "gate-1", [g_first, g_second]).stored) == 2
    return {"acme": acme, "globex": globex, "pictures": pictures, "path": path,
            "first": first, "second": second, "other": other, "audit": audit}


def test_an_erasure_clears_one_tenant_and_device_and_the_chain_still_verifies(
        scene: dict[str, Any], store: Store, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    acme, pictures = scene["acme"], scene["pictures"]
    before = _rows(pg_server, pg_db)
    hashed = _hashed(pg_server, pg_db)
    row = _erasure(acme, [1, 2, 4], [scene["first"]["id"], scene["second"]["id"]], [SHA])
    outcome = store.ingest("acme", "gate-1", [row], [acme.signed_head()])
    assert outcome.head["head_status"] == "countersigned"

    applied = erasure.run(owner, pictures)
    assert [(a.tenant_id, a.access_rows, a.audit_rows, a.listings_removed, a.ignored)
            for a in applied] == [("acme", 2, 1, 1, 0)]
    after = _rows(pg_server, pg_db)
    # the personal text goes; digests, row_hash and prev_hash stay as the device hashed them
    assert after[("acme", 1)][:2] == (None, None) and after[("acme", 2)][:2] == (None, None)
    assert after[("acme", 4)][:2] == (None, None)
    for key in (("acme", 1), ("acme", 2), ("acme", 4)):
        assert after[key][2:] == before[key][2:]
    assert after[("acme", 3)] == before[("acme", 3)]  # another plate: untouched
    assert {k: v for k, v in _hashed(pg_server, pg_db).items() if k in hashed} == hashed
    # globex: the same plate, device id and seqs, untouched
    assert after[("globex", 1)] == before[("globex", 1)]
    assert after[("globex", 2)][:2] == (PLATE, "Ann Example")

    with pg_server.connect(pg_db) as conn:
        listed = set(conn.execute("SELECT tenant_id, sha256 FROM snapshots").fetchall())
        assert listed == {("acme", OTHER_SHA), ("globex", SHA)}
        record = conn.execute(
            "SELECT metadata, actor_id, status FROM audit_logs WHERE tenant_id = 'acme' "
            "AND origin = 'service' AND action = 'personal_data_erased'").fetchall()
    assert len(record) == 1 and record[0][2] == "success"
    assert record[0][0]["applies"] == row["id"] and record[0][0]["access_rows"] == 2
    assert PLATE not in json.dumps(record[0][0]) and "Ann" not in json.dumps(record[0][0])
    # globex still lists the picture: the one stored object stays
    assert pictures.get(scene["path"]) == PICTURE

    # the witness goes on: new rows link after the erasure and the head is countersigned
    more = [acme.event(vehicle_plate="NEW1"), acme.event(vehicle_plate="NEW2")]
    outcome = store.ingest("acme", "gate-1", more, [acme.signed_head()])
    assert outcome.head["head_status"] == "countersigned" and outcome.alerts == []
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT chain_seq, forked FROM devices WHERE tenant_id = 'acme'"
                            ).fetchone() == (7, False)

    # idempotent: nothing pending, nothing changes, no second record
    assert erasure.run(owner, pictures) == []
    assert _rows(pg_server, pg_db) == {**after, **{k: v for k, v in _rows(
        pg_server, pg_db).items() if k[1] > 5}}
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_logs WHERE origin = 'service' "
                            "AND action = 'personal_data_erased'").fetchone() == (1,)


def test_the_object_goes_when_no_tenant_lists_it_any_more(
        scene: dict[str, Any], store: Store, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    acme, globex, pictures = scene["acme"], scene["globex"], scene["pictures"]
    store.ingest("acme", "gate-1", [_erasure(acme, [1], [], [SHA])])
    store.ingest("globex", "gate-1", [_erasure(globex, [1, 2], [], [SHA])])
    applied = erasure.run(owner, pictures)
    assert sorted((a.tenant_id, a.access_rows) for a in applied) == [("acme", 1),
                                                                      ("globex", 2)]
    assert pictures.get(scene["path"]) is None
    assert not (pictures.root / scene["path"]).exists()
    assert pictures.get(pictures.put(OTHER_SHA, OTHER)[0]) == OTHER  # still named by seq 3
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT bool_and(objects_done) FROM erasures_applied"
                            ).fetchone() == (True,)


def test_a_picture_another_row_names_is_kept(
        scene: dict[str, Any], store: Store, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    acme = scene["acme"]
    # erasing only the second row (no picture) must not take seq 1's picture
    store.ingest("acme", "gate-1", [_erasure(acme, [2], [], [])])
    # a hostile listing of another row's picture keeps it too: seq 1 still names it
    store.ingest("acme", "gate-1", [_erasure(acme, [99], [], [SHA])])
    erasure.run(owner, scene["pictures"])
    with pg_server.connect(pg_db) as conn:
        assert ("acme", SHA) in set(conn.execute("SELECT tenant_id, sha256 FROM snapshots"))
        assert conn.execute("SELECT vehicle_plate FROM access_logs WHERE tenant_id = 'acme' "
                            "AND seq = 1").fetchone() == (PLATE,)


def test_malformed_metadata_is_refused_entry_by_entry(
        scene: dict[str, Any], store: Store, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str) -> None:
    acme = scene["acme"]
    before = _rows(pg_server, pg_db)
    hostile = _erasure(acme, [], [], [])
    hostile["data"]["metadata"] = {"journal.erased_seqs": ["1", True, -3, 2**70, None],
                                   "event_ids": ["' OR 1=1 --", 7],
                                   "snapshot_sha256": "everything"}
    hostile["data"]["row_hash"] = erasure_row_hash(hostile)
    assert store.ingest("acme", "gate-1", [hostile]).stored == [hostile["id"]]
    [applied] = erasure.run(owner, scene["pictures"])
    assert (applied.access_rows, applied.audit_rows, applied.ignored) == (0, 0, 8)
    after = _rows(pg_server, pg_db)
    assert all(after[k] == v for k, v in before.items())
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT status FROM audit_logs WHERE origin = 'service'"
                            ).fetchone() == ("partial",)


def erasure_row_hash(event: dict[str, Any]) -> str:
    """The row_hash of an event whose data a test changed after making it."""
    from gated.central.witness import row_hash

    data = {k: v for k, v in event["data"].items() if k != "row_hash"}
    return row_hash("audit", data)


def test_the_command_applies_erasures_as_the_owner(
        scene: dict[str, Any], store: Store, pg_server: PgServer, pg_db: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acme = scene["acme"]
    store.ingest("acme", "gate-1", [_erasure(acme, [1], [], [SHA])])
    config = tmp_path / "central.toml"
    config.write_text(f'[database]\nurl = "{pg_server.conninfo(pg_db)}"\n'
                      f'owner_url = "{pg_server.conninfo(pg_db, OWNER)}"\n'
                      f'[snapshots]\npath = "{scene["pictures"].root}"\n')
    assert cmd_erasures(argparse.Namespace(config=str(config))) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["access_rows"] == 1
    assert cmd_erasures(argparse.Namespace(config=str(config))) == 0
    assert capsys.readouterr().out == ""
