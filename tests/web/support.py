"""A `gated run` daemon with the status page on, users made by `gated user add`, a client."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.daemon.harness import (
    RESIDENT_RULES,
    DaemonProcess,
    PtyPort,
    Site,
    generic_lane,
    lcus_relay,
    running,
    wait_until,
)
from tests.support.broker import free_port

PASSWORDS = {"vera": "viewer-pass-123", "gus": "guard-pass-1234", "ada": "admin-pass-12345"}
ROLES = {"vera": "viewer", "gus": "guard", "ada": "admin"}


@dataclass
class WebSite:
    """One test installation with its page's address."""

    site: Site
    relay: PtyPort
    port: int
    scheme: str = "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        """A browser-like client (keeps cookies, never follows redirects by itself)."""
        return httpx.Client(base_url=self.base, timeout=20, follow_redirects=False)

    def login(self, user: str, password: str | None = None) -> httpx.Client:
        """A client logged in as `user`."""
        client = self.client()
        answer = client.post("/login", data={"user": user,
                                             "password": password or PASSWORDS[user]})
        assert answer.status_code == 303, answer.text
        return client


def csrf_of(client: httpx.Client, path: str = "/") -> str:
    """The CSRF token a page carries in its forms."""
    page = client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def add_user(config: Path, name: str, role: str, password: str) -> None:
    """`gated user add` as an installer runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "gated", "user", "add", name, "--role", role,
         "--password-stdin", "--config", str(config)],
        input=password + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def make_site(tmp_path: Path, *, web_extra: str = "") -> WebSite:
    """A one-lane site (LCUS relay on a pty, generic JSON camera) with [web] enabled."""
    relay = PtyPort(tmp_path / "relay-board")
    port = free_port()
    site = Site(tmp_path)
    site.write_config(
        generic_lane(lcus_relay(relay, 150)),
        extra=(f'[control]\nsocket = ""\n[web]\nenabled = true\nport = {port}\n'
               f'users_file = "{tmp_path / "users.json"}"\n{web_extra}'),
    )
    site.import_rules(RESIDENT_RULES)
    for name, password in PASSWORDS.items():
        add_user(site.config, name, ROLES[name], password)
    return WebSite(site, relay, port)


@contextmanager
def serving(web: WebSite) -> Iterator[DaemonProcess]:
    """The daemon, ready, with the page answering."""
    with running(web.site) as daemon:
        assert wait_until(lambda: _answers(web.base), 15), daemon.log()
        yield daemon


def _answers(base: str) -> bool:
    try:
        # A readiness probe only: the TLS test checks the certificate itself.
        return httpx.get(base + "/healthz", timeout=2, verify=False).status_code in (200, 503)
    except httpx.TransportError:
        return False
