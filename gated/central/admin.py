"""Owner-side administration: tenants and device enrolment (run as gated_owner, not the service)."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg

from gated.central.store import token_hash
from gated.sync.signing import kid_of


def add_tenant(conn: psycopg.Connection[Any], tenant_id: str, name: str | None = None) -> None:
    """Create a tenant (nothing happens if it exists)."""
    with conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))
        conn.execute("INSERT INTO tenants (tenant_id, name) VALUES (%s, %s) "
                     "ON CONFLICT (tenant_id) DO NOTHING", (tenant_id, name))


def enrol_device(conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
                 site_id: str | None, public_key_b64: str | None,
                 token: str | None = None) -> str:
    """Enrol (or re-key) a device; returns its HTTP bearer token (made when not given).

    Only the token's SHA-256 is stored: the returned token is shown once.
    """
    import base64

    token = token or secrets.token_urlsafe(32)
    kid = kid_of(base64.b64decode(public_key_b64)) if public_key_b64 else None
    add_tenant(conn, tenant_id)
    with conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))
        conn.execute(
            "INSERT INTO devices (tenant_id, device_id, site_id, token_sha256, public_key,"
            " public_kid) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, device_id)"
            " DO UPDATE SET site_id = excluded.site_id, token_sha256 = excluded.token_sha256,"
            " public_key = excluded.public_key, public_kid = excluded.public_kid",
            (tenant_id, device_id, site_id, token_hash(token), public_key_b64, kid))
    return token
