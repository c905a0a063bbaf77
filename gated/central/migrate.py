"""Numbered SQL migrations (gated/central/migrations/NNNN_name.sql), applied once each, in order."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Not a tenant table, so not under row-level security: it lists schema versions only.
_TRACK = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""


def available() -> list[tuple[int, str, str]]:
    """Every packaged migration as (version, file name, SQL), by version."""
    found = []
    for entry in resources.files("gated.central").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {sorted(versions)}")
    return found


def applied(conn: psycopg.Connection[Any]) -> set[int]:
    """The versions already applied to this database."""
    with conn.transaction():
        conn.execute(_TRACK)
        return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied.

    Run as the owner role (gated_owner). A lock keeps two instances starting at once from
    applying the same file twice.
    """
    done: list[str] = []
    with conn.transaction():
        conn.execute(_TRACK)
        conn.execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
        have = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in available():
            if version in have:
                continue
            with conn.transaction():
                conn.execute(sql)  # trusted packaged SQL
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (version, name))
            done.append(name)
    return done
