"""A journal edited behind gated's back alerts at the next start (the daemon in-process)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier
from tests.alerts.receiver import Receiver


def config(tmp_path: Path, alerts: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
        "journal": {"path": str(tmp_path / "journal.sqlite3"),
                    "snapshot_dir": str(tmp_path / "s")},
        "rules": {"path": str(tmp_path / "rules.sqlite3")},
        "lanes": [{"id": "main-in"}],
    }
    if alerts is not None:
        doc["alerts"] = alerts
    return doc


async def run_once(doc: dict[str, Any], until: Any = None) -> None:
    daemon = Daemon(parse_config(doc), health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 20)
    if until is not None:
        assert await asyncio.to_thread(until)
    daemon.request_stop()
    assert await asyncio.wait_for(task, 20) == 0


def test_a_failed_journal_check_at_start_is_alerted(tmp_path: Path) -> None:
    asyncio.run(run_once(config(tmp_path)))
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit_logs SET status = 'failure' WHERE action = 'daemon_start'")
    conn.commit()
    conn.close()
    with Receiver() as receiver:
        secret = tmp_path / "hook.secret"
        secret.write_bytes(receiver.secret)
        alerts = {"channels": [{"name": "hook", "type": "webhook", "url": receiver.url,
                                "secret_file": str(secret), "rules": ["journal_check"]}]}
        # The first start with alerts: the watcher begins at this start, its check included.
        asyncio.run(run_once(config(tmp_path, alerts), until=lambda: receiver.wait_for(1)))
    [doc] = receiver.alerts.values()
    assert doc["event_type"] == "journal_check" and doc["severity"] == "critical"
    assert "seq 1" in doc["message"]
