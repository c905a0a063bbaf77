"""`gated run` as a child process: the chain head it publishes (log and metrics textfile), and
the modes of every file and folder it creates, whatever the umask it was started with.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon.harness import (
    RESIDENT_RULES,
    PtyPort,
    Site,
    gated,
    hikvision_alarm,
    lcus_relay,
    make_jpeg,
    running,
    wait_until,
)

pytestmark = pytest.mark.slow

CAMERA = "/anpr/main-in"


class StateSite(Site):
    """A site whose journal, snapshots and metrics go into folders the daemon creates."""

    @property
    def state(self) -> Path:
        return self.root / "var" / "lib" / "gated"

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite3"

    @property
    def snapshots(self) -> Path:
        return self.state / "snapshots"

    @property
    def metrics(self) -> Path:
        return self.root / "run" / "gated" / "gated.prom"


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def hikvision_lane(relay: str) -> str:
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0.5
[lanes.relay]
{relay}
[[lanes.sources]]
kind = "anpr_http"
name = "cam-main-in"
format = "hikvision"
path = "{CAMERA}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def make_site(tmp_path: Path, relay_port: PtyPort, head_interval_s: float = 1.0) -> StateSite:
    site = StateSite(tmp_path)
    site.write_config(
        hikvision_lane(lcus_relay(relay_port)),
        extra=f'[metrics]\ntextfile = "{site.metrics}"\ninterval_s = 1\n',
    )
    text = site.config.read_text().replace(
        "[journal]\n", f"[journal]\nhead_interval_s = {head_interval_s}\n", 1
    )
    site.config.write_text(text)
    return site


def push(site: Site, plate: str, seed: int) -> int:
    body, ctype = hikvision_alarm(plate, make_jpeg(seed=seed))
    url = f"http://127.0.0.1:{site.listener_port}{CAMERA}"
    return httpx.post(url, content=body, headers={"Content-Type": ctype}, timeout=10).status_code


_INFO = re.compile(r'^gated_journal_head_info\{seq="(\d+)",row_hash="([0-9a-f]{64})"\} 1$', re.M)
_SEQ = re.compile(r"^gated_journal_head_seq (\d+)$", re.M)


def metrics_head(site: StateSite) -> tuple[int, str] | None:
    """The head the metrics textfile shows (seq gauge and info label agreeing), or None."""
    try:
        text = site.metrics.read_text()
    except FileNotFoundError:
        return None
    info, seq = _INFO.search(text), _SEQ.search(text)
    if not info or not seq or info.group(1) != seq.group(1):
        return None
    return int(info.group(1)), info.group(2)


def command_head(site: Site) -> tuple[int, str]:
    done = gated("journal", "head", "--db", str(site.journal), "--json")
    assert done.returncode == 0, done.stderr
    head = json.loads(done.stdout)
    return head["seq"], head["row_hash"]


def test_daemon_publishes_the_chain_head_in_its_log_and_metrics(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = make_site(tmp_path, relay_port)
    with running(site) as daemon:
        # No traffic: the head settles on the start-up records and the metrics show it.
        first = wait_until(lambda: (h := metrics_head(site)) and h == command_head(site) and h,
                           timeout_s=15)
        assert first, site.metrics.read_text() if site.metrics.exists() else "no textfile"
        seq, digest = first
        assert daemon.wait_log(f"journal head: seq {seq} row_hash {digest}")
        # A read moves the head; the next interval publishes the new one.
        assert push(site, "AB123CD", seed=1) == 200
        moved = wait_until(
            lambda: (h := metrics_head(site)) and h[0] > seq and h == command_head(site) and h,
            timeout_s=15,
        )
        assert moved, site.metrics.read_text()
        # Every published head is an anchor the journal verifies against.
        anchor = f"{moved[0]}:{moved[1]}"
        done = gated("journal", "verify", "--db", str(site.journal), "--anchor", anchor)
        assert done.returncode == 0, done.stdout
        assert daemon.terminate() == 0
    final = command_head(site)
    assert f"journal head at stop: seq {final[0]} row_hash {final[1]}" in daemon.log()


def test_files_and_folders_get_0640_and_0750_whatever_the_umask(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = make_site(tmp_path, relay_port, head_interval_s=1.0)
    old = os.umask(0o000)  # inherited by both commands below: the worst an admin could set
    try:
        site.import_rules(RESIDENT_RULES)
        with running(site) as daemon:
            assert push(site, "AB123CD", seed=2) == 200
            rows = site.wait_rows(1)
            assert rows and rows[0]["snapshot_path"], rows
            assert wait_until(site.metrics.exists, timeout_s=10)
            wal = site.journal.with_name(site.journal.name + "-wal")
            shm = site.journal.with_name(site.journal.name + "-shm")
            rules = site.root / "rules.sqlite3"
            files = [site.journal, wal, shm, rules, site.metrics,
                     site.snapshots / rows[0]["snapshot_path"]]
            files += [rules.with_name(rules.name + s) for s in ("-wal", "-shm")
                      if rules.with_name(rules.name + s).exists()]
            snapshot_dirs = [p for p in site.snapshots.rglob("*") if p.is_dir()]
            folders = [site.root / "var", site.root / "var" / "lib", site.state, site.snapshots,
                       *snapshot_dirs, site.metrics.parent, site.root / "run"]
            modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
                     for p in [*files, *folders]}
            daemon.terminate()
    finally:
        os.umask(old)
    assert len(snapshot_dirs) == 3  # YYYY/MM/DD
    wrong = {p: m for p, m in modes.items()
             if m != (oct(0o750) if Path(tmp_path / p) in folders else oct(0o640))}
    assert not wrong, f"modes not 0640 (files) / 0750 (folders): {wrong}"
