"""A device's page: the remote commands sent to it and the gate's signed answers, per tenant."""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gated.central import downlink
from gated.central.admin import enrol_device
from gated.sync.signing import sign
from tests.central.viewer_support import Viewer, csrf_of, running_viewer
from tests.support.device_sim import SimDevice
from tests.support.postgres import OWNER, SERVICE, PgServer

Issue = Callable[[str, str, str, Mapping[str, Any], str], Awaitable[str]]


def _issuer(server: PgServer, db: str, key: Ed25519PrivateKey) -> Issue:
    """What `gated central run` gives the viewer, minus the broker: sign, record, audit."""

    async def issue(tenant: str, device: str, action: str, args: Mapping[str, Any],
                    who: str) -> str:
        def work() -> str:
            with server.connect(db, SERVICE) as conn:
                event = downlink.issue_command(conn, key, tenant, device, action, args, who,
                                               60.0, via="viewer")
            return str(event["id"])

        return await asyncio.to_thread(work)

    return issue


class Fleet:
    """Enrolled gates with keys; commands issued and answered the way the service does."""

    def __init__(self, server: PgServer, db: str, key: Ed25519PrivateKey) -> None:
        self.server, self.db, self.key = server, db, key
        self.gates: dict[tuple[str, str], SimDevice] = {}

    def enrol(self, tenant: str, device: str, site: str = "hq") -> SimDevice:
        """A gate with its own key, enrolled (its tenant made on the first)."""
        gate = SimDevice(tenant, site, device)
        with self.server.connect(self.db, OWNER) as conn:
            enrol_device(conn, tenant, device, site, gate.public_b64)
        self.gates[tenant, device] = gate
        return gate

    def command(self, tenant: str, device: str, action: str = "open", *,
                issuer: str = "unix:root", ttl_s: float = 60.0, **args: Any) -> str:
        """A command as `gated central command` records it; its id."""
        if action in downlink.LANE_ACTIONS:
            args.setdefault("lane", "main-in")
        with self.server.connect(self.db, SERVICE) as conn:
            event = downlink.issue_command(conn, self.key, tenant, device, action, args, issuer,
                                           ttl_s)
        return str(event["id"])

    def answer(self, tenant: str, device: str, command_id: str, outcome: str = "success",
               message: str = "main-in opened", reason: str | None = None,
               at: str = "2026-06-01T08:00:00.412345Z") -> None:
        """The gate's signed result for a command, kept as the MQTT ingest keeps it."""
        gate = self.gates[tenant, device]
        data = sign({"command_id": command_id, "tenant_id": tenant, "device_id": device,
                     "action": "open", "outcome": outcome, "reason": reason,
                     "message": message, "data": {}, "at": at}, gate.key)
        event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": gate.source,
                 "type": "io.gated.command.result.v1", "time": at, "subject": command_id,
                 "data": data}
        with self.server.connect(self.db, SERVICE) as conn:
            assert downlink.record_result(conn, tenant, device, event)

    def expire(self, tenant: str, command_id: str) -> None:
        """Move a command's times an hour back (clock games, as the owner)."""
        with self.server.connect(self.db, OWNER) as conn, conn.transaction():
            conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant,))
            conn.execute("UPDATE commands SET issued_at = issued_at - interval '1 hour', "
                         "expires_at = expires_at - interval '1 hour' WHERE command_id = %s",
                         (command_id,))


@pytest.fixture
def fleet(pg_server: PgServer, pg_db: str, service_key: Ed25519PrivateKey) -> Fleet:
    return Fleet(pg_server, pg_db, service_key)


@pytest.fixture
async def viewer(pg_server: PgServer, pg_db: str, tmp_path: Path, fleet: Fleet,
                 service_key: Ed25519PrivateKey) -> AsyncIterator[Viewer]:
    fleet.enrol("acme", "gate-1")
    fleet.enrol("acme", "gate-2")
    fleet.enrol("globex", "gate-1")  # the same device id in another tenant
    async with running_viewer(pg_server, pg_db, tmp_path / "pictures",
                              issue_command=_issuer(pg_server, pg_db, service_key)) as v:
        for tenant in ("acme", "globex"):
            await v.add_user(tenant, "ada", "admin")
        await v.add_user("acme", "vera", "viewer")
        await v.add_user("acme", "otto", "auditor")
        yield v


def _rows(page: httpx.Response) -> dict[str, str]:
    """The commands list of a device's page: {command id: its row's text}, in page order."""
    body = page.text.split('id="command-rows"', 1)[1].split("</tbody>", 1)[0]
    found = re.findall(r'<tr id="command-([0-9a-f-]{36})" class="([^"]+)">(.*?)</tr>', body,
                       re.S)
    return {cid: f"{cls} " + html.unescape(re.sub(r"<[^>]+>", " ", text)) for cid, cls, text
            in found}


async def test_the_device_page_lists_its_commands_newest_first_with_outcomes(
        viewer: Viewer, fleet: Fleet) -> None:
    done = fleet.command("acme", "gate-1", "open", reason="courier")
    refused = fleet.command("acme", "gate-1", "hold", issuer="viewer:ada")
    failed = fleet.command("acme", "gate-1", "lockdown_on")
    expired = fleet.command("acme", "gate-1", "reload_rules")
    waiting = fleet.command("acme", "gate-1", "open", issuer="viewer:ada")
    elsewhere = fleet.command("acme", "gate-2", "sync_rules")
    fleet.answer("acme", "gate-1", done, "success", "main-in opened")
    # QoS 1 delivered it twice: the second copy is refused as a replay; the first answer stands
    fleet.answer("acme", "gate-1", done, "refused", "already seen", reason="replayed")
    fleet.answer("acme", "gate-1", refused, "refused", "the command arrived too late",
                 reason="expired")
    fleet.answer("acme", "gate-1", failed, "failed", "the relay did not answer")
    fleet.expire("acme", expired)
    # another gate of the tenant names gate-1's command in its own signed result: kept by
    # the ingest as evidence, but it is not gate-1's answer
    fleet.answer("acme", "gate-2", waiting, "success", "forged elsewhere")
    vera = await viewer.login("acme", "vera")
    page = await vera.get("/devices/gate-1")
    assert page.status_code == 200, page.text
    rows = _rows(page)
    assert list(rows) == [waiting, failed, refused, done, expired]  # newest first
    assert elsewhere not in page.text
    assert "command-pending" in rows[waiting] and "no answer yet" in rows[waiting]
    assert "forged elsewhere" not in rows[waiting]
    assert "ada" in rows[waiting] and "viewer" in rows[waiting]
    assert "command-failed" in rows[failed] and "the relay did not answer" in rows[failed]
    assert "command-refused" in rows[refused]
    assert "expired: the command arrived too late" in rows[refused]
    assert "command-done" in rows[done] and "main-in opened" in rows[done]
    assert "2 answers, the first shown" in rows[done] and "replayed" not in rows[done]
    assert "root" in rows[done] and "CLI" in rows[done] and "courier" in rows[done]
    assert "command-expired" in rows[expired] and "no answer before it expired" in rows[expired]
    with viewer.server.connect(viewer.db) as conn:
        row = conn.execute("SELECT expires_at FROM commands WHERE command_id = %s",
                           (waiting,)).fetchone()
    assert row is not None
    assert f"{row[0]:%Y-%m-%d %H:%M:%S}" in rows[waiting]  # the expiry, in the viewer's zone
    # the device list links each gate to its page
    devices = await vera.get("/devices")
    assert 'href="/devices/gate-1" class="device"' in devices.text


async def test_the_commands_list_pages_like_the_other_lists(viewer: Viewer,
                                                            fleet: Fleet) -> None:
    sent = [fleet.command("acme", "gate-1", "lockdown_off") for _ in range(7)]
    otto = await viewer.login("acme", "otto")
    seen: list[str] = []
    url: str | None = "/devices/gate-1?limit=3"
    pages = 0
    while url:
        page = await otto.get(url)
        assert page.status_code == 200, page.text
        rows = list(_rows(page))
        assert len(rows) <= 3
        seen.extend(rows)
        found = re.search(r'href="([^"]+)" id="next"', page.text)
        url = html.unescape(found.group(1)) if found else None
        assert url is None or (url.startswith("/devices/gate-1?") and "limit=3" in url)
        pages += 1
    assert pages == 3 and seen == sent[::-1]
    for query, said in (("?before=garbage", "before: a cursor"),
                        ("?gate=gate-2", "unknown filter 'gate'"),
                        ("?limit=0", "limit: a whole number")):
        answer = await otto.get("/devices/gate-1" + query)
        assert answer.status_code == 400 and said in html.unescape(answer.text), query


async def test_a_tenant_never_sees_another_tenants_commands_or_answers(
        viewer: Viewer, fleet: Fleet) -> None:
    mine = fleet.command("acme", "gate-1", "open")
    theirs = fleet.command("globex", "gate-1", "lockdown_on", issuer="unix:globex-ops")
    fleet.answer("globex", "gate-1", theirs, "success", "globex locked down")
    # globex's gate answers with acme's command id: under globex, never acme's answer
    fleet.answer("globex", "gate-1", mine, "success", "globex says opened")
    acme = await viewer.login("acme", "ada")
    page = await acme.get("/devices/gate-1")
    assert list(_rows(page)) == [mine]
    assert "no answer yet" in _rows(page)[mine]
    for leaked in (theirs, "globex-ops", "globex locked down", "globex says opened"):
        assert leaked not in page.text
    globex = await viewer.login("globex", "ada")
    other = await globex.get("/devices/gate-1")
    assert list(_rows(other)) == [theirs] and mine not in other.text
    # a device of the other tenant only, or none at all: the same 404
    fleet.enrol("globex", "globex-only")
    for path in ("/devices/globex-only", "/devices/nope", "/devices/..%2Fgate-1",
                 "/devices/%3Cscript%3E"):
        assert (await acme.get(path)).status_code == 404, path
    # nor can acme's admin send to globex's gate through the form
    csrf = await csrf_of(acme, "/devices")
    sent = await acme.post("/devices/globex-only/commands",
                           data={"csrf": csrf, "action": "lockdown_on"})
    assert sent.status_code == 400 and "has no device" in sent.text
    with viewer.server.connect(viewer.db) as conn:
        assert conn.execute("SELECT count(*) FROM commands WHERE device_id = 'globex-only'"
                            ).fetchone() == (0,)


async def test_everyone_sees_the_list_only_admins_get_the_form(
        viewer: Viewer, fleet: Fleet, pg_server: PgServer, pg_db: str, tmp_path: Path) -> None:
    fleet.command("acme", "gate-1", "open")
    form = 'action="/devices/gate-1/commands"'
    for user in ("vera", "otto"):
        client = await viewer.login("acme", user)
        page = await client.get("/devices/gate-1")
        assert page.status_code == 200 and len(_rows(page)) == 1, user
        assert form not in page.text, user
        refused = await client.post("/devices/gate-1/commands",
                                    data={"csrf": await csrf_of(client, "/devices/gate-1"),
                                          "action": "open", "lane": "main-in"})
        assert refused.status_code == 403, user
    ada = await viewer.login("acme", "ada")
    page = await ada.get("/devices/gate-1")
    assert form in page.text
    csrf = await csrf_of(ada, "/devices/gate-1")
    sent = await ada.post("/devices/gate-1/commands",
                          data={"csrf": csrf, "action": "open", "lane": "main-in",
                                "reason": "<b>van</b>"})
    # post/redirect/get: reloading the page the browser lands on sends nothing again
    assert sent.status_code == 303, sent.text
    assert sent.headers["location"].startswith("/devices/gate-1?sent=")
    sent = await ada.get(sent.headers["location"])
    assert sent.status_code == 200 and "open sent to gate-1" in sent.text
    again = await ada.get(sent.url)
    assert len(_rows(again)) == len(_rows(sent))
    rows = _rows(sent)
    newest = next(iter(rows.values()))
    assert len(rows) == 2 and "no answer yet" in newest and "ada" in newest
    assert "<b>van</b>" not in sent.text and "&lt;b&gt;van&lt;/b&gt;" in sent.text
    bad = await ada.post("/devices/gate-1/commands", data={"csrf": csrf, "action": "hold"})
    assert bad.status_code == 400 and "hold needs --lane" in bad.text
    assert len(_rows(bad)) == 2  # the device's page again, nothing sent
    # without [downlink] no admin gets the form
    async with running_viewer(pg_server, pg_db, tmp_path / "plain") as plain:
        eve = await plain.login("acme", "ada")
        assert form not in (await eve.get("/devices/gate-1")).text


async def test_the_empty_device_list_spans_every_column(viewer: Viewer) -> None:
    viewer.owner_sql("nobody", "INSERT INTO tenants (tenant_id) VALUES ('nobody')")
    await viewer.add_user("nobody", "ada", "admin")
    ada = await viewer.login("nobody", "ada")
    page = (await ada.get("/devices")).text
    headers = page.split("</thead>", 1)[0].count("<th>")
    assert headers == 8  # the admin's Command column is there
    assert f'<td colspan="{headers}">No devices enrolled.' in page
