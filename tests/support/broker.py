"""Start a real Mosquitto broker on a free loopback port for integration tests.

Use `mosquitto_broker(tmp_dir)` as a context manager, or the `broker` fixture
from a conftest. The broker gets a generated config in `tmp_dir` (no
persistence, anonymous access unless `extra_config` says otherwise) and is
stopped, then killed if it lingers, when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = os.environ.get("GATED_TEST_MOSQUITTO", "/usr/sbin/mosquitto")
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Broker:
    """A running test broker: where to connect, and its files."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]


def mosquitto_available() -> bool:
    """True when the Mosquitto binary can be run here."""
    return os.access(MOSQUITTO, os.X_OK) or shutil.which("mosquitto") is not None


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until_accepting(host: str, port: int, timeout_s: float = 10.0) -> bool:
    """Poll until a TCP connect to host:port succeeds, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _write_config(tmp_dir: Path, port: int, extra_config: str) -> tuple[Path, Path]:
    config_path = tmp_dir / f"mosquitto-{port}.conf"
    log_path = tmp_dir / f"mosquitto-{port}.log"
    lines = [
        f"listener {port} {HOST}",
        "persistence false",
        "log_dest stderr",  # to a file this process opens: no permission issues when run as root
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if "allow_anonymous" not in extra_config:
        lines.append("allow_anonymous true")
    config_path.write_text("\n".join(lines) + "\n" + extra_config + "\n")
    return config_path, log_path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def mosquitto_broker(tmp_dir: Path | str, extra_config: str = "") -> Iterator[Broker]:
    """Run Mosquitto on a free loopback port for the duration of the block.

    `extra_config` is appended to the generated config (password_file, acl_file …).
    Retries with another port if the chosen one was taken in the meantime.
    """
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    binary = (
        MOSQUITTO if os.access(MOSQUITTO, os.X_OK) else (shutil.which("mosquitto") or MOSQUITTO)
    )
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        config_path, log_path = _write_config(tmp, port, extra_config)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [binary, "-c", str(config_path)],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            if wait_until_accepting(HOST, port) and process.poll() is None:
                yield Broker(HOST, port, config_path, log_path, process)
                return
        finally:
            _stop(process)
        last_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    raise RuntimeError(f"mosquitto did not start: {last_log[-2000:]}")
