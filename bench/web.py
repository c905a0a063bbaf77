"""The status page under load: live-feed latency, read → relay unchanged, page size, memory.

Runs `gated run` twice on the same site (fake relay, generic JSON camera on loopback,
a resident rule set) under the same steady read load: first without the page, then with
[web] enabled and `--clients` logged-in browsers' worth of live-feed (server-sent events)
connections. Each read carries a unique plate; read → page is from the moment this
process posted the read to the moment a client's stream delivered its row (every
client counts). Read → relay is the daemon's own figure, journaled with every row that
pulsed the relay. RSS is the daemon's VmRSS at the end of each run; the difference is
what the page (and its clients) added.

    python -m bench.web [--clients 10] [--rate 20] [--seconds 20]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench._site import free_port, import_residents, lane_toml, plate, rss_mb, site_toml

RESIDENTS = 2000
PASSWORD = "bench-password-1"


def _config(base: Path, camera_port: int, web_port: int, web: bool) -> str:
    return site_toml(base, camera_port, "bench-web", f"""
[control]
socket = ""
[web]
enabled = {"true" if web else "false"}
port = {web_port}
users_file = "{base / "users.json"}"
max_clients = 64
""" + lane_toml("main-in", "in", "/anpr/main-in", source="cam"))


def _q(values: list[float], p: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else None


async def _wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _reader(session: aiohttp.ClientSession, url: str, seen: dict[str, list[float]],
                  ready: asyncio.Event) -> None:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
        kind = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
                ready.set()
            elif line.startswith("data: ") and kind == "access":
                plate = json.loads(line[6:])["plate"]
                seen.setdefault(plate, []).append(time.monotonic())


async def _phase(base: Path, web: bool, clients: int, rate: float, seconds: float,
                 offset: int) -> dict[str, Any]:
    camera_port, web_port = free_port(), free_port()
    config = base / "gated.toml"
    config.write_text(_config(base, camera_port, web_port, web))
    log = (base / f"daemon-{'web' if web else 'plain'}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gated", "run", "--config", str(config),
        stdout=log, stderr=asyncio.subprocess.STDOUT)
    sent: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    page_bytes = 0
    readers: list[asyncio.Task[None]] = []
    sessions: list[aiohttp.ClientSession] = []
    try:
        await _wait_port(camera_port)
        base_url = f"http://127.0.0.1:{web_port}"
        if web:
            await _wait_port(web_port)
            events = [asyncio.Event() for _ in range(clients)]
            for ready in events:
                session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                sessions.append(session)
                async with session.post(base_url + "/login", allow_redirects=False,
                                        data={"user": "bench", "password": PASSWORD}) as r:
                    assert r.status == 303, await r.text()
                readers.append(asyncio.create_task(
                    _reader(session, base_url + "/api/live", seen, ready)))
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
        async with aiohttp.ClientSession() as camera:
            url = f"http://127.0.0.1:{camera_port}/anpr/main-in"
            reads = int(rate * seconds)
            start = time.monotonic()
            for i in range(reads):
                # Three in four reads are residents (the relay pulses), the rest unknown.
                read = plate(offset + i) if i % 4 else f"Q{offset + i:06d}Q"
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                sent[read] = time.monotonic()
                async with camera.post(url, json={"plate": read, "confidence": 0.95}) as r:
                    assert r.status == 200, await r.text()
        await asyncio.sleep(1.0)  # the last rows reach the pages
        if web:  # after the load: 20 recent rows and both 24-hour charts drawn
            for path in ("/", "/static/app.css", "/static/app.js"):
                async with sessions[0].get(base_url + path) as r:
                    page_bytes += len(await r.read())
        rss = rss_mb(proc.pid)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for session in sessions:
            await session.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        log.close()
    conn = sqlite3.connect(base / "journal.sqlite3")
    relay = [v for (v,) in conn.execute(
        "SELECT read_to_relay_ms FROM access_logs WHERE read_to_relay_ms IS NOT NULL "
        "AND vehicle_plate IN (SELECT value FROM json_each(?))", (json.dumps(list(sent)),))]
    conn.close()
    page = [(t - sent[p]) * 1000 for p, times in seen.items() if p in sent for t in times]
    return {"reads": len(sent), "relay": relay, "page": page, "rss_mb": rss,
            "page_bytes": page_bytes, "deliveries": len(page)}


async def _run(clients: int, rate: float, seconds: float) -> dict[str, Any]:
    from gated.web.users import UserStore

    base = Path(tempfile.mkdtemp(prefix="gated-bench-web-"))
    import_residents(base, base / "rules.sqlite3", [plate(i) for i in range(RESIDENTS)])
    UserStore(base / "users.json").add("bench", "viewer", PASSWORD)
    reads = int(rate * seconds)
    plain = await _phase(base, False, clients, rate, seconds, 0)
    loaded = await _phase(base, True, clients, rate, seconds, reads)
    return {
        "clients": clients,
        "reads_per_s": rate,
        "reads": loaded["reads"],
        "read_to_page_p50_ms": _q(loaded["page"], 0.50),
        "read_to_page_p99_ms": _q(loaded["page"], 0.99),
        "page_deliveries": loaded["deliveries"],
        "page_deliveries_expected": loaded["reads"] * clients,
        "read_to_relay_p99_ms": _q(loaded["relay"], 0.99),
        "read_to_relay_p99_ms_without_web": _q(plain["relay"], 0.99),
        "page_bytes": loaded["page_bytes"],
        "rss_mb_without_web": round(plain["rss_mb"], 1),
        "rss_mb_with_web": round(loaded["rss_mb"], 1),
        "rss_added_mb": round(loaded["rss_mb"] - plain["rss_mb"], 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="reads per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.clients, args.rate, args.seconds))))


if __name__ == "__main__":
    main()
