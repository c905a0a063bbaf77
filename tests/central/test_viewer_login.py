"""The viewer's login, sessions, CSRF and roles: the status page's rules, per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.central.viewer_support import PASSWORD, Viewer, csrf_of, running_viewer
from tests.support.postgres import SERVICE, PgServer


@pytest.fixture
async def viewer(pg_server: PgServer, pg_db: str, tmp_path: Path) -> AsyncIterator[Viewer]:
    async with running_viewer(pg_server, pg_db, tmp_path / "pictures",
                              login_max_failures=3) as v:
        v.tenant("acme", {"gate-1": "north"})
        await v.add_user("acme", "vera", "viewer")
        await v.add_user("acme", "ada", "admin")
        await v.add_user("acme", "otto", "auditor")
        yield v


async def test_login_logout_and_a_page_needs_a_session(viewer: Viewer) -> None:
    async with viewer.client() as anon:
        page = await anon.get("/events")
        assert page.status_code == 401 and 'name="tenant"' in page.text
        wrong = await anon.post("/login", data={"tenant": "acme", "user": "vera",
                                                "password": "not-the-password"})
        assert wrong.status_code == 401 and "Wrong tenant" in wrong.text
        nobody = await anon.post("/login", data={"tenant": "nope", "user": "vera",
                                                 "password": PASSWORD})
        assert nobody.status_code == 401
    client = await viewer.login("acme", "vera")
    cookie = client.cookies.get("gated_viewer")
    assert cookie and cookie.endswith(".acme")
    page = await client.get("/events")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["X-Frame-Options"] == "DENY"
    # logout is a POST with the CSRF token
    assert (await client.post("/logout")).status_code == 403
    token = await csrf_of(client)
    done = await client.post("/logout", data={"csrf": token})
    assert done.status_code == 303 and done.headers["location"] == "/login"
    client.cookies.set("gated_viewer", cookie)  # the old cookie is dead, not just unset
    assert (await client.get("/events")).status_code == 401
    # the session is kept as a hash: the table holds no cookie value
    with viewer.server.connect(viewer.db) as conn:
        stored = [r[0] for r in conn.execute("SELECT token_sha256 FROM viewer_sessions")]
    assert cookie.split(".")[0] not in stored


async def test_sessions_expire_when_idle_and_at_their_age_limit(viewer: Viewer) -> None:
    # in use: a request more than a minute after the last one moves last_seen on
    client = await viewer.login("acme", "vera")
    viewer.owner_sql("acme", "UPDATE viewer_sessions SET last_seen = now() - interval '50 min'")
    assert (await client.get("/events")).status_code == 200
    with viewer.server.connect(viewer.db) as conn:
        moved = conn.execute("SELECT count(*) FROM viewer_sessions "
                             "WHERE last_seen > now() - interval '1 min'").fetchone()
    assert moved == (1,)
    viewer.owner_sql("acme", "DELETE FROM viewer_sessions")
    for column, minutes in (("last_seen", 61), ("created_at", 12 * 60 + 1)):
        client = await viewer.login("acme", "vera")
        assert (await client.get("/events")).status_code == 200
        viewer.owner_sql("acme", f"UPDATE viewer_sessions SET {column} = "
                                 f"now() - interval '{minutes} minutes'")
        assert (await client.get("/events")).status_code == 401, column
    with viewer.server.connect(viewer.db) as conn:  # an expired session is deleted when seen
        assert conn.execute("SELECT count(*) FROM viewer_sessions").fetchone() == (0,)


async def test_posts_need_the_csrf_token_and_this_origin(viewer: Viewer) -> None:
    client = await viewer.login("acme", "ada")
    form = {"name": "newbie", "role": "viewer", "password": "long-enough-pw"}
    assert (await client.post("/users", data=form)).status_code == 403
    assert (await client.post("/users", data={**form, "csrf": "forged"})).status_code == 403
    token = await csrf_of(client, "/users")
    other = await client.post("/users", data={**form, "csrf": token},
                              headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    ok = await client.post("/users", data={**form, "csrf": token})
    assert ok.status_code == 200 and "user newbie added" in ok.text
    await viewer.login("acme", "newbie", "long-enough-pw")


async def test_roles_viewer_auditor_admin(viewer: Viewer) -> None:
    vera = await viewer.login("acme", "vera")
    otto = await viewer.login("acme", "otto")
    ada = await viewer.login("acme", "ada")
    assert (await vera.get("/events")).status_code == 200
    assert (await vera.get("/devices")).status_code == 200
    assert (await vera.get("/audit")).status_code == 403
    assert (await vera.get("/audit.csv")).status_code == 403
    assert (await vera.get("/users")).status_code == 403
    assert (await otto.get("/audit")).status_code == 200
    assert (await otto.get("/users")).status_code == 403
    users = await ada.get("/users")
    assert users.status_code == 200 and "vera" in users.text and "login" in users.text


async def test_a_changed_password_or_removal_ends_the_users_sessions(viewer: Viewer) -> None:
    vera = await viewer.login("acme", "vera")
    otto = await viewer.login("acme", "otto")
    ada = await viewer.login("acme", "ada")
    token = await csrf_of(ada, "/users")
    changed = await ada.post("/users/vera", data={"csrf": token,
                                                 "password": "another-password-1"})
    assert changed.status_code == 200
    assert (await vera.get("/events")).status_code == 401
    removed = await ada.post("/users/otto/remove", data={"csrf": token})
    assert removed.status_code == 200
    assert (await otto.get("/events")).status_code == 401
    # an admin cannot lock themselves out
    self_remove = await ada.post("/users/ada/remove", data={"csrf": token})
    assert self_remove.status_code == 400
    demote = await ada.post("/users/ada", data={"csrf": token, "role": "viewer"})
    assert demote.status_code == 400
    bad = await ada.post("/users", data={"csrf": token, "name": "x", "role": "root",
                                         "password": "long-enough-pw"})
    assert bad.status_code == 400 and "role: one of" in bad.text
    short = await ada.post("/users", data={"csrf": token, "name": "shorty", "role": "viewer",
                                           "password": "short"})
    assert short.status_code == 400 and "at least 10 characters" in short.text
    await viewer.login("acme", "vera", "another-password-1")


async def test_failed_logins_lock_the_name_out(viewer: Viewer) -> None:
    async with viewer.client() as client:
        for _ in range(3):
            answer = await client.post("/login", data={"tenant": "acme", "user": "vera",
                                                       "password": "guess-guess"})
            assert answer.status_code == 401
        locked = await client.post("/login", data={"tenant": "acme", "user": "vera",
                                                   "password": PASSWORD})
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    with viewer.server.connect(viewer.db, SERVICE) as conn, conn.transaction():
        conn.execute("SELECT set_config('gated.tenant_id', 'acme', true)")
        failed = conn.execute("SELECT count(*) FROM viewer_audit "
                              "WHERE action = 'login_failed'").fetchone()
    assert failed == (3,)


async def test_hostile_cookies_are_no_session(viewer: Viewer) -> None:
    async with viewer.client() as client:
        for value in ("x", ".acme", "abc.", "abc.acme'--", "a" * 300, "abc.acme.evil%00"):
            client.cookies.set("gated_viewer", value)
            assert (await client.get("/events")).status_code == 401, value


async def test_login_redirects_only_within_the_site_and_takes_hostile_fields(
        viewer: Viewer) -> None:
    for target, expected in (("//evil.example/x", "/"), ("https://evil.example", "/"),
                             ("/\\evil.example", "/"), ("/audit?status=failure",
                                                        "/audit?status=failure")):
        client = viewer.client()
        answer = await client.post("/login", data={"tenant": "acme", "user": "otto",
                                                   "password": PASSWORD, "next": target})
        assert answer.status_code == 303 and answer.headers["location"] == expected, target
    async with viewer.client() as client:
        for tenant in ("acme\x00", "a" * 200, "acme' OR '1'='1", "", "../acme"):
            answer = await client.post("/login", data={"tenant": tenant, "user": "otto",
                                                       "password": PASSWORD})
            assert answer.status_code == 401, tenant
        huge = await client.post("/login", data={"tenant": "acme", "user": "otto",
                                                 "password": "x" * 100_000})
        assert huge.status_code == 413
