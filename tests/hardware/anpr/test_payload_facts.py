"""What camera payloads carry: the capture time, the raw direction, unread vehicles."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import httpx
import pytest

from gated.config import AnprHttpSourceConfig, CameraAuthConfig
from gated.hardware.anpr_formats import parse_payload
from gated.hardware.anpr_http import AnprListener
from gated.model import PlateRead
from tests.hardware.anpr.conftest import make_jpeg, multipart, payload

NOW = 1_700_000_000.0


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_hikvision_capture_time_and_direction() -> None:
    [read] = parse_payload("hikvision", payload("hikvision_anpr.xml"), "text/xml", NOW)
    assert read.captured_at == ts("2024-05-07T17:48:03.847+02:00")
    assert read.read_at == NOW  # the device's own clock, never the camera's
    assert read.camera_direction == "forward"


def test_hikvision_reverse_is_reported_lower_case() -> None:
    xml = payload("hikvision_anpr.xml").replace(b">forward<", b">Reverse<")
    [read] = parse_payload("hikvision", xml, "text/xml", NOW)
    assert read.camera_direction == "reverse"


def test_hikvision_naive_time_is_no_capture_time() -> None:
    xml = payload("hikvision_anpr_legacy.xml").replace(
        b"2023-11-02T08:15:27+00:00", b"2023-11-02T08:15:27"
    )
    [read] = parse_payload("hikvision", xml, "text/xml", NOW)
    assert read.captured_at is None
    assert read.extra["camera_time_unused"] == "2023-11-02T08:15:27"


@pytest.mark.parametrize("plate", [b"unknown", b"", b"UNKNOWN", b"--", b"&lt;&gt;"])
def test_hikvision_unread_vehicle_is_a_read_without_text(plate: bytes) -> None:
    scene = make_jpeg(seed=11)
    xml = payload("hikvision_anpr.xml").replace(
        b">AB123CD</licensePlate>", b">" + plate + b"</licensePlate>"
    )
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", xml),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", scene),
        ]
    )
    [read] = parse_payload("hikvision", body, ctype, NOW)
    assert read.text == ""
    assert read.snapshot == scene
    assert read.captured_at == ts("2024-05-07T17:48:03.847+02:00")
    assert read.camera_direction == "forward"


def test_hikvision_sample_without_plate_is_unread() -> None:
    [read] = parse_payload("hikvision", payload("hikvision_noplate.xml"), "text/xml", NOW)
    assert read.text == ""
    assert read.captured_at == ts("2024-05-07T17:52:11+02:00")


def test_hikvision_heartbeat_is_still_nothing() -> None:
    assert parse_payload("hikvision", payload("hikvision_heartbeat.xml"), "text/xml", NOW) == []


AXIS_UTC3 = {
    "datetime": "20240507 184803120",  # local time of a camera at UTC+3, no offset
    "capture_timestamp": "1715096883120",  # 2024-05-07T15:48:03.120Z
    "plateUTF8": "AB123CD",
    "plateConfidence": "0.9",
    "carState": "new",
    "carMoveDirection": "OUT",
}


def test_axis_capture_timestamp_beats_the_local_datetime() -> None:
    body = json.dumps(AXIS_UTC3).encode()
    [read] = parse_payload("axis", body, "application/json", NOW)
    assert read.captured_at == pytest.approx(ts("2024-05-07T15:48:03.120+00:00"))
    assert read.read_at == NOW
    assert read.camera_direction == "out"
    assert read.extra["camera_datetime"] == "20240507 184803120"


def test_axis_numeric_capture_timestamp() -> None:
    body = json.dumps({**AXIS_UTC3, "capture_timestamp": 1715096883120}).encode()
    [read] = parse_payload("axis", body, "application/json", NOW)
    assert read.captured_at == pytest.approx(1715096883.12)


def test_axis_local_datetime_alone_is_not_a_capture_time() -> None:
    doc = {k: v for k, v in AXIS_UTC3.items() if k != "capture_timestamp"}
    [read] = parse_payload("axis", json.dumps(doc).encode(), "application/json", NOW)
    assert read.captured_at is None
    assert read.extra["camera_datetime"] == "20240507 184803120"


def test_axis_datetime_with_offset_is_a_capture_time() -> None:
    doc = {k: v for k, v in AXIS_UTC3.items() if k != "capture_timestamp"}
    doc["datetime"] = "20240507 184803120+0300"
    [read] = parse_payload("axis", json.dumps(doc).encode(), "application/json", NOW)
    assert read.captured_at == pytest.approx(ts("2024-05-07T15:48:03.120+00:00"))


@pytest.mark.parametrize("text", ["", "   ", "unknown", "***"])
def test_axis_vehicle_without_readable_plate(text: str) -> None:
    image = make_jpeg(seed=12)
    body, ctype = multipart(
        [
            ("json", "", "application/json", json.dumps({**AXIS_UTC3, "plateUTF8": text}).encode()),
            ("image", "frame.jpg", "image/jpeg", image),
        ]
    )
    [read] = parse_payload("axis", body, ctype, NOW)
    assert read.text == ""
    assert read.snapshot == image


def test_platerecognizer_capture_time() -> None:
    [read] = parse_payload(
        "platerecognizer", payload("platerecognizer_stream.json"), "application/json", NOW
    )
    assert read.captured_at == pytest.approx(ts("2024-05-07T15:48:03.606935+00:00"))
    assert read.read_at == NOW


def test_generic_capture_time_direction_and_unread() -> None:
    body = json.dumps(
        [
            {"plate": "AB1", "time": 1715096883.5, "direction": "OUT"},
            {"plate": "", "time": "2024-05-07T17:48:03+02:00"},
            {"plate": "<>!"},
        ]
    ).encode()
    reads = parse_payload("generic", body, "application/json", NOW)
    assert [(r.text, r.captured_at, r.camera_direction) for r in reads] == [
        ("AB1", 1715096883.5, "out"),
        ("", ts("2024-05-07T17:48:03+02:00"), None),
        ("", None, None),
    ]
    assert all(r.read_at == NOW for r in reads)


async def test_unread_hikvision_vehicle_reaches_the_lane_over_http() -> None:
    """Through the real listener: the unread car is emitted with its picture, not dropped."""
    reads: list[PlateRead] = []

    def emit(read: PlateRead) -> asyncio.Future[int | None]:
        reads.append(read)
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        done.set_result(len(reads))
        return done

    listener = AnprListener("127.0.0.1", 0, 64)
    listener.add_camera(
        AnprHttpSourceConfig(
            name="hik",
            format="hikvision",
            path="/hik",
            auth=CameraAuthConfig(allowed_ips=["127.0.0.1/32"]),
        ),
        "main-in",
    )
    task = asyncio.create_task(listener.run(emit))
    await asyncio.wait_for(listener.started.wait(), 10)
    scene = make_jpeg(seed=13)
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_noplate.xml")),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", scene),
        ]
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.bound_port}") as c:
            response = await c.post("/hik", content=body, headers={"Content-Type": ctype})
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert response.status_code == 200
    [read] = reads
    assert (read.text, read.snapshot, read.access_point) == ("", scene, "main-in")
    assert read.captured_at == ts("2024-05-07T17:52:11+02:00")
