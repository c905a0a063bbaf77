"""Drive the real `gated run` process: config, pty relay ports, systemd notify, camera pushes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from tests.support.broker import free_port

PAYLOADS = Path(__file__).resolve().parent.parent / "hardware" / "anpr" / "payloads"

# LCUS frames (A0, channel, state, sum) for channel 1.
LCUS_ON = bytes([0xA0, 0x01, 0x01, 0xA2])
LCUS_OFF = bytes([0xA0, 0x01, 0x00, 0xA1])


class PtyPort:
    """A serial port the daemon opens by a stable path (a symlink, like /dev/serial/by-id/…).

    `unplug()` closes the pty and removes the link, as pulling the USB cable does;
    `replug()` makes a new pty behind the same path.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.slave = -1
        self.replug()

    def replug(self) -> None:
        """Create a fresh pty pair and point the link at it."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        """Remove the device: the link goes and the pty closes."""
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1

    def read(self, want: int, timeout_s: float = 5.0) -> bytes:
        """Read until `want` bytes arrived or the timeout passed."""
        out = b""
        deadline = time.monotonic() + timeout_s
        while len(out) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    out += os.read(self.master, want - len(out))
                except OSError:
                    break
        return out

    def drain(self, quiet_s: float = 0.3) -> bytes:
        """Read whatever arrives until the line has been quiet for quiet_s."""
        out = b""
        while True:
            ready, _, _ = select.select([self.master], [], [], quiet_s)
            if not ready:
                return out
            out += os.read(self.master, 1024)

    def close(self) -> None:
        """Release the pty."""
        self.unplug()


class NotifySocket:
    """A stand-in for systemd's notify socket: collects what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def collect(self, timeout_s: float = 0.0) -> list[str]:
        """Read every datagram waiting (waiting up to timeout_s for the first)."""
        self.sock.settimeout(timeout_s if timeout_s > 0 else 0.001)
        while True:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                return self.messages
            self.messages.extend(data.decode().splitlines())
            self.sock.settimeout(0.001)

    def wait_for(self, line: str, timeout_s: float = 20.0) -> bool:
        """True once `line` has been received."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if line in self.collect(0.2):
                return True
        return line in self.messages

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@dataclass
class Site:
    """Paths and ports of one test installation."""

    root: Path
    listener_port: int = field(default_factory=free_port)

    @property
    def config(self) -> Path:
        return self.root / "gated.toml"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite3"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def write_config(
        self,
        lanes: str,
        extra: str = "",
        *,
        supervisor: str = "restart_backoff_s = 0.05\nrestart_backoff_max_s = 0.5",
        policy: str = "",
    ) -> Path:
        """A config with the site's paths, the given [[lanes]] tables and extra sections."""
        self.config.write_text(
            f"""
[site]
tenant_id = "t-test"
site_id = "s-test"
device_id = "d-test"

[journal]
path = "{self.journal}"
snapshot_dir = "{self.snapshots}"

[rules]
path = "{self.root / "rules.sqlite3"}"

[cameras_listener]
host = "127.0.0.1"
port = {self.listener_port}

[supervisor]
{supervisor}

[policy]
{policy}

{lanes}
{extra}
"""
        )
        return self.config

    def import_rules(self, rules: dict[str, Any]) -> None:
        """Load a rule set through `gated rules import`, as an installer would."""
        path = self.root / "rules.json"
        path.write_text(json.dumps({"format": "gated-rules", "format_version": 1, **rules}))
        gated("rules", "import", str(path), "--config", str(self.config), check=True)

    def rows(self, table: str = "access_logs") -> list[dict[str, Any]]:
        """Every row of a journal table, in sequence order."""
        conn = sqlite3.connect(self.journal)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY seq")]
        finally:
            conn.close()

    def wait_rows(
        self, count: int, table: str = "access_logs", timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Poll until the table has at least `count` rows."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError):
                rows = self.rows(table)
                if len(rows) >= count:
                    return rows
            time.sleep(0.05)
        return rows


def gated(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `gated` command (this interpreter, `-m gated`)."""
    return subprocess.run(
        [sys.executable, "-m", "gated", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


class DaemonProcess:
    """`gated run --config …` as a child process under a fake systemd notify socket."""

    def __init__(self, site: Site, *, watchdog_usec: int | None = None) -> None:
        self.site = site
        self.notify = NotifySocket(site.root / "notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), PYTHONUNBUFFERED="1")
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log_path = site.root / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gated", "run", "--config", str(site.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the daemon reported READY=1 (fails with its log otherwise)."""
        if not self.notify.wait_for("READY=1", timeout_s):
            self.proc.kill()
            raise AssertionError(f"gated never became ready:\n{self.log()}")

    def log(self) -> str:
        """What the daemon wrote to stdout/stderr so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout_s: float = 15.0) -> bool:
        """True once `text` appears at least `count` times in the daemon's output."""
        return bool(wait_until(lambda: self.log().count(text) >= count, timeout_s))

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait; the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout_s)
            self.notify.collect(0.1)
            return status
        finally:
            self.close()

    def close(self) -> None:
        """Kill if still running and free the files."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.notify.close()


def make_jpeg(seed: int = 0, width: int = 160, height: int = 120) -> bytes:
    """A real JPEG from OpenCV."""
    image = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def hikvision_alarm(plate: str, jpeg: bytes, when: str | None = None) -> tuple[bytes, str]:
    """A Hikvision ISAPI ANPR alarm as the camera posts it: multipart with XML and JPEG parts."""
    xml = (PAYLOADS / "hikvision_anpr.xml").read_text()
    xml = xml.replace(
        "<licensePlate>AB123CD</licensePlate>", f"<licensePlate>{plate}</licensePlate>"
    )
    if when is None:
        when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    xml = xml.replace("2024-05-07T17:48:03.847+02:00", when)
    boundary = "MIME_boundary_gated_test"
    parts = [
        ("anpr.xml", "text/xml", xml.encode()),
        ("detectionPicture.jpg", "image/jpeg", jpeg),
    ]
    body = b""
    for name, ctype, data in parts:
        body += (
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def running(site: Site, **kwargs: Any) -> Iterator[DaemonProcess]:
    """A ready daemon, terminated at the end of the block."""
    daemon = DaemonProcess(site, **kwargs)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.close()


# --- helpers for fault and control tests ------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, every_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(sqlite3.OperationalError):
            value = predicate()
            if value:
                return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every_s)


def audit(site: Site, action: str) -> list[dict[str, Any]]:
    """The audit rows with this action, in sequence order (empty before the journal exists)."""
    if not site.journal.exists():
        return []
    return [row for row in site.rows("audit_logs") if row["action"] == action]


def wait_audit(
    site: Site, action: str, count: int = 1, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Poll until at least `count` audit rows with this action exist; those rows (maybe fewer)."""
    wait_until(lambda: len(audit(site, action)) >= count, timeout_s)
    return audit(site, action)


def post_generic(
    port: int,
    path: str,
    plate: str,
    *,
    confidence: float | None = 0.95,
    client: httpx.Client | None = None,
    timeout_s: float = 10.0,
) -> int:
    """Push one read in gated's generic JSON format (no image); the HTTP status."""
    doc: dict[str, Any] = {"plate": plate}
    if confidence is not None:
        doc["confidence"] = confidence
    url = f"http://127.0.0.1:{port}{path}"
    sender = client or httpx
    return sender.post(url, json=doc, timeout=timeout_s).status_code


def post_until_accepted(
    port: int, path: str, plate: str, timeout_s: float = 10.0, **kw: Any
) -> int:
    """Push a read, retrying while the listener is not (yet, or again) accepting connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return post_generic(port, path, plate, **kw)
        except httpx.TransportError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def write_video(path: Path, frames: int = 10, width: int = 160, height: int = 120) -> None:
    """A short MJPG video written by cv2.VideoWriter, moved into place atomically."""
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    rng = np.random.default_rng(len(str(path)))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))
    writer.release()
    os.replace(tmp, path)


def lcus_frames(data: bytes) -> list[bytes]:
    """Split bytes read from a relay pty into 4-byte LCUS frames (asserting nothing is torn)."""
    assert len(data) % 4 == 0, f"torn LCUS frames: {data.hex()}"
    return [data[i : i + 4] for i in range(0, len(data), 4)]


# --- a standard one-lane site: a resident with three cars, an LCUS relay, a JSON camera ----

CAMERA_PATH = "/anpr/main-in"

RESIDENT_RULES = {
    "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
    "vehicles": [
        {"id": "v-1", "plate": "AB123CD", "resident_id": "r-1"},
        {"id": "v-2", "plate": "GH456JK", "resident_id": "r-1"},
        {"id": "v-3", "plate": "MN789PQ", "resident_id": "r-1"},
    ],
}


def generic_lane(relay: str, *, extra: str = "", dedup_window_s: float = 0.5) -> str:
    """One inbound lane fed by a generic JSON camera push, with the given [lanes.relay] body."""
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = {dedup_window_s}
{extra}
[lanes.relay]
{relay}
[[lanes.sources]]
kind = "anpr_http"
name = "cam-main-in"
format = "generic"
path = "{CAMERA_PATH}"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


def lcus_relay(port: PtyPort, pulse_ms: int = 200) -> str:
    """A [lanes.relay] body for an LCUS board on this pty."""
    return f'kind = "lcus"\nport = "{port.link}"\nchannel = 1\npulse_ms = {pulse_ms}'
