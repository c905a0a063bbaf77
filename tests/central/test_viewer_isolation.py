"""A user of tenant A never sees tenant B's rows, pictures, devices or users, by any path."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.central.viewer_support import Viewer, running_viewer
from tests.support.postgres import PgServer

A_PICTURE = b"\xff\xd8acme picture\xff\xd9"
B_PICTURE = b"\xff\xd8globex picture\xff\xd9"
SHARED = b"\xff\xd8the same bytes at both\xff\xd9"


@pytest.fixture
async def viewer(pg_server: PgServer, pg_db: str, tmp_path: Path) -> AsyncIterator[Viewer]:
    async with running_viewer(pg_server, pg_db, tmp_path / "pictures") as v:
        v.tenant("acme", {"acme-gate": "acme-site"})
        v.tenant("globex", {"globex-gate": "globex-site"})
        for tenant in ("acme", "globex"):
            await v.add_user(tenant, "ada", "admin")  # the same name in both tenants
        yield v


async def test_lists_event_pages_csv_and_pictures_stay_in_their_tenant(viewer: Viewer) -> None:
    a_event = viewer.access("acme", "acme-gate", 1, vehicle_plate="ACME111", picture=A_PICTURE)
    b_event = viewer.access("globex", "globex-gate", 1, vehicle_plate="GLOBEX9",
                            picture=B_PICTURE)
    b_audit = viewer.audit("globex", "globex-gate", 2, actor_id="globex-guard")
    viewer.audit("acme", "acme-gate", 2, actor_id="acme-guard")
    b_sha = hashlib.sha256(B_PICTURE).hexdigest()
    a_sha = hashlib.sha256(A_PICTURE).hexdigest()
    ada = await viewer.login("acme", "ada")

    events = await ada.get("/events")
    assert "ACME111" in events.text and "GLOBEX9" not in events.text
    # even asked for by B's own filter values
    for query in ("?plate=GLOBEX", "?gate=globex-gate", "?site=globex-site"):
        page = await ada.get("/events" + query)
        assert page.status_code == 200 and "GLOBEX9" not in page.text and "No events" in page.text
    csv_text = (await ada.get("/events.csv")).text
    assert "ACME111" in csv_text and "GLOBEX9" not in csv_text
    audit = await ada.get("/audit")
    assert "acme-guard" in audit.text and "globex-guard" not in audit.text
    assert "globex-guard" not in (await ada.get("/audit.csv")).text
    # B's ids and B's picture hash, guessed or leaked, are 404 like ids that do not exist
    assert (await ada.get(f"/events/{a_event}")).status_code == 200
    assert (await ada.get(f"/events/{b_event}")).status_code == 404
    assert (await ada.get(f"/audit/{b_audit}")).status_code == 404
    mine = await ada.get(f"/snapshots/{a_sha}.jpg")
    assert mine.status_code == 200 and mine.content == A_PICTURE
    theirs = await ada.get(f"/snapshots/{b_sha}.jpg")
    assert theirs.status_code == 404 and theirs.content != B_PICTURE
    assert (await ada.get(f"/snapshots/{'0' * 64}.jpg")).status_code == 404
    devices = await ada.get("/devices")
    assert "acme-gate" in devices.text and "globex-gate" not in devices.text
    users = await ada.get("/users")
    assert "globex" not in users.text


async def test_a_picture_is_shown_only_for_an_event_of_the_tenant(viewer: Viewer) -> None:
    # globex has an event with this picture; acme only uploaded the same bytes (a snapshots
    # row) with no event naming it: acme may not fetch it by hash.
    viewer.access("globex", "globex-gate", 1, picture=SHARED)
    sha = hashlib.sha256(SHARED).hexdigest()
    viewer.owner_sql("acme", "INSERT INTO snapshots (tenant_id, sha256, path, size) "
                             "VALUES ('acme', %s, %s, 1)", (sha, f"{sha[:2]}/{sha}.jpg"))
    acme = await viewer.login("acme", "ada")
    globex = await viewer.login("globex", "ada")
    assert (await acme.get(f"/snapshots/{sha}.jpg")).status_code == 404
    assert (await globex.get(f"/snapshots/{sha}.jpg")).status_code == 200


async def test_a_session_is_bound_to_its_tenant(viewer: Viewer) -> None:
    viewer.access("globex", "globex-gate", 1, vehicle_plate="GLOBEX9")
    ada = await viewer.login("acme", "ada")
    cookie = ada.cookies["gated_viewer"]
    token = cookie.split(".", 1)[0]
    # the same token presented as globex's: no such session there (ada of globex is
    # another user), so the request has no session at all
    ada.cookies.set("gated_viewer", f"{token}.globex")
    page = await ada.get("/events")
    assert page.status_code == 401 and "GLOBEX9" not in page.text
    # a user of one tenant cannot log in to another with that tenant's name
    wrong = viewer.client()
    answer = await wrong.post("/login", data={"tenant": "globex", "user": "vera",
                                              "password": "correct-horse-battery"})
    assert answer.status_code == 401


async def test_an_admin_manages_only_their_tenants_users(viewer: Viewer) -> None:
    await viewer.add_user("globex", "gina", "viewer")
    ada = await viewer.login("acme", "ada")
    page = await ada.get("/users")
    token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    # gina exists only in globex: from acme she is "no user"
    assert (await ada.post("/users/gina/remove", data={"csrf": token})).status_code == 404
    changed = await ada.post("/users/gina", data={"csrf": token, "password": "taken-over-123"})
    assert changed.status_code == 400 and "no user" in changed.text
    await viewer.login("globex", "gina")  # her password is unchanged
