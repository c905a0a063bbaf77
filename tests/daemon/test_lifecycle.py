"""`gated run` as a child process: a corrupt journal at start-up, online backup under load,
redaction while running, the state quota exhausted and recovered, retention by age."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from gated.journal import Journal
from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    DaemonProcess,
    Site,
    audit,
    gated,
    generic_lane,
    hikvision_alarm,
    make_jpeg,
    post_generic,
    running,
    wait_audit,
    wait_until,
)
from tests.journal.journal_child import access_event

pytestmark = pytest.mark.slow

FAKE = 'kind = "fake"'


def _site(tmp_path: Path, extra: str = "", lanes: str | None = None) -> Site:
    site = Site(tmp_path)
    site.write_config(lanes if lanes is not None else generic_lane(FAKE, dedup_window_s=0),
                      extra)
    return site


def _fill(path: Path, n: int = 400) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        j = await Journal.open(path)
        await j.append_many([access_event(metadata={"pad": "p" * 400}) for _ in range(n)])
        head = await j.head()
        await j.close()
        return head

    return asyncio.run(go())


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _zero_header(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.write(b"\0" * 100)


def _flip_page(path: Path) -> None:
    conn = sqlite3.connect(path)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as fh:
        fh.seek(4 * size)  # a b-tree page of the access table: its structure is garbage now
        fh.write(os.urandom(size))


def _break_index(path: Path) -> None:
    # A garbage page in an index: the table itself, and so the head, can still be read.
    conn = sqlite3.connect(path)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master "
                           "WHERE name = 'access_logs_created_at'").fetchone()
    conn.close()
    with path.open("r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(os.urandom(size))


@pytest.mark.parametrize("damage,head_readable", [
    (_truncate, False), (_zero_header, False), (_flip_page, False), (_break_index, True)],
    ids=["truncated", "zeroed-header", "flipped-page", "flipped-index-page"])
def test_corrupt_journal_is_moved_aside_and_a_fresh_one_continues(
        tmp_path: Path, damage, head_readable: bool) -> None:
    site = _site(tmp_path)
    head = _fill(site.journal)
    damage(site.journal)
    started = time.monotonic()
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready(timeout_s=30)
        ready_s = time.monotonic() - started
        first = site.rows("audit_logs")[0]
        assert first["action"] == "journal_recovered" and first["status"] == "failure"
        meta = __import__("json").loads(first["metadata"])
        moved = Path(meta["moved_to"])
        assert moved.exists() and moved.name.startswith("journal.sqlite3.corrupt-")
        if head_readable:  # the chain continues after the old head
            assert (meta["old_head_seq"], meta["old_head_hash"]) == head
            assert first["seq"] == head[0] + 1 and first["prev_hash"] == head[1]
        else:  # it restarts, saying how far the damaged file could still be read
            assert meta["old_head_seq"] is None and first["seq"] == 1
            assert meta["last_readable_seq"] is None or meta["last_readable_seq"] < head[0]
        assert post_generic(site.listener_port, CAMERA_PATH, "AB123CD") == 200
        assert site.wait_rows(1)
        assert daemon.wait_log("corrupt")
    finally:
        assert daemon.terminate() == 0
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0, result.stdout + result.stderr
    # No crash loop: the next start finds a sound journal and recovers nothing more.
    (tmp_path / "notify.sock").unlink()
    with running(site):
        pass
    assert len(audit(site, "journal_recovered")) == 1
    moved_aside = [p.name for p in tmp_path.glob("journal.sqlite3.corrupt-*")
                   if not p.name.endswith(("-wal", "-shm"))]
    assert len(moved_aside) == 1
    print(f"\n{damage.__name__}: ready {ready_s:.2f} s after start")


def test_recovery_alarm_shows_in_health_metrics(tmp_path: Path) -> None:
    prom = tmp_path / "gated.prom"
    site = _site(tmp_path, f'[metrics]\ntextfile = "{prom}"\ninterval_s = 1')
    _fill(site.journal, 50)
    _zero_header(site.journal)
    with running(site):
        assert wait_until(lambda: prom.exists() and 'gated_component_up{component="journal-'
                          'recovery"} 0' in prom.read_text(), 10)


def _load(site: Site, stop: threading.Event, sent: list[int]) -> None:
    with httpx.Client() as client:
        i = 0
        while not stop.is_set():
            status = post_generic(site.listener_port, CAMERA_PATH, f"LD{i:05d}X", client=client)
            sent.append(status)
            i += 1


def test_backup_during_steady_appends_holds_every_row_committed_before_it(
        tmp_path: Path) -> None:
    site = _site(tmp_path)
    stop = threading.Event()
    sent: list[int] = []
    with running(site):
        loader = threading.Thread(target=_load, args=(site, stop, sent))
        loader.start()
        try:
            assert wait_until(lambda: len(site.rows()) >= 50, 20)
            conn = sqlite3.connect(site.journal)
            before = conn.execute("SELECT max(seq) FROM access_logs").fetchone()[0]
            conn.close()
            result = gated("journal", "backup", "--config", str(site.config),
                           str(tmp_path / "backup.sqlite3"))
            # The load went on through the backup (it is no quiet-time copy).
            assert wait_until(lambda: len(site.rows()) > before + 20, 20)
        finally:
            stop.set()
            loader.join()
    assert result.returncode == 0, result.stdout + result.stderr
    copy = tmp_path / "backup.sqlite3"
    verified = gated("journal", "verify", "--db", str(copy))
    assert verified.returncode == 0, verified.stdout
    conn = sqlite3.connect(copy)
    seqs = {s for (s,) in conn.execute(
        "SELECT seq FROM access_logs UNION ALL SELECT seq FROM audit_logs")}
    conn.close()
    assert set(range(1, before + 1)) <= seqs
    assert set(sent) == {200}
    print(f"\nbackup: {result.stdout.strip()}; rows before {before}")


def _hikvision_lane() -> str:
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
{FAKE}
[[lanes.sources]]
kind = "anpr_http"
name = "cam"
format = "hikvision"
path = "{CAMERA_PATH}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def _post_picture(site: Site, plate: str, seed: int) -> int:
    body, ctype = hikvision_alarm(plate, make_jpeg(seed=seed))
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA_PATH}"
    return httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=10).status_code


def test_redact_while_running_clears_fields_and_pictures_and_is_audited(
        tmp_path: Path) -> None:
    site = _site(tmp_path, lanes=_hikvision_lane())
    site.import_rules(RESIDENT_RULES)
    with running(site):
        for i, plate in enumerate(["AB123CD", "ZZ999ZZ", "AB123CD", "GH456JK"]):
            assert _post_picture(site, plate, i) == 200
        rows = site.wait_rows(4)
        assert len(list(site.snapshots.rglob("*.jpg"))) == 4
        by_plate = gated("journal", "redact", "--config", str(site.config), "--plate",
                         "ab 123 cd", "--reason", "request 42")
        assert by_plate.returncode == 0, by_plate.stderr
        by_resident = gated("journal", "redact", "--config", str(site.config),
                            "--resident", "r-1")
        assert by_resident.returncode == 0, by_resident.stderr
        # The daemon keeps appending after another process wrote: the chain stays one.
        assert _post_picture(site, "ZZ999ZZ", 9) == 200
        rows = site.wait_rows(5)
    plates = [r["vehicle_plate"] for r in rows]
    assert plates == [None, "ZZ999ZZ", None, None, "ZZ999ZZ"]
    assert len(list(site.snapshots.rglob("*.jpg"))) == 2
    records = audit(site, "personal_data_erased")
    assert len(records) == 2 and "AB123CD" not in str(records)
    assert "request 42" in records[0]["metadata"]
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0 and "3 lawfully erased" in result.stdout, result.stdout


def test_state_quota_exhausted_journals_without_pictures_and_recovers(tmp_path: Path) -> None:
    prom = tmp_path / "gated.prom"
    site = _site(tmp_path, f"""
[retention]
state_quota_mb = 2
quota_interval_s = 1
[metrics]
textfile = "{prom}"
interval_s = 1
""", lanes=_hikvision_lane())
    filler = tmp_path / "filler.bin"  # something that is not gated's to delete
    with running(site):
        assert _post_picture(site, "AB123CD", 1) == 200
        assert site.wait_rows(1)[0]["snapshot_missing"] == 0
        filler.write_bytes(b"\0" * 3 * 1024 * 1024)
        assert wait_audit(site, "state_quota_exhausted")
        assert wait_until(lambda: "\ngated_state_quota_exhausted 1\n" in prom.read_text(), 10)
        assert '\ngated_component_up{component="state-quota"} 0\n' in prom.read_text()
        assert _post_picture(site, "GH456JK", 2) == 200  # still decided and journaled
        row = site.wait_rows(2)[1]
        assert row["snapshot_missing"] == 1 and row["vehicle_plate"] == "GH456JK"
        filler.unlink()
        assert wait_audit(site, "state_quota_recovered")
        assert _post_picture(site, "MN789PQ", 3) == 200
        assert site.wait_rows(3)[2]["snapshot_missing"] == 0
    # Nothing was acknowledged upstream: no row and no picture was deleted for room.
    assert len(site.rows()) == 3 and len(list(site.snapshots.rglob("*.jpg"))) == 2
    assert not audit(site, "journal_pruned")


def test_retention_by_age_purges_only_acknowledged_rows(tmp_path: Path) -> None:
    site = _site(tmp_path, """
[retention]
access_days = 0.00003
audit_days = 0.00003
interval_s = 1
""")
    with running(site):
        for i in range(5):
            assert post_generic(site.listener_port, CAMERA_PATH, f"RT{i}00X") == 200
        rows = site.wait_rows(5)
        # The upstream acknowledges everything up to the third event (as sync would).
        through = rows[2]["seq"]
        conn = sqlite3.connect(site.journal)
        for table in ("access_logs", "audit_logs"):
            conn.execute(f"UPDATE {table} SET synced_at = 1 WHERE seq <= ?", (through,))
        conn.commit()
        conn.close()
        pruned = wait_audit(site, "journal_pruned", timeout_s=20)
        assert pruned
        import json

        meta = json.loads(pruned[0]["metadata"])
        assert meta["journal.pruned_through_seq"] == through
        assert [r["vehicle_plate"] for r in site.rows()] == ["RT300X", "RT400X"]
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0, result.stdout
    assert f"seq {through + 1}.." in result.stdout
