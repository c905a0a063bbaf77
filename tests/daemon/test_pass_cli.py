"""`gated pass add|revoke|list` against a running daemon: a pass added on the command line
opens the gate for its plate within the rule poll, a revoked one no longer does, and each
change is one rule-set version and one audit row without the plate or the name in it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    RESIDENT_RULES,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_relay,
    post_until_accepted,
    running,
    wait_until,
)


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def versions(site: Site) -> list[str]:
    conn = sqlite3.connect(site.root / "rules.sqlite3")
    try:
        return [r[0] for r in conn.execute("SELECT source FROM changesets ORDER BY version")]
    finally:
        conn.close()


@pytest.mark.slow
def test_pass_added_and_revoked_while_running(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    site.write_config(generic_lane(lcus_relay(relay_port, 100), dedup_window_s=0.2))
    site.import_rules(RESIDENT_RULES)
    config = str(site.config)
    with running(site):
        added = gated("pass", "add", "VIS 42", "--host", "r-1", "--until", "2h", "--uses", "2",
                      "--name", "Bob Visitor", "--id", "p-bob", "--config", config)
        assert added.returncode == 0, added.stderr
        assert added.stdout.startswith("pass p-bob added (rule-set version 2): valid until")
        assert "2 uses" in added.stdout

        def decided() -> list[str]:
            return [r["decision_reason"] for r in site.rows()]

        # the daemon picks the new version up within its rule poll (2 s)
        def opened() -> bool:
            post_until_accepted(site.listener_port, CAMERA_PATH, "VIS42")
            return bool(wait_until(lambda: "visitor_pass" in decided(), 0.5))

        assert wait_until(opened, 15), decided()
        listed = gated("pass", "list", "--config", config)
        assert "p-bob\tVIS42\thost r-1" in listed.stdout and "1 pass\n" in listed.stderr

        revoked = gated("pass", "revoke", "p-bob", "--config", config)
        assert revoked.returncode == 0 and "rule-set version 3" in revoked.stdout

        def denied_again() -> bool:
            before = len(site.rows())
            post_until_accepted(site.listener_port, CAMERA_PATH, "VIS42")
            wait_until(lambda: len(site.rows()) > before, 2)
            return site.rows()[-1]["decision_reason"] == "unknown_plate"

        assert wait_until(denied_again, 15, every_s=0.3), decided()
    assert versions(site)[1:] == ["gated pass add", "gated pass revoke"]  # after the import
    [add_row] = audit(site, "pass_add")
    [revoke_row] = audit(site, "pass_revoke")
    assert add_row["resource_id"] == revoke_row["resource_id"] == "p-bob"
    assert add_row["actor_type"] == "local_user"
    details = json.loads(add_row["new_values"])
    assert details["rules_version"] == 2 and details["max_uses"] == 2
    for row in (add_row, revoke_row):
        text = json.dumps(row, default=str)
        assert "VIS42" not in text and "VIS 42" not in text and "Bob" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "someday"], "neither an ISO 8601 time"),
        (["--until", "2h", "--from", "3h"], "--until must be later than --from"),
        (["--until", "2h", "--uses", "0"], "--uses must be at least 1"),
        (["--until", "2h", "--host", "nobody"], "nobody"),
    ],
)
def test_bad_pass_is_refused_in_one_line_and_changes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    site = Site(tmp_path)
    site.write_config("")
    site.import_rules(RESIDENT_RULES)
    host = [] if "--host" in args else ["--host", "r-1"]
    result = gated("pass", "add", "VIS42", *host, *args, "--config", str(site.config))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("gated: using")]
    assert message in "\n".join(errors) and "Traceback" not in result.stderr
    assert len(versions(site)) == 1  # only the import
    assert audit(site, "pass_add") == []


def test_revoking_an_unknown_pass_says_so(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.write_config("")
    site.import_rules(RESIDENT_RULES)
    result = gated("pass", "revoke", "p-none", "--config", str(site.config))
    assert result.returncode == 1 and "no visitor pass 'p-none'" in result.stderr
