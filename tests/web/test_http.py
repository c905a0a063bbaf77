"""The status page over HTTP against a real `gated run`: login, roles, CSRF, status codes,
hostile input, guard actions through the control plane, the live feed, lists, replay.

One daemon serves the module (an LCUS relay on a pty, a generic JSON camera, three users
made with `gated user add`); lockouts get daemons of their own.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_OFF,
    LCUS_ON,
    DaemonProcess,
    audit,
    lcus_frames,
    make_jpeg,
    post_until_accepted,
    wait_audit,
    wait_until,
)
from tests.web.support import WebSite, add_user, csrf_of, make_site, serving

pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script>"
FORMULA = '=HYPERLINK("http://x.example","y")'


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebSite, DaemonProcess]]:
    site = make_site(tmp_path_factory.mktemp("web"))
    add_user(site.site.config, "lou", "guard", "lockout-pass-123")
    with serving(site) as daemon:
        site.relay.drain(0.3)  # the board's initial "off" at start-up
        yield site, daemon
    site.relay.close()


def push(site: WebSite, plate: str, **extra: Any) -> int:
    """A camera read in gated's generic JSON format."""
    body = {"plate": plate, "confidence": 0.95, **extra}
    url = f"http://127.0.0.1:{site.site.listener_port}{CAMERA_PATH}"
    return httpx.post(url, json=body, timeout=10).status_code


def wait_rules(client: httpx.Client, page: str) -> None:
    """Wait until the lane decides with the rule-set version a page reported."""
    version = int(re.search(r"rule-set version (\d+)", page).group(1))  # type: ignore[union-attr]

    def loaded() -> bool:
        lanes = client.get("/api/status").json()["status"]["lanes"]
        return lanes["main-in"]["rules_version"] >= version

    assert wait_until(loaded, 20)  # the daemon's rule poll picks it up


# --- step 1: login, sessions, roles, CSRF, status codes ------------------------------------


def test_healthz_answers_without_login_and_says_nothing_more(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    answer = httpx.get(site.base + "/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"ok": True}


@pytest.mark.parametrize("path", [
    "/", "/events", "/events.csv", "/audit", "/passes", "/metrics", "/api/status",
    "/api/events", "/api/audit", "/api/live", f"/events/{uuid.uuid4()}",
    f"/snapshots/{uuid.uuid4()}.jpg", f"/api/events/{uuid.uuid4()}/replay",
])
def test_every_page_but_healthz_needs_a_login(web: tuple[WebSite, Any], path: str) -> None:
    site, _ = web
    answer = site.client().get(path)
    assert answer.status_code == 401
    assert "AB123CD" not in answer.text


def test_login_gives_a_strict_httponly_cookie_and_is_audited(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.client()
    answer = client.post("/login", data={"user": "gus", "password": "guard-pass-1234",
                                         "next": "/events"},
                         headers={"User-Agent": "test-browser/1"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/events"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here: a Secure cookie would never come back
    assert client.get("/events").status_code == 200
    rows = wait_audit(site.site, "login")
    assert any(r["actor_id"] == "gus" and r["actor_role"] == "guard"
               and r["ip_address"] == "127.0.0.1" and r["user_agent"] == "test-browser/1"
               for r in rows)


def test_next_cannot_send_a_guard_to_another_site(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        answer = site.client().post("/login", data={"user": "vera",
                                                    "password": "viewer-pass-123",
                                                    "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"


def test_a_wrong_password_is_401_audited_and_gives_no_session(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.client()
    answer = client.post("/login", data={"user": "vera", "password": "not-her-password"})
    assert answer.status_code == 401
    assert "set-cookie" not in answer.headers
    assert client.get("/api/status").status_code == 401
    rows = wait_audit(site.site, "login_failed")
    assert any(r["actor_id"] == "vera" and r["status"] == "failure" for r in rows)


def test_a_viewer_may_look_but_not_act_nor_read_the_audit(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("vera")
    assert client.get("/").status_code == 200
    assert client.get("/audit").status_code == 403
    assert client.get("/api/audit").status_code == 403
    assert client.get("/passes").status_code == 403
    token = csrf_of(client)  # the logout form's token
    before = len(audit(site.site, "gate_open"))
    answer = client.post("/lanes/main-in/open", data={"csrf": token, "confirm": "yes"})
    assert answer.status_code == 403
    assert LCUS_ON not in site.relay.drain(0.3)
    assert len(audit(site.site, "gate_open")) == before


def test_without_the_csrf_token_nothing_moves(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    before = len(audit(site.site, "gate_open"))
    for form, headers in (({"confirm": "yes"}, {}),
                          ({"confirm": "yes", "csrf": "forged"}, {}),
                          ({}, {"Content-Type": "application/json"})):
        answer = client.post("/lanes/main-in/open", data=form, headers=headers)
        assert answer.status_code == 403, answer.text
        answer = client.post("/api/lanes/main-in/open", json={"reason": "x"},
                             headers={"X-CSRF-Token": form.get("csrf", "")})
        assert answer.status_code == 403
    token = csrf_of(client)
    answer = client.post("/lanes/main-in/open", data={"csrf": token, "confirm": "yes"},
                         headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403  # a right token from another origin is still refused
    assert LCUS_ON not in site.relay.drain(0.3)
    assert len(audit(site.site, "gate_open")) == before


def test_open_asks_first_then_fires_the_relay_and_audits_the_guard(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    client.headers["User-Agent"] = "guard-phone/2"
    token = csrf_of(client)
    site.relay.drain(0.2)
    confirm = client.post("/lanes/main-in/open", data={"csrf": token, "reason": "courier"})
    assert confirm.status_code == 200
    assert 'name="confirm" value="yes"' in confirm.text
    assert LCUS_ON not in site.relay.drain(0.3)  # asking is not opening
    done = client.post("/lanes/main-in/open",
                       data={"csrf": token, "confirm": "yes", "reason": "courier"})
    assert done.status_code == 200, done.text
    assert "main-in opened" in done.text
    frames = lcus_frames(site.relay.read(8, timeout_s=5))
    assert frames == [LCUS_ON, LCUS_OFF]
    row = wait_audit(site.site, "gate_open")[-1]
    assert (row["actor_type"], row["actor_id"], row["actor_role"]) == ("guard", "gus", "guard")
    assert row["ip_address"] == "127.0.0.1" and row["user_agent"] == "guard-phone/2"
    assert row["request_id"] and row["status"] == "success"
    assert json.loads(row["metadata"])["reason"] == "courier"
    access = site.site.wait_rows(1)
    assert any(r["authorization_method"] == "manual_guard" and r["authorized_by"] == "gus"
               for r in access)


def test_hold_release_and_lockdown_through_the_json_api(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    headers = {"X-CSRF-Token": csrf_of(client)}

    def act(action: str) -> httpx.Response:
        return client.post(f"/api/lanes/main-in/{action}", json={"reason": "test"},
                           headers=headers)

    def mode() -> str:
        return client.get("/api/status").json()["status"]["lanes"]["main-in"]["mode"]

    assert act("lockdown-on").status_code == 200
    assert mode() == "lockdown"
    answer = act("hold")
    assert answer.status_code == 409  # the control plane refuses a hold in lockdown
    assert "lockdown" in answer.json()["message"]
    assert act("lockdown-off").status_code == 200
    assert act("hold").status_code == 200
    assert mode() == "hold_open"
    assert act("release").status_code == 200
    assert mode() == "normal"
    refused = audit(site.site, "gate_hold")
    assert any(r["status"] == "failure" and r["actor_id"] == "gus" for r in refused)


@pytest.mark.parametrize(("method", "path", "data", "status"), [
    ("GET", "/events?type=bogus", None, 422),
    ("GET", "/events?since=yesterday", None, 422),
    ("GET", "/events?before=abc", None, 422),
    ("GET", "/audit?status=maybe", None, 422),
    ("GET", "/events/not-an-event-id", None, 404),
    ("GET", f"/events/{uuid.uuid4()}", None, 404),
    ("GET", f"/api/events/{uuid.uuid4()}", None, 404),
    ("GET", "/no/such/page", None, 404),
    ("DELETE", "/", None, 405),
    ("PUT", "/login", None, 405),
    ("GET", "/lanes/main-in/open", None, 405),
    ("POST", "/lanes/no-such-lane/open", {"confirm": "yes"}, 404),
    ("POST", "/lanes/main-in/explode", {"confirm": "yes"}, 404),
    ("POST", "/lanes/main-in/open", {"confirm": "yes", "reason": "x" * 600}, 422),
    ("POST", "/passes", {"plate": "", "host": "r-1"}, 422),
    ("POST", "/passes", {"plate": "VIS1", "host": "r-1", "until": "someday"}, 422),
    ("POST", "/passes/no-such-pass/revoke", {}, 404),
])
def test_status_codes(web: tuple[WebSite, Any], method: str, path: str,
                      data: dict[str, str] | None, status: int) -> None:
    site, _ = web
    client = site.login("gus")
    if data is not None:
        data = {**data, "csrf": csrf_of(client)}
    answer = client.request(method, path, data=data)
    assert answer.status_code == status, answer.text[:300]


def test_removing_a_user_or_changing_the_password_ends_their_sessions(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    add_user(site.site.config, "tmp", "viewer", "temporary-pass-1")
    client = site.login("tmp", "temporary-pass-1")
    assert client.get("/api/status").status_code == 200
    subprocess.run([sys.executable, "-m", "gated", "user", "passwd", "tmp", "--password-stdin",
                    "--config", str(site.site.config)], input="another-pass-12\n", text=True,
                   check=True, capture_output=True, timeout=60)
    assert client.get("/api/status").status_code == 401
    client = site.login("tmp", "another-pass-12")
    subprocess.run([sys.executable, "-m", "gated", "user", "remove", "tmp",
                    "--config", str(site.site.config)], check=True, capture_output=True,
                   timeout=60)
    assert client.get("/api/status").status_code == 401
    assert [r["resource_id"] for r in audit(site.site, "user_remove")] == ["tmp"]


def test_a_user_locked_out_is_refused_even_with_the_right_password(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.client()
    for _ in range(5):  # [web] login_max_failures
        assert client.post("/login", data={"user": "lou", "password": "guess"}).status_code == 401
    answer = client.post("/login", data={"user": "lou", "password": "lockout-pass-123"})
    assert answer.status_code == 429
    assert int(answer.headers["Retry-After"]) > 0
    assert "set-cookie" not in answer.headers
    # Another user from the same address is not locked out by lou's failures.
    assert site.login("vera").get("/api/status").status_code == 200
    lockouts = wait_audit(site.site, "login_lockout")
    assert [r["resource_id"] for r in lockouts] == ["user:lou"]


# --- hostile input ----------------------------------------------------------------------


def test_hostile_names_render_inert_everywhere_and_csv_has_no_formulas(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    token = csrf_of(client)
    name = f"{FORMULA} {HOSTILE}"
    issued = client.post("/passes", data={"csrf": token, "plate": "VIS123", "host": "r-1",
                                          "until": "4h", "name": name})
    assert issued.status_code == 200, issued.text
    assert HOSTILE not in issued.text and "&lt;script&gt;" in issued.text
    wait_rules(client, issued.text)
    assert push(site, "VIS123") == 200
    assert wait_until(lambda: any(r["visitor_name"] == name for r in site.site.rows()), 10)
    client.post("/login", data={"user": HOSTILE, "password": "x"})  # an audited failure
    event = next(r for r in site.site.rows() if r["visitor_name"] == name)
    for path in ("/", "/events", f"/events/{event['event_id']}",
                 f"/events/{event['event_id']}/replay", "/audit", "/passes"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert HOSTILE not in page.text, path
    assert "&lt;script&gt;" in client.get(f"/events/{event['event_id']}").text
    assert "script-src 'self'" in client.get("/").headers["Content-Security-Policy"]
    exported = client.get("/events.csv")
    assert exported.status_code == 200
    cells = [c for row in csv.reader(io.StringIO(exported.text)) for c in row]
    assert not any(c[:1] in ("=", "+", "-", "@") for c in cells)
    assert f"'{name}" in cells


def test_snapshot_urls_cannot_reach_other_files(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("vera")
    jpeg = make_jpeg(3)
    assert push(site, "GH456JK",
                image_jpeg_base64=base64.b64encode(jpeg).decode()) == 200
    rows = site.site.wait_rows(1)
    assert wait_until(lambda: any(r["snapshot_path"] for r in site.site.rows()), 10)
    event = next(r for r in site.site.rows() if r["snapshot_path"])
    good = client.get(f"/snapshots/{event['event_id']}.jpg")
    assert good.status_code == 200 and good.headers["content-type"] == "image/jpeg"
    assert good.content == jpeg
    assert rows
    for path in ("/snapshots/..%2F..%2Fjournal.sqlite3.jpg", "/snapshots/../journal.sqlite3",
                 "/snapshots/%2e%2e%2fusers.json", "/snapshots/..%2Fusers.json%00.jpg",
                 "/static/../users.json", "/static/%2e%2e/web/users.py"):
        answer = client.get(path)
        assert answer.status_code in (403, 404), path
        assert b"SQLite" not in answer.content and b"password_hash" not in answer.content


# --- step 2: live feed, lists, replay, audit viewer, passes -----------------------------


def test_a_read_appears_on_the_live_feed(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("vera")
    with client.stream("GET", "/api/live") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        kind = ""
        while kind != "status":  # the first message: the lanes as they are
            line = next(lines)
            kind = line[7:] if line.startswith("event: ") else kind
        post_until_accepted(site.site.listener_port, CAMERA_PATH, "MN789PQ")
        for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "access":
                event = json.loads(line[6:])
                if event["plate"] == "MN789PQ":
                    break
    assert event["lane"] == "main-in" and event["event_type"] == "entry"


def test_event_list_filters_pages_and_exports(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("vera")
    for plate in ("ZZ000ZZ", "ZZ000ZZ", "AB123CD"):
        assert push(site, plate) == 200
    denied = client.get("/api/events", params={"type": "denied", "plate": "zz000"}).json()
    assert denied["events"] and all(e["plate"] == "ZZ000ZZ" and e["event_type"] == "denied"
                                    for e in denied["events"])
    everything = client.get("/api/events").json()["events"]
    assert len(everything) >= 3
    exported = list(csv.DictReader(io.StringIO(client.get(
        "/events.csv", params={"type": "denied"}).text)))
    assert exported and {r["event_type"] for r in exported} == {"denied"}
    page = client.get("/events", params={"lane": "main-in"})
    assert "ZZ000ZZ" in page.text


def test_event_page_explains_and_replays_against_todays_rules(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("vera")
    assert push(site, "AB123CD") == 200
    event = [r for r in site.site.rows() if r["vehicle_plate"] == "AB123CD"][-1]
    page = client.get(f"/events/{event['event_id']}")
    assert "a resident&#39;s vehicle" in page.text and "Rule-set version" in page.text
    answer = client.get(f"/api/events/{event['event_id']}/replay").json()
    assert answer["recorded"]["allowed"] is True
    assert answer["replayed"]["allowed"] is True and answer["same"] is True
    denied = [r for r in site.site.rows() if r["vehicle_plate"] == "ZZ000ZZ"]
    if denied:
        again = client.get(f"/api/events/{denied[-1]['event_id']}/replay").json()
        assert again["replayed"]["reason"] == "unknown_plate"


def test_audit_viewer_filters_by_action_and_status(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    rows = client.get("/api/audit", params={"action": "login_failed"}).json()["audit"]
    assert rows and {r["action"] for r in rows} == {"login_failed"}
    ok = client.get("/api/audit", params={"status": "success", "actor": "gu"}).json()["audit"]
    assert ok and all(r["status"] == "success" and "gu" in r["actor_id"] for r in ok)
    page = client.get("/audit", params={"action": "login"})
    assert 'class="badge status-success"' in page.text
    detail = client.get(f"/audit/{rows[0]['event_id']}")
    assert detail.status_code == 200 and "login_failed" in detail.text


def test_a_guard_issues_and_revokes_a_visitor_pass(web: tuple[WebSite, Any]) -> None:
    site, _ = web
    client = site.login("gus")
    token = csrf_of(client)
    issued = client.post("/passes", data={"csrf": token, "plate": "PASS42", "host": "r-1",
                                          "until": "2h", "uses": "1"})
    assert issued.status_code == 200
    # Decided on from the next read, not after the rule poll: the answer waited for it.
    version = int(re.search(r"rule-set version (\d+)", issued.text).group(1))  # type: ignore[union-attr]
    lanes = client.get("/api/status").json()["status"]["lanes"]
    assert lanes["main-in"]["rules_version"] >= version
    pass_id = next(r["resource_id"] for r in audit(site.site, "pass_add")[::-1])
    listed = subprocess.run([sys.executable, "-m", "gated", "pass", "list", "--config",
                             str(site.site.config)], capture_output=True, text=True, timeout=60)
    assert pass_id in listed.stdout
    revoked = client.post(f"/passes/{pass_id}/revoke", data={"csrf": token})
    assert revoked.status_code == 200
    row = audit(site.site, "pass_revoke")[-1]
    assert (row["resource_id"], row["actor_type"], row["actor_id"]) == (pass_id, "guard", "gus")


# --- lockout per address, and a flood of failures summarised -----------------------------


def test_an_address_is_locked_out_and_a_flood_is_summarised(tmp_path: Path) -> None:
    site = make_site(tmp_path, web_extra="login_max_failures = 2\n")  # 8 per address
    try:
        with serving(site) as daemon:
            client = site.client()
            statuses = [client.post("/login", data={"user": f"nobody{i}", "password": "x"}
                                    ).status_code for i in range(12)]
            assert statuses[:8] == [401] * 8 and set(statuses[8:]) == {429}
            answer = client.post("/login", data={"user": "vera",
                                                 "password": "viewer-pass-123"})
            assert answer.status_code == 429
            assert daemon.terminate() == 0  # the summary is flushed at stop
        single = audit(site.site, "login_failed")
        summary = audit(site.site, "login_failures")
        assert len(single) == 3  # the first few one by one ...
        counted = sum(json.loads(r["metadata"])["count"] for r in summary)
        assert counted == 13 - 3  # ... the rest in one summary row
    finally:
        site.relay.close()


def test_an_admin_deny_lists_a_plate_and_the_gate_obeys_at_once(
        web: tuple[WebSite, Any]) -> None:
    site, _ = web
    guard = site.login("gus")
    assert guard.get("/rules/deny").status_code == 403
    assert guard.post("/rules/deny", data={"csrf": csrf_of(guard), "plate": "X1"}
                      ).status_code == 403
    admin = site.login("ada")
    token = csrf_of(admin)
    added = admin.post("/rules/deny", data={"csrf": token, "plate": "GH456JK",
                                            "reason": "reported stolen"})
    assert added.status_code == 200, added.text
    wait_rules(admin, added.text)
    assert push(site, "GH456JK") == 200
    row = [r for r in site.site.rows() if r["vehicle_plate"] == "GH456JK"][-1]
    assert (row["event_type"], row["decision_reason"]) == ("denied", "deny_listed")
    edit = audit(site.site, "rules_edit")[-1]
    assert (edit["actor_id"], edit["actor_role"], edit["actor_type"]) == ("ada", "admin", "guard")
    entry_id = re.search(r"(d-web-[0-9a-f]+) added", added.text).group(1)  # type: ignore[union-attr]
    removed = admin.post(f"/rules/deny/{entry_id}/remove", data={"csrf": token})
    assert removed.status_code == 200
    assert entry_id not in removed.text.split("removed")[1]
    assert admin.post(f"/rules/deny/{entry_id}/remove", data={"csrf": token}
                      ).status_code == 404
