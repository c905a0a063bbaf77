"""MQTT uplink against a real Mosquitto and the reference receiver: every journaled event
arrives once in effect, the chain checks out there, rows are marked synced only on the
service's ack, and the lanes' journal keeps taking events meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gated.journal import Journal
from gated.sync.service import SyncService
from tests.sync.conftest import (
    DEVICE,
    access_event,
    all_synced,
    auditor_for,
    eventually,
    journal_ids,
    stop_service,
    sync_config,
    unsynced_count,
)


async def test_backlog_and_live_events_all_arrive_once_with_the_chain_intact(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                      batch_max_events=50, mqtt_window=64)
    auditor = auditor_for(journal, cfg)
    await journal.append_many([access_event(i) for i in range(600)])  # the backlog
    await auditor.record("daemon_start", "daemon")
    service = SyncService(cfg, journal, audit=auditor.record)
    task = asyncio.create_task(service.run())
    live_seqs = []
    for i in range(100):  # live events while the backlog drains: the gate keeps journaling
        live_seqs.append(await journal.append(access_event(1000 + i)))
        await asyncio.sleep(0.005)
    expected = await journal_ids(journal)
    await eventually(lambda: receiver.ids(DEVICE) >= expected, what="every event upstream")
    await eventually(lambda: all_synced(journal),
                     what="every row marked synced")
    await stop_service(service, task)
    assert receiver.ids(DEVICE) == await journal_ids(journal)  # 0 lost, nothing foreign
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []
    assert len(live_seqs) == 100


async def test_nothing_is_marked_synced_without_the_services_ack(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    receiver.ack_enabled = False  # the broker PUBACKs, the service stores, but never acks
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64)
    await journal.append_many([access_event(i) for i in range(20)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: len(receiver.ids(DEVICE)) == 20, what="events at the receiver")
    await asyncio.sleep(0.5)
    assert await unsynced_count(journal) == 20  # PUBACKed and stored, but not acked
    receiver.ack_enabled = True  # the re-send after ack_timeout_s is acked (a duplicate)
    await eventually(lambda: all_synced(journal), what="acks")
    await stop_service(service, task)
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.duplicates_seen >= 20
    assert receiver.invalid == []


async def test_broker_ack_mode_marks_on_puback(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    receiver.ack_enabled = False
    cfg = sync_config(tmp_path, broker=broker, ack="broker")
    await journal.append_many([access_event(i) for i in range(20)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="PUBACKs")
    await stop_service(service, task)
    assert receiver.ids(DEVICE) == await journal_ids(journal)
