"""Fixtures for gated central: a real PostgreSQL (tests/support/postgres.py), one per session.

`pg_server` is the cluster (superuser gated_admin, roles gated_owner and gated_service);
`pg_template` a database migrated once; `pg_db` a fresh copy of it per test (CREATE DATABASE
… TEMPLATE is a file copy, far faster than migrating again).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central.store import Store
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
