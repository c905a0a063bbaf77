"""The ANPR HTTP listener: a real aiohttp server on loopback, real HTTP requests."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from gated.config import AnprHttpSourceConfig, CameraAuthConfig
from gated.errors import HardwareError
from gated.hardware.anpr_http import UNMATCHED, AnprListener, RefusalSummary
from gated.hardware.base import PlateSource
from gated.model import PlateRead
from tests.hardware.anpr.conftest import make_jpeg, multipart, payload

SECRET_PASSWORD = "s3cret-pässword"
SECRET_TOKEN = "tok-0123456789abcdef"


@dataclass
class Harness:
    listener: AnprListener
    client: httpx.AsyncClient
    reads: list[PlateRead]
    refused: list[RefusalSummary] = field(default_factory=list)


def cameras() -> list[tuple[AnprHttpSourceConfig, str]]:
    return [
        (AnprHttpSourceConfig(name="hik-in", format="hikvision", path="/anpr/hik"), "main-in"),
        (AnprHttpSourceConfig(name="axis-out", format="axis", path="/anpr/axis"), "main-out"),
        (AnprHttpSourceConfig(name="pr", format="platerecognizer", path="/anpr/pr"), "main-in"),
        (AnprHttpSourceConfig(name="gen", format="generic", path="/anpr/gen"), "side"),
        (
            AnprHttpSourceConfig(
                name="basic",
                format="generic",
                path="/anpr/basic",
                auth=CameraAuthConfig(username="cam", password=SECRET_PASSWORD),
            ),
            "side",
        ),
        (
            AnprHttpSourceConfig(
                name="token",
                format="generic",
                path="/anpr/token",
                auth=CameraAuthConfig(token=SECRET_TOKEN),
            ),
            "side",
        ),
    ]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    refused: list[RefusalSummary] = []
    listener = AnprListener("127.0.0.1", 0, max_body_kb=64, on_refused=refused.append)
    for cfg, lane in cameras():
        listener.add_camera(cfg, lane)
    reads: list[PlateRead] = []
    task = asyncio.create_task(listener.run(reads.append))
    await asyncio.wait_for(listener.started.wait(), 10)
    base = f"http://127.0.0.1:{listener.bound_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield Harness(listener, client, reads, refused)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


GENERIC = {"plate": "AB123CD", "confidence": 0.9}


def test_is_a_plate_source() -> None:
    assert isinstance(AnprListener("127.0.0.1", 0, 64), PlateSource)


async def test_hikvision_multipart_push(harness: Harness) -> None:
    scene = make_jpeg(seed=9)
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml")),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", scene),
        ]
    )
    response = await harness.client.post("/anpr/hik", content=body, headers={"Content-Type": ctype})
    assert response.status_code == 200
    [read] = harness.reads
    assert (read.access_point, read.source, read.vendor, read.text) == (
        "main-in",
        "hik-in",
        "hikvision",
        "AB123CD",
    )
    assert read.snapshot == scene
    assert read.received_mono > 0
    assert harness.listener.counters["hik-in"]["reads"] == 1


async def test_each_vendor_format(harness: Harness) -> None:
    r1 = await harness.client.post(
        "/anpr/axis", content=payload("axis_new.json"), headers={"Content-Type": "application/json"}
    )
    r2 = await harness.client.post(
        "/anpr/pr",
        content=payload("platerecognizer_stream.json"),
        headers={"Content-Type": "application/json"},
    )
    r3 = await harness.client.post("/anpr/gen", json=json.loads(payload("generic.json")))
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
    assert [(r.vendor, r.access_point, r.text) for r in harness.reads] == [
        ("axis", "main-out", "AB123CD"),
        ("platerecognizer", "main-in", "ab123cd"),
        ("generic", "side", "AB-123-CD"),
    ]


async def test_heartbeat_is_200_and_emits_nothing(harness: Harness) -> None:
    response = await harness.client.post(
        "/anpr/hik",
        content=payload("hikvision_heartbeat.xml"),
        headers={"Content-Type": "text/xml"},
    )
    assert response.status_code == 200
    assert harness.reads == []
    assert harness.listener.counters["hik-in"]["no_plate"] == 1


async def test_unknown_path_and_wrong_method(harness: Harness) -> None:
    assert (await harness.client.post("/nope", json=GENERIC)).status_code == 404
    response = await harness.client.get("/anpr/gen")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert harness.listener.counters[UNMATCHED]["not_found"] == 1
    assert harness.listener.counters["gen"]["wrong_method"] == 1
    assert harness.reads == []


async def test_basic_auth(harness: Harness) -> None:
    ok = await harness.client.post("/anpr/basic", json=GENERIC, auth=("cam", SECRET_PASSWORD))
    missing = await harness.client.post("/anpr/basic", json=GENERIC)
    wrong = await harness.client.post("/anpr/basic", json=GENERIC, auth=("cam", "guess"))
    garbage = await harness.client.post(
        "/anpr/basic", json=GENERIC, headers={"Authorization": "Basic !!notbase64"}
    )
    assert [r.status_code for r in (ok, missing, wrong, garbage)] == [200, 401, 401, 401]
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    assert len(harness.reads) == 1
    # the first refusal of an interval is reported at once, the rest in one summary
    harness.listener.flush_refusals()
    first, rest = harness.refused
    assert (first.address, first.count, first.reasons, first.cameras) == (
        "127.0.0.1",
        1,
        {"missing credentials": 1},
        {"basic": 1},
    )
    assert (rest.count, rest.reasons) == (2, {"wrong credentials": 2})
    assert rest.first_at <= rest.last_at
    assert harness.listener.counters["basic"]["refused"] == 3


async def test_token_auth_header_and_query(harness: Harness) -> None:
    bearer = await harness.client.post(
        "/anpr/token", json=GENERIC, headers={"Authorization": f"Bearer {SECRET_TOKEN}"}
    )
    query = await harness.client.post(f"/anpr/token?token={SECRET_TOKEN}", json=GENERIC)
    wrong = await harness.client.post("/anpr/token?token=nope", json=GENERIC)
    assert [r.status_code for r in (bearer, query, wrong)] == [200, 200, 401]
    assert len(harness.reads) == 2


async def test_secrets_never_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    await harness.client.post("/anpr/token?token=wrong-" + SECRET_TOKEN, json=GENERIC)
    await harness.client.post("/anpr/basic", json=GENERIC, auth=("cam", SECRET_PASSWORD + "x"))
    await harness.client.post(f"/anpr/token?token={SECRET_TOKEN}", content=b"{bad json")
    gated_logs = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("gated", "aiohttp"))
    )
    text = gated_logs + repr(harness.refused) + repr(harness.listener.counters)
    assert SECRET_TOKEN not in text
    assert SECRET_PASSWORD not in text


async def test_oversized_body_is_413(harness: Harness) -> None:
    big = {"plate": "AB1", "extra": {"pad": "x" * (100 * 1024)}}
    response = await harness.client.post("/anpr/gen", json=big)
    assert response.status_code == 413
    assert harness.listener.counters["gen"]["too_large"] == 1

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    chunked = await harness.client.post(
        "/anpr/gen", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    assert harness.reads == []
    # still serving
    assert (await harness.client.post("/anpr/gen", json=GENERIC)).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "ctype"),
    [
        ("/anpr/gen", b"{not json", "application/json"),
        ("/anpr/gen", b'{"plate": "A"}', "text/plain"),
        ("/anpr/gen", b"\xff\xfe\xfd", "application/json"),
        ("/anpr/hik", b"<EventNotificationAlert><eventType>ANPR", "text/xml"),
        ("/anpr/hik", b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "text/xml"),
        (
            "/anpr/hik",
            b"--b\r\nContent-Type: text/xml\r\n\r\n<a",
            "multipart/form-data; boundary=b",
        ),
        ("/anpr/axis", b"[]", "application/json"),
        ("/anpr/pr", b"json=%7B", "application/x-www-form-urlencoded"),
    ],
)
async def test_hostile_payloads_are_400(
    harness: Harness, path: str, body: bytes, ctype: str
) -> None:
    response = await harness.client.post(path, content=body, headers={"Content-Type": ctype})
    assert response.status_code == 400
    assert len(response.text) < 200
    assert harness.reads == []
    assert (await harness.client.post("/anpr/gen", json=GENERIC)).status_code == 200


async def test_bad_payload_logged_once(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="gated.hardware.anpr_http")
    for _ in range(5):
        await harness.client.post(
            "/anpr/gen", content=b"{x", headers={"Content-Type": "application/json"}
        )
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert harness.listener.counters["gen"]["bad_payload"] == 5


async def test_emit_failure_is_500_and_listener_survives() -> None:
    calls = 0

    def emit(read: PlateRead) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("queue full")

    listener = AnprListener("127.0.0.1", 0, 64)
    cfg = AnprHttpSourceConfig(name="gen", format="generic", path="/g")
    listener.add_camera(cfg, "lane")
    task = asyncio.create_task(listener.run(emit))
    await asyncio.wait_for(listener.started.wait(), 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.bound_port}") as client:
        assert (await client.post("/g", json=GENERIC)).status_code == 500
        assert (await client.post("/g", json=GENERIC)).status_code == 200
    assert listener.counters["gen"]["emit_failed"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_port_in_use_is_hardware_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        listener = AnprListener("127.0.0.1", port, 64)
        with pytest.raises(HardwareError, match="cannot listen"):
            await listener.run(lambda read: None)


async def test_raw_truncated_request_keeps_serving(harness: Harness) -> None:
    # a camera that dies mid-upload: declared length larger than what arrives
    _reader, writer = await asyncio.open_connection("127.0.0.1", harness.listener.bound_port)
    writer.write(
        b"POST /anpr/gen HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500\r\n\r\n{"plate": "AB'
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert (await harness.client.post("/anpr/gen", json=GENERIC)).status_code == 200
    assert [r.text for r in harness.reads] == ["AB123CD"]


def test_basic_credentials_helper_handles_base64_of_garbage() -> None:
    from gated.hardware.anpr_http import _basic_credentials

    assert _basic_credentials(base64.b64encode(b"\xff\xfe").decode()) == ("", "")
    assert _basic_credentials(base64.b64encode(b"u:p:q").decode()) == ("u", "p:q")
