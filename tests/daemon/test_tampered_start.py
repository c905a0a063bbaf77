"""A journal edited behind gated's back: the daemon still runs the gate, and says so loudly."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
        "journal": {"path": str(tmp_path / "journal.sqlite3"), "snapshot_dir": str(tmp_path / "s")},
        "rules": {"path": str(tmp_path / "rules.sqlite3")},
        "lanes": [{"id": "main-in"}],
    }


async def _run_once(cfg_data: dict[str, object]) -> Daemon:
    daemon = Daemon(parse_config(cfg_data), health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 20)
    daemon.request_stop()
    assert await asyncio.wait_for(task, 20) == 0
    return daemon


async def test_tampered_tail_is_audited_and_unhealthy(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    first = await _run_once(cfg)
    assert "journal-chain" not in first.health.components
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit_logs SET status = 'failure' WHERE action = 'daemon_start'")
    conn.commit()
    conn.close()
    second = await _run_once(cfg)
    assert second.health.components["journal-chain"].ok is False
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    checks = conn.execute(
        "SELECT status, error_message FROM audit_logs WHERE action = 'journal_check'"
    ).fetchall()
    conn.close()
    assert len(checks) == 1 and checks[0][0] == "failure" and "seq 1" in checks[0][1]


async def test_dropped_or_altered_triggers_are_reported_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Every row intact, only the protection gone: the next edit would leave no trace of
    # the moment the file was opened up, so the daemon says so at start as it does for a
    # bad tail (logged, audited, unhealthy) and keeps running the gate.
    cfg = _config(tmp_path)
    await _run_once(cfg)
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    conn.execute("DROP TRIGGER audit_logs_append_only_delete")
    conn.execute("DROP TRIGGER access_logs_append_only_update")
    conn.execute(
        "CREATE TRIGGER access_logs_append_only_update BEFORE UPDATE ON access_logs "
        "WHEN 0 BEGIN SELECT RAISE(ABORT, 'never'); END"
    )
    conn.commit()
    conn.close()
    with caplog.at_level(logging.ERROR, logger="gated"):
        second = await _run_once(cfg)
    component = second.health.components["journal-chain"]
    assert component.ok is False
    assert "audit_logs_append_only_delete" in component.detail
    assert any("audit_logs_append_only_delete" in r.getMessage() for r in caplog.records)
    conn = sqlite3.connect(tmp_path / "journal.sqlite3")
    checks = conn.execute(
        "SELECT status, error_message FROM audit_logs WHERE action = 'journal_check'"
    ).fetchall()
    conn.close()
    assert len(checks) == 1 and checks[0][0] == "failure"
    assert "audit_logs_append_only_delete" in checks[0][1]
    assert "access_logs_append_only_update" in checks[0][1] and "altered" in checks[0][1]
