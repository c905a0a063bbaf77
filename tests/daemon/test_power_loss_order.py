"""Power loss: every read answered 200 was on stable storage before the 200 left.

`gated run` runs under `strace -f`, which records, in the order they happened, the
journal's file opens, every write to its WAL, every fsync/fdatasync and every byte sent
on a socket. For each camera read answered "HTTP/1.1 200", the trace must show, in this
order: the last write to the WAL carrying that read's plate (its row's page) completed,
then an fdatasync (or fsync) of the WAL that returned 0 began and completed, then the
200 was sent. A power cut after the 200 therefore cannot lose the row: it was already
durable (SQLite WAL, synchronous=FULL; docs/operations.md, "Power loss"). The order is
the tracer's own serialisation of the syscalls, never timestamps. Skipped, with the
reason, where strace is missing (scripts/setup.sh --test installs it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    DaemonProcess,
    NotifySocket,
    PtyPort,
    Site,
    generic_lane,
    lcus_relay,
    post_generic,
)

pytestmark = pytest.mark.slow

# Far apart: plates within an edit or two of each other in the dedup window are one vehicle.
PLATES = ["AB123CD", "GH456JK", "MN789PQ", "RS234TU", "VW567XY", "CD890EF", "KL321MN",
          "PQ654RS", "XY987ZA", "EF246GH"]
SYSCALLS = "openat,close,pwrite64,pwritev,write,writev,sendto,sendmsg,fsync,fdatasync"


@dataclass
class Call:
    """One syscall: its name, fd, data, result, and the trace lines it began and ended on."""

    name: str
    fd: int
    text: str
    result: str
    start: int
    end: int
    path: str | None = None  # for openat: the file opened


_LINE = re.compile(r"^(\d+) +(.*)$")
_START = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_RESULT = re.compile(r"\) += (-?\d+)(?: [A-Z]+.*)?$")


def parse(trace: str) -> list[Call]:
    """The calls of an `strace -f` output, joining <unfinished ...> and resumed halves."""
    calls: list[Call] = []
    pending: dict[tuple[int, str], Call] = {}
    for index, line in enumerate(trace.splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        pid, body = int(m.group(1)), m.group(2)
        resumed = _RESUMED.match(body)
        if resumed:
            call = pending.pop((pid, resumed.group(1)), None)
            if call is None:
                continue
            call.text += resumed.group(2)
            call.end = index
            found = _RESULT.search(resumed.group(2))
            call.result = found.group(1) if found else "?"
            calls.append(call)
            continue
        started = _START.match(body)
        if not started:
            continue
        name, rest = started.group(1), started.group(2)
        first = re.match(r"\s*(-?\d+)", rest)
        fd = int(first.group(1)) if first else -1
        call = Call(name, fd, rest, "?", index, index)
        if name == "openat":
            opened = re.match(r'[^,]+, "([^"]*)"', rest)
            call.path = opened.group(1) if opened else None
        if rest.endswith("<unfinished ...>"):
            pending[(pid, name)] = call
            continue
        found = _RESULT.search(rest)
        call.result = found.group(1) if found else "?"
        calls.append(call)
    calls.sort(key=lambda c: c.end)
    return calls


def unsynced_acknowledgements(calls: list[Call], plates: list[str],
                              wal_suffix: str = "-wal") -> list[str]:
    """Plates whose 200 was sent before an fsync of the WAL that followed their row's write.

    Also reports a plate whose row never reached the WAL before its 200, and a plate that
    got no 200 at all (the check would then prove nothing about it).
    """
    # Which fds name the WAL, as of each call (fds are reused after close).
    wal_fds: set[int] = set()
    events: list[tuple[int, str, Call]] = []  # (start line, kind, call)
    for call in calls:
        if call.name == "openat" and call.path and call.path.endswith(wal_suffix):
            if call.result.isdigit():
                wal_fds.add(int(call.result))
        elif call.name == "close":
            wal_fds.discard(call.fd)
        elif call.name in ("pwrite64", "pwritev", "write", "writev") and call.fd in wal_fds:
            if call.result.isdigit():
                events.append((call.start, "wal_write", call))
        elif call.name in ("fsync", "fdatasync") and call.fd in wal_fds:
            if call.result == "0":
                events.append((call.start, "wal_sync", call))
        elif call.name in ("sendto", "sendmsg", "write", "writev") and \
                "HTTP/1.1 200" in call.text:
            events.append((call.start, "ack", call))
    acks = [c for _, kind, c in events if kind == "ack"]
    problems: list[str] = []
    if len(acks) < len(plates):
        problems.append(f"only {len(acks)} answers 200 for {len(plates)} reads")
    for plate, ack in zip(plates, acks, strict=False):  # reads are sent one after another
        writes = [c for _, kind, c in events
                  if kind == "wal_write" and plate in c.text and c.end < ack.start]
        if not writes:
            problems.append(f"{plate}: answered 200 with no WAL write carrying its row")
            continue
        written = writes[-1]
        synced = [c for _, kind, c in events if kind == "wal_sync"
                  and c.start > written.end and c.end < ack.start]
        if not synced:
            problems.append(f"{plate}: answered 200 before an fsync of the WAL after its row")
    return problems


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


class TracedDaemon(DaemonProcess):
    """`gated run` started under `strace -f`, its syscalls written to `trace`."""

    def __init__(self, site: Site, trace: Path) -> None:
        self.site = site
        self.notify = NotifySocket(site.root / "notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1")
        self.log_path = site.root / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-s", "8192", "-o", str(trace), "-e", f"trace={SYSCALLS}",
             sys.executable, "-m", "gated", "run", "--config", str(site.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def _gated_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in children.read_text().split()]
        return []

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM to gated itself (strace's child); gated's exit status, as strace passes it."""
        for pid in self._gated_pids():
            os.kill(pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.close()

    def close(self) -> None:
        """Kill gated too: killing strace alone would leave it running untraced."""
        for pid in self._gated_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        super().close()


def test_every_200_follows_an_fsync_of_the_wal_holding_its_row(
        tmp_path: Path, relay_port: PtyPort) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/setup.sh --test installs it)")
    site = Site(tmp_path)
    site.write_config(generic_lane(lcus_relay(relay_port, pulse_ms=50)))
    trace = tmp_path / "strace.txt"
    daemon = TracedDaemon(site, trace)
    try:
        daemon.wait_ready(60)
        answers = [post_generic(site.listener_port, CAMERA_PATH, p, timeout_s=30)
                   for p in PLATES]
        assert answers == [200] * len(PLATES), answers
        assert daemon.terminate() == 0
    finally:
        daemon.close()
    text = trace.read_text(errors="replace")
    if "ptrace" in text[:2000] and "Operation not permitted" in text[:2000]:
        pytest.skip("ptrace is not permitted here")
    calls = parse(text)
    syncs = sum(1 for c in calls if c.name in ("fsync", "fdatasync"))
    print(f"{len(PLATES)} reads answered 200; {len(calls)} traced calls, {syncs} fsyncs")
    assert unsynced_acknowledgements(calls, PLATES) == []


def test_the_check_finds_a_200_sent_before_its_fsync() -> None:
    """The checker itself: a made-up trace where the 200 overtakes the fsync is caught."""
    good = (
        '10 openat(AT_FDCWD, "/s/journal.sqlite3-wal", O_RDWR|O_CREAT, 0640) = 7\n'
        '11 pwrite64(7, "\\0\\0row AB123CD ...", 4096, 32) = 4096\n'
        '11 fdatasync(7 <unfinished ...>\n'
        '10 write(1, "log line", 8) = 8\n'
        '11 <... fdatasync resumed>) = 0\n'
        '10 sendto(9, "HTTP/1.1 200 OK\\r\\n", 17, MSG_NOSIGNAL, NULL, 0) = 17\n'
    )
    assert unsynced_acknowledgements(parse(good), ["AB123CD"]) == []
    # The same calls, the 200 sent while the fsync was still running.
    early = (
        '10 openat(AT_FDCWD, "/s/journal.sqlite3-wal", O_RDWR|O_CREAT, 0640) = 7\n'
        '11 pwrite64(7, "\\0\\0row AB123CD ...", 4096, 32) = 4096\n'
        '11 fdatasync(7 <unfinished ...>\n'
        '10 sendto(9, "HTTP/1.1 200 OK\\r\\n", 17, MSG_NOSIGNAL, NULL, 0) = 17\n'
        '11 <... fdatasync resumed>) = 0\n'
    )
    assert unsynced_acknowledgements(parse(early), ["AB123CD"]) == [
        "AB123CD: answered 200 before an fsync of the WAL after its row"]
    # An fsync that failed is no fsync; a row written after the fsync is not covered by it.
    failed = good.replace("<... fdatasync resumed>) = 0", "<... fdatasync resumed>) = -1 EIO")
    assert unsynced_acknowledgements(parse(failed), ["AB123CD"]) != []
    late_row = (
        '10 openat(AT_FDCWD, "/s/journal.sqlite3-wal", O_RDWR|O_CREAT, 0640) = 7\n'
        '11 fdatasync(7) = 0\n'
        '11 pwrite64(7, "\\0\\0row AB123CD ...", 4096, 32) = 4096\n'
        '10 sendto(9, "HTTP/1.1 200 OK\\r\\n", 17, MSG_NOSIGNAL, NULL, 0) = 17\n'
    )
    assert unsynced_acknowledgements(parse(late_row), ["AB123CD"]) != []
