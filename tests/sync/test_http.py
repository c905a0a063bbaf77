"""HTTP uplink against the reference receiver on loopback: batches with Idempotency-Key,
every fault the service can answer with, quarantine of a refused event, pictures by hash."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from gated.journal import Journal
from gated.sync.http import retry_after_s
from gated.sync.service import SyncService
from tests.support.receiver import Fault
from tests.sync.conftest import (
    DEVICE,
    access_event,
    all_synced,
    auditor_for,
    eventually,
    journal_ids,
    stop_service,
    sync_config,
)


async def test_every_http_fault_ends_with_every_event_stored_once(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory()
    receiver.http_faults.extend([
        Fault("status", 500), Fault("status", 503),
        Fault("status", 429, headers={"Retry-After": "1"}),
        Fault("hang", seconds=3.0),  # longer than the device's 2 s request timeout
        Fault("close"),  # connection closed mid-body, no answer
        Fault("store_then", 500),  # stored, then answered 500: the retry is a duplicate
    ])
    cfg = sync_config(tmp_path, http_url=receiver.base_url, batch_max_events=40,
                      service_key=receiver.service_public_b64)
    await journal.append_many([access_event(i) for i in range(200)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    for i in range(20):  # the gate keeps journaling while sync retries
        await journal.append(access_event(500 + i))
    await eventually(lambda: all_synced(journal), what="every row synced")
    await stop_service(service, task)
    assert receiver.http_faults == []  # every injected fault was met
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.duplicates_seen > 0  # the "stored then 500" batch came twice …
    assert receiver.count() == len(await journal_ids(journal))  # … and was kept once
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []
    posts = [h for m, p, h in receiver.http_requests if p.endswith("/events")]
    assert all(h.get("Authorization") == "Bearer device-secret" for h in posts)


async def test_a_refused_event_is_quarantined_and_audited_not_retried_forever(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory()
    cfg = sync_config(tmp_path, http_url=receiver.base_url, batch_max_events=16)
    events = [access_event(i) for i in range(40)]
    bad = events[13].event_id
    receiver.http_faults.append(Fault("reject", 422, ids=frozenset({bad})))
    await journal.append_many(events)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="every row settled")
    await stop_service(service, task)
    audit = [r for r in await journal.recent("audit", 50) if r["action"] == "sync_quarantined"]
    assert len(audit) == 1
    assert audit[0]["metadata"]["event_id"] == bad
    assert audit[0]["metadata"]["http_status"] == 422
    assert audit[0]["status"] == "failure"
    # Everything else arrived, the quarantine row included, and the refused one did not.
    assert receiver.ids(DEVICE) == await journal_ids(journal) - {bad}


async def test_pictures_go_first_by_hash_and_an_event_never_waits_forever(
    tmp_path: Path, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory()
    cfg = sync_config(tmp_path, http_url=receiver.base_url, snapshot_wait_s=1.0,
                      ack_timeout_s=0.5)
    snaps = Path(cfg.journal.snapshot_dir)
    (snaps / "2024-11-30").mkdir(parents=True)
    kept = b"\xff\xd8kept-jpeg\xff\xd9"
    stuck = b"\xff\xd8stuck-jpeg\xff\xd9"
    (snaps / "2024-11-30" / "a.jpg").write_bytes(kept)
    (snaps / "2024-11-30" / "c.jpg").write_bytes(stuck)
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in
           (("a", kept), ("c", stuck))}
    sha["b"] = hashlib.sha256(b"gone").hexdigest()
    for _ in range(1000):  # the stuck picture's uploads keep failing
        receiver.http_faults.append(Fault("status", 500, path=f"/snapshots/{sha['c']}"))
    events = [
        access_event(1, snapshot_path="2024-11-30/a.jpg", snapshot_sha256=sha["a"]),
        access_event(2, snapshot_path="2024-11-30/b.jpg", snapshot_sha256=sha["b"]),
        access_event(3, snapshot_path="2024-11-30/c.jpg", snapshot_sha256=sha["c"]),
    ]
    await journal.append_many(events)
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="all three events settled")
    await stop_service(service, task)
    assert receiver.snapshot_hashes() == {sha["a"]}
    states = {receiver_sha: receiver.picture_states[e.event_id] for receiver_sha, e in zip(
        (sha["a"], sha["b"], sha["c"]), events, strict=True)}
    assert states == {sha["a"]: "uploaded", sha["b"]: "missing", sha["c"]: "pending"}
    assert receiver.invalid == []


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_s("soon") is None
    assert retry_after_s(None) is None
