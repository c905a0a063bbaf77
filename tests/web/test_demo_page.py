"""`gated demo` serves the status page and prints its URL and a working demo login."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.daemon.harness import wait_until
from tests.support.broker import free_port

pytestmark = pytest.mark.slow


def test_demo_prints_a_page_url_and_login_that_work(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gated", "demo", "--dir", str(tmp_path / "demo"),
             "--duration", "60", "--no-sync", "--port", "0", "--web-port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        line = wait_until(lambda: re.search(
            r"page +(http://127\.0\.0\.1:(\d+)/) +\(login: (\w+) / (\S+)\)", out.read_text()), 30)
        assert line, out.read_text()
        url, shown_port, user, password = line.groups()
        assert int(shown_port) == port

        def logged_in() -> httpx.Client | None:
            client = httpx.Client(base_url=url, timeout=10)
            try:
                answer = client.post("/login", data={"user": user, "password": password})
            except httpx.TransportError:
                return None
            return client if answer.status_code == 303 else None

        client = wait_until(logged_in, 30)
        assert client is not None
        page = client.get("/")
        assert page.status_code == 200
        assert 'data-lane="main-in"' in page.text and 'data-lane="main-out"' in page.text
    finally:
        proc.terminate()
        proc.wait(30)
