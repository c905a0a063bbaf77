"""Signed remote commands over a real Mosquitto into the real control plane, lane, fake relay and
journal: accepted ones move the relay and are answered; forged, tampered, unsigned, expired,
early, long-lived, wrong-device, wrong-tenant, unknown and replayed ones (also after a restart)
are refused, audited with their reason, answered, and move nothing."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import time
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.audit import Auditor
from gated.clock import ClockWatch
from gated.config import LaneConfig, MqttConfig, PolicyConfig
from gated.control import ControlPlane
from gated.hardware.fake import FakeRelay
from gated.journal import Journal
from gated.lane import Lane, LaneParts, RulesHolder
from gated.model import Direction, SiteIdentity
from gated.mqttlink import MqttLink
from gated.policy import AccessPoint, MemoryPolicyState
from gated.rules.index import RuleIndex
from gated.rules.store import RuleStore
from gated.snapshots import SnapshotStore
from gated.sync import commands as commands_module
from gated.sync.commands import CommandReceiver, mqtt_result_publisher
from gated.sync.downlink_state import DownlinkState
from gated.sync.signing import parse_public_keys, public_raw, verify
from tests.support.downlink_peer import DownlinkPeer
from tests.support.receiver import Receiver
from tests.support.signer import public_b64, tool
from tests.sync.conftest import KillableBroker, eventually

TENANT, SITE, DEVICE = "acme", "hq", "gate-1"
PREFIX = f"gated/v1/{TENANT}/{DEVICE}/"
ISSUER = "ops:ann@example.com"


class Service:
    """The central service: the reference receiver, with its downlink hooks."""

    def __init__(self, root: Path, broker: KillableBroker) -> None:
        self.receiver = Receiver(root / "service.sqlite3", mqtt_host=broker.host,
                                 mqtt_port=broker.port, http=False)
        self.peer = DownlinkPeer(self.receiver, TENANT)

    @property
    def results(self) -> list[dict[str, Any]]:
        with self.peer.lock:
            return list(self.peer.results)

    async def start(self) -> None:
        await asyncio.to_thread(self.receiver.start)

    async def send(self, event: dict[str, Any] | bytes, *, retain: bool = False,
                   check_schema: bool = True) -> None:
        await asyncio.to_thread(self.peer.send, DEVICE, event, retain=retain,
                                check_schema=check_schema)

    def result_for(self, command_id: str) -> dict[str, Any] | None:
        return self.peer.result_for(command_id)

    async def stop(self) -> None:
        assert self.peer.invalid == [] and self.receiver.invalid == []
        await asyncio.to_thread(self.receiver.stop)


class Device:
    """The gate: journal, two lanes on fake relays, the control plane, and the command receiver."""

    def __init__(self, root: Path, broker: KillableBroker, service_key: Ed25519PrivateKey,
                 device_key: Ed25519PrivateKey, clock: Callable[[], float]) -> None:
        self.root, self.broker, self.clock = root, broker, clock
        self.service_key, self.device_key = service_key, device_key
        self.relays: dict[str, FakeRelay] = {}
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.store = RuleStore(self.root / "rules.sqlite3")
        index = RuleIndex.build(self.store)
        self.journal = await Journal.open(self.root / "journal.sqlite3")
        identity = SiteIdentity(TENANT, SITE, DEVICE)
        auditor = Auditor(self.journal.append, identity, ClockWatch())
        lanes: dict[str, Lane] = {}
        for lane_id in ("main-in", "main-out"):
            self.relays[lane_id] = FakeRelay(f"{lane_id}-relay")
            lanes[lane_id] = Lane(
                LaneConfig(id=lane_id),
                LaneParts(
                    identity=identity,
                    access_point=AccessPoint(lane_id, Direction.IN, PolicyConfig(),
                                             zoneinfo.ZoneInfo("UTC")),
                    rules=RulesHolder(index),
                    state=MemoryPolicyState(),
                    relay=self.relays[lane_id],
                    append=self.journal.append,
                    snapshots=SnapshotStore(self.root / "snaps", 1024 * 1024),
                    auditor=auditor,
                    clock=ClockWatch(),
                ),
            )

        async def reload_rules() -> int:
            return 1

        control = ControlPlane(lambda: lanes, auditor, reload_rules=reload_rules)
        self.state = DownlinkState(self.root / "downlink.sqlite3")
        self.link = MqttLink(MqttConfig(host=self.broker.host, port=self.broker.port),
                             f"gated-{DEVICE}-sync", name="sync")
        self.receiver = CommandReceiver(
            tenant_id=TENANT,
            device_id=DEVICE,
            source=f"gated://{TENANT}/{SITE}/{DEVICE}",
            service_keys=parse_public_keys([public_b64(self.service_key)]),
            state=self.state,
            perform=control.perform,
            audit=auditor.record,
            publish_result=mqtt_result_publisher(self.link, PREFIX + "commands/result"),
            device_key=self.device_key,
            clock=self.clock,
        )
        self.link.subscribe(PREFIX + "commands", self.receiver.on_mqtt)
        self.tasks = [asyncio.create_task(self.link.run()),
                      asyncio.create_task(self.receiver.run())]
        await eventually(self.link.subscribed.is_set)

    async def stop(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.journal.close()
        self.state.close()
        self.store.close()

    def rows(self, table: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.root / "journal.sqlite3")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
        finally:
            conn.close()

    def audits(self, action: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows("audit_logs") if action is None or r["action"] == action]


class Clock:
    """A wall clock the test can move (the device's; the service signs with real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def peers(tmp_path: Path, broker: KillableBroker) -> AsyncIterator[tuple[Service, Device]]:
    service = Service(tmp_path, broker)
    await service.start()
    device = Device(tmp_path / "device", broker, service.receiver.service_key,
                    Ed25519PrivateKey.generate(), Clock())
    (tmp_path / "device").mkdir()
    await device.start()
    try:
        yield service, device
    finally:
        await device.stop()
        await service.stop()


def command(dev: Device, action: str = "open", *, key: Ed25519PrivateKey | None = None,
            **kwargs: Any) -> dict[str, Any]:
    """A command signed with the service key (or `key`), by the reference signer."""
    kwargs.setdefault("lane", "main-in" if action in ("open", "hold", "release") else None)
    return tool.command(key or dev.service_key, tenant=kwargs.pop("tenant", TENANT),
                        device=kwargs.pop("device", DEVICE), action=action, issuer=ISSUER,
                        **kwargs)


async def answered(service: Service, command_id: str) -> dict[str, Any]:
    await eventually(lambda: service.result_for(command_id) is not None)
    result = service.result_for(command_id)
    assert result is not None
    return result


# --- accepted ------------------------------------------------------------------------------


async def test_signed_open_moves_the_relay_through_the_control_plane_and_is_answered(
    peers: tuple[Service, Device],
) -> None:
    service, device = peers
    cmd = command(device, reason="courier at the gate")
    await service.send(cmd)
    result = await answered(service, cmd["id"])

    assert device.relays["main-in"].pulses_ms == [800]
    assert device.relays["main-out"].pulses_ms == []
    [event] = device.rows("access_logs")
    assert (event["authorization_method"], event["authorized_by"]) == ("remote", ISSUER)
    [row] = device.audits("gate_open")
    assert (row["actor_type"], row["actor_id"], row["request_id"]) == ("remote", ISSUER, cmd["id"])
    assert row["status"] == "success" and row["resource_id"] == "main-in"
    assert json.loads(row["metadata"])["reason"] == "courier at the gate"
    data = result["data"]
    assert (data["outcome"], data["reason"], data["action"]) == ("success", None, "open")
    assert data["data"]["access_event_id"] == event["event_id"]
    assert result["source"] == f"gated://{TENANT}/{SITE}/{DEVICE}"
    # The result is signed with the device key, which the service knows from `gated keys show`.
    device_keys = {tool.kid_of(public_raw(device.device_key)): device.device_key.public_key()}
    assert verify(data, device_keys) == data["kid"]
    assert device.audits("remote_command_refused") == []


async def test_hold_then_release_and_lockdown_by_command(peers: tuple[Service, Device]) -> None:
    service, device = peers
    for action in ("hold", "release", "lockdown_on", "lockdown_off"):
        cmd = command(device, action)
        await service.send(cmd)
        result = await answered(service, cmd["id"])
        assert result["data"]["outcome"] == "success", result["data"]
    assert device.relays["main-in"].actions[:2] == ["hold", "on"]
    assert "release" in device.relays["main-in"].actions
    actions = [r["action"] for r in device.audits() if r["actor_type"] == "remote"]
    assert actions == ["gate_hold", "gate_release", "lockdown_on", "lockdown_off"]


async def test_a_command_the_control_plane_refuses_is_answered_with_its_reason(
    peers: tuple[Service, Device],
) -> None:
    service, device = peers
    cmd = command(device, lane="back-gate")
    await service.send(cmd)
    result = await answered(service, cmd["id"])
    assert result["data"]["outcome"] == "refused" and result["data"]["reason"] is None
    assert "unknown lane 'back-gate'" in result["data"]["message"]
    [row] = device.audits("gate_open")  # the control plane's own row, as for any front end
    assert row["status"] == "failure" and row["actor_type"] == "remote"
    assert device.relays["main-in"].pulses_ms == []


# --- refused before the control plane -----------------------------------------------------


def _tampered(device: Device) -> dict[str, Any]:
    cmd = command(device)
    cmd["data"]["args"]["lane"] = "main-out"  # changed after signing
    return cmd


def _forged_kid(device: Device) -> dict[str, Any]:
    # Signed by an attacker's key but naming the service key's kid.
    cmd = command(device, key=Ed25519PrivateKey.generate())
    cmd["data"] = tool.sign({k: v for k, v in cmd["data"].items() if k not in ("kid", "sig")},
                            Ed25519PrivateKey.generate())
    cmd["data"]["kid"] = tool.kid_of(tool.raw_public(device.service_key))
    return cmd


def _unsigned(device: Device) -> dict[str, Any]:
    cmd = command(device)
    del cmd["data"]["sig"]
    return cmd


REFUSED: dict[str, tuple[Callable[[Device], dict[str, Any]], str]] = {
    "tampered": (_tampered, "bad_signature"),
    "forged with the service's kid": (_forged_kid, "bad_signature"),
    "signed by an unknown key": (lambda d: command(d, key=Ed25519PrivateKey.generate()),
                                 "unknown_key"),
    "unsigned": (_unsigned, "unsigned"),
    "expired": (lambda d: command(d, now=time.time() - 600, ttl_s=60), "expired"),
    "issued in the future": (lambda d: command(d, now=time.time() + 600), "not_yet_valid"),
    "valid for a day": (lambda d: command(d, ttl_s=86_400), "lifetime_too_long"),
    "for another device": (lambda d: command(d, device="gate-2"), "wrong_device"),
    "for another tenant": (lambda d: command(d, tenant="evil"), "wrong_tenant"),
    "relay test": (lambda d: command(d, "relay_test", lane="main-in"), "unknown_action"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_bad_commands_are_refused_audited_answered_and_move_nothing(
    peers: tuple[Service, Device], case: str,
) -> None:
    service, device = peers
    make, reason = REFUSED[case]
    cmd = make(device)
    # The service's own schema would stop some of these; an attacker's publisher would not.
    await service.send(cmd, check_schema=False)
    result = await answered(service, cmd["id"])

    assert result["data"]["outcome"] == "refused" and result["data"]["reason"] == reason
    assert all(relay.actions == [] for relay in device.relays.values())
    assert device.rows("access_logs") == []
    [row] = device.audits("remote_command_refused")
    assert row["status"] == "failure" and row["error_message"].startswith(f"refused: {reason}")
    assert (row["resource_id"], row["request_id"]) == (cmd["id"], cmd["id"])
    assert (row["actor_type"], row["actor_id"]) == ("remote", ISSUER)
    meta = json.loads(row["metadata"])
    assert meta["reason"] == reason
    assert meta["signature_verified"] is (reason not in
                                          ("bad_signature", "unknown_key", "unsigned"))
    assert [r["action"] for r in device.audits()] == ["remote_command_refused"]


async def test_not_json_is_refused_and_audited_without_an_answer(
    peers: tuple[Service, Device],
) -> None:
    service, device = peers
    await service.send(b"\xff{not json")
    await eventually(lambda: device.audits("remote_command_refused"))
    [row] = device.audits("remote_command_refused")
    assert json.loads(row["metadata"])["reason"] == "malformed" and row["resource_id"] is None
    good = command(device)  # the receiver carries on
    await service.send(good)
    await answered(service, good["id"])
    assert [r["data"]["command_id"] for r in service.results] == [good["id"]]


async def test_device_clock_not_synchronised_refuses_commands(
    tmp_path: Path, peers: tuple[Service, Device],
) -> None:
    service, device = peers
    device.receiver.clock_unsynced = lambda: True
    cmd = command(device)
    await service.send(cmd)
    result = await answered(service, cmd["id"])
    assert result["data"]["reason"] == "clock_unsynced"
    assert device.relays["main-in"].actions == []


# --- replay ------------------------------------------------------------------------------------


async def test_a_replayed_command_acts_once(peers: tuple[Service, Device]) -> None:
    service, device = peers
    cmd = command(device)
    await service.send(cmd)
    await answered(service, cmd["id"])
    await service.send(copy.deepcopy(cmd))
    await eventually(lambda: len(service.results) == 2)
    assert [r["data"]["reason"] for r in service.results] == [None, "replayed"]
    assert device.relays["main-in"].pulses_ms == [800]
    [row] = device.audits("remote_command_refused")
    assert json.loads(row["metadata"])["reason"] == "replayed"


async def test_a_new_id_with_a_used_nonce_is_a_replay(peers: tuple[Service, Device]) -> None:
    service, device = peers
    first = command(device, nonce="n" * 22)
    await service.send(first)
    await answered(service, first["id"])
    second = command(device, nonce="n" * 22)
    await service.send(second)
    result = await answered(service, second["id"])
    assert result["data"]["reason"] == "replayed"
    assert device.relays["main-in"].pulses_ms == [800]


async def test_a_retained_command_does_not_act_again_on_resubscribe(
    peers: tuple[Service, Device],
) -> None:
    service, device = peers
    cmd = command(device)
    await service.send(cmd, retain=True)
    await answered(service, cmd["id"])
    # A reconnect re-delivers the retained message: remembered, so refused, never re-run.
    await device.stop()
    await device.start()
    await eventually(lambda: len(service.results) == 2)
    assert [r["data"]["reason"] for r in service.results] == [None, "replayed"]
    assert device.relays["main-in"].pulses_ms == []  # the new relay object never moved
    [row] = device.audits("remote_command_refused")
    assert json.loads(row["metadata"])["retained"] is True


async def test_a_command_replayed_after_a_restart_is_refused(
    peers: tuple[Service, Device],
) -> None:
    service, device = peers
    cmd = command(device)
    await service.send(cmd)
    await answered(service, cmd["id"])
    first_relay = device.relays["main-in"]
    await device.stop()  # the daemon stops; the replay cache stays on disk
    await device.start()
    await service.send(copy.deepcopy(cmd))
    await eventually(lambda: len(service.results) == 2)
    assert service.results[1]["data"]["reason"] == "replayed"
    assert first_relay.pulses_ms == [800] and device.relays["main-in"].pulses_ms == []
    assert len(device.rows("access_logs")) == 1


async def test_refusals_are_summarised_under_a_flood(peers: tuple[Service, Device]) -> None:
    service, device = peers
    device.receiver.monotonic = lambda: 5.0  # one refusal window, however slow the machine
    sent = 3 * commands_module.REFUSALS_AUDITED
    for _ in range(sent):
        await service.send(command(device, key=Ed25519PrivateKey.generate()))
    await eventually(lambda: len(service.results) == sent)
    rows = device.audits("remote_command_refused")
    assert len(rows) == commands_module.REFUSALS_AUDITED
    await device.stop()  # stopping writes the summary of what was not audited one by one
    await device.start()
    summary = [json.loads(r["metadata"]) for r in device.audits("remote_command_refused")
               if json.loads(r["metadata"]).get("summary")]
    assert summary == [{"summary": True, "suppressed": sent - commands_module.REFUSALS_AUDITED,
                        "reasons": {"unknown_key": sent - commands_module.REFUSALS_AUDITED}}]
    assert all(relay.actions == [] for relay in device.relays.values())


# --- the replay cache on its own ------------------------------------------------------------


def test_replay_cache_forgets_only_expired_or_oldest_and_refuses_them_by_its_floor(
    tmp_path: Path,
) -> None:
    state = DownlinkState(tmp_path / "d.sqlite3", capacity=3)
    now = 1_000_000.0
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for i, cid in enumerate(ids[:3]):
        assert state.remember(cid, f"nonce-{i:012d}", now + 60 + i, now,
                              prune_before=now) is None
    # Full: the fourth makes the cache forget the one expiring first, and raise the floor.
    assert state.remember(ids[3], "nonce-000000000003", now + 70, now, prune_before=now) is None
    assert state.seen_count() == 3 and state.floor() == now + 60
    assert state.remember(ids[0], "nonce-000000000000", now + 60, now,
                          prune_before=now) == "stale"
    # Expired entries are dropped; the clock stepping back cannot revive what they covered.
    later = now + 1000
    assert state.remember(ids[4], "nonce-000000000004", later + 60, later,
                          prune_before=later) is None
    assert state.seen_count() == 1
    assert state.remember(ids[1], "nonce-000000000001", now + 61, now,
                          prune_before=now) == "stale"
    assert state.remember(ids[4], "other-nonce-00000", later + 60, later,
                          prune_before=later) == "replayed"
    state.close()
    reopened = DownlinkState(tmp_path / "d.sqlite3", capacity=3)
    assert reopened.floor() == now + 70 and reopened.seen_count() == 1
    assert (tmp_path / "d.sqlite3").stat().st_mode & 0o777 == 0o600
    reopened.close()
