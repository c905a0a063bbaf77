"""The `gated` command's exit codes and outputs, run as an installer runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gated.errors import GatedError
from tests.daemon.harness import Site, gated

EXAMPLES = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    s = Site(tmp_path)
    s.write_config('[[lanes]]\nid = "main-in"\n')
    return s


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = gated("check-config", str(EXAMPLES / "gated.example.toml"))
    assert ok.returncode == 0 and "ok (2 lanes," in ok.stdout
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


# --- the installer's path ---------------------------------------------------------------------


def _unwritable_dirs(tmp_path: Path) -> list[Path]:
    """Directories no state can be created under, whoever runs the test."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    dirs = [blocker / "state"]
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        dirs.append(locked / "state")
    else:
        # root may write anywhere a mode bit guards; sysfs refuses mkdir even to root
        dirs.append(Path("/sys/gated-state-test/state"))
    return dirs


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `gated: …` error line of a refused command (after the line naming its files)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("gated: using ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("which", ["rules", "journal"])
def test_rules_import_under_an_unwritable_dir_refuses_in_one_line(
    tmp_path: Path, which: str
) -> None:
    for i, state in enumerate(_unwritable_dirs(tmp_path)):
        site = Site(tmp_path / f"site{i}")
        site.root.mkdir()
        site.write_config('[[lanes]]\nid = "main-in"\n')
        text = site.config.read_text()
        if which == "rules":
            text = text.replace(str(site.root / "rules.sqlite3"), str(state / "rules.sqlite3"))
        else:
            text = text.replace(str(site.journal), str(state / "journal.sqlite3"))
        site.config.write_text(text)
        result = gated(
            "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
        )
        assert result.returncode != 0
        line = _one_error_line(result)
        assert line.startswith("gated: ") and str(state) in line, line
        # refused before anything was written: neither store was created
        assert not (site.root / "rules.sqlite3").exists()
        assert not site.journal.exists()


def test_rules_import_creates_missing_state_dirs_private(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write_config('[[lanes]]\nid = "main-in"\n')
    state = tmp_path / "var" / "lib" / "gated"
    site.config.write_text(site.config.read_text().replace(str(tmp_path), str(state)))
    result = gated(
        "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
    )
    assert result.returncode == 0, result.stderr
    assert (state / "rules.sqlite3").exists() and (state / "journal.sqlite3").exists()
    # plates, names and addresses: not readable by every user of the machine
    assert state.stat().st_mode & 0o777 == 0o750


def test_run_with_an_unwritable_state_dir_exits_in_one_line(tmp_path: Path) -> None:
    state = _unwritable_dirs(tmp_path)[0]
    site = Site(tmp_path / "site")
    site.root.mkdir()
    site.write_config('[[lanes]]\nid = "main-in"\n[lanes.relay]\nkind = "fake"\n')
    site.config.write_text(
        site.config.read_text().replace(str(site.snapshots), str(state / "snapshots"))
    )
    result = gated("run", "--config", str(site.config), timeout=30)
    assert result.returncode != 0
    line = _one_error_line(result)
    assert str(state) in line, line


def test_commands_say_which_config_and_files_they_use(site: Site, tmp_path: Path) -> None:
    imported = gated(
        "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
    )
    assert imported.returncode == 0, imported.stderr
    for needle in (str(site.config), str(site.journal), str(site.root / "rules.sqlite3")):
        assert needle in imported.stderr, imported.stderr
    exported = gated("rules", "export", "--config", str(site.config))
    assert str(site.config) in exported.stderr and str(site.root / "rules.sqlite3") in (
        exported.stderr
    )
    json.loads(exported.stdout)  # the information goes to stderr: stdout stays a clean document
    stats = gated("journal", "stats", "--db", str(site.journal))
    assert stats.returncode == 0
    assert str(site.journal) in stats.stderr and "config" in stats.stderr
    json.loads(stats.stdout)


def test_journal_stats_finds_the_snapshots_beside_the_db(site: Site, tmp_path: Path) -> None:
    _journal_with_events(site)
    site.snapshots.mkdir()
    (site.snapshots / "2024-05-07").mkdir()
    (site.snapshots / "2024-05-07" / "x.jpg").write_bytes(b"\xff\xd8" + b"0" * 998)
    stats = json.loads(gated("journal", "stats", "--db", str(site.journal)).stdout)
    assert stats["snapshots"] == {"files": 1, "bytes": 1000}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = json.loads(
        gated("journal", "stats", "--db", str(site.journal), "--snapshots", str(elsewhere)).stdout
    )
    assert given["snapshots"] == {"files": 0, "bytes": 0}


@pytest.mark.slow
def test_demo_journal_stats_shows_its_snapshots(tmp_path: Path) -> None:
    demo = gated(
        "demo", "--dir", str(tmp_path), "--duration", "4", "--interval", "0.2", "--port", "0"
    )
    assert demo.returncode == 0, demo.stderr
    stats = json.loads(gated("journal", "stats", "--db", str(tmp_path / "journal.sqlite3")).stdout)
    assert stats["access"]["rows"] > 0
    assert stats["snapshots"]["files"] > 0, stats


def test_counts_are_printed_with_correct_plurals(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write_config('[[lanes]]\nid = "main-in"\n')
    check = gated("check-config", str(site.config))
    assert "ok (1 lane," in check.stdout, check.stdout
    rules = tmp_path / "one.json"
    rules.write_text(
        json.dumps(
            {
                "format": "gated-rules",
                "format_version": 1,
                "residents": [{"id": "r-1", "name": "Ann"}],
                "vehicles": [{"id": "v-1", "plate": "AB-12-CD", "resident_id": "r-1"}],
                "visitor_passes": [],
            }
        )
    )
    imported = gated("rules", "import", str(rules), "--config", str(site.config))
    assert imported.returncode == 0, imported.stderr
    assert "1 resident," in imported.stdout and "1 vehicle" in imported.stdout, imported.stdout
    assert "0 visitor passes" in imported.stdout, imported.stdout
    verify = gated("journal", "verify", "--db", str(site.journal))
    assert "1 row " in verify.stdout and "1 rows" not in verify.stdout, verify.stdout


def test_version() -> None:
    from gated import __version__

    result = gated("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gated {__version__}"


def test_demo_on_a_port_in_use_refuses_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gated("demo", "--dir", str(tmp_path), "--duration", "3", "--port", str(port))
    assert result.returncode != 0
    assert f"127.0.0.1:{port}/anpr" not in result.stdout  # no URL that would not answer
    line = _one_error_line(result)
    assert str(port) in line and "in use" in line, line


def test_demo_default_port_falls_back_to_a_free_one() -> None:
    from gated.demo import listener_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        chosen, note = listener_port(busy, explicit=False)
        assert chosen != busy and chosen > 0
        assert str(busy) in note and str(chosen) in note
        with pytest.raises(GatedError, match=f"{busy}.*in use"):
            listener_port(busy, explicit=True)
    assert listener_port(busy, explicit=True) == (busy, "")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root creates files for another user")
def test_rules_import_as_root_gives_new_files_to_the_state_dirs_owner(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write_config('[[lanes]]\nid = "main-in"\n')
    state = tmp_path / "state"  # as /var/lib/gated, made for the service user before the import
    state.mkdir(mode=0o750)
    service_user = (65534, 65534)
    try:
        os.chown(state, *service_user)
    except PermissionError:
        pytest.skip("this root may not chown")
    site.config.write_text(
        site.config.read_text()
        .replace(str(site.journal), str(state / "journal.sqlite3"))
        .replace(str(tmp_path / "rules.sqlite3"), str(state / "db" / "rules.sqlite3"))
    )
    result = gated(
        "rules", "import", str(EXAMPLES / "rules.example.json"), "--config", str(site.config)
    )
    assert result.returncode == 0, result.stderr
    # The daemon runs as the service user: it must be able to write what the installer made.
    made = [state / "journal.sqlite3", state / "db", state / "db" / "rules.sqlite3"]
    assert [(p.stat().st_uid, p.stat().st_gid) for p in made] == [service_user] * 3
