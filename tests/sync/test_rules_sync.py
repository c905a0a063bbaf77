"""Rule bundles from the reference receiver over a real Mosquitto (signed retained announcement)
and HTTP (GET with since and ETag), into a real rule store through the import path: full and
delta bundles applied and audited; unsigned, tampered, unknown-key, wrong-device, wrong-tenant,
rolled-back, wrong-base and invalid bundles and forged announcements refused, audited, and
changing nothing; the active version survives a restart and is reported."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.app import rule_bundle_importer
from gated.audit import Auditor
from gated.config import Config, parse_config
from gated.control import Outcome, Result
from gated.journal import Journal
from gated.mqttlink import MqttLink
from gated.rules.store import RuleStore
from gated.sync.downlink import Downlink
from tests.support.downlink_peer import DownlinkPeer
from tests.support.receiver import Receiver
from tests.sync.conftest import KillableBroker, eventually

TENANT, SITE, DEVICE = "acme", "hq", "gate-1"

RULES_V1: dict[str, Any] = {
    "residents": [{"id": "r-1", "name": "Ann"}, {"id": "r-2", "name": "Bob"}],
    "vehicles": [{"id": "v-1", "plate": "AB-123-C", "resident_id": "r-1"},
                 {"id": "v-2", "plate": "XY-999-Z", "resident_id": "r-2"}],
}


class Gate:
    """The device side: journal, rule store, MQTT link and the downlink, restartable."""

    def __init__(self, root: Path, cfg: Config) -> None:
        self.root, self.cfg = root, cfg
        self.reloads = 0
        self.performed: list[str] = []

    async def start(self) -> None:
        self.journal = await Journal.open(self.cfg.journal.path)
        auditor = Auditor(self.journal.append, self.cfg.site.identity)
        assert self.cfg.mqtt is not None
        self.link = MqttLink(self.cfg.mqtt, f"gated-{DEVICE}-sync", name="sync")

        async def perform(action: str, _actor: Any, _args: Any) -> Result:
            self.performed.append(action)
            return Result(Outcome.SUCCESS, "reloaded")

        async def reload() -> int:
            self.reloads += 1
            return 0

        self.downlink = Downlink(
            self.cfg, perform=perform, audit=auditor.record,
            apply_rules=rule_bundle_importer(self.cfg.rules.path, "UTC"),
            reload_rules=reload, link=self.link,
        )
        self.tasks = [asyncio.create_task(self.link.run()),
                      asyncio.create_task(self.downlink.run())]
        await eventually(self.link.subscribed.is_set)

    async def stop(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.downlink.close()
        await self.journal.close()

    @property
    def version(self) -> int:
        return self.downlink.rules.active_version

    def store_rows(self, kind: str) -> list[str]:
        with RuleStore(self.cfg.rules.path) as store:
            return sorted(e.id for e in store.entities(kind))

    def store_version(self) -> int:
        with RuleStore(self.cfg.rules.path) as store:
            return store.version

    def audits(self, action: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.cfg.journal.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(
                "SELECT * FROM audit_logs WHERE action = ? ORDER BY seq", (action,))]
        finally:
            conn.close()

    def refusals(self) -> list[str]:
        return [json.loads(r["metadata"])["reason"] for r in self.audits("rules_bundle_refused")]


@pytest.fixture
async def peers(tmp_path: Path, broker: KillableBroker) -> AsyncIterator[tuple[DownlinkPeer, Gate]]:
    receiver = Receiver(tmp_path / "service.sqlite3", mqtt_host=broker.host,
                        mqtt_port=broker.port, http=True)
    peer = DownlinkPeer(receiver, TENANT)
    await asyncio.to_thread(receiver.start)
    cfg = parse_config({
        "site": {"tenant_id": TENANT, "site_id": SITE, "device_id": DEVICE},
        "journal": {"path": str(tmp_path / "dev" / "journal.sqlite3"),
                    "snapshot_dir": str(tmp_path / "dev" / "snapshots")},
        "rules": {"path": str(tmp_path / "dev" / "rules.sqlite3")},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.05,
                 "reconnect_max_s": 0.3},
        "sync": {"enabled": True, "service_public_keys": [receiver.service_public_b64],
                 "http": {"url": receiver.base_url, "token": "device-secret"},
                 "rules_poll_s": 0, "retry_min_s": 0.05, "retry_max_s": 0.2},
    })
    (tmp_path / "dev").mkdir()
    gate = Gate(tmp_path / "dev", cfg)
    await gate.start()
    try:
        yield peer, gate
    finally:
        await gate.stop()
        assert peer.invalid == [] and receiver.invalid == []
        await asyncio.to_thread(receiver.stop)


async def announce(peer: DownlinkPeer, version: int, **kwargs: Any) -> None:
    await asyncio.to_thread(peer.announce, DEVICE, version, **kwargs)


# --- applied ----------------------------------------------------------------------------------


async def test_announced_full_bundle_is_fetched_applied_audited_and_reported(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    await announce(peer, 1)
    await eventually(lambda: gate.version == 1)

    assert gate.store_rows("vehicles") == ["v-1", "v-2"]
    assert gate.store_rows("residents") == ["r-1", "r-2"]
    assert peer.rules_requests == [(0, "")]
    [row] = gate.audits("rules_bundle_applied")
    values = json.loads(row["new_values"])
    assert (row["resource_id"], row["actor_type"], row["actor_id"]) == (
        "1", "remote", "ops:rules@example.com")
    assert values["mode"] == "full" and values["rules_version"] == gate.store_version() == 1
    assert values["written"]["vehicles"] == 2
    assert gate.reloads == 1
    status = gate.downlink.status()
    assert status["rules_bundle_version"] == 1 and status["rules_last_error"] is None
    assert gate.refusals() == []


async def test_delta_upserts_and_deletes_in_one_version(peers: tuple[DownlinkPeer, Gate]) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    await announce(peer, 1)
    await eventually(lambda: gate.version == 1)
    peer.add_bundle(DEVICE, 2,
                    {"vehicles": [{"id": "v-3", "plate": "NEW-1", "resident_id": "r-1"}]},
                    base_version=1, delete={"vehicles": ["v-2"]})
    await announce(peer, 2)
    await eventually(lambda: gate.version == 2)

    assert gate.store_rows("vehicles") == ["v-1", "v-3"]
    assert gate.store_version() == 2  # one change set for the upsert and the delete
    assert peer.rules_requests[-1][0] == 1  # asked for what is new since version 1
    applied = [json.loads(r["new_values"]) for r in gate.audits("rules_bundle_applied")]
    assert [(a["mode"], a["deleted"].get("vehicles")) for a in applied] == [
        ("full", 0), ("delta", 1)]
    # Nothing newer: the ETag of what it has makes the service answer 304, and nothing changes.
    assert (await gate.downlink.rules.sync_now())["outcome"] == "current"
    assert peer.rules_requests[-1] == (2, '"v2-delta"')
    assert gate.store_version() == 2


async def test_etag_is_sent_and_304_changes_nothing(peers: tuple[DownlinkPeer, Gate]) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    assert (await gate.downlink.rules.sync_now())["outcome"] == "applied"
    peer.bundles[DEVICE][0]["version"] = 1  # unchanged: the service would answer the same
    assert (await gate.downlink.rules.sync_now())["outcome"] == "current"
    assert peer.rules_requests == [(0, ""), (1, '"v1-full"')]
    assert len(gate.audits("rules_bundle_applied")) == 1


async def test_inline_bundle_in_the_announcement_needs_no_http(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    bundle = peer.add_bundle("unused", 1, RULES_V1, for_device=DEVICE)
    await announce(peer, 1, inline=bundle)
    await eventually(lambda: gate.version == 1)
    assert gate.store_rows("vehicles") == ["v-1", "v-2"] and peer.rules_requests == []
    assert json.loads(gate.audits("rules_bundle_applied")[0]["metadata"])["via"] == "announcement"


async def test_the_active_version_survives_a_restart_and_the_retained_announcement_is_current(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    await announce(peer, 1)
    await eventually(lambda: gate.version == 1)
    await gate.stop()
    await gate.start()  # the retained announcement arrives again on subscribe
    assert gate.version == 1
    await eventually(lambda: gate.downlink.rules.announced == 1)
    await gate.downlink.rules.sync_now()
    assert [since for since, _ in peer.rules_requests] == [0, 1]
    assert len(gate.audits("rules_bundle_applied")) == 1 and gate.store_version() == 1


async def test_a_sync_rules_command_fetches_then_reloads_through_the_control_plane(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    assert gate.downlink.commands is not None
    peer.add_bundle(DEVICE, 1, RULES_V1)
    cmd = peer.command(DEVICE, "sync_rules")
    await asyncio.to_thread(peer.send, DEVICE, cmd)
    await eventually(lambda: peer.result_for(cmd["id"]) is not None)
    result = peer.result_for(cmd["id"])
    assert result is not None and result["data"]["outcome"] == "success"
    assert result["data"]["data"]["sync"]["outcome"] == "applied"
    assert gate.performed == ["reload_rules"] and gate.version == 1


# --- refused ----------------------------------------------------------------------------------


async def _applied_v1(peer: DownlinkPeer, gate: Gate) -> None:
    peer.add_bundle(DEVICE, 1, RULES_V1)
    assert (await gate.downlink.rules.sync_now())["outcome"] == "applied"


def _unsigned(peer: DownlinkPeer) -> None:
    bundle = peer.add_bundle(DEVICE, 2, RULES_V1, tampered=True)
    del bundle["sig"]


def _tampered(peer: DownlinkPeer) -> None:
    bundle = peer.add_bundle(DEVICE, 2, RULES_V1, tampered=True)
    bundle["rules"]["deny_list"] = []  # the deny list emptied after signing


BAD: dict[str, tuple[Callable[[DownlinkPeer], object], str]] = {
    "unsigned": (_unsigned, "unsigned"),
    "tampered": (_tampered, "bad_signature"),
    "unknown key": (lambda p: p.add_bundle(DEVICE, 2, RULES_V1,
                                           key=Ed25519PrivateKey.generate()), "unknown_key"),
    "another device": (lambda p: p.add_bundle(DEVICE, 2, RULES_V1, for_device="gate-2"),
                       "wrong_device"),
    "another tenant": (lambda p: p.add_bundle(DEVICE, 2, RULES_V1, tenant="evil"),
                       "wrong_tenant"),
    "invalid rules": (lambda p: p.add_bundle(
        DEVICE, 2, {"vehicles": [{"id": "v-9", "plate": "ZZ-1", "resident_id": "r-404"}]},
        base_version=1), "invalid_rules"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_bundles_are_refused_audited_and_change_nothing(
    peers: tuple[DownlinkPeer, Gate], case: str,
) -> None:
    peer, gate = peers
    await _applied_v1(peer, gate)
    make, reason = BAD[case]
    make(peer)
    result = await gate.downlink.rules.sync_now()

    assert result["outcome"] == "refused" and result["reason"] == reason
    assert gate.version == 1 and gate.store_version() == 1
    assert gate.store_rows("vehicles") == ["v-1", "v-2"]
    assert gate.refusals() == [reason]
    [row] = gate.audits("rules_bundle_refused")
    assert row["status"] == "failure" and row["error_message"].startswith(f"refused: {reason}")
    assert gate.downlink.status()["rules_last_error"].startswith("bundle refused")
    if reason == "invalid_rules":
        assert "no resident with id 'r-404'" in row["error_message"]


async def test_an_older_signed_bundle_is_a_rollback(peers: tuple[DownlinkPeer, Gate]) -> None:
    peer, gate = peers
    await _applied_v1(peer, gate)
    peer.add_bundle(DEVICE, 2, {}, base_version=1, delete={"vehicles": ["v-1", "v-2"]})
    assert (await gate.downlink.rules.sync_now())["outcome"] == "applied"
    old = json.dumps(peer.bundles[DEVICE][0]).encode()  # v1, validly signed, replayed
    result = await gate.downlink.rules.take_bundle(old, via="http")
    assert result["reason"] == "rollback" and gate.version == 2
    assert gate.store_rows("vehicles") == [] and gate.refusals() == ["rollback"]


async def test_a_delta_on_another_base_is_refused_and_the_full_bundle_fetched(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    await _applied_v1(peer, gate)
    delta = peer.add_bundle(DEVICE, 3, {"vehicles": []}, base_version=2)
    result = await gate.downlink.rules.take_bundle(json.dumps(delta).encode(), via="http")
    assert result["reason"] == "base_mismatch" and gate.version == 1
    peer.add_bundle(DEVICE, 3, {"residents": [{"id": "r-1"}], "vehicles": []})
    assert (await gate.downlink.rules.sync_now())["outcome"] == "applied"
    assert gate.version == 3 and gate.store_rows("residents") == ["r-1"]


async def test_a_forged_announcement_fetches_nothing(peers: tuple[DownlinkPeer, Gate]) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    await announce(peer, 1, key=Ed25519PrivateKey.generate())
    await eventually(lambda: gate.refusals())
    assert gate.refusals() == ["unknown_key"] and peer.rules_requests == []
    meta = json.loads(gate.audits("rules_bundle_refused")[0]["metadata"])
    assert meta["what"] == "announcement"
    await announce(peer, 1, tenant="evil")
    await eventually(lambda: len(gate.refusals()) == 2)
    assert gate.refusals()[1] == "wrong_tenant" and gate.version == 0


async def test_service_failures_change_nothing_and_are_retried(
    peers: tuple[DownlinkPeer, Gate],
) -> None:
    peer, gate = peers
    peer.add_bundle(DEVICE, 1, RULES_V1)
    peer.rules_answer = (503, b"busy")
    await announce(peer, 1)
    await eventually(lambda: gate.version == 1)  # the 503 was retried after a back-off
    assert [since for since, _ in peer.rules_requests] == [0, 0]
    assert gate.store_version() == 1 and len(gate.audits("rules_bundle_applied")) == 1
    # A body cut short is not JSON: refused as malformed, nothing changed.
    peer.add_bundle(DEVICE, 2, {"vehicles": []}, base_version=1)
    peer.rules_answer = (200, json.dumps(peer.bundles[DEVICE][-1]).encode()[:-40])
    result = await gate.downlink.rules.sync_now()
    assert result["reason"] == "malformed" and gate.store_rows("vehicles") == ["v-1", "v-2"]
