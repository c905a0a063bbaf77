"""The rule set from the status page (admin), the dashboard's charts and the event page's
names, over HTTP against a real `gated run`; the refusal when the central service owns
the rule set against a daemon with sync configured on a real Mosquitto.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.daemon.harness import CAMERA_PATH, DaemonProcess, audit, wait_until
from tests.support.broker import mosquitto_available, mosquitto_broker
from tests.support.signer import public_b64
from tests.web.support import WebSite, csrf_of, make_site, serving

pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script>"
KINDS = ("residents", "vehicles", "tags", "groups", "schedules")
GOOD = {  # one valid add form per kind (ids unique per test run by the caller's suffix)
    "residents": {"name": "Cora Vos", "access_points": "*"},
    "vehicles": {"plate": "KK-11-LL", "resident_id": "r-1"},
    "tags": {"tag": "0012345678", "resident_id": "r-1"},
    "groups": {"id": "g-test", "name": "Test group", "access_points": "*"},
    "schedules": {"id": "s-test", "name": "Office", "windows": "mon-fri 07:00-19:00"},
}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebSite, DaemonProcess]]:
    site = make_site(tmp_path_factory.mktemp("rules"))
    with serving(site) as daemon:
        site.relay.drain(0.3)
        yield site, daemon
    site.relay.close()


def push(site: WebSite, plate: str) -> int:
    """A camera read in gated's generic JSON format."""
    url = f"http://127.0.0.1:{site.site.listener_port}{CAMERA_PATH}"
    return httpx.post(url, json={"plate": plate, "confidence": 0.95}, timeout=10).status_code


def rows_of(site: WebSite, plate: str) -> list[dict[str, Any]]:
    return [r for r in site.site.rows() if r["vehicle_plate"] == plate]


def read(site: WebSite, plate: str) -> dict[str, Any]:
    """Push a read of `plate` and return the journal row it made once committed.

    A repeat inside the lane's dedup window is the same vehicle (no new row): it is pushed
    again until a row of its own commits.
    """
    seen = len(rows_of(site, plate))
    for _ in range(10):
        assert push(site, plate) == 200
        if wait_until(lambda: len(rows_of(site, plate)) > seen, 2):
            return rows_of(site, plate)[-1]
    raise AssertionError(f"no journal row for a read of {plate}")


def version_of(page: str) -> int:
    return int(re.search(r"rule-set version (\d+)", page).group(1))  # type: ignore[union-attr]


def lane_version(client: httpx.Client) -> int:
    return int(client.get("/api/status").json()["status"]["lanes"]["main-in"]["rules_version"])


# --- roles, CSRF, input ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_rule_form_needs_an_admin_and_the_csrf_token(
        web: tuple[WebSite, Any], kind: str) -> None:
    site, _ = web
    guard = site.login("gus")
    assert guard.get(f"/rules/{kind}").status_code == 403
    assert guard.post(f"/rules/{kind}", data={"csrf": csrf_of(guard), **GOOD[kind]}
                      ).status_code == 403
    assert guard.post(f"/rules/{kind}/r-1/deactivate",
                      data={"csrf": csrf_of(guard)}).status_code == 403
    admin = site.login("ada")
    before = lane_version(admin)
    assert admin.post(f"/rules/{kind}", data=GOOD[kind]).status_code == 403
    assert admin.post(f"/rules/{kind}", data={"csrf": "wrong", **GOOD[kind]}).status_code == 403
    assert admin.post(f"/rules/{kind}/r-1", data={"name": "x"}).status_code == 403
    assert admin.post(f"/rules/{kind}/r-1/deactivate").status_code == 403
    assert lane_version(admin) == before  # nothing was saved
    assert not [r for r in audit(site.site, "rules_edit") if r["actor_id"] == "gus"]


@pytest.mark.parametrize(("kind", "form", "field"), [
    ("residents", {"unit": "1A"}, "name"),
    ("residents", {"id": "bad id!", "name": "Dee"}, "id"),
    ("residents", {"name": "Dee\nline"}, "name"),
    ("residents", {"name": "Dee", "groups": "no-such-group"}, "groups"),
    ("residents", {"name": "Dee", "active": "maybe"}, "active"),
    ("residents", {"name": "Dee", "plate": "!!!"}, "plate"),
    ("vehicles", {"plate": "ZZ99ZZ", "resident_id": "r-404"}, "resident_id"),
    ("vehicles", {"plate": "AB123CD", "resident_id": "r-1"}, "plate"),  # already used
    ("vehicles", {"plate": "x" * 40, "resident_id": "r-1"}, "plate"),
    ("tags", {"resident_id": "r-1"}, "tag"),
    ("groups", {"name": "no id"}, "id"),
    ("groups", {"id": "g-bad", "schedule_id": "s-404"}, "schedule_id"),
    ("schedules", {"id": "s-bad", "windows": "mon-fri 25:00-26:00"}, "windows"),
    ("schedules", {"id": "s-bad", "exceptions": "2025-13-40 closed"}, "exceptions"),
])
def test_invalid_input_is_422_naming_the_field_and_changes_nothing(
        web: tuple[WebSite, Any], kind: str, form: dict[str, str], field: str) -> None:
    site, _ = web
    admin = site.login("ada")
    before = lane_version(admin)
    edits = len(audit(site.site, "rules_edit"))
    answer = admin.post(f"/rules/{kind}", data={"csrf": csrf_of(admin), **form})
    assert answer.status_code == 422, answer.text
    error = re.search(r'<p class="error">(.*?)</p>', answer.text, re.S)
    assert error, answer.text[-800:]
    assert re.match(rf"(.*; )?{field}: ", error.group(1)), error.group(1)
    assert lane_version(admin) == before
    assert len(audit(site.site, "rules_edit")) == edits


def test_a_new_resident_with_a_vehicle_opens_the_gate_at_once_and_is_named(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    admin = site.login("ada")
    token = csrf_of(admin)
    assert read(site, "NEW123X")["decision_reason"] == "unknown_plate"
    added = admin.post("/rules/residents", data={
        "csrf": token, "id": "r-new", "name": "Noor Bakker", "unit": "7C",
        "access_points": "*", "plate": "NEW-123-X"})
    assert added.status_code == 200, added.text
    version = version_of(added.text)
    # No waiting for the rule poll: the save answers once the lanes decide with it.
    assert lane_version(admin) >= version
    row = read(site, "NEW123X")
    assert (row["event_type"], row["decision_reason"], row["resident_id"]) == (
        "entry", "resident", "r-new")
    assert row["rules_version"] >= version
    edit = [r for r in audit(site.site, "rules_edit") if r["resource_id"] == "residents/r-new"]
    assert [(r["actor_id"], r["actor_role"], r["actor_type"]) for r in edit] == [
        ("ada", "admin", "guard")]
    # The event page names the resident, as the rule set has them now.
    page = admin.get(f"/events/{row['event_id']}").text
    assert "Noor Bakker" in re.search(r'id="resident-name">(.*?)</dd>', page).group(1)  # type: ignore[union-attr]
    renamed = admin.post("/rules/residents/r-new", data={
        "csrf": token, "name": "Noor de Bakker", "unit": "7C", "active": "yes",
        "access_points": "*"})
    assert renamed.status_code == 200, renamed.text
    assert "Noor de Bakker" in admin.get(f"/events/{row['event_id']}").text
    # Search finds the resident; the edit form carries the stored values.
    listed = admin.get("/rules/residents", params={"q": "de bakker"}).text
    assert "r-new" in listed and "r-1" not in re.sub(r"r-new", "", listed.split("rules-list")[1])
    form = admin.get("/rules/residents/r-new").text
    assert 'value="7C"' in form
    # Deactivated: the next read is refused as inactive, again without waiting.
    gone = admin.post("/rules/residents/r-new/deactivate", data={"csrf": token})
    assert gone.status_code == 200, gone.text
    assert read(site, "NEW123X")["decision_reason"] == "inactive"
    assert admin.post("/rules/residents/r-404/deactivate", data={"csrf": token}
                      ).status_code == 404


def test_vehicles_tags_groups_and_schedules_are_added_edited_and_taken_away(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    admin = site.login("ada")
    token = csrf_of(admin)
    for kind in ("schedules", "groups", "vehicles", "tags"):
        answer = admin.post(f"/rules/{kind}", data={"csrf": token, **GOOD[kind]})
        assert answer.status_code == 200, answer.text
        assert re.search(r"(\S+) added \(rule-set version", answer.text)
    # A vehicle added on its own decides at once.
    assert read(site, "KK11LL")["decision_reason"] == "resident"
    vehicle_id = re.search(r"(v-web-[0-9a-f]+)", admin.get(
        "/rules/vehicles", params={"q": "KK11LL"}).text).group(1)  # type: ignore[union-attr]
    off = admin.post(f"/rules/vehicles/{vehicle_id}/deactivate", data={"csrf": token})
    assert off.status_code == 200 and "deactivated" in off.text
    assert read(site, "KK11LL")["decision_reason"] == "inactive"
    # Edit a group onto the schedule; a schedule a group still names cannot go.
    edited = admin.post("/rules/groups/g-test", data={
        "csrf": token, "name": "Test group", "access_points": "*", "schedule_id": "s-test"})
    assert edited.status_code == 200, edited.text
    assert 'value="s-test"' in admin.get("/rules/groups/g-test").text
    refused = admin.post("/rules/schedules/s-test/deactivate", data={"csrf": token})
    assert refused.status_code == 409 and "schedule" in refused.text
    assert admin.post("/rules/groups/g-test/deactivate", data={"csrf": token}
                      ).status_code == 200
    removed = admin.post("/rules/schedules/s-test/deactivate", data={"csrf": token})
    assert removed.status_code == 200 and "s-test removed" in removed.text
    assert admin.get("/rules/groups/g-test").status_code == 404
    assert admin.post("/rules/groups", data={"csrf": token, **GOOD["groups"], "id": "r-1"}
                      ).status_code == 200  # ids are per kind
    assert admin.post("/rules/groups", data={"csrf": token, **GOOD["groups"], "id": "r-1"}
                      ).status_code == 422  # already used
    assert admin.get("/rules/nothing").status_code == 404


def test_hostile_text_in_the_rule_set_renders_inert(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    admin = site.login("ada")
    token = csrf_of(admin)
    added = admin.post("/rules/residents", data={
        "csrf": token, "id": "r-evil", "name": HOSTILE, "unit": '"><img src=x onerror=1>',
        "access_points": "*", "plate": "EV1L99"})
    assert added.status_code == 200, added.text
    row = read(site, "EV1L99")
    for path in ("/rules/residents", "/rules/residents?q=script", "/rules/residents/r-evil",
                 f"/events/{row['event_id']}", "/"):
        page = admin.get(path)
        assert page.status_code == 200, path
        assert HOSTILE not in page.text and "<img src=x" not in page.text, path
    assert "&lt;script&gt;" in admin.get(f"/events/{row['event_id']}").text


# --- the dashboard's charts --------------------------------------------------------------


def test_the_dashboard_charts_the_last_24_hours_from_the_journal(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    viewer = site.login("vera")
    viewer.get("/")  # the tally's first read, before these reads
    this_hour = int(time.time() // 3600 * 3600)
    for plate in ("AB123CD", "MN789PQ", "UNKNOWN1"):
        read(site, plate)
    page = viewer.get("/")
    assert page.status_code == 200
    if int(time.time() // 3600 * 3600) != this_hour:
        pytest.skip("the hour turned over during the test")
    rows = site.site.rows()
    mine = [r for r in rows if r["created_at"] >= this_hour]
    entries = sum(r["event_type"] in ("entry", "visitor_entry") for r in mine)
    denials = sum(r["event_type"] == "denied" for r in mine)
    exits = sum(r["event_type"] == "exit" for r in mine)
    label = dt.datetime.fromtimestamp(this_hour, dt.UTC).strftime("%H:00")  # site is UTC
    title = re.search(rf"<title>{label}: (\d+) entries, (\d+) exits, (\d+) denials</title>",
                      page.text)
    assert title, page.text[:3000]
    assert tuple(int(g) for g in title.groups()) == (entries, exits, denials)
    assert entries >= 2 and denials >= 1
    day = [r for r in rows if r["created_at"] >= time.time() - 86400]
    timed = [r["read_to_relay_ms"] for r in day if r["read_to_relay_ms"] is not None]
    summary = re.search(r'id="latency-summary">(.*?)</small>', page.text, re.S).group(1)  # type: ignore[union-attr]
    assert f"{len(timed)} reads" in summary
    assert f"max {max(timed):.2f} ms" in summary
    # Inline SVG only: no script, no inline style, nothing fetched from elsewhere.
    svg = re.findall(r"<svg.*?</svg>", page.text, re.S)
    assert len(svg) == 2
    assert not any("<script" in s or "style=" in s or "href" in s for s in svg)
    assert len(page.content) < 150_000


# --- the central service owns the rule set ------------------------------------------------


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")
def test_with_sync_owning_the_rule_set_every_edit_is_refused_409(tmp_path: Path) -> None:
    with mosquitto_broker(tmp_path / "broker") as broker:
        key = public_b64(Ed25519PrivateKey.generate())
        (tmp_path / "site").mkdir()
        site = make_site(tmp_path / "site", web_extra=f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
[sync]
enabled = true
service_public_keys = ["{key}"]
""")
        try:
            with serving(site):
                admin = site.login("ada")
                before = lane_version(admin)
                page = admin.get("/rules/residents")
                assert page.status_code == 200
                assert 'id="rules-owner"' in page.text and 'id="rules-form"' not in page.text
                assert "central service" in admin.get("/rules/deny").text
                token = csrf_of(admin)
                for path, form in (("/rules/residents", GOOD["residents"]),
                                   ("/rules/vehicles", GOOD["vehicles"]),
                                   ("/rules/residents/r-1", {"name": "X"}),
                                   ("/rules/residents/r-1/deactivate", {}),
                                   ("/rules/deny", {"plate": "XX000X"}),
                                   ("/rules/deny/d-1/remove", {})):
                    answer = admin.post(path, data={"csrf": token, **form})
                    assert answer.status_code == 409, (path, answer.text)
                    assert "owned by the central service" in answer.text
                assert lane_version(admin) == before
                assert audit(site.site, "rules_edit") == []
                # the gate still decides on its own rules
                assert read(site, "AB123CD")["decision_reason"] == "resident"
        finally:
            site.relay.close()


def test_the_event_page_names_a_pass_holder_and_their_host(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    guard = site.login("gus")
    issued = guard.post("/passes", data={"csrf": csrf_of(guard), "plate": "PASS55",
                                         "host": "r-1", "until": "4h", "name": "Piet Visser"})
    assert issued.status_code == 200, issued.text
    version = version_of(issued.text)
    assert wait_until(lambda: lane_version(guard) >= version, 20)
    row = read(site, "PASS55")
    assert (row["decision_reason"], row["pass_id"] is not None) == ("visitor_pass", True)
    page = guard.get(f"/events/{row['event_id']}").text
    holder = re.search(r'id="pass-holder">(.*?)</dd>', page, re.S).group(1)  # type: ignore[union-attr]
    assert holder.startswith("Piet Visser · host Ann Jansen"), holder
