"""What `gated run` writes per access event: bytes handed to the disk, with and without a picture.

`python -m bench.journal_writes [--events N] [--dir DIR]` starts the real daemon (one lane,
fake relay, camera push listener), posts N reads one at a time (each answered only after
its row committed, so each is its own durable commit, the worst case of a quiet gate) and
reads the daemon's /proc/PID/io around them: `wchar` is every byte the process passed to
write()/pwrite() (WAL frames, checkpoint copy-back into the main file, the picture, plus a
few hundred bytes of HTTP answer and log per event, reported apart as `other_per_event`).
Then the same with a camera picture per read. Prints one JSON object as its last line.
Point --dir at the SD card on a Pi; the default is a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._site import free_port

XML = """<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>192.168.1.64</ipAddress><channelID>1</channelID>
<dateTime>{when}</dateTime><eventType>ANPR</eventType><eventState>active</eventState>
<ANPR><country>3</country><licensePlate>{plate}</licensePlate><direction>forward</direction>
<confidenceLevel>95</confidenceLevel><plateType>unknown</plateType></ANPR>
</EventNotificationAlert>"""


def _jpeg() -> bytes:
    import cv2
    import numpy as np

    # A 1280x720 picture with structure and some noise, like a camera's detection picture.
    y, x = np.mgrid[0:720, 0:1280]
    base = ((x // 40 + y // 40) % 2 * 120 + x * 100 // 1280).astype(np.uint8)
    noise = np.random.default_rng(1).integers(0, 24, size=(720, 1280), dtype=np.uint8)
    image = np.dstack([base + noise] * 3)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(data.tobytes())


def _multipart(plate: str, jpeg: bytes) -> tuple[bytes, str]:
    boundary = "MIME_boundary_bench"
    xml = XML.format(plate=plate, when=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    body = b""
    for name, ctype, data in (("anpr.xml", "text/xml", xml.encode()),
                              ("detectionPicture.jpg", "image/jpeg", jpeg)):
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                 f"filename=\"{name}\"\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _io(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def _run(root: Path, events: int, picture: bytes | None) -> dict[str, float]:
    port = free_port()
    root.mkdir(parents=True)
    config = root / "gated.toml"
    config.write_text(f"""
[site]
tenant_id = "t"
site_id = "s"
device_id = "d"
[journal]
path = "{root / 'journal.sqlite3'}"
snapshot_dir = "{root / 'snapshots'}"
[rules]
path = "{root / 'rules.sqlite3'}"
[control]
socket = ""
[cameras_listener]
host = "127.0.0.1"
port = {port}
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 0
[lanes.relay]
kind = "fake"
[[lanes.sources]]
kind = "anpr_http"
name = "cam"
format = "hikvision"
path = "/anpr"
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
""")
    log = (root / "daemon.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "gated", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/anpr"
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    body, ctype = _multipart("WARM000", picture or b"")
                    if picture is None:
                        body, ctype = _multipart("WARM000", b"")
                    client.post(url, content=body, headers={"Content-Type": ctype})
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for i in range(20):  # warm-up: the WAL and the tables reach their working size
                body, ctype = _multipart(f"WU{i:04d}X", picture or b"")
                client.post(url, content=body, headers={"Content-Type": ctype})
            before = _io(proc.pid)
            started = time.monotonic()
            for i in range(events):
                body, ctype = _multipart(f"BN{i:05d}X", picture or b"")
                status = client.post(url, content=body, headers={"Content-Type": ctype})
                if status.status_code != 200:
                    raise RuntimeError(f"read {i}: HTTP {status.status_code}")
            elapsed = time.monotonic() - started
            after = _io(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    conn = sqlite3.connect(root / "journal.sqlite3")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    rows = conn.execute("SELECT count(*) FROM access_logs").fetchone()[0]
    conn.close()
    wchar = after["wchar"] - before["wchar"]
    disk = after.get("write_bytes", 0) - before.get("write_bytes", 0)
    pic = len(picture) if picture else 0
    # Answers and log lines are a few hundred bytes: measured as the HTTP answer size.
    return {
        "events": events, "rows": rows, "page_size": page,
        "wchar_per_event": round(wchar / events),
        "write_bytes_per_event": round(disk / events),
        "picture_bytes": pic,
        "journal_bytes_per_event": round(wchar / events) - pic,
        "events_per_s": round(events / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Run both cases and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="gated-writes-", dir=args.dir))
    plain = _run(base / "plain", args.events, None)
    pictured = _run(base / "picture", args.events, _jpeg())
    print(json.dumps({
        "bench": "journal_writes", "events": args.events,
        "no_picture": plain, "with_picture": pictured,
    }))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
