"""The `gated` command's exit codes and outputs, run as an installer runs them."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from tests.daemon.harness import Site, gated

EXAMPLES = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.write_config('[[lanes]]\nid = "main-in"\n')
    return s


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = gated("check-config", str(EXAMPLES / "gated.example.toml"))
    assert ok.returncode == 0 and "ok (2 lane(s)" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (EXAMPLES / "gated.example.toml").read_text().replace("pulse_ms = 800", "pulse_ms = -5", 1)
    )
    result = gated("check-config", str(bad))
    assert result.returncode == 78
    assert result.stderr.strip() == (
        f"gated: invalid configuration: {bad}: lanes[0].relay.pulse_ms: expected int >= 1"
    )
    missing = gated("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78 and "cannot read" in missing.stderr


def test_rules_import_export_round_trip_and_audit(site: Site, tmp_path: Path) -> None:
    result = gated(
        "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
    )
    assert result.returncode == 0, result.stderr
    assert "rules imported as version 1" in result.stdout
    exported = gated("rules", "export", "--config", str(site.config))
    assert exported.returncode == 0
    again = tmp_path / "again.json"
    again.write_text(exported.stdout)
    second = gated("rules", "import", str(again), "--config", str(site.config))
    assert second.returncode == 0 and "version 2" in second.stdout
    assert json.loads(gated("rules", "export", "--config", str(site.config)).stdout) == json.loads(
        exported.stdout
    )
    csv_dir = tmp_path / "csv"
    assert (
        gated(
            "rules",
            "export",
            "--format",
            "csv",
            "--out",
            str(csv_dir),
            "--config",
            str(site.config),
        ).returncode
        == 0
    )
    assert (csv_dir / "vehicles.csv").exists()
    audit = site.rows("audit_logs")
    assert [a["action"] for a in audit] == ["rules_import", "rules_import"]
    assert json.loads(audit[0]["new_values"])["version"] == 1
    assert audit[0]["status"] == "success"


def test_bad_rules_file_changes_nothing_and_names_every_line(site: Site, tmp_path: Path) -> None:
    assert (
        gated(
            "rules", "import", str(EXAMPLES / "rules.example"), "--config", str(site.config)
        ).returncode
        == 0
    )
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "residents.csv").write_text("id,name\nr-1,Ann\nr-1,Duplicate\n,No id\n")
    (folder / "vehicles.csv").write_text("plate,resident_id\nAB-12-CD,r-404\n")
    result = gated("rules", "import", str(folder), "--config", str(site.config))
    assert result.returncode == 1
    assert "nothing changed" in result.stderr
    for needle in ("residents.csv", "line 3", "line 4", "vehicles.csv", "line 2"):
        assert needle in result.stderr, result.stderr
    # still the example's version, and the failed attempt is audited
    exported = json.loads(gated("rules", "export", "--config", str(site.config)).stdout)
    assert {r["id"] for r in exported["residents"]} >= {"r-001", "r-002"}
    audit = site.rows("audit_logs")
    assert [a["status"] for a in audit] == ["success", "failure"]


def _journal_with_events(site: Site) -> None:
    assert (
        gated(
            "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
        ).returncode
        == 0
    )
    assert (
        gated(
            "rules", "import", str(EXAMPLES / "rules.example"), "--config", str(site.config)
        ).returncode
        == 0
    )
    assert (
        gated(
            "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
        ).returncode
        == 0
    )


def test_journal_verify_stats_export(site: Site) -> None:
    _journal_with_events(site)
    db = str(site.journal)
    verify = gated("journal", "verify", "--db", db)
    assert verify.returncode == 0 and "intact: 3 rows" in verify.stdout
    stats = json.loads(gated("journal", "stats", "--db", db).stdout)
    assert stats["audit"]["rows"] == 3 and stats["audit"]["unsynced"] == 3
    lines = gated("journal", "export", "--db", db).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    as_csv = gated("journal", "export", "--db", db, "--format", "csv", "--stream", "audit").stdout
    assert [row["action"] for row in csv.DictReader(io.StringIO(as_csv))] == ["rules_import"] * 3
    assert gated("journal", "export", "--db", db, "--since", "2999-01-01").stdout == ""
    bad_since = gated("journal", "export", "--db", db, "--since", "yesterday-ish")
    assert bad_since.returncode == 1 and "--since" in bad_since.stderr

    # Tamper as an attacker would: drop the triggers, edit a row.
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE audit_logs SET status = 'failure' WHERE seq = 2")
    conn.commit()
    conn.close()
    tampered = gated("journal", "verify", "--db", db)
    assert tampered.returncode == 1
    assert "seq 2" in tampered.stdout
