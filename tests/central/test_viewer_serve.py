"""Serving the viewer from central.toml: `gated central viewer`, [viewer] keys, the role list."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gated.central.viewer import accounts, commands
from gated.central.viewer.serve import load_settings
from gated.errors import ConfigError
from tests.central.viewer_support import running_viewer
from tests.support.broker import free_port
from tests.support.postgres import SERVICE, PgServer


def _toml(tmp_path: Path, viewer: str, url: str = "host=/nonexistent") -> Path:
    path = tmp_path / "central.toml"
    path.write_text(f'[database]\nurl = "{url}"\n\n[snapshots]\npath = "{tmp_path}/pics"\n\n'
                    f"[viewer]\n{viewer}\n")
    return path


def test_the_cli_offers_the_roles_the_database_takes() -> None:
    assert commands.ROLES == accounts.ROLES


@pytest.mark.parametrize(("section", "said"), [
    ("colour = 'blue'", "unknown keys ['colour']"),
    ("tls_cert = '/x.pem'", "give both, or neither"),
    ("port = 70000", "port: 0 to 65535"),
    ("session_idle_s = -1", "session_idle_s: a positive number"),
    ("timezone = 'Mars/Olympus'", "timezone: unknown"),
])
def test_bad_viewer_settings_name_the_key(tmp_path: Path, section: str, said: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_settings(_toml(tmp_path, section), "pics")


def test_gated_central_viewer_serves_until_sigterm(pg_server: PgServer, pg_db: str,
                                                   tmp_path: Path) -> None:
    config = _toml(tmp_path, 'listen = "127.0.0.1"\nport = 0\nonline_after_s = 90',
                   pg_server.conninfo(pg_db, SERVICE))
    process = subprocess.Popen(
        [sys.executable, "-m", "gated.central.viewer.commands", "viewer", "--config",
         str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"viewer ready on port (\d+)", line)
        if not found:
            process.kill()
            pytest.fail(line + (process.stderr.read() if process.stderr else ""))
        base = f"http://127.0.0.1:{found.group(1)}"
        assert httpx.get(base + "/healthz").json() == {"ok": True}
        login = httpx.get(base + "/login")
        assert login.status_code == 200 and 'name="tenant"' in login.text
        assert httpx.get(base + "/events").status_code == 401
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_gated_central_run_serves_the_viewer_when_enabled(pg_server: PgServer, pg_db: str,
                                                          tmp_path: Path) -> None:
    port = free_port()
    config = _toml(tmp_path, f'enabled = true\nlisten = "127.0.0.1"\nport = {port}',
                   pg_server.conninfo(pg_db, SERVICE))
    with config.open("a") as out:
        out.write(f'\n[service]\nkey_file = "{tmp_path}/service.key"\n\n'
                  "[mqtt]\nenabled = false\n\n[http]\nenabled = false\n")
    process = subprocess.Popen([sys.executable, "-m", "gated", "central", "run", "--config",
                                str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "ready":
            process.kill()
            pytest.fail(line + (process.stderr.read() if process.stderr else ""))
        page = httpx.get(f"http://127.0.0.1:{port}/login")
        assert page.status_code == 200 and 'name="tenant"' in page.text
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_lost_database_is_a_503_and_the_viewer_keeps_serving(
        pg_server: PgServer, pg_db: str, tmp_path: Path) -> None:
    async with running_viewer(pg_server, pg_db, tmp_path / "pics", pool_timeout=2) as viewer:
        viewer.tenant("acme", {})
        await viewer.add_user("acme", "ada", "admin")
        ada = await viewer.login("acme", "ada")
        assert (await ada.get("/events")).status_code == 200
        pg_server.drop_database(pg_db)  # every connection of the pool ends with it
        for path in ("/events", "/events.csv", "/devices"):
            answer = await ada.get(path)
            assert answer.status_code == 503, (path, answer.text[:200])
            assert "the database is not answering" in answer.text
        assert (await ada.get("/healthz")).status_code == 503
        assert (await ada.get("/login")).status_code == 200  # the form needs no database
