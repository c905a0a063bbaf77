"""Real peers for the sync tests: a Mosquitto that can be killed and restarted on its port,
the reference receiver, a journal, and helpers that build events and wait for outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gated.audit import Auditor
from gated.config import Config, parse_config
from gated.ids import new_event_id
from gated.journal import Journal
from gated.model import AccessEvent
from gated.sync.service import SyncService
from tests.support.broker import (
    HOST,
    MOSQUITTO,
    _write_config,
    free_port,
    mosquitto_available,
    wait_until_accepting,
)
from tests.support.receiver import Receiver

TENANT, SITE, DEVICE = "t1", "s1", "gate-7"


class KillableBroker:
    """Mosquitto on a fixed loopback port that tests may SIGKILL, SIGSTOP and restart."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.host = HOST
        self.config_path, self.log_path = _write_config(tmp, self.port, "")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                            stdout=subprocess.DEVNULL, stderr=log)
        if not wait_until_accepting(self.host, self.port):
            raise RuntimeError(f"mosquitto did not start: {self.log_path.read_text()[-500:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(5)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KillableBroker]:
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    b = KillableBroker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


def sync_config(tmp_path: Path, *, broker: KillableBroker | None = None,
                http_url: str = "", service_key: str = "", **sync: Any) -> Config:
    """A config for one device syncing to the test peers (short timeouts for tests)."""
    data: dict[str, Any] = {
        "site": {"tenant_id": TENANT, "site_id": SITE, "device_id": DEVICE},
        "journal": {"path": str(tmp_path / "dev" / "journal.sqlite3"),
                    "snapshot_dir": str(tmp_path / "dev" / "snapshots")},
        "sync": {"enabled": True, "transport": "mqtt" if broker else "http",
                 "ack_timeout_s": 3.0, "retry_min_s": 0.05, "retry_max_s": 0.5,
                 "head_interval_s": 3600, "heartbeat_interval_s": 3600,
                 "service_public_keys": [service_key] if service_key else [], **sync},
    }
    if broker is not None:
        data["mqtt"] = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.05,
                        "reconnect_max_s": 0.3, "keepalive_s": 5}
    if http_url:
        data["sync"]["http"] = {"url": http_url, "token": "device-secret", "timeout_s": 2.0}
    return parse_config(data)


def access_event(i: int, **fields: Any) -> AccessEvent:
    """An access event as a lane journals it."""
    values: dict[str, Any] = dict(
        event_id=new_event_id(), tenant_id=TENANT, site_id=SITE, device_id=DEVICE,
        created_at=time.time(), event_type="entry", access_point="main-in",
        authorization_method="auto_plate", decision_reason="resident", rules_version=3,
        direction="in", vehicle_plate=f"AB{i:05d}", confidence_score=0.93,
        resident_id=f"r{i % 50}", metadata={"match": {"kind": "exact"}, "i": i, "f": 1e-7},
        read_to_relay_ms=1.25, captured_at=time.time() - 0.2, gate_opened=True)
    values.update(fields)
    return AccessEvent(**values)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "dev" / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


@pytest.fixture
def receiver_factory(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        r = Receiver(tmp_path / f"receiver-{len(made)}.sqlite3", **kwargs).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def auditor_for(journal: Journal, cfg: Config) -> Auditor:
    return Auditor(journal.append, cfg.site.identity)


async def journal_ids(journal: Journal) -> set[str]:
    """Every event id in the journal (both streams)."""
    ids: set[str] = set()
    for stream in ("access", "audit"):
        async with journal._reader.execute(f"SELECT event_id FROM {stream}_logs") as cur:
            ids |= {r[0] for r in await cur.fetchall()}
    return ids


async def unsynced_count(journal: Journal) -> int:
    total = 0
    for stream in ("access", "audit"):
        total += len(await journal.unsynced(stream, 1_000_000))
    return total


async def eventually(check: Callable[[], Any], timeout_s: float = 60.0,
                     what: str = "condition") -> Any:
    """Poll an (async or plain) check until truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def stop_service(service: SyncService, task: asyncio.Task[None]) -> None:
    """Stop a SyncService as the daemon does (bounded settle), then cancel its run task."""
    await service.stop(1.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def all_synced(journal: Journal) -> bool:
    """True when no row is left unsynced."""
    return await unsynced_count(journal) == 0
