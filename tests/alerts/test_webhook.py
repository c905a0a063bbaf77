"""Webhook delivery from a real journal to a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gated.alerts.deliver import ChannelWorker, WebhookChannel
from gated.alerts.rules import AlertDecision
from gated.alerts.state import AlertState
from gated.alerts.watch import AlertWatcher
from gated.audit import Auditor
from gated.config import AlertChannelConfig
from gated.journal import Journal
from gated.model import SiteIdentity
from tests.alerts.receiver import Receiver, verify


def decision(subject: str = "XX000X", rule: str = "deny_listed") -> AlertDecision:
    now = time.time()
    return AlertDecision(rule=rule, subject=subject, severity="critical",
                         title=f"Deny-listed plate {subject} at main-in",
                         message=f"A deny-listed plate, {subject}, was read at main-in.",
                         count=1, first_at=now, last_at=now, details={"lane": "main-in"},
                         source_seq=None)


@dataclass
class Rig:
    journal: Journal
    auditor: Auditor
    state_path: Path
    secret_file: Path
    watcher: AlertWatcher

    async def raise_(self, subject: str = "XX000X") -> str:
        return await self.watcher.raise_alert(decision(subject))

    def channel(self, receiver: Receiver, **kw: Any) -> WebhookChannel:
        cfg = AlertChannelConfig(name="hook", type="webhook", url=kw.pop("url", receiver.url),
                                 secret_file=str(self.secret_file),
                                 timeout_s=kw.pop("timeout_s", 2.0), **kw)
        return WebhookChannel(cfg, late_after_s=60.0)

    def worker(self, channel: WebhookChannel, *, from_file: bool = False) -> ChannelWorker:
        # One state for the watcher and the worker, as the daemon's service has; from_file:
        # a restarted worker, which knows only what the state file says.
        state = AlertState(self.state_path) if from_file else self.watcher.state
        return ChannelWorker(channel, self.journal, state,
                             retry_min_s=0.05, retry_max_s=0.2, audit=self.auditor.record)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, secret: bytes) -> AsyncIterator[Rig]:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    auditor = Auditor(journal.append, SiteIdentity("t-1", "s-1", "d-1"))
    secret_file = tmp_path / "hook.secret"
    secret_file.write_bytes(secret + b"\n")
    state_path = tmp_path / "alerts-state.json"
    from gated.alerts.rules import AlertEngine

    watcher = AlertWatcher(AlertEngine(), journal, auditor.record, AlertState(state_path))
    try:
        yield Rig(journal, auditor, state_path, secret_file, watcher)
    finally:
        await journal.close()


@contextlib.asynccontextmanager
async def running(worker: ChannelWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.channel.aclose()  # type: ignore[attr-defined]


async def until(predicate: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    return predicate()


async def started(worker: ChannelWorker) -> None:
    """Wait until the worker has set its starting cursor (a new channel starts at the head)."""
    await until(lambda: worker.channel.name in worker.state.channels)


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def test_a_signed_alert_reaches_the_receiver_with_the_contract_fields(tmp_path: Path) -> None:
    async def main() -> None:
        with Receiver() as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                async with running(worker):
                    await started(worker)
                    alert_id = await r.raise_()
                    assert await in_thread(lambda: receiver.wait_for(1))
                    # The cursor is durable: the file names the alert row's seq.
                    assert await until(lambda: json.loads(r.state_path.read_text())
                                       ["channels"]["hook"] >= 1)
                headers, body = receiver.bodies[0]
                assert verify(receiver.secret, headers, body)
                doc = receiver.alerts[alert_id]
                for key in ("event_type", "id", "subject", "severity", "title", "message",
                            "raised_at", "age_s", "folded"):
                    assert key in doc, key
                assert doc["event_type"] == "deny_listed" and doc["subject"] == "XX000X"
                assert doc["folded"] == 0 and doc["age_s"] < 30
                assert headers["X-Gated-Alert-Id"] == alert_id
                # The secret is in no journal row.
                rows = await r.journal.recent("all", 50)
                assert receiver.secret.decode() not in json.dumps(rows, default=str)
    run(main)


def test_a_tampered_body_fails_the_documented_check() -> None:
    secret = b"k"
    headers = {"X-Gated-Timestamp": str(int(time.time()))}
    from gated.alerts.payload import sign

    headers["X-Gated-Signature"] = sign(secret, headers["X-Gated-Timestamp"], b'{"a":1}')
    assert verify(secret, headers, b'{"a":1}')
    assert not verify(secret, headers, b'{"a":2}')
    assert not verify(b"other", headers, b'{"a":1}')
    stale = {**headers, "X-Gated-Timestamp": str(int(time.time()) - 3600)}
    assert not verify(secret, stale, b'{"a":1}')


@pytest.mark.parametrize("faults", [["500", "500"], ["hang"], ["500", "hang", "500"]])
def test_500s_and_timeouts_are_retried_until_acknowledged_once(
        tmp_path: Path, faults: list[str]) -> None:
    async def main() -> None:
        with Receiver(faults=list(faults)) as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver, timeout_s=0.5))
                async with running(worker):
                    await started(worker)
                    alert_id = await r.raise_()
                    assert await in_thread(lambda: receiver.wait_for(1))
                assert receiver.requests == len(faults) + 1
                # Every attempt carried the same id; only the last was acknowledged.
                ids = {h["X-Gated-Alert-Id"] for h, _ in receiver.bodies}
                assert ids == {alert_id}
                assert receiver.acked[alert_id] == 1
    run(main)


@pytest.mark.parametrize("fault", ["garbage", "huge"])
def test_a_garbage_or_huge_answer_is_not_read_and_counts_by_its_status(
        tmp_path: Path, fault: str) -> None:
    async def main() -> None:
        with Receiver(faults=[fault]) as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                async with running(worker):
                    await started(worker)
                    await r.raise_("AA")
                    await r.raise_("BB")
                    assert await in_thread(lambda: receiver.wait_for(2))
                    await until(lambda: worker.delivered == 2)
                assert worker.delivered == 2
                assert receiver.requests == 2  # the 200 with a strange body was not retried
    run(main)


def test_a_refusal_is_audited_and_not_retried_and_delivery_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        with Receiver(faults=["404"]) as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                async with running(worker):
                    await started(worker)
                    refused = await r.raise_("AA")
                    taken = await r.raise_("BB")
                    assert await in_thread(lambda: receiver.wait_for(1))
                    await until(lambda: worker.delivered == 1)
                assert list(receiver.alerts) == [taken]
                rows = await r.journal.find("audit", equals={"action": "alert_delivery_failed"})
                assert [row["metadata"]["alert_id"] for row in rows] == [refused]
                assert rows[0]["error_message"] == "HTTP 404"
    run(main)


def test_an_alert_raised_while_the_receiver_is_down_arrives_once_when_it_returns(
        tmp_path: Path) -> None:
    async def main() -> None:
        receiver = Receiver()
        async with rig(tmp_path, receiver.secret) as r:
            worker = r.worker(r.channel(receiver, timeout_s=0.5))
            async with running(worker):
                await started(worker)
                alert_id = await r.raise_()
                await asyncio.sleep(1.5)  # connection refused, again and again
                assert worker.failing and worker.delivered == 0
                with receiver:
                    assert await in_thread(lambda: receiver.wait_for(1))
                    await until(lambda: worker.delivered == 1)
                    await asyncio.sleep(0.5)
            assert dict(receiver.seen) == {alert_id: 1}
            assert receiver.alerts[alert_id]["age_s"] >= 1.0
    run(main)


def test_a_restarted_worker_resumes_from_its_durable_cursor(tmp_path: Path) -> None:
    async def main() -> None:
        with Receiver() as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                async with running(worker):
                    await started(worker)
                    first = [await r.raise_(f"P{i}") for i in range(3)]
                    assert await in_thread(lambda: receiver.wait_for(3))
                    await until(lambda: worker.delivered == 3)
                # Raised while no worker runs (a restart), then a fresh worker from the file.
                later = [await r.raise_(f"Q{i}") for i in range(2)]
                again = r.worker(r.channel(receiver), from_file=True)
                async with running(again):
                    assert await in_thread(lambda: receiver.wait_for(5))
                    await until(lambda: again.delivered == 2)
                    await asyncio.sleep(0.3)
                assert again.delivered == 2
                assert set(receiver.seen) == set(first + later)
                assert set(receiver.seen.values()) == {1}
    run(main)


def test_ntfy_and_slack_shapes(tmp_path: Path) -> None:
    async def main() -> None:
        with Receiver() as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                ntfy = r.worker(r.channel(receiver, format="ntfy"))
                async with running(ntfy):
                    await started(ntfy)
                    await r.raise_("NT")
                    assert await in_thread(lambda: receiver.wait_for(1))
                headers, body = receiver.bodies[-1]
                assert headers["Title"] == "Deny-listed plate NT at main-in"
                assert headers["Priority"] == "5" and "rotating_light" in headers["Tags"]
                assert body.decode().startswith("A deny-listed plate, NT")
            async with rig(tmp_path / "s", receiver.secret) as r:
                slack = r.worker(r.channel(receiver, format="slack"))
                async with running(slack):
                    await started(slack)
                    await r.raise_("SL")
                    assert await in_thread(lambda: receiver.wait_for(2))
                doc = json.loads(receiver.bodies[-1][1])
                assert doc["text"].startswith("Deny-listed plate SL at main-in")
                assert doc["blocks"][0]["type"] == "section"
    run(main)


def test_a_secret_file_gone_after_start_delays_delivery_and_never_crashes(
        tmp_path: Path) -> None:
    async def main() -> None:
        with Receiver() as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                health: dict[str, tuple[bool, str]] = {}
                worker.health = lambda name, ok, detail: health.__setitem__(name, (ok, detail))
                r.secret_file.rename(tmp_path / "moved.secret")
                async with running(worker) as task:
                    await started(worker)
                    alert_id = await r.raise_()
                    await until(lambda: worker.failing)
                    assert health["alerts-hook"][0] is False
                    assert "cannot read" in health["alerts-hook"][1]
                    assert receiver.requests == 0 and not task.done()
                    (tmp_path / "moved.secret").rename(r.secret_file)
                    assert await in_thread(lambda: receiver.wait_for(1))
                    await until(lambda: health["alerts-hook"][0])
                assert list(receiver.alerts) == [alert_id] and receiver.bad_signatures == 0
    run(main)


def test_the_plate_is_read_back_from_its_access_row_and_stays_erased_once_erased(
        tmp_path: Path) -> None:
    from gated.alerts.rules import happenings_from_row
    from tests.alerts.test_watch import access

    async def main() -> None:
        with Receiver() as receiver:
            async with rig(tmp_path, receiver.secret) as r:
                worker = r.worker(r.channel(receiver))
                async with running(worker):
                    await started(worker)
                    for plate in ("XX000X", "YY111Y"):
                        seq = await r.journal.append(access("deny_listed", plate))
                        [row] = [x for x in await r.journal.after(seq - 1) if x["seq"] == seq]
                        [happening] = happenings_from_row(row)
                        if plate == "YY111Y":  # erased before it could be delivered
                            request = r.auditor.build("personal_data_erased", "journal")
                            await r.journal.erase_personal(request, plate=plate)
                        decision = r.watcher.engine.offer(happening, time.monotonic())
                        assert decision is not None
                        await r.watcher.raise_alert(decision)
                    assert await in_thread(lambda: receiver.wait_for(2))
                docs = sorted(receiver.alerts.values(), key=lambda d: d["raised_at"])
                assert docs[0]["subject"] == "XX000X"
                assert docs[0]["title"] == "Deny-listed plate XX000X at main-in"
                assert docs[0]["details"]["plate"] == "XX000X"
                assert docs[1]["subject"] == "(erased)"
                assert "YY111Y" not in json.dumps(docs[1])
    run(main)
