"""Crash safety: SIGKILL a writing process at random moments, reusing one journal file.

After every kill the file passes `PRAGMA integrity_check`, the chain verifies and every
seq the child printed (printed only after its commit returned) is present. SIGKILL tests
process death; power loss (lost OS buffers) cannot be simulated here and relies on
synchronous=FULL.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gated.journal.verify import verify

CHILD = Path(__file__).with_name("journal_child.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS = 50


def _committed(path: Path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {s for (s,) in conn.execute(
            "SELECT seq FROM access_logs UNION ALL SELECT seq FROM audit_logs")}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # 50 process starts: minutes on a loaded or emulated machine
def test_sigkill_at_random_moments_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    rng = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    acknowledged: set[int] = set()
    for _ in range(KILLS):
        child = subprocess.Popen([sys.executable, str(CHILD), str(path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env, text=True)
        assert child.stdout is not None
        during_start = rng.random() < 0.2
        seen: list[str] = []
        if during_start:
            # Sometimes during start-up: opening, migrating, checking the tail.
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            first = child.stdout.readline()
            assert first == "ready\n", child.stderr.read() if child.stderr else first
            # Wait for an acknowledgement, however slow the machine or its disk, so every
            # such kill tests a journal with committed work and writes in flight.
            seen.append(child.stdout.readline())
            assert seen[0].strip().isdigit(), child.stderr.read() if child.stderr else seen
            time.sleep(rng.uniform(0.0, 0.06))
        child.send_signal(signal.SIGKILL)
        out, _err = child.communicate(timeout=30)
        printed = {int(line) for line in [*seen, *out.splitlines()] if line.strip().isdigit()}
        acknowledged |= printed
        present = _committed(path)
        assert acknowledged <= present, sorted(acknowledged - present)[:10]
        result = verify(path)
        assert result.ok, result.message
