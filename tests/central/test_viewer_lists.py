"""Filters, keyset paging, CSV export, the event page, device health, and hostile query strings."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import html
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.central.viewer_support import T0, Viewer, running_viewer
from tests.support.postgres import PgServer


@pytest.fixture
async def viewer(pg_server: PgServer, pg_db: str, tmp_path: Path) -> AsyncIterator[Viewer]:
    async with running_viewer(pg_server, pg_db, tmp_path / "pictures") as v:
        v.tenant("acme", {"north-1": "north", "south-1": "south"})
        await v.add_user("acme", "otto", "auditor")
        yield v


def _plates(page: httpx.Response) -> list[str]:
    return re.findall(r'class="plate">([^<]*)</a>', page.text)


async def test_each_filter_selects_exactly_its_rows(viewer: Viewer) -> None:
    viewer.access("acme", "north-1", 1, vehicle_plate="NORTH01", site_id="north")
    viewer.access("acme", "north-1", 2, vehicle_plate="NORTH02", site_id="north",
                  access_point="exit-lane", event_type="exit")
    viewer.access("acme", "south-1", 3, vehicle_plate="SOUTH03", site_id="south",
                  event_type="denied", decision_reason="deny_listed")
    viewer.access("acme", "south-1", 4, vehicle_plate="SOUTH04", site_id="south",
                  at=T0 + dt.timedelta(days=3))
    viewer.audit("acme", "north-1", 5, action="gate_open", actor_id="anna", status="success")
    viewer.audit("acme", "south-1", 6, action="login_failed", actor_id="mallory",
                 status="failure", site_id="south")
    otto = await viewer.login("acme", "otto")
    cases = {
        "": ["SOUTH04", "SOUTH03", "NORTH02", "NORTH01"],  # newest first
        "?site=north": ["NORTH02", "NORTH01"],
        "?gate=south-1": ["SOUTH04", "SOUTH03"],
        "?lane=exit-lane": ["NORTH02"],
        "?plate=south": ["SOUTH04", "SOUTH03"],  # contains, any case
        "?plate=H0": ["SOUTH04", "SOUTH03", "NORTH02", "NORTH01"],
        "?type=denied": ["SOUTH03"],
        "?reason=deny_listed": ["SOUTH03"],
        "?since=2026-11-03": ["SOUTH04"],
        "?until=2026-11-02": ["SOUTH03", "NORTH02", "NORTH01"],  # the whole day
        "?since=2026-11-02T08:02&until=2026-11-02T08:04": ["NORTH02", "SOUTH03"][::-1],
        "?site=north&type=exit": ["NORTH02"],
        "?plate=%25": [],  # a % is a character, not a wildcard
    }
    for query, expected in cases.items():
        page = await otto.get("/events" + query)
        assert page.status_code == 200, (query, page.text)
        assert _plates(page) == expected, query
    audit_cases = {
        "?action=gate_open": ["anna"], "?actor=MALL": ["mallory"], "?status=failure": ["mallory"],
        "?site=south": ["mallory"], "?gate=north-1": ["anna"], "": ["mallory", "anna"],
    }
    for query, expected in audit_cases.items():
        page = await otto.get("/audit" + query)
        assert page.status_code == 200, (query, page.text)
        assert re.findall(r"<td>(anna|mallory) <small>", page.text) == expected, query


async def test_keyset_pages_walk_every_row_once_in_order(viewer: Viewer) -> None:
    same_time = T0 + dt.timedelta(hours=1)
    for seq in range(1, 12):
        # four rows share one time: the event id breaks the tie, none is lost or repeated
        viewer.access("acme", "north-1", seq, at=same_time if seq <= 4 else None)
    otto = await viewer.login("acme", "otto")
    seen: list[str] = []
    url: str | None = "/events?limit=3&site=site-1"
    pages = 0
    while url:
        page = await otto.get(url)
        assert page.status_code == 200, page.text
        plates = _plates(page)
        assert len(plates) <= 3
        seen.extend(plates)
        found = re.search(r'href="([^"]+)" id="next"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url:
            assert "site=site-1" in url and "limit=3" in url  # filters carried along
        pages += 1
    assert pages == 4
    assert len(seen) == 11 and len(set(seen)) == 11
    whole = _plates(await otto.get("/events?limit=500"))
    assert seen == whole


async def test_csv_is_streamed_complete_and_safe_in_a_spreadsheet(viewer: Viewer) -> None:
    hostile = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "\tTAB", "PLAIN"]
    for seq, plate in enumerate(hostile, start=1):
        viewer.access("acme", "north-1", seq, vehicle_plate=plate,
                      visitor_name="=cmd|' /C calc'!A0")
    for seq in (10, 11):  # another gate's rows: left out by the filter
        viewer.access("acme", "south-1", seq, vehicle_plate=f"=OTHER{seq}")
    otto = await viewer.login("acme", "otto")
    answer = await otto.get("/events.csv?gate=north-1")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    plates = [r["plate"] for r in rows]
    assert sorted(plates) == sorted(["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2", "'@SUM(A1)",
                                     "'\tTAB", "PLAIN"])
    assert {r["visitor_name"] for r in rows} == {"'=cmd|' /C calc'!A0"}
    assert all(r["gate"] == "north-1" for r in rows)
    audit = await otto.get("/audit.csv?status=bogus")
    assert audit.status_code == 400 and "status: one of" in audit.json()["error"]


async def test_csv_export_crosses_batches_without_loss(viewer: Viewer) -> None:
    with viewer.server.connect(viewer.db) as conn, conn.transaction():
        # 1,203 rows in one statement (the superuser seeds in bulk; the viewer still reads
        # as the service role under row-level security)
        conn.execute(
            "INSERT INTO access_logs (event_id, tenant_id, event_type, access_point, created_at,"
            " device_id, seq, prev_hash, row_hash, vehicle_plate, site_id) "
            "SELECT gen_random_uuid(), 'acme', 'entry', 'main', "
            "%s + make_interval(secs => g / 7), 'north-1', g, repeat('0', 64), "
            "repeat('1', 64), 'P' || g, 'north' FROM generate_series(1, 1203) g", (T0,))
    otto = await viewer.login("acme", "otto")
    answer = await otto.get("/events.csv")
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 1203
    assert len({r["event_id"] for r in rows}) == 1203
    assert (await otto.get("/events.csv?plate=P120")).text.count("\n") == 1 + 5  # P120, P1200..3


@pytest.mark.parametrize(("query", "message"), [
    ("?password_hash=x", "unknown filter 'password_hash'"),
    ("?tenant_id=globex", "unknown filter 'tenant_id'"),
    ("?vehicle_plate=x", "unknown filter 'vehicle_plate'"),
    ("?type=entry'%20OR%201=1--", "type: one of"),
    ("?since=2026-13-45", "since: a date"),
    ("?until=9999-12-31", "until: at most 9999-12-30"),
    ("?limit=%D9%A3", "limit: a whole number"),
    ("?until=yesterday", "until: a date"),
    ("?since=2026-11-03&until=2026-11-01", "until must be later than since"),
    ("?before=1e400~abc", "before: the cursor's time is out of range"),
    ("?before=99999999999999999~abc", "before: the cursor's time is out of range"),
    ("?before=nan~abc", "before: the cursor's time is out of range"),
    ("?before=12~'%20OR%20'1'='1", "before: a cursor"),
    ("?before=garbage", "before: a cursor"),
    ("?limit=99999999999999999999", "limit: a whole number from 1 to 500"),
    ("?limit=0", "limit: a whole number"),
    ("?limit=-5", "limit: a whole number"),
    ("?plate=" + "X" * 65, "plate: at most 64"),
    ("?plate=%00", "plate: at most 64 printable"),
    ("?plate=a&plate=b", "each filter at most once"),
])
async def test_hostile_query_strings_are_400_with_the_reason(viewer: Viewer, query: str,
                                                             message: str) -> None:
    otto = await viewer.login("acme", "otto")
    for path in ("/events", "/events.csv"):
        answer = await otto.get(path + query)
        assert answer.status_code == 400, (path, query, answer.text[:300])
        said = answer.json()["error"] if path.endswith(".csv") else html.unescape(answer.text)
        assert message in said, (path, query)


async def test_sql_looking_values_are_only_text(viewer: Viewer) -> None:
    viewer.access("acme", "north-1", 1, vehicle_plate="X'; DROP TABLE access_logs;--")
    otto = await viewer.login("acme", "otto")
    for query in ("?plate=' OR '1'='1", "?site=north' OR 1=1 --", "?reason=%27)--",
                  "?lane=main%22;select"):
        answer = await otto.get("/events", params=dict([query[1:].split("=", 1)]))
        assert answer.status_code == 200 and "No events" in answer.text, query
    found = await otto.get("/events", params={"plate": "DROP TABLE"})
    assert _plates(found) == ["X&#39;; DROP TABLE access_logs;--"]
    for path in ("/events/not-a-uuid", "/events/' OR 1=1", "/audit/%00", "/snapshots/../../x",
                 "/snapshots/" + "g" * 64 + ".jpg"):
        assert (await otto.get(path)).status_code == 404, path


async def test_the_event_page_explains_the_decision(viewer: Viewer) -> None:
    picture = b"\xff\xd8a gate picture\xff\xd9"
    event = viewer.access(
        "acme", "north-1", 1, vehicle_plate="<script>alert(1)</script>",
        decision_reason="resident", rules_version=42, confidence_score=0.87,
        captured_at=T0 - dt.timedelta(seconds=2), gate_opened=0, picture=picture,
        metadata={"match": {"kind": "confusion", "list": "resident", "distance": 1,
                            "edits": [{"op": "sub", "position": 2, "read": "0",
                                       "stored": "O"}]}})
    otto = await viewer.login("acme", "otto")
    page = await otto.get(f"/events/{event}")
    assert page.status_code == 200
    text = page.text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert "Allowed: a resident&#39;s vehicle." in text
    assert "matched allowing for OCR look-alikes" in text
    assert "Character 3: read &#39;0&#39;, stored &#39;O&#39;." in text
    assert "Rule-set version 42." in text and 'id="rules-version">42<' in text
    assert 'id="confidence">0.87<' in text
    assert "2026-11-02 07:59:58" in text  # camera time (device time is 08:01:00)
    assert "The relay failed: the gate did not open." in text
    assert "witnessed" in text
    sha = hashlib.sha256(picture).hexdigest()
    assert f'src="/snapshots/{sha}.jpg"' in text
    assert (await otto.get(f"/snapshots/{sha}.jpg")).content == picture


async def test_device_health(viewer: Viewer) -> None:
    viewer.owner_sql("acme", "UPDATE devices SET last_heartbeat_at = now() - interval '20 s', "
                             "backlog = 17, rules_version = 9, chain_seq = 1234, "
                             "heartbeat = '{\"version\": \"1.4.0\", \"healthy\": true}' "
                             "WHERE device_id = 'north-1'")
    viewer.owner_sql("acme", "UPDATE devices SET last_heartbeat_at = now() - interval '1 hour',"
                             " backlog = 0, rules_version = 8, chain_seq = 55, forked = true "
                             "WHERE device_id = 'south-1'")
    otto = await viewer.login("acme", "otto")
    page = await otto.get("/devices")
    north = page.text.split('id="device-north-1"', 1)[1].split("</tr>", 1)[0]
    south = page.text.split('id="device-south-1"', 1)[1].split("</tr>", 1)[0]
    assert ">online<" in north and "<td>17" in north and "<td>9</td>" in north
    assert "up to seq 1234" in north and "v1.4.0" in north
    assert ">offline" in south and "fork" in south and "up to seq 55" in south
    assert 'class="last-upload">never<' in north


async def test_a_gate_without_heartbeats_shows_its_last_upload(viewer: Viewer) -> None:
    viewer.access("acme", "north-1", 1, at=T0)
    viewer.access("acme", "north-1", 2, at=T0 + dt.timedelta(minutes=5))
    otto = await viewer.login("acme", "otto")
    page = await otto.get("/devices")
    north = page.text.split('id="device-north-1"', 1)[1].split("</tr>", 1)[0]
    assert ">no heartbeat" in north and "<td>never</td>" in north
    with viewer.server.connect(viewer.db) as conn:
        arrived = conn.execute("SELECT received_at FROM event_ids WHERE seq = 2").fetchone()
    assert arrived is not None
    assert f'class="last-upload">{arrived[0].astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}<' in north
