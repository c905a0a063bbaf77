"""Signed heads and the service's countersignature kept in the journal; retained status;
and the broker faults: SIGKILLed and restarted mid-drain, frozen (SIGSTOP) then resumed.
Each fault ends with 0 lost and 0 duplicated in effect, the chain intact at the receiver,
and the journal taking the gate's events all along."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gated.journal import Journal
from gated.sync.service import SyncService
from gated.sync.signing import verify
from tests.support.schemas import validate, validate_event
from tests.sync.conftest import (
    DEVICE,
    TENANT,
    access_event,
    all_synced,
    auditor_for,
    eventually,
    journal_ids,
    stop_service,
    sync_config,
)


async def test_a_signed_head_is_countersigned_and_journaled(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64)
    await journal.append_many([access_event(i) for i in range(30)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    receiver.register_device(service.key.public_key())
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="events synced")
    head_event = await service.send_head()
    assert head_event is not None
    validate_event(head_event)
    await eventually(lambda: service.last_countersigned is not None, what="countersignature")
    counter = service.last_countersigned
    validate("countersignature", counter)
    assert counter["seq"] == 30 and verify(counter, service.service_keys)
    rows = [r for r in await journal.recent("audit", 10) if r["action"] == "head_countersigned"]
    assert rows and rows[0]["new_values"] == counter and rows[0]["resource_id"] == "30"
    # Our own countersignature row alone does not make a new head to sign.
    assert await service.send_head() is None
    await stop_service(service, task)
    status = [(body["status"], retained) for topic, body, retained in receiver.statuses
              if topic == f"gated/v1/{TENANT}/{DEVICE}/status"]
    assert ("online", False) in status and status[-1] == ("offline", False)
    assert receiver.invalid == []


async def test_a_head_that_does_not_match_the_services_chain_is_refused_and_audited(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64)
    await journal.append_many([access_event(i) for i in range(5)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    receiver.register_device(service.key.public_key())
    task = asyncio.create_task(service.run())
    await eventually(lambda: all_synced(journal), what="events synced")
    with receiver.lock:  # the service holds another row 5: a rebuilt chain on the device
        receiver.db.execute("UPDATE events SET row_hash = ? WHERE seq = 5", ("f" * 64,))
    await service.send_head()
    await eventually(lambda: any(a["head_status"] == "refused" for a in receiver.heads_answered),
                     what="refusal")
    await eventually(lambda: _audited(journal, "head_refused"), what="audit row")
    assert service.last_countersigned is None
    await stop_service(service, task)


async def _audited(journal: Journal, action: str) -> bool:
    return any(r["action"] == action for r in await journal.recent("audit", 20))


async def _drain_through(fault, tmp_path: Path, broker, receiver_factory,
                         journal: Journal) -> None:
    receiver = receiver_factory(mqtt_port=broker.port, http=False)
    cfg = sync_config(tmp_path, broker=broker, service_key=receiver.service_public_b64,
                      batch_max_events=100, mqtt_window=100, ack_timeout_s=2.0)
    await journal.append_many([access_event(i) for i in range(3000)])
    service = SyncService(cfg, journal, audit=auditor_for(journal, cfg).record)
    task = asyncio.create_task(service.run())
    await eventually(lambda: len(receiver.ids(DEVICE)) > 300, what="drain under way")
    gate_seqs = await fault(broker)
    await eventually(lambda: all_synced(journal), timeout_s=120, what="every row synced")
    await stop_service(service, task)
    assert len(gate_seqs) >= 1  # the gate journaled during the fault
    assert receiver.ids(DEVICE) == await journal_ids(journal)
    assert receiver.count() == len(await journal_ids(journal))
    assert receiver.chain_problems(DEVICE) == []
    assert receiver.invalid == []


async def test_broker_sigkilled_mid_drain_and_restarted(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    async def kill_and_restart(b) -> list[int]:
        b.kill()  # whatever it held (PUBACKed, not yet delivered) is gone
        seqs = [await journal.append(access_event(90_000 + i)) for i in range(10)]
        await asyncio.sleep(1.0)
        b.start()
        return seqs

    await _drain_through(kill_and_restart, tmp_path, broker, receiver_factory, journal)


async def test_broker_frozen_then_resumed(
    tmp_path: Path, broker, receiver_factory, journal: Journal
) -> None:
    async def freeze_and_thaw(b) -> list[int]:
        b.freeze()
        seqs = [await journal.append(access_event(80_000 + i)) for i in range(10)]
        await asyncio.sleep(4.0)  # past the ack timeout: re-sends queue behind the frozen broker
        b.thaw()
        return seqs

    await _drain_through(freeze_and_thaw, tmp_path, broker, receiver_factory, journal)


def test_status_payloads_fit_the_schema() -> None:
    from gated.sync.envelope import status_message

    validate("status", json.loads(status_message("gate-7", "offline", "connection lost")))
    validate("status", json.loads(status_message("gate-7", "online", "connected", 1.0)))
