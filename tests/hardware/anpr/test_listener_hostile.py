"""The camera listener against hostile clients, on loopback: floods, slow clients, odd bytes.

Loopback is all of 127.0.0.0/8 on Linux, so "another address" is a client bound
to 127.0.0.2. Figures are printed (run with -s), never asserted.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from gated.config import AnprHttpSourceConfig, CameraAuthConfig, ListenerConfig
from gated.hardware.anpr_formats import ParsedRead, parse_payload
from gated.hardware.anpr_http import INLINE_PARSE_MAX, UNMATCHED, AnprListener, RefusalSummary
from gated.model import PlateRead
from tests.hardware.anpr.conftest import multipart, payload

TOKEN = "tok-hostile-0123456789"
GENERIC = {"plate": "AB123CD", "confidence": 0.9}


@dataclass
class Served:
    listener: AnprListener
    reads: list[PlateRead]
    refused: list[RefusalSummary]
    futures: list[asyncio.Future[int | None]] = field(default_factory=list)
    resolve: bool = True  # resolve each emit's future at once (the journal committed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.bound_port}"

    def client(self, source: str = "127.0.0.1", **kw: Any) -> httpx.AsyncClient:
        """A client whose connections come from `source` (any 127/8 address)."""
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(base_url=self.url, transport=transport, timeout=10, **kw)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(parse: Any = parse_payload, **settings: Any) -> Served:
        refused: list[RefusalSummary] = []
        listener = AnprListener(
            "127.0.0.1",
            0,
            max_body_kb=settings.pop("max_body_kb", 64),
            settings=ListenerConfig(host="127.0.0.1", **settings),
            on_refused=refused.append,
            parse=parse,
        )
        listener.add_camera(
            AnprHttpSourceConfig(
                name="cam",
                format="generic",
                path="/cam",
                auth=CameraAuthConfig(token=TOKEN),
            ),
            "main-in",
        )
        listener.add_camera(
            AnprHttpSourceConfig(
                name="hik",
                format="hikvision",
                path="/hik",
                auth=CameraAuthConfig(allowed_ips=["127.0.0.1/32", "127.0.0.9/32"]),
            ),
            "main-in",
        )
        served = Served(listener, [], refused)

        def emit(read: PlateRead) -> asyncio.Future[int | None]:
            served.reads.append(read)
            future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            served.futures.append(future)
            if served.resolve:
                future.set_result(len(served.reads))
            return future

        tasks.append(asyncio.create_task(listener.run(emit)))
        await asyncio.wait_for(listener.started.wait(), 10)
        return served

    yield start
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def raw_exchange(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def until(predicate: Callable[[], Any]) -> None:
    """Poll until predicate() is true (at most 10 s)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


# --- acknowledged means kept ------------------------------------------------------------


async def test_answer_comes_only_after_the_journal_kept_the_read(serve: Any) -> None:
    served: Served = await serve()
    served.resolve = False
    order: list[str] = []
    async with served.client() as client:
        push = asyncio.create_task(client.post("/cam", json=GENERIC, headers=bearer()))
        push.add_done_callback(lambda _t: order.append("answered"))
        await until(lambda: served.futures)
        order.append("emitted")
        # give an answer that does not wait every chance to arrive first
        await asyncio.wait({push}, timeout=1.0)
        order.append("committed")
        served.futures[0].set_result(41)
        response = await push
    assert response.status_code == 200
    assert order == ["emitted", "committed", "answered"]


async def test_read_not_kept_in_time_is_503(serve: Any) -> None:
    served: Served = await serve(ack_timeout_s=0.3)
    served.resolve = False
    async with served.client() as client:
        response = await client.post("/cam", json=GENERIC, headers=bearer())
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        # a read the lane dropped (stopping) is not kept either
        push = asyncio.create_task(client.post("/cam", json=GENERIC, headers=bearer()))
        await until(lambda: len(served.futures) >= 2)
        served.futures[1].cancel()
        assert (await push).status_code == 503
    assert served.listener.counters["cam"]["not_kept"] == 2


# --- refusal flood ----------------------------------------------------------------------


async def test_refusal_flood_is_locked_out_and_summarised(serve: Any) -> None:
    served: Served = await serve(lockout_after=5, lockout_s=60)
    statuses: list[int] = []
    async with served.client("127.0.0.1") as attacker, served.client("127.0.0.2") as camera:
        for _ in range(60):
            r = await attacker.post("/cam", json=GENERIC, headers=bearer("wrong"))
            statuses.append(r.status_code)
        # the legitimate camera pushes from another address during the flood
        assert (await camera.post("/cam", json=GENERIC, headers=bearer())).status_code == 200
        # even the right token from the locked-out address is not read
        locked = await attacker.post("/cam", json=GENERIC, headers=bearer())
    assert statuses[:4] == [401] * 4
    assert set(statuses[5:]) == {429}
    assert locked.status_code == 429
    served.listener.flush_refusals()
    by_address = [s for s in served.refused if s.address == "127.0.0.1"]
    # one row at once (the first refusal), then one summary for the interval
    assert len(by_address) == 2
    assert sum(s.count for s in by_address) == 61
    assert by_address[1].locked_out
    assert by_address[1].reasons["locked out"] >= 55
    assert len(served.reads) == 1
    print(f"\nrefusal flood: 61 refused pushes -> {len(by_address)} audit summaries")


# --- slow clients -----------------------------------------------------------------------


async def test_headers_arriving_slowly_are_cut_off(serve: Any) -> None:
    served: Served = await serve(header_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.listener.bound_port)
    writer.write(b"POST /cam HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    closed_after: float | None = None
    start = time.monotonic()
    for _ in range(50):  # one byte every 0.1 s, as a slowloris does; never finishes
        try:
            writer.write(b"X")
            await writer.drain()
        except ConnectionError:
            closed_after = time.monotonic() - start
            break
        if reader.at_eof():
            closed_after = time.monotonic() - start
            break
        await asyncio.sleep(0.1)
        if (await _eof_soon(reader)) is True:
            closed_after = time.monotonic() - start
            break
    writer.close()
    assert closed_after is not None, "the listener kept a slow client's connection open"
    assert served.listener.counters[UNMATCHED]["header_timeout"] == 1
    print(f"\nslow headers: connection closed after {closed_after:.2f} s")


async def _eof_soon(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), 0.01)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


async def test_connection_caps_per_address_and_total(serve: Any) -> None:
    served: Served = await serve(max_connections=6, max_connections_per_address=3)
    port = served.listener.bound_port
    idle = []
    for _ in range(3):
        idle.append(await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", 0)))
    await asyncio.sleep(0.1)
    over = await raw_exchange(port, b"POST /cam HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.1")
    assert over.startswith(b"HTTP/1.1 429")
    for source in ("127.0.0.3", "127.0.0.4"):  # not camera addresses for /cam's token
        for _ in range(3 if source == "127.0.0.3" else 1):
            idle.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)))
    await asyncio.sleep(0.1)
    # total cap reached: a client that is no configured camera address gets 503 …
    async with served.client("127.0.0.5") as other:
        busy = await other.post("/cam", json=GENERIC, headers=bearer())
    assert busy.status_code == 503
    # … while a camera listed in allowed_ips still gets through (its reserve)
    async with served.client("127.0.0.9") as camera:
        body, ctype = multipart(
            [("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml"))]
        )
        ok = await camera.post("/hik", content=body, headers={"Content-Type": ctype})
    assert ok.status_code == 200
    counters = served.listener.counters[UNMATCHED]
    # the seventh idle connection and the request from 127.0.0.5
    assert counters["over_address_cap"] == 1 and counters["over_total_cap"] == 2
    for _reader, writer in idle:
        writer.close()


# --- expensive bodies -------------------------------------------------------------------


async def test_parsing_does_not_hold_up_the_event_loop(serve: Any) -> None:
    release = threading.Event()
    threads: list[str] = []

    def slow_parse(fmt: str, body: bytes, ctype: str, at: float) -> list[ParsedRead]:
        if b"SLOW" in body:
            threads.append(threading.current_thread().name)
            release.wait(10)  # stands in for an expensive body
        return parse_payload(fmt, body, ctype, at)

    served: Served = await serve(parse=slow_parse)
    large = {"plate": "SLOW1", "pad": "x" * (2 * INLINE_PARSE_MAX)}  # too big to parse inline
    async with served.client() as client:
        slow = asyncio.create_task(client.post("/cam", json=large, headers=bearer()))
        await until(lambda: threads)
        # while the expensive parse runs, another camera's push is answered
        fast = await client.post("/cam", json={"plate": "FAST1"}, headers=bearer())
        release.set()
        assert fast.status_code == 200
        assert (await slow).status_code == 200
    assert [r.text for r in served.reads] == ["FAST1", "SLOW1"]
    assert threading.main_thread().name not in threads


async def test_many_part_body_is_refused_and_the_loop_keeps_running(serve: Any) -> None:
    served: Served = await serve(max_body_kb=8192)
    parts = 590_000
    boundary = "b"
    body = (f"--{boundary}\r\n\r\n\r\n" * parts + f"--{boundary}--\r\n").encode()[: 8 * 1024 * 1024]
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - before - 0.005)

    probing = asyncio.create_task(probe())
    async with served.client() as client:
        response = await client.post(
            "/hik",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    stop.set()
    await probing
    assert response.status_code == 400
    assert "parts" in response.text
    print(
        f"\n{len(body)} bytes, ~{parts} parts: longest event-loop stall {max(lags) * 1000:.1f} ms"
    )


def test_parsing_a_large_multipart_body_copies_it_at_most_twice() -> None:
    """Memory per parse is what bounds 48 concurrent 8 MB pushes (the stdlib MIME parser: 12x)."""
    picture = b"\xff\xd8\xff" + bytes(range(256)) * (8 * 1024 * 1024 // 256 - 64)
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml")),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", picture),
        ]
    )
    tracemalloc.start()
    try:
        [read] = parse_payload("hikvision", body, ctype, 0.0)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read.snapshot == picture
    print(f"\n{len(body)} byte multipart: parse peak {peak / 1e6:.1f} MB above the body")
    assert peak < 2 * len(body)


async def test_bodies_in_flight_stay_within_the_budget(serve: Any) -> None:
    served: Served = await serve(max_body_kb=1024, max_inflight_mb=1)
    image = b"\xff\xd8\xff" + b"\0" * (600 * 1024)
    doc = {"plate": "AB1", "image_jpeg_base64": base64.b64encode(image).decode()}
    async with served.client() as client:
        answers = await asyncio.gather(
            *(client.post("/cam", json=doc, headers=bearer()) for _ in range(6))
        )
    assert [a.status_code for a in answers] == [200] * 6
    budget = served.listener._budget
    assert budget is not None and budget.peak <= 1024 * 1024
    assert budget.used == 0


# --- odd bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credential",
    [
        b"Bearer tok-\xff\xfe\x80secret",
        b"Basic " + base64.b64encode(b"cam:\xff\xfepw"),
        b"Basic \xff\xfe",
        b"Bearer \xed\xa0\x80",  # an encoded surrogate
    ],
)
async def test_credentials_with_non_utf8_bytes_are_401_and_audited(
    serve: Any, credential: bytes
) -> None:
    served: Served = await serve()
    body = b'{"plate": "AB123CD"}'
    answer = await raw_exchange(
        served.listener.bound_port,
        b"POST /cam HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Authorization: "
        + credential
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    [summary] = served.refused
    assert summary.count == 1 and summary.cameras == {"cam": 1}
    assert served.reads == []


async def test_accept_errors_are_logged_once_per_outage(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of descriptors, asyncio reports every failed accept(); the log gets one line."""
    served: Served = await serve()
    loop = asyncio.get_running_loop()
    handler = loop.get_exception_handler()
    assert handler is not None
    # asyncio passes the listening socket (a TransportSocket): what matters is its descriptor
    [fd] = served.listener._sockets
    listening = SimpleNamespace(fileno=lambda: fd)
    caplog.set_level("WARNING", logger="gated.hardware.anpr_http")
    for _ in range(500):
        handler(
            loop,
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(24, "Too many open files"),
                "socket": listening,
            },
        )
    async with served.client() as client:
        assert (await client.post("/cam", json=GENERIC, headers=bearer())).status_code == 200
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot accept" in line for line in lines) == 1
    assert sum("accepting connections again (500 accept errors)" in line for line in lines) == 1
    assert served.listener.counters[UNMATCHED]["accept_errors"] == 500
