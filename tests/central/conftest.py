"""Fixtures for gated central: a real PostgreSQL (tests/support/postgres.py), one per session.

`pg_server` is the cluster (superuser gated_admin, roles gated_owner and gated_service);
`pg_template` a database migrated once; `pg_db` a fresh copy of it per test (CREATE DATABASE
… TEMPLATE is a file copy, far faster than migrating again).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central.store import Store
from tests.support.broker import (
    HOST,
    MOSQUITTO,
    free_port,
    mosquitto_available,
    wait_until_accepting,
)
from tests.support.postgres import OWNER, SERVICE, PgServer, postgres_cluster


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL cluster."""
    with postgres_cluster() as server:
        yield server


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """A database with every migration applied, used as the template of `pg_db`."""
    return pg_server.create_database("gated_template")


@pytest.fixture
def pg_db(pg_server: PgServer, pg_template: str) -> Iterator[str]:
    """A fresh migrated database for one test (dropped afterwards)."""
    name = pg_server.create_database(template=pg_template)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def service_key() -> Ed25519PrivateKey:
    """The central service's Ed25519 key for one test."""
    return Ed25519PrivateKey.generate()


@pytest.fixture
def store(pg_server: PgServer, pg_db: str, service_key: Ed25519PrivateKey) -> Iterator[Store]:
    """A Store on the test database, connected as the service role."""
    s = Store(pg_server.conninfo(pg_db, SERVICE), service_key).open()
    yield s
    s.close()


@pytest.fixture
def owner(pg_server: PgServer, pg_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as gated_owner (enrolment)."""
    with pg_server.connect(pg_db, OWNER) as conn:
        yield conn


SHIPPED = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
_SITE_SPECIFIC = ("listener", "certfile", "keyfile", "cafile", "persistence",
                  "persistence_location", "autosave_interval", "password_file", "acl_file")
USERS = {"acme/gate-1": "pw-a1", "acme/gate-2": "pw-a2", "globex/gate-1": "pw-g1",
         "gated-service": "pw-s1", "gated-service-2": "pw-s2"}


class AclBroker:
    """Mosquitto with the shipped config and ACL, persistent, restartable on its port."""

    def __init__(self, tmp: Path) -> None:
        passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not mosquitto_available() or not Path(passwd_tool).exists():
            pytest.skip("mosquitto (with mosquitto_passwd) is not installed")
        tmp.mkdir(parents=True, exist_ok=True)
        passwd = tmp / "gated.passwd"
        passwd.touch()
        for user, password in USERS.items():
            subprocess.run([passwd_tool, "-b", str(passwd), user, password], check=True)
        acl = tmp / "gated.acl"
        shutil.copy(SHIPPED / "gated.acl", acl)
        kept = [line for line in (SHIPPED / "gated.conf").read_text().splitlines()
                if line.split(" ", 1)[0] not in _SITE_SPECIFIC]
        self.host, self.port = HOST, free_port()
        (tmp / "data").mkdir(exist_ok=True)
        self.config = tmp / "mosquitto.conf"
        self.config.write_text("\n".join([
            f"listener {self.port} {HOST}", "persistence true",
            f"persistence_location {tmp / 'data'}/", "autosave_interval 1",
            "log_dest stderr", "log_type error", "log_type warning", *kept,
            f"password_file {passwd}", f"acl_file {acl}", "user root"]) + "\n")
        self.log = tmp / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AclBroker:
        """Start (again) on the same port."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                            stdout=subprocess.DEVNULL, stderr=log)
        if not wait_until_accepting(self.host, self.port):
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-500:]}")
        return self

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistent sessions), then kill if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    """The shipped broker config and ACL with accounts for three devices and two services."""
    broker = AclBroker(tmp_path / "broker").start()
    yield broker
    broker.stop()
