"""`gated central user …`: the first admin of a tenant, made from the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.central.viewer_support import running_viewer
from tests.support.postgres import SERVICE, PgServer

CLI = [sys.executable, "-m", "gated", "central", "user"]


def _cli(server: PgServer, db: str, *args: str,
         stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--db", server.conninfo(db, SERVICE)], input=stdin,
                          capture_output=True, text=True, timeout=60)


async def test_the_first_admin_logs_in_and_mistakes_are_one_line(pg_server: PgServer,
                                                                  pg_db: str,
                                                                  tmp_path: Path) -> None:
    async with running_viewer(pg_server, pg_db, tmp_path / "pictures") as viewer:
        viewer.tenant("acme", {})
        made = _cli(pg_server, pg_db, "add", "--tenant", "acme", "ada", "--role", "admin",
                    "--password-stdin", stdin="first-admin-pass\n")
        assert made.returncode == 0, made.stderr
        assert "user ada of acme added (admin)" in made.stdout
        assert "first-admin-pass" not in made.stdout + made.stderr
        ada = await viewer.login("acme", "ada", "first-admin-pass")
        assert (await ada.get("/users")).status_code == 200

        for args, stdin, said in (
            (("add", "--tenant", "acme", "ada", "--role", "admin", "--password-stdin"),
             "another-long-one\n", "user 'ada' exists"),
            (("add", "--tenant", "nosuch", "bob", "--role", "viewer", "--password-stdin"),
             "another-long-one\n", "no tenant 'nosuch'"),
            (("add", "--tenant", "acme", "bob", "--role", "viewer", "--password-stdin"),
             "short\n", "at least 10 characters"),
            (("add", "--tenant", "bad tenant!", "bob", "--role", "viewer", "--password-stdin"),
             "another-long-one\n", "tenant: letters"),
            (("remove", "--tenant", "acme", "nobody"), "", "no user 'nobody'"),
        ):
            failed = _cli(pg_server, pg_db, *args, stdin=stdin)
            assert failed.returncode == 1, (args, failed.stdout)
            assert said in failed.stderr and "Traceback" not in failed.stderr, failed.stderr

        listed = _cli(pg_server, pg_db, "list", "--tenant", "acme")
        assert listed.stdout.split() == ["ada", "admin"]
        changed = _cli(pg_server, pg_db, "passwd", "--tenant", "acme", "ada",
                       "--password-stdin", stdin="second-admin-pass\n")
        assert changed.returncode == 0, changed.stderr
        assert (await ada.get("/users")).status_code == 401  # her sessions ended
        await viewer.login("acme", "ada", "second-admin-pass")
        with pg_server.connect(pg_db, SERVICE) as conn, conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
            actions = [r[0] for r in conn.execute(
                "SELECT action FROM viewer_audit WHERE actor LIKE 'unix:%%' ORDER BY id")]
        assert actions == ["user_add", "user_passwd"]
