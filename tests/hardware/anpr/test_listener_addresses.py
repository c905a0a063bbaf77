"""Camera pushes limited to the addresses a camera pushes from (alone or with credentials)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from gated.config import AnprHttpSourceConfig, CameraAuthConfig, parse_config
from gated.errors import ConfigError
from gated.hardware.anpr_http import AnprListener, RefusalSummary, _address_allowed
from gated.model import PlateRead

GENERIC = {"plate": "AB123CD", "confidence": 0.9}


@pytest.fixture
async def served() -> AsyncIterator[
    tuple[httpx.AsyncClient, list[PlateRead], list[RefusalSummary], AnprListener]
]:
    refused: list[RefusalSummary] = []
    listener = AnprListener("127.0.0.1", 0, max_body_kb=64, on_refused=refused.append)
    for name, nets, token in (
        ("local", ["127.0.0.0/8"], ""),
        ("elsewhere", ["192.0.2.10/32"], ""),
        ("local-and-token", ["127.0.0.1"], "tok-123"),
    ):
        listener.add_camera(
            AnprHttpSourceConfig(
                name=name,
                format="generic",
                path=f"/anpr/{name}",
                auth=CameraAuthConfig(allowed_ips=nets, token=token),
            ),
            "main-in",
        )
    reads: list[PlateRead] = []
    task = asyncio.create_task(listener.run(reads.append))
    await asyncio.wait_for(listener.started.wait(), 10)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{listener.bound_port}", timeout=10
    ) as c:
        yield c, reads, refused, listener
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_address_lists(
    served: tuple[httpx.AsyncClient, list[PlateRead], list[RefusalSummary], AnprListener],
) -> None:
    client, reads, refused, listener = served
    assert (await client.post("/anpr/local", json=GENERIC)).status_code == 200
    assert (await client.post("/anpr/elsewhere", json=GENERIC)).status_code == 403
    # with both an address list and a token, both must pass
    assert (await client.post("/anpr/local-and-token", json=GENERIC)).status_code == 401
    ok = await client.post(
        "/anpr/local-and-token", json=GENERIC, headers={"Authorization": "Bearer tok-123"}
    )
    assert ok.status_code == 200
    assert len(reads) == 2
    listener.flush_refusals()
    assert [(r.count, r.cameras, r.reasons) for r in refused] == [
        (1, {"elsewhere": 1}, {"address not allowed": 1}),
        (1, {"local-and-token": 1}, {"missing credentials": 1}),
    ]


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_address_matching(remote: str, allowed: bool) -> None:
    import ipaddress

    assert _address_allowed((ipaddress.ip_network("127.0.0.0/8"),), remote) is allowed
    assert _address_allowed((), remote) is True  # no list: credentials decide


SITE = {
    "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
    "cameras_listener": {"host": "127.0.0.1"},
}


def test_config_refuses_an_unauthenticated_camera() -> None:
    lane = {
        "id": "main-in",
        "sources": [{"kind": "anpr_http", "name": "c", "format": "generic", "path": "/a"}],
    }
    with pytest.raises(
        ConfigError, match=r"lanes\[0\]\.sources\[0\]\.auth: set username and password"
    ):
        parse_config({**SITE, "lanes": [lane]})
    lane["sources"][0]["auth"] = {"allowed_ips": ["10.0.0.0/33"]}
    with pytest.raises(ConfigError, match=r"auth.allowed_ips\[0\]"):
        parse_config({**SITE, "lanes": [lane]})
    lane["sources"][0]["auth"] = {"username": "cam"}
    with pytest.raises(ConfigError, match=r"auth.password: required with username"):
        parse_config({**SITE, "lanes": [lane]})
    lane["sources"][0]["auth"] = {"allowed_ips": ["10.0.5.21"]}
    assert parse_config({**SITE, "lanes": [lane]}).lanes[0].sources[0].auth.allowed_ips == [
        "10.0.5.21"
    ]


def test_listener_host_is_required_with_a_camera() -> None:
    lane = {
        "id": "main-in",
        "sources": [
            {
                "kind": "anpr_http",
                "name": "c",
                "format": "generic",
                "path": "/a",
                "auth": {"token": "t"},
            }
        ],
    }
    site = {"site": SITE["site"]}
    with pytest.raises(ConfigError, match=r"cameras_listener\.host: required"):
        parse_config({**site, "lanes": [lane]})
    with pytest.raises(ConfigError, match=r"cameras_listener\.host: 'every interface'"):
        parse_config({**site, "cameras_listener": {"host": "every interface"}, "lanes": [lane]})
    assert parse_config({**SITE, "lanes": [lane]}).cameras_listener.host == "127.0.0.1"
    assert parse_config(site).cameras_listener.host == ""  # no camera: nothing listens


async def test_listener_binds_only_the_address_it_is_given() -> None:
    reads: list[PlateRead] = []
    listener = AnprListener("127.0.0.2", 0, max_body_kb=64)
    listener.add_camera(
        AnprHttpSourceConfig(
            name="c", format="generic", path="/a", auth=CameraAuthConfig(token="tok")
        ),
        "main-in",
    )
    task = asyncio.create_task(listener.run(reads.append))
    await asyncio.wait_for(listener.started.wait(), 10)
    port = listener.bound_port
    try:
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.2:{port}") as client:
            ok = await client.post("/a", json=GENERIC, headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
