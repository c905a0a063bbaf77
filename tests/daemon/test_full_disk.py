"""A full disk under the journal: `gated run` must end with a non-zero status, never hang.

The journal and snapshots live on a real, small tmpfs mounted by the test (root only;
the test skips with the reason where mounting is not permitted). The config, the rule
store and the daemon's own log stay on the ordinary disk so the test can read them.
Filling is done by a plain file written until the kernel answers ENOSPC.

Bounds are generous (a hang is forever; systemd's TimeoutStopSec is 20 s): the figure
measured on the day is printed, never asserted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_OFF,
    DaemonProcess,
    PtyPort,
    Site,
    generic_lane,
    lcus_relay,
    post_until_accepted,
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


def make_site(tmp_path: Path, disk: Path, relay_port: PtyPort) -> FullDiskSite:
    site = FullDiskSite(tmp_path, disk)
    site.write_config(generic_lane(lcus_relay(relay_port)))
    return site


# 0 KB left: the journal cannot even be opened. 40 KB: SQLite opens it (its shared-memory
# index fits) and the first write, the daemon_start record, fails; before the fix the
# process then hung for good (a non-daemon thread of the unclosed journal kept it alive).
@pytest.mark.parametrize("free_kb", [0, 40])
def test_start_on_a_full_disk_exits_non_zero(tmp_path: Path, small_disk: Path,
                                             relay_port: PtyPort, free_kb: int) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    # A journal from an earlier run, then the disk filled up while gated was stopped.
    first = DaemonProcess(site)
    first.wait_ready()
    assert first.terminate() == 0
    (tmp_path / "notify.sock").unlink()
    fill(small_disk)
    filler = small_disk / "filler"
    os.truncate(filler, filler.stat().st_size - free_kb * 1024)

    daemon = DaemonProcess(site)
    try:
        status, waited = wait_exit(daemon, EXIT_BOUND_S)
        log = daemon.log()
        assert status is not None, f"gated hung on a full disk:\n{log}"
        print(f"start on a full disk ({free_kb} KB free): exit {status} after {waited:.2f} s")
        assert status != 0, log
        assert "READY=1" not in daemon.notify.collect(0.1)
        assert "disk is full" in log, log  # the cause is named, not just "failed"
    finally:
        daemon.close()


def test_start_with_no_room_for_a_new_journal_exits_non_zero(
    tmp_path: Path, small_disk: Path, relay_port: PtyPort
) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    fill(small_disk)
    daemon = DaemonProcess(site)
    try:
        status, waited = wait_exit(daemon, EXIT_BOUND_S)
        log = daemon.log()
        assert status is not None, f"gated hung on a full disk:\n{log}"
        print(f"fresh start on a full disk: exit {status} after {waited:.2f} s")
        assert status != 0, log
    finally:
        daemon.close()


def test_sigterm_after_the_disk_filled_exits_non_zero_and_releases_the_relay(
    tmp_path: Path, small_disk: Path, relay_port: PtyPort
) -> None:
    site = make_site(tmp_path, small_disk, relay_port)
    daemon = DaemonProcess(site)
    try:
        daemon.wait_ready()
        assert post_until_accepted(site.listener_port, CAMERA_PATH, "AB123CD") == 200
        relay_port.drain()
        fill(small_disk)
        # A read after the disk filled: its journal write fails; the gate keeps running.
        with contextlib.suppress(Exception):
            post_until_accepted(site.listener_port, CAMERA_PATH, "GH456JK", timeout_s=5)
        relay_port.drain()
        daemon.proc.send_signal(signal.SIGTERM)
        status, waited = wait_exit(daemon, EXIT_BOUND_S)
        log = daemon.log()
        assert status is not None, f"gated hung at SIGTERM on a full disk:\n{log}"
        print(f"SIGTERM on a full disk: exit {status} after {waited:.2f} s")
        assert status != 0, log  # the stop record could not be journaled: systemd must know
        # The relay still went to its safe state on the way out.
        assert relay_port.drain().endswith(LCUS_OFF)
    finally:
        daemon.close()
        with contextlib.suppress(OSError):
            os.unlink(small_disk / "filler")
