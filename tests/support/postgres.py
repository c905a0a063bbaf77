"""A throw-away PostgreSQL cluster for tests and benchmarks: Debian's binaries, no service.

`initdb` in a temporary folder, `postgres` listening only on a Unix socket in that folder
(no TCP), the gated roles created and the migrations applied. PostgreSQL refuses to run as
root, so when the tests run as root (CI, containers) the cluster is made and run by an
unprivileged account (`postgres` when Debian's package created it, else `nobody`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from gated.central.migrate import migrate

SUPERUSER = "gated_admin"
OWNER = "gated_owner"
SERVICE = "gated_service"


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them in /usr/lib/postgresql/N/bin)."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found: run scripts/setup.sh --test (Debian's postgresql)")


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix and uid/gid to run the server as (an unprivileged user under root)."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"], entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no unprivileged account to run PostgreSQL as")


@dataclass
class PgServer:
    """A running throw-away cluster: socket folder, port, superuser."""

    socket_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        """A libpq connection string over the Unix socket."""
        return f"host={self.socket_dir} port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname: str = "postgres", user: str = SUPERUSER,
                **kwargs: Any) -> psycopg.Connection[Any]:
        """A connection (autocommit unless told otherwise)."""
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.conninfo(dbname, user), **kwargs)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new database owned by gated_owner; migrated when no template is given."""
        name = name or f"gated_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            if template:
                conn.execute(f'CREATE DATABASE "{name}" OWNER {OWNER} TEMPLATE "{template}"')
            else:
                conn.execute(f'CREATE DATABASE "{name}" OWNER {OWNER}')
        if not template:
            with psycopg.connect(self.conninfo(name, OWNER), autocommit=True) as conn:
                migrate(conn)
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, ending its connections."""
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then kill if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_postgres(base: Path, port: int = 5432) -> PgServer:
    """initdb in `base`/data and start postgres on a Unix socket in `base`; roles created."""
    prefix, uid, gid = _run_as()
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    if uid is not None:
        os.chown(base, uid, gid or -1)
    subprocess.run(
        [*prefix, pg_bin("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
         "-E", "UTF8", "--locale=C", "--no-sync"],
        check=True, capture_output=True)
    log = base / "postgres.log"
    log_file = open(log, "wb")  # noqa: SIM115  # the server writes it while it runs
    process = subprocess.Popen(
        [*prefix, pg_bin("postgres"), "-D", str(data), "-k", str(base), "-p", str(port),
         "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "max_connections=200",
         "-c", "shared_buffers=64MB"],
        stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    server = PgServer(base, port, process, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with server.connect() as conn:
                conn.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    with server.connect() as conn:
        conn.execute(f"CREATE ROLE {OWNER} LOGIN")
        conn.execute(f"CREATE ROLE {SERVICE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                     "NOBYPASSRLS")
    return server


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PgServer]:
    """A cluster in a temporary folder, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="gated-pg-"))
    os.chmod(base, 0o755)
    server = start_postgres(base / "pg")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
