"""The schema: migrations recorded once, partitions, row-level security as the service sees it."""

from __future__ import annotations

import psycopg
import pytest

from gated.central.migrate import available, migrate
from gated.central.store import Store
from tests.support.device_sim import SimDevice
from tests.support.postgres import OWNER, SERVICE, PgServer

ACCESS = ("INSERT INTO access_logs (event_id, tenant_id, event_type, access_point, created_at,"
          " device_id, seq, prev_hash, row_hash) VALUES (gen_random_uuid(), %s, 'entry', 'main',"
          " now(), 'gate-1', %s, repeat('0', 64), repeat('1', 64))")


def _seed(server: PgServer, db: str) -> None:
    with server.connect(db, OWNER) as conn:
        for tenant in ("acme", "globex"):
            with conn.transaction():
                conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
                conn.execute("INSERT INTO tenants (tenant_id) VALUES (%s)", (tenant,))
                conn.execute("INSERT INTO devices (tenant_id, device_id) VALUES (%s, 'gate-1')",
                             (tenant,))


def test_migrations_are_recorded_and_not_applied_twice(pg_server: PgServer, pg_db: str) -> None:
    with pg_server.connect(pg_db, OWNER) as conn:
        assert migrate(conn) == []
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [v for v, _, _ in available()]


def test_monthly_partitions_exist_and_odd_times_go_to_the_default(pg_server: PgServer,
                                                                   pg_db: str) -> None:
    _seed(pg_server, pg_db)
    with pg_server.connect(pg_db, SERVICE) as conn, conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
        conn.execute(ACCESS.replace("now()", "'1970-01-02'"), ("acme", 1))
        conn.execute(ACCESS, ("acme", 2))
    with pg_server.connect(pg_db) as conn:
        parts = {r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'access_logs'::regclass")}
        assert "access_logs_default" in parts
        assert len(parts) >= 5
        assert conn.execute("SELECT count(*) FROM access_logs_default").fetchone() == (1,)
        # the 1970 row moves out when its month's partition is made
        conn.execute("SELECT gated_create_partitions('1970-01-01', 1)")
        assert conn.execute("SELECT count(*) FROM access_logs_default").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM access_logs_1970_01").fetchone() == (1,)
        # retention drops whole partitions
        dropped = [r[0] for r in conn.execute(
            "SELECT gated_drop_partitions_before('1980-01-01')")]
        assert sorted(dropped) == ["access_logs_1970_01", "audit_logs_1970_01"]


def test_a_tenant_sees_only_its_own_rows_and_no_tenant_sees_nothing(pg_server: PgServer,
                                                                     pg_db: str) -> None:
    _seed(pg_server, pg_db)
    with pg_server.connect(pg_db, SERVICE) as conn:
        for tenant, seqs in (("acme", (1, 2, 3)), ("globex", (1,))):
            with conn.transaction():
                conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
                for seq in seqs:
                    conn.execute(ACCESS, (tenant, seq))
        with conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
            rows = conn.execute("SELECT DISTINCT tenant_id FROM access_logs").fetchall()
            assert rows == [("acme",)]
            assert conn.execute("SELECT count(*) FROM devices").fetchone() == (1,)
        # the setting ends with the transaction: afterwards, and with none, nothing is visible
        for table in ("access_logs", "audit_logs", "devices", "tenants", "event_ids"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
        # a tenant cannot write another tenant's rows
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
            conn.execute(ACCESS, ("globex", 9))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(ACCESS, ("acme", 9))
    with pg_server.connect(pg_db) as conn:  # the superuser sees everything: 4 rows stored
        assert conn.execute("SELECT count(*) FROM access_logs").fetchone() == (4,)


@pytest.mark.parametrize("statement", [
    "UPDATE access_logs SET vehicle_plate = 'X'",
    "DELETE FROM access_logs",
    "UPDATE audit_logs SET status = 'failure'",
    "DELETE FROM audit_logs",
    "DELETE FROM event_ids",
    "UPDATE event_ids SET row_hash = 'x'",
    "DELETE FROM chain_heads",
    "DELETE FROM devices",
    "TRUNCATE access_logs",
    "SELECT * FROM access_logs_default",
    "DROP TABLE access_logs",
    "SELECT gated_drop_partitions_before('2100-01-01')",
])
def test_the_service_role_cannot_rewrite_or_remove_history(pg_server: PgServer, pg_db: str,
                                                           statement: str) -> None:
    _seed(pg_server, pg_db)
    with pg_server.connect(pg_db, SERVICE) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
        conn.execute(statement)  # type: ignore[arg-type]


def test_the_service_role_owns_nothing(pg_server: PgServer, pg_db: str, store: Store) -> None:
    _seed(pg_server, pg_db)
    sim = SimDevice("acme", "hq", "gate-1")
    assert store.ingest("acme", "gate-1", [sim.event()]).stored  # the session staged it
    with pg_server.connect(pg_db) as conn:
        # nothing lasting: only the staging tables of its own sessions (temporary, emptied
        # at every commit, gone with the session)
        owned = conn.execute(
            "SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_roles r "
            "ON r.oid = c.relowner WHERE r.rolname = %s AND c.relkind = 'r'",
            (SERVICE,)).fetchall()
        assert {persistence for _name, persistence in owned} <= {"t"}
        assert conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
            "WHERE r.rolname = %s AND c.relpersistence <> 't'", (SERVICE,)).fetchone() == (0,)
        flags = conn.execute("SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = %s",
                             (SERVICE,)).fetchone()
        assert flags == (False, False)
        forced = conn.execute(
            "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND NOT relforcerowsecurity",
            (["access_logs", "audit_logs", "devices", "tenants", "event_ids", "chain_heads",
              "snapshots"],)).fetchall()
        assert forced == []


def test_device_lookup_by_token_hash_crosses_tenants_only_for_that_question(
        pg_server: PgServer, pg_db: str) -> None:
    _seed(pg_server, pg_db)
    with pg_server.connect(pg_db, OWNER) as conn, conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', 'globex', true)")
        conn.execute("UPDATE devices SET token_sha256 = 'abc' WHERE device_id = 'gate-1'")
    with pg_server.connect(pg_db, SERVICE) as conn:
        assert conn.execute("SELECT * FROM gated_device_by_token('abc')").fetchall() == [
            ("globex", "gate-1", None)]
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
        assert conn.execute("SELECT * FROM gated_device_by_token('nope')").fetchall() == []
