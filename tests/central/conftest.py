"""Fixtures for gated central: a real PostgreSQL (tests/support/postgres.py), one per session.

`pg_server` is the cluster (superuser gated_admin, roles gated_owner and gated_service);
`pg_template` a database migrated once; `pg_db` a fresh copy of it per test (CREATE DATABASE
… TEMPLATE is a file copy, far faster than migrating again).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PgServer, postgres_cluster


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
