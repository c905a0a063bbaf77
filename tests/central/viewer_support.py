"""The viewer on a real aiohttp server on loopback over the real PostgreSQL fixture.

Rows are seeded the way ingest stores them: tenants and devices by the owner (enrolment),
events, their event_ids entries and pictures by the service role with the tenant set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from gated.central.viewer import ViewerConfig, accounts, make_viewer_app
from tests.support.postgres import OWNER, SERVICE, PgServer

PASSWORD = "correct-horse-battery"
T0 = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC)


@dataclass
class Viewer:
    """A running viewer: its address, pool, database and picture store."""

    base: str
    pool: AsyncConnectionPool
    server: PgServer
    db: str
    snapshot_dir: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        """A browser-like client (keeps cookies, follows no redirect; closed at the end)."""
        client = httpx.AsyncClient(base_url=self.base, timeout=20, follow_redirects=False)
        self.clients.append(client)
        return client

    async def login(self, tenant: str, user: str, password: str = PASSWORD) -> httpx.AsyncClient:
        """A client logged in as `user` of `tenant`."""
        client = self.client()
        answer = await client.post("/login", data={"tenant": tenant, "user": user,
                                                   "password": password})
        assert answer.status_code == 303, answer.text
        return client

    async def add_user(self, tenant: str, name: str, role: str,
                       password: str = PASSWORD) -> None:
        """A viewer user, added as the CLI adds one."""
        async with accounts.tenant_tx(self.pool.connection, tenant) as conn:
            await accounts.add_user(conn, tenant, name, role, password)

    def owner_sql(self, tenant: str, statement: str, params: tuple[Any, ...] = ()) -> None:
        """One statement as the owner with the tenant set (enrolment, clock games)."""
        with self.server.connect(self.db, OWNER) as conn, conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
            conn.execute(statement, params)  # type: ignore[arg-type]

    def tenant(self, tenant: str, devices: dict[str, str]) -> None:
        """A tenant and its devices ({device_id: site_id})."""
        self.owner_sql(tenant, "INSERT INTO tenants (tenant_id) VALUES (%s)", (tenant,))
        for device, site in devices.items():
            self.owner_sql(tenant, "INSERT INTO devices (tenant_id, device_id, site_id) "
                                   "VALUES (%s, %s, %s)", (tenant, device, site))

    def access(self, tenant: str, device: str, seq: int, *, at: dt.datetime | None = None,
               picture: bytes | None = None, **fields: Any) -> str:
        """One access event as ingest stores it; its event id."""
        event_id = str(uuid.uuid4())
        created = at or T0 + dt.timedelta(minutes=seq)
        row: dict[str, Any] = {
            "event_id": event_id, "tenant_id": tenant, "device_id": device, "seq": seq,
            "site_id": fields.pop("site_id", "site-1"), "event_type": "entry",
            "access_point": "main", "created_at": created, "prev_hash": "0" * 64,
            "row_hash": hashlib.sha256(event_id.encode()).hexdigest(),
            "decision_reason": "resident", "authorization_method": "auto_plate",
            "rules_version": 7, "vehicle_plate": f"AB{seq:03d}CD", **fields}
        if isinstance(row.get("metadata"), dict):
            row["metadata"] = Jsonb(row["metadata"])
        with self.server.connect(self.db, SERVICE) as conn, conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
            if picture is not None:
                digest = hashlib.sha256(picture).hexdigest()
                relative = f"{digest[:2]}/{digest}.jpg"
                path = self.snapshot_dir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(picture)
                conn.execute("INSERT INTO snapshots (tenant_id, sha256, path, size, device_id) "
                             "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (tenant, digest, relative, len(picture), device))
                row["snapshot_sha256"] = digest
            conn.execute("INSERT INTO event_ids (tenant_id, event_id, device_id, stream, seq, "
                         "prev_hash, row_hash, created_at, chain) VALUES "
                         "(%s, %s, %s, 'access', %s, %s, %s, %s, 'linked')",
                         (tenant, event_id, device, seq, row["prev_hash"], row["row_hash"],
                          created))
            columns = ", ".join(row)
            marks = ", ".join(["%s"] * len(row))
            conn.execute(f"INSERT INTO access_logs ({columns}) VALUES ({marks})",  # type: ignore[arg-type]
                         tuple(row.values()))
        return event_id

    def audit(self, tenant: str, device: str, seq: int, **fields: Any) -> str:
        """One audit event as ingest stores it; its event id."""
        event_id = str(uuid.uuid4())
        created = fields.pop("at", T0 + dt.timedelta(minutes=seq))
        row: dict[str, Any] = {
            "event_id": event_id, "tenant_id": tenant, "device_id": device, "seq": seq,
            "site_id": "site-1", "action": "gate_open", "resource_type": "lane",
            "actor_type": "guard", "actor_id": "anna", "status": "success",
            "created_at": created, "prev_hash": "0" * 64,
            "row_hash": hashlib.sha256(event_id.encode()).hexdigest(), **fields}
        with self.server.connect(self.db, SERVICE) as conn, conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
            conn.execute("INSERT INTO event_ids (tenant_id, event_id, device_id, stream, seq, "
                         "prev_hash, row_hash, created_at) VALUES "
                         "(%s, %s, %s, 'audit', %s, %s, %s, %s)",
                         (tenant, event_id, device, seq, row["prev_hash"], row["row_hash"],
                          created))
            columns = ", ".join(row)
            marks = ", ".join(["%s"] * len(row))
            conn.execute(f"INSERT INTO audit_logs ({columns}) VALUES ({marks})",  # type: ignore[arg-type]
                         tuple(row.values()))
        return event_id


@asynccontextmanager
async def running_viewer(server: PgServer, db: str, snapshot_dir: Path, *,
                         pool_timeout: float = 30.0, **cfg: Any) -> AsyncIterator[Viewer]:
    """The viewer app on 127.0.0.1 (a free port) over a pool logged in as the service role."""
    pool = AsyncConnectionPool(server.conninfo(db, SERVICE), min_size=1, max_size=4, open=False,
                               timeout=pool_timeout)
    await pool.open(wait=True)
    app = make_viewer_app(pool, ViewerConfig(snapshot_dir=str(snapshot_dir), **cfg))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    viewer = Viewer(f"http://127.0.0.1:{port}", pool, server, db, snapshot_dir)
    try:
        yield viewer
    finally:
        for client in viewer.clients:
            await client.aclose()
        await runner.cleanup()
        await pool.close()


async def csrf_of(client: httpx.AsyncClient, path: str = "/events") -> str:
    """The CSRF token a page carries in its forms."""
    page = await client.get(path)
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)
