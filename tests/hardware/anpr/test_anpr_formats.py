"""The pure ANPR payload parsers, on sample payloads and on hostile input."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gated.errors import PayloadError
from gated.hardware.anpr_formats import FORMATS, MAX_XML_BYTES, parse_payload
from tests.hardware.anpr.conftest import make_jpeg, multipart, payload

NOW = 1_700_000_000.0


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# --- Hikvision ---------------------------------------------------------------------------


def test_hikvision_multipart_with_pictures() -> None:
    scene, crop = make_jpeg(seed=1), make_jpeg(seed=2)
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml")),
            ("licensePlatePicture.jpg", "licensePlatePicture.jpg", "image/jpeg", crop),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", scene),
        ]
    )
    [read] = parse_payload("hikvision", body, ctype, NOW)
    assert read.text == "AB123CD"
    assert read.confidence == pytest.approx(0.97)
    assert read.captured_at == ts("2024-05-07T17:48:03.847+02:00")
    assert read.snapshot == scene  # the scene picture is preferred over the plate crop
    assert read.camera_direction == "forward"  # camera-relative: the source config maps it
    assert read.extra["direction"] == "forward"
    assert read.extra["vehicle_color"] == "blue"
    assert read.extra["plate_color"] == "white"
    assert read.extra["event_uuid"].startswith("0d6f2b7e")
    assert "plate_type" not in read.extra  # "unknown" placeholders are dropped


def test_hikvision_multipart_mixed_with_only_plate_crop() -> None:
    crop = make_jpeg(seed=3)
    body, ctype = multipart(
        [
            ("anpr.xml", "", "application/xml", payload("hikvision_anpr.xml")),
            ("licensePlatePicture.jpg", "licensePlatePicture.jpg", "image/jpeg", crop),
        ]
    )
    ctype = ctype.replace("form-data", "mixed")
    [read] = parse_payload("hikvision", body, ctype, NOW)
    assert read.snapshot == crop


def test_hikvision_bare_xml_legacy_namespace() -> None:
    [read] = parse_payload(
        "hikvision", payload("hikvision_anpr_legacy.xml"), "application/xml", NOW
    )
    assert read.text == "KX70ABC"
    assert read.confidence == pytest.approx(0.88)
    assert read.snapshot is None
    assert read.extra["vehicle_type"] == "truck"
    assert read.captured_at == ts("2023-11-02T08:15:27+00:00")


def test_hikvision_valid_alarm_without_vehicle() -> None:
    assert parse_payload("hikvision", payload("hikvision_heartbeat.xml"), "text/xml", NOW) == []


def test_hikvision_naive_time_falls_back_to_receive_time() -> None:
    xml = payload("hikvision_anpr_legacy.xml").replace(
        b"2023-11-02T08:15:27+00:00", b"2023-11-02T08:15:27"
    )
    [read] = parse_payload("hikvision", xml, "text/xml", NOW)
    assert read.read_at == NOW
    assert read.captured_at is None
    assert read.extra["camera_time_unused"] == "2023-11-02T08:15:27"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>&lol3;</licensePlate></ANPR>
</EventNotificationAlert>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>&x;</licensePlate></ANPR>
</EventNotificationAlert>"""


@pytest.mark.parametrize(
    ("body", "ctype", "reason"),
    [
        (BILLION_LAUGHS, "text/xml", "DTD"),
        (XXE, "text/xml", "DTD"),
        (b"<EventNotificationAlert><eventType>ANPR", "text/xml", "malformed XML"),
        (b"<Other/>", "text/xml", "not EventNotificationAlert"),
        (
            b"<EventNotificationAlert><eventType>ANPR</eventType></EventNotificationAlert>",
            "text/xml",
            "no <ANPR>",
        ),
        (b"<a>" + b"x" * (MAX_XML_BYTES + 1) + b"</a>", "text/xml", "larger than"),
        (b'{"plate": "X"}', "application/json", "unsupported Content-Type"),
        (b"", "text/xml", "empty body"),
    ],
)
def test_hikvision_rejects(body: bytes, ctype: str, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_payload("hikvision", body, ctype, NOW)


def test_truncated_multipart_is_rejected() -> None:
    body, ctype = multipart(
        [
            ("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml")),
            ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg", make_jpeg()),
        ]
    )
    with pytest.raises(PayloadError, match="truncated"):
        parse_payload("hikvision", body[: len(body) // 2], ctype, NOW)


@pytest.mark.parametrize(
    ("ctype", "reason"),
    [
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=other", "does not start with its boundary"),
        ("multipart/form-data; boundary=x\r\nX-Injected: 1", "invalid characters"),
    ],
)
def test_bad_multipart_headers(ctype: str, reason: str) -> None:
    body, _ = multipart([("anpr.xml", "anpr.xml", "text/xml", payload("hikvision_anpr.xml"))])
    with pytest.raises(PayloadError, match=reason):
        parse_payload("hikvision", body, ctype, NOW)


def test_multipart_without_xml_part() -> None:
    body, ctype = multipart([("pic", "a.jpg", "image/jpeg", make_jpeg())])
    with pytest.raises(PayloadError, match="no XML part"):
        parse_payload("hikvision", body, ctype, NOW)


def test_too_many_parts() -> None:
    body, ctype = multipart([(f"p{i}", "", "text/plain", b"x") for i in range(40)])
    with pytest.raises(PayloadError, match="more than"):
        parse_payload("hikvision", body, ctype, NOW)


# --- Axis ----------------------------------------------------------------------------------


def test_axis_json_body() -> None:
    [read] = parse_payload("axis", payload("axis_new.json"), "application/json", NOW)
    assert read.text == "AB123CD"
    assert read.confidence == pytest.approx(0.8088, abs=1e-4)
    assert read.camera_direction == "in"
    assert read.captured_at is None  # local time without an offset: not a capture time
    assert read.extra["camera_datetime"] == "20240507 154803120"
    assert read.extra["country"] == "NLD"
    assert read.extra["sensor"] == "gate-north"


def test_axis_multipart_screenshot() -> None:
    image = make_jpeg(seed=4)
    body, ctype = multipart(
        [
            ("json", "", "application/json", payload("axis_new.json")),
            ("image", "frame.jpg", "image/jpeg", image),
        ]
    )
    [read] = parse_payload("axis", body, ctype, NOW)
    assert read.snapshot == image


def test_axis_lost_event_emits_nothing() -> None:
    assert parse_payload("axis", payload("axis_lost.json"), "application/json", NOW) == []


def test_axis_time_with_offset() -> None:
    doc = json.loads(payload("axis_lost.json"))
    doc["carState"] = "updated"
    [read] = parse_payload("axis", json.dumps(doc).encode(), "application/json", NOW)
    assert read.captured_at == ts("2024-05-07T15:48:13.500+02:00")


@pytest.mark.parametrize(
    "doc",
    [
        [1, 2],
        {"plateUTF8": 5, "carState": "new"},
        {"plateUTF8": "A" * 200, "carState": "new"},
        {"plateUTF8": "AB\x00C", "carState": "new"},
        {"plateUTF8": "ABC", "plateConfidence": "high", "carState": "new"},
        {"plateUTF8": "ABC", "plateConfidence": 250, "carState": "new"},
    ],
)
def test_axis_rejects(doc: object) -> None:
    with pytest.raises(PayloadError):
        parse_payload("axis", json.dumps(doc).encode(), "application/json", NOW)


# --- Plate Recognizer ----------------------------------------------------------------------


def test_platerecognizer_json_body() -> None:
    [read] = parse_payload(
        "platerecognizer", payload("platerecognizer_stream.json"), "application/json", NOW
    )
    assert read.text == "ab123cd"  # raw; normalised later by the core
    assert read.confidence == pytest.approx(0.902)
    assert read.captured_at == ts("2024-05-07T15:48:03.606935+00:00")
    assert read.extra["country"] == "nl"
    assert read.extra["vehicle_type"] == "Sedan"
    assert read.extra["vehicle_color"] == "white"
    assert read.extra["make"] == "Volkswagen"
    assert read.extra["direction"] == 265
    assert read.extra["camera_id"] == "camera-1"


def test_platerecognizer_multipart_json_and_upload() -> None:
    image = make_jpeg(seed=5)
    body, ctype = multipart(
        [
            ("json", "", "text/plain", payload("platerecognizer_stream.json")),
            ("upload", "camera-1.jpg", "image/jpeg", image),
        ]
    )
    [read] = parse_payload("platerecognizer", body, ctype, NOW)
    assert read.snapshot == image


def test_platerecognizer_form_encoded() -> None:
    from urllib.parse import urlencode

    body = urlencode({"json": payload("platerecognizer_stream.json").decode()}).encode()
    [read] = parse_payload("platerecognizer", body, "application/x-www-form-urlencoded", NOW)
    assert read.text == "ab123cd"


def test_platerecognizer_empty_results_and_other_hooks() -> None:
    assert (
        parse_payload(
            "platerecognizer", payload("platerecognizer_empty.json"), "application/json", NOW
        )
        == []
    )
    doc = json.loads(payload("platerecognizer_stream.json"))
    doc["hook"]["event"] = "heartbeat"
    assert parse_payload("platerecognizer", json.dumps(doc).encode(), "application/json", NOW) == []


def test_platerecognizer_several_vehicles() -> None:
    doc = json.loads(payload("platerecognizer_stream.json"))
    second = dict(doc["data"]["results"][0], plate="xy987z", score=0.7)
    doc["data"]["results"].append(second)
    reads = parse_payload("platerecognizer", json.dumps(doc).encode(), "application/json", NOW)
    assert [r.text for r in reads] == ["ab123cd", "xy987z"]


@pytest.mark.parametrize(
    "doc",
    [
        {"data": {"results": "nope"}},
        {"data": {"results": [1]}},
        {"data": []},
        {"data": {"results": [{"plate": "x"}] * 100}},
    ],
)
def test_platerecognizer_rejects(doc: object) -> None:
    with pytest.raises(PayloadError):
        parse_payload("platerecognizer", json.dumps(doc).encode(), "application/json", NOW)


# --- generic -------------------------------------------------------------------------------


def test_generic_full() -> None:
    image = make_jpeg(seed=6)
    doc = json.loads(payload("generic.json"))
    doc["image_jpeg_base64"] = base64.b64encode(image).decode()
    [read] = parse_payload("generic", json.dumps(doc).encode(), "application/json", NOW)
    assert read.text == "AB-123-CD"
    assert read.confidence == 0.93
    assert read.camera_direction == "in"
    assert read.captured_at == ts("2024-05-07T17:48:03+02:00")
    assert read.snapshot == image
    assert read.extra == {
        "vehicle_type": "car",
        "colour": "blue",
        "country": "NL",
        "camera": "north-gate",
    }


def test_generic_minimal_and_epoch_and_list() -> None:
    body = json.dumps([{"plate": "ABC1"}, {"plate": "XYZ9", "time": 1715096883.5}]).encode()
    reads = parse_payload("generic", body, "application/json; charset=utf-8", NOW)
    assert [(r.text, r.captured_at, r.confidence) for r in reads] == [
        ("ABC1", None, None),
        ("XYZ9", 1715096883.5, None),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"confidence": 0.5}', "plate"),
        (b'{"plate": "A", "confidence": 1.5}', "between 0 and 1"),
        (b'{"plate": "A", "direction": "sideways"}', "direction"),
        (b'{"plate": "A", "image_jpeg_base64": "!!!"}', "base64"),
        (b'{"plate": "A", "image_jpeg_base64": "aGVsbG8="}', "not a JPEG"),
        (b'{"plate": "A"', "invalid JSON"),
        (b'\xff\xfe{"plate": "A"}', "invalid JSON"),
        (b'"just a string"', "invalid generic read"),
    ],
)
def test_generic_rejects(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_payload("generic", body, "application/json", NOW)


def test_unknown_format() -> None:
    with pytest.raises(PayloadError, match="unknown payload format"):
        parse_payload("dahua", b"x", "text/plain", NOW)


# --- property: nothing but PayloadError or a list ------------------------------------------

_CTYPES = st.sampled_from(
    [
        "application/json",
        "text/xml",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=MIME_boundary_7f3a",
        "multipart/mixed; boundary=MIME_boundary_7f3a",
        "",
        "image/jpeg",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(FORMATS)), body=st.binary(max_size=2048), ctype=_CTYPES)
def test_random_bytes_never_crash(fmt: str, body: bytes, ctype: str) -> None:
    try:
        result = parse_payload(fmt, body, ctype, NOW)
    except PayloadError:
        return
    assert isinstance(result, list)


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=4000),
    flip=st.integers(min_value=0, max_value=4000),
    value=st.integers(min_value=0, max_value=255),
)
def test_mangled_real_payloads_never_crash(cut: int, flip: int, value: int) -> None:
    for fmt, name, ctype in [
        ("hikvision", "hikvision_anpr.xml", "text/xml"),
        ("axis", "axis_new.json", "application/json"),
        ("platerecognizer", "platerecognizer_stream.json", "application/json"),
        ("generic", "generic.json", "application/json"),
    ]:
        data = bytearray(payload(name)[: max(1, cut)])
        if data:
            data[flip % len(data)] = value
        try:
            result = parse_payload(fmt, bytes(data), ctype, NOW)
        except PayloadError:
            continue
        assert isinstance(result, list)
