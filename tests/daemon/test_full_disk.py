"""A full disk under the journal: `gated run` keeps the gate working, degraded.

The journal and snapshots live on a real, small tmpfs mounted by the test (root only;
the test skips with the reason where mounting is not permitted). The config, the rule
store, the metrics file and the daemon's own log stay on the ordinary disk so the test
can read them. Filling is done by a plain file written until the kernel answers ENOSPC.

What a full disk must look like (docs/operations.md, "A full disk"): reads are still
decided and the relay still moves; a read that cannot be journaled is answered 503
(never "taken") and held in memory in order; health and metrics say so; once space is
freed the held events are written in order and the chain verifies. Bounds are generous
(a hang is forever; systemd's TimeoutStopSec is 20 s): figures are printed, not asserted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_OFF,
    LCUS_ON,
    DaemonProcess,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_frames,
    lcus_relay,
    post_until_accepted,
    wait_until,
)

pytestmark = pytest.mark.slow

EXIT_BOUND_S = 30.0  # far above the few seconds it takes; a hang never ends


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs mounted for this test, unmounted afterwards."""
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0750", "gated-test", str(mount_point)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err}): the full-disk test needs root")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        # Lazy: a daemon killed by a failed test may still hold a file open for a moment.
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


class FullDiskSite(Site):
    """A site whose journal and snapshots are on the small disk."""

    def __init__(self, root: Path, disk: Path) -> None:
        super().__init__(root)
        self.disk = disk

    @property
    def journal(self) -> Path:
        return self.disk / "journal.sqlite3"

    @property
    def snapshots(self) -> Path:
        return self.disk / "snapshots"


def fill(disk: Path) -> int:
    """Write a filler file until the disk refuses; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(disk / "filler", "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                break
        # Small writes too: the last partial block must go as well.
        with contextlib.suppress(OSError):
            while fh.write(b"\0" * 512):
                written += 512
    return written


def wait_exit(daemon: DaemonProcess, timeout_s: float) -> tuple[int | None, float]:
    """(exit status or None when still running after timeout_s, seconds waited)."""
    started = time.monotonic()
    try:
        status: int | None = daemon.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        status = None
    return status, time.monotonic() - started


PLATES = ["AB123CD", "GH456JK", "MN789PQ", "RS234TU", "VW567XY", "CD890EF", "KL321MN"]
RULES = {
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [{"id": f"v-{i}", "plate": p, "resident_id": "r-1"}
                 for i, p in enumerate(PLATES)],
}


def make_site(tmp_path: Path, disk: Path, relay_port: PtyPort) -> FullDiskSite:
    site = FullDiskSite(tmp_path, disk)
    metrics = f'[metrics]\ntextfile = "{tmp_path / "gated.prom"}"\ninterval_s = 1\n'
    site.write_config(generic_lane(lcus_relay(relay_port, pulse_ms=50)), metrics)
    site.import_rules(RULES)
    return site


def metric(site: FullDiskSite, name: str) -> float | None:
    """A metric's value in the daemon's textfile, or None before it is written."""
    with contextlib.suppress(OSError):
        text = (site.root / "gated.prom").read_text()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        if found:
            return float(found.group(1))
    return None


def opened_while_full(site: FullDiskSite, relay_port: PtyPort, plates: list[str]) -> None:
    """Each read is answered 503 (not kept) while its relay pulse still goes out."""
    for plate in plates:
        status = post_until_accepted(site.listener_port, CAMERA_PATH, plate, timeout_s=15)
        assert status == 503, f"{plate} answered {status} on a full disk"
        # The gate did not wait for the disk: this read's pulse is on the wire.
        frames = lcus_frames(relay_port.read(8, timeout_s=5))
        assert frames == [LCUS_ON, LCUS_OFF], frames


def free_and_check(site: FullDiskSite, disk: Path, plates: list[str]) -> list[dict[str, object]]:
    """Free the disk; the held reads are written in order and the chain verifies."""
    os.unlink(disk / "filler")
    rows = wait_until(lambda: (r := site.rows()) and len(
        [x for x in r if x["vehicle_plate"] in plates]) >= len(plates) and r, timeout_s=30)
    assert rows, f"held reads never reached the journal: {site.rows()}"
    written = [r["vehicle_plate"] for r in rows if r["vehicle_plate"] in plates]
    assert written[-len(plates):] == plates  # in the order they were read
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs)
    verify = gated("journal", "verify", "--db", str(site.journal))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    return rows


# 0 KB left: SQLite cannot even create the journal's shared-memory index. 40 KB: it opens
# and the first write, the daemon_start record, fails. Either way the daemon starts
# (READY=1), decides and opens, and writes what it held once the disk has room.
@pytest.mark.parametrize("free_kb", [0, 40])
def test_start_on_a_full_disk_runs_degraded_and_catches_up(
        tmp_path: Path, small_disk: Path, relay_port: PtyPort, free_kb: int) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    # A journal from an earlier run, then the disk filled up while gated was stopped.
    first = DaemonProcess(site)
    first.wait_ready()
    assert first.terminate() == 0
    (tmp_path / "notify.sock").unlink()
    starts_before = len(audit(site, "daemon_start"))
    fill(small_disk)
    filler = small_disk / "filler"
    os.truncate(filler, filler.stat().st_size - free_kb * 1024)

    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        relay_port.drain()
        opened_while_full(site, relay_port, PLATES[:3])
        # The daemon_start record and the three reads (at least) wait in memory.
        assert wait_until(lambda: (metric(site, "gated_journal_held_events") or 0) >= 4, 10), \
            daemon.log()
        assert metric(site, 'gated_component_up{component="journal-writes"}') == 0
        assert "disk is full" in daemon.log()
        free_and_check(site, small_disk, PLATES[:3])
        assert len(audit(site, "daemon_start")) == starts_before + 1
        # Writable again: the next read is kept and answered 200.
        assert post_until_accepted(site.listener_port, CAMERA_PATH, PLATES[3]) == 200
        assert wait_until(lambda: metric(site, "gated_journal_held_events") == 0, 10)
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_disk_filling_while_running_holds_reads_in_order(
        tmp_path: Path, small_disk: Path, relay_port: PtyPort) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        assert post_until_accepted(site.listener_port, CAMERA_PATH, PLATES[0]) == 200
        relay_port.drain()
        fill(small_disk)
        held = PLATES[1:6]
        started = time.monotonic()
        opened_while_full(site, relay_port, held)
        print(f"{len(held)} reads opened and answered 503 in {time.monotonic() - started:.2f} s")
        assert wait_until(lambda: metric(site, "gated_journal_held_events") == len(held), 10)
        assert daemon.alive()
        free_and_check(site, small_disk, held)
        assert wait_until(lambda: metric(site, "gated_journal_held_written_total") == len(held))
        assert post_until_accepted(site.listener_port, CAMERA_PATH, PLATES[6]) == 200
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_held_events_past_the_bound_are_dropped_counted_and_audited(
        tmp_path: Path, small_disk: Path, relay_port: PtyPort) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    text = site.config.read_text().replace(
        "[journal]\n", "[journal]\nhold_max_events = 2\n", 1)
    site.config.write_text(text)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        relay_port.drain()
        fill(small_disk)
        opened_while_full(site, relay_port, PLATES[:5])
        assert wait_until(lambda: metric(site, "gated_journal_held_dropped_total") == 3, 10)
        free_and_check(site, small_disk, PLATES[3:5])  # the two newest were kept
        assert not [r for r in site.rows() if r["vehicle_plate"] in PLATES[:3]]
        dropped = wait_until(lambda: audit(site, "journal_hold_dropped"), 10)
        assert dropped and len(dropped) == 1, dropped
        assert '"dropped":3' in dropped[0]["metadata"].replace(" ", "")
        assert daemon.terminate() == 0
    finally:
        daemon.close()


def test_sigterm_while_full_exits_in_time_counts_the_lost_and_releases_the_relay(
    tmp_path: Path, small_disk: Path, relay_port: PtyPort
) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        assert post_until_accepted(site.listener_port, CAMERA_PATH, PLATES[0]) == 200
        relay_port.drain()
        fill(small_disk)
        opened_while_full(site, relay_port, PLATES[1:3])
        daemon.proc.send_signal(signal.SIGTERM)
        status, waited = wait_exit(daemon, EXIT_BOUND_S)
        log = daemon.log()
        assert status is not None, f"gated hung at SIGTERM on a full disk:\n{log}"
        print(f"SIGTERM on a full disk: exit {status} after {waited:.2f} s")
        assert status != 0, log  # events were lost and the stop is not on record
        lost = re.search(r"stopping with (\d+) held events not journaled \(lost\)", log)
        assert lost and int(lost.group(1)) >= 2, log  # the two reads, maybe audit rows
        # The relay still went to its safe state on the way out.
        assert relay_port.drain().endswith(LCUS_OFF)
    finally:
        daemon.close()
        with contextlib.suppress(OSError):
            os.unlink(small_disk / "filler")
