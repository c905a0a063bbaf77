"""Snapshots in an S3-compatible store: written once, checked, served, and a 503 while away."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import psycopg
import pytest
from aiohttp import web

from gated.central.admin import enrol_device
from gated.central.config import load
from gated.central.ingest_http import HttpIngest, serve
from gated.central.snapshots import (
    LocalSnapshotStore,
    S3Credentials,
    S3SnapshotStore,
    SnapshotStore,
    SnapshotStoreUnavailable,
    load_credentials,
    open_store,
    sign_v4,
)
from gated.central.store import Store
from gated.errors import ConfigError
from tests.central.s3_support import CREDENTIALS, S3Server
from tests.central.viewer_support import running_viewer
from tests.support.broker import free_port
from tests.support.device_sim import SimDevice
from tests.support.postgres import PgServer

JPEG = b"\xff\xd8a picture of a gate\xff\xd9"
SHA = hashlib.sha256(JPEG).hexdigest()


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """An S3-compatible server on a free loopback port for one test."""
    server = S3Server(free_port()).start()
    yield server
    server.stop()


def test_both_backends_are_snapshot_stores(s3_server: S3Server, tmp_path: Path) -> None:
    assert isinstance(LocalSnapshotStore(tmp_path), SnapshotStore)
    assert isinstance(s3_server.new_store(), SnapshotStore)


def test_the_signature_is_aws_signature_v4() -> None:
    """The signer agrees byte for byte with botocore's for the same request and instant."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = "http://127.0.0.1:9000/bucket/pictures/ab/" + "ab" * 32
    payload = hashlib.sha256(JPEG).hexdigest()
    now = dt.datetime(2026, 11, 30, 12, 0, 1, tzinfo=dt.UTC)
    creds = S3Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok")
    mine = sign_v4("PUT", url, {"content-type": "image/jpeg"}, payload, creds, "eu-west-1",
                   now)
    request = AWSRequest("PUT", url, data=JPEG, headers={
        "content-type": "image/jpeg", "x-amz-content-sha256": payload})
    auth = S3SigV4Auth(Credentials("AKIDEXAMPLE", creds.secret_access_key, "tok"), "s3",
                       "eu-west-1")
    with patch("botocore.auth.get_current_datetime", return_value=now):
        auth.add_auth(request)
    assert mine["authorization"] == request.headers["Authorization"]


def test_a_picture_is_written_once_under_prefix_and_hash(s3_server: S3Server) -> None:
    store = s3_server.new_store(prefix="site/pictures")
    key, new = store.put(SHA, JPEG)
    assert (key, new) == (f"site/pictures/{SHA[:2]}/{SHA}", True)
    assert store.put(SHA, JPEG) == (key, False)
    assert s3_server.keys(store) == [key]
    assert store.get(key) == JPEG
    head = s3_server.boto().head_object(Bucket=store.bucket, Key=key)
    assert head["ContentLength"] == len(JPEG) and head["ContentType"] == "image/jpeg"


def test_a_concurrent_writer_is_answered_already_kept(s3_server: S3Server) -> None:
    """If-None-Match: a second PUT of a key that exists writes nothing."""
    store = s3_server.new_store()
    key, _ = store.put(SHA, JPEG)
    again = store._request("PUT", key, b"other bytes", {"if-none-match": "*"})
    assert again.status_code == 412
    assert store.get(key) == JPEG


def test_a_body_not_hashing_to_its_name_is_refused(s3_server: S3Server) -> None:
    store = s3_server.new_store()
    with pytest.raises(ValueError, match="does not hash"):
        store.put(SHA, JPEG + b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        store.put("../../etc/passwd", JPEG)
    assert s3_server.keys(store) == []


def test_keys_it_never_writes_are_neither_read_nor_deleted(s3_server: S3Server) -> None:
    store = s3_server.new_store()
    key, _ = store.put(SHA, JPEG)
    for hostile in (f"../{key}", f"other/{SHA[:2]}/{SHA}", f"pictures/cd/{SHA}", SHA, ""):
        assert store.get(hostile) is None
        assert store.remove(hostile) is False
    assert store.remove(key) is True and store.remove(key) is False
    assert store.get(key) is None and s3_server.keys(store) == []


def test_the_store_away_is_unavailable_not_missing(s3_server: S3Server,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = s3_server.new_store()
    key, _ = store.put(SHA, JPEG)
    s3_server.stop()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SnapshotStoreUnavailable) as raised:
            store.get(key)
        with pytest.raises(SnapshotStoreUnavailable):
            store.put(hashlib.sha256(b"x").hexdigest(), b"x")
    assert CREDENTIALS.secret_access_key not in str(raised.value) + caplog.text
    assert CREDENTIALS.secret_access_key not in repr(CREDENTIALS)


def test_config_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "central.toml"
    conf.write_text('[database]\nurl = "postgresql:///x"\n[snapshots]\nbackend = "s3"\n'
                    'bucket = "gated-pictures"\nprefix = "p"\n'
                    'endpoint_url = "http://127.0.0.1:1"\nregion = "eu-west-1"\n'
                    f'credentials_file = "{tmp_path / "s3.toml"}"\n')
    (tmp_path / "s3.toml").write_text('access_key_id = "AK"\nsecret_access_key = "SK"\n')
    store = open_store(load(conf).snapshots, "unused")
    assert isinstance(store, S3SnapshotStore) and store.key_of(SHA) == f"p/{SHA[:2]}/{SHA}"
    (tmp_path / "s3.toml").write_text('access_key_id = "AK"\nsecret_access_key = "oops\n')
    with pytest.raises(ValueError) as raised:
        open_store(load(conf).snapshots, "unused")
    assert "oops" not in str(raised.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
    assert load_credentials("").access_key_id == "ENVKEY"
    conf.write_text('[database]\nurl = "x"\n[snapshots]\nbackend = "ftp"\n')
    with pytest.raises(ConfigError, match="backend"):
        load(conf)
    conf.write_text('[database]\nurl = "x"\n[snapshots]\nbucket_name = "b"\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        load(conf)


@pytest.fixture
def s3_http(store: Store, s3_server: S3Server) -> Iterator[tuple[str, S3SnapshotStore]]:
    """HTTP ingest of one instance with the S3 backend, on a loopback port."""
    pictures = s3_server.new_store()
    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: list[web.AppRunner] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        runner.append(loop.run_until_complete(
            serve(HttpIngest(store, pictures), "127.0.0.1", port)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}", pictures
    asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _put(url: str, token: str, body: bytes, sha: str = SHA) -> httpx.Response:
    return httpx.put(f"{url}/v1/snapshots/{sha}", content=body, timeout=10,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg",
                              "If-None-Match": "*"})


def test_http_ingest_keeps_pictures_in_s3(s3_http: tuple[str, S3SnapshotStore],
                                          s3_server: S3Server, owner: psycopg.Connection[Any],
                                          pg_server: PgServer, pg_db: str) -> None:
    url, pictures = s3_http
    sim = SimDevice("acme", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    assert _put(url, token, JPEG).status_code == 201
    assert _put(url, token, JPEG).status_code == 412  # kept already: the device stops
    bad = _put(url, token, JPEG + b"!")
    assert bad.status_code == 422 and "hash" in bad.json()["error"]
    assert s3_server.keys(pictures) == [pictures.key_of(SHA)]
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT tenant_id, path, size FROM snapshots").fetchall() == [
            ("acme", pictures.key_of(SHA), len(JPEG))]


def test_the_store_away_is_a_503_and_the_retry_keeps_the_picture(
        s3_http: tuple[str, S3SnapshotStore], s3_server: S3Server,
        owner: psycopg.Connection[Any], pg_server: PgServer, pg_db: str) -> None:
    url, pictures = s3_http
    sim = SimDevice("acme", "hq", "gate-1")
    token = enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    s3_server.stop()
    away = _put(url, token, JPEG)
    assert away.status_code == 503 and away.headers["Retry-After"]
    assert "unavailable" in away.json()["error"]
    with pg_server.connect(pg_db) as conn:  # nothing listed that is not stored
        assert conn.execute("SELECT count(*) FROM snapshots").fetchone() == (0,)
    s3_server.start()
    assert _put(url, token, JPEG).status_code == 201  # the device's retry
    assert pictures.get(pictures.key_of(SHA)) == JPEG


async def test_the_viewer_serves_a_picture_from_s3(
        s3_server: S3Server, store: Store, owner: psycopg.Connection[Any],
        pg_server: PgServer, pg_db: str, tmp_path: Path) -> None:
    pictures = s3_server.new_store()
    sim = SimDevice("acme", "hq", "gate-1")
    enrol_device(owner, "acme", "gate-1", "hq", sim.public_b64)
    key, _ = pictures.put(SHA, JPEG)
    assert store.snapshot_kept("acme", "gate-1", SHA, key, len(JPEG))
    store.ingest("acme", "gate-1", [sim.event(vehicle_plate="AB12CDE", snapshot_sha256=SHA)])
    async with running_viewer(pg_server, pg_db, tmp_path / "none",
                              snapshot_store=pictures) as viewer:
        await viewer.add_user("acme", "ada", "viewer")
        ada = await viewer.login("acme", "ada")
        served = await ada.get(f"/snapshots/{SHA}.jpg")
        assert served.status_code == 200 and served.content == JPEG
        assert served.headers["Content-Type"] == "image/jpeg"
        s3_server.stop()
        away = await ada.get(f"/snapshots/{SHA}.jpg")
        assert away.status_code == 503
