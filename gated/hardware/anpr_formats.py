"""Pure parsers for ANPR camera push payloads: body bytes + Content-Type → plate reads.

No IO, no clock: the caller passes the receive time (the device clock), which
becomes `read_at`; the camera's own capture time, when the payload carries one
with a known offset, becomes `captured_at`. Every malformed, truncated, oversized or hostile
payload raises gated.errors.PayloadError with a short reason that never quotes
the payload; a well-formed message about no vehicle (heartbeat, another event
type, an empty result) returns an empty list. A vehicle whose plate could not be
read ("unknown", empty text, text without a letter or digit) is a read with
``text=""`` and its picture: the lane journals it as an unread vehicle.

Formats (field names taken from the vendors' published documentation and public
integrations; none of this was verified against a real camera):

* ``hikvision``: ISAPI ``EventNotificationAlert`` (namespace
  ``http://www.hikvision.com/ver20/XMLSchema`` or ``http://www.isapi.org/ver20/XMLSchema``)
  with ``eventType`` ANPR, sent as multipart/form-data (or mixed) with JPEG parts
  (``licensePlatePicture.jpg``, ``detectionPicture.jpg`` …) or as a bare XML body.
* ``axis``: the JSON push of AXIS License Plate Verifier (FF Group JSON protocol:
  ``plateText``/``plateUTF8``, ``plateCountry``, ``plateConfidence``, ``carState``,
  ``carMoveDirection``, ``capture_timestamp`` epoch ms, ``datetime``
  "YYYYMMDD HHMMSSFFF[+HHMM]"), as a JSON body or multipart with the JSON part and
  an image part ("multipart screenshot"). ``datetime`` is the camera's local time
  and usually carries no offset (seen 3 h off for a camera at UTC+3), so only
  ``capture_timestamp`` or a ``datetime`` with an explicit offset is a capture time.
* ``platerecognizer``: Plate Recognizer Stream / Snapshot webhooks
  (``{"hook": {...}, "data": {"results": [...]}}``) as a JSON body, as a form field
  ``json=…``, or multipart with a ``json`` field and an ``upload`` image.
* ``generic``: gated's own documented JSON (see docs/cameras.md).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import quopri
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs
from xml.parsers import expat

import msgspec

from gated.errors import PayloadError
from gated.model import Direction

__all__ = [
    "FORMATS",
    "MAX_PARTS",
    "MAX_PLATE_CHARS",
    "MAX_XML_BYTES",
    "ParsedRead",
    "parse_payload",
]

MAX_XML_BYTES = 256 * 1024  # a real ANPR alert is a few kB; anything bigger is not a camera
MAX_JSON_BYTES = 16 * 1024 * 1024  # JSON may carry base64 images; the listener caps the body first
MAX_PARTS = 16  # cameras send 1-4 parts; many more is a hostile or broken sender
MAX_DIRECTION_CHARS = 16  # "forward", "reverse", "in", "out", "approach" …
MAX_PLATE_CHARS = 32  # longest real plates are ~10 characters; leaves room for separators
MAX_READS = 16  # reads per request (Plate Recognizer may batch several vehicles)
_MAX_EXTRA_STR = 128  # vendor strings copied into records are cut to this length

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True, slots=True)
class ParsedRead:
    """One plate read as found in a payload, before it is bound to a lane and a source."""

    text: str  # "" for a vehicle whose plate could not be read
    read_at: float  # epoch seconds by the device clock: when gated received it
    confidence: float | None = None  # normalised to 0..1
    captured_at: float | None = None  # the camera's capture time (camera clock), None: unknown
    camera_direction: str | None = None  # as the camera said it, lower-cased
    snapshot: bytes | None = None  # JPEG bytes, only when they look like a JPEG
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- shared helpers -------------------------------------------------------------------


def _clip(value: Any) -> Any:
    """Bound a vendor value copied into `extra` (strings cut; numbers, bools, None kept)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:_MAX_EXTRA_STR]


def _put(extra: dict[str, Any], key: str, value: Any) -> None:
    """Add a vendor value to extra unless it is empty or a placeholder."""
    if value is None:
        return
    if isinstance(value, str):
        value = value.strip()
        if not value or value.lower() in {"unknown", "unk", "null", "none"}:
            return
    extra[key] = _clip(value)


_NO_PLATE = frozenset({"unknown", "noplate", "no plate", "none", "null"})


def _plate_text(raw: Any) -> str:
    """The stripped plate text; "" when the camera saw a vehicle but read no plate.

    Text without a single letter or digit (punctuation runs, markup debris) is no
    plate either. Raises PayloadError for a non-string or an impossible text.
    """
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise PayloadError("plate text is not a string")
    text = raw.strip()
    if text.lower() in _NO_PLATE or not any(c.isalnum() for c in text):
        return ""
    if len(text) > MAX_PLATE_CHARS:
        raise PayloadError(f"plate text longer than {MAX_PLATE_CHARS} characters")
    if not text.isprintable():
        raise PayloadError("plate text contains control characters")
    return text


def _confidence(raw: Any, scale: float = 1.0) -> float | None:
    """A vendor confidence as 0..1; values above 1 on a 0..1 scale are taken as percent."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw) / scale
    except (TypeError, ValueError):
        raise PayloadError("confidence is not a number") from None
    if value != value or value < 0:  # NaN or negative
        raise PayloadError("confidence out of range")
    if value > 1.0:
        value /= 100.0  # some firmware sends percent where the spec says 0..1
    if value > 1.0:
        raise PayloadError("confidence out of range")
    return round(value, 4)


def _iso_time(raw: Any) -> float | None:
    """Epoch seconds of an ISO 8601 time with an offset; None when absent, naive or invalid.

    A time without an offset is not trusted: the camera's zone is unknown to us,
    and a read stamped hours off is worse than one stamped with the receive time.
    """
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _capture_time(raw: Any, parsed: float | None, extra: dict[str, Any]) -> float | None:
    """The payload's capture time when usable, else None (noting the raw value in extra)."""
    if parsed is not None:
        return parsed
    if raw not in (None, ""):
        extra["camera_time_unused"] = _clip(raw)
    return None


def _camera_direction(raw: Any) -> str | None:
    """A camera's own direction word, stripped and lower-cased; None when absent or junk."""
    if not isinstance(raw, str):
        return None
    word = raw.strip().lower()
    if not word or word in _NO_PLATE or word in {"unk", "n/a"}:
        return None
    if len(word) > MAX_DIRECTION_CHARS or not word.isprintable():
        return None
    return word


def _jpeg_or_none(data: bytes | None) -> bytes | None:
    """The bytes when they start like a JPEG, else None (snapshots must be JPEG)."""
    if data and data.startswith(_JPEG_MAGIC):
        return data
    return None


def _b64_jpeg(raw: Any) -> bytes | None:
    """Decode a base64 JPEG string; PayloadError when it is not valid base64 or not a JPEG."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise PayloadError("image is not a base64 string")
    if raw.startswith("data:"):  # tolerate a data: URL prefix
        raw = raw.partition(",")[2]
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError("image is not valid base64") from None
    if not data.startswith(_JPEG_MAGIC):
        raise PayloadError("image is not a JPEG")
    return data


def _decode_json(data: bytes) -> Any:
    """Parse JSON bytes (UTF-8); PayloadError on anything else."""
    if len(data) > MAX_JSON_BYTES:
        raise PayloadError("JSON document too large")
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        # msgspec's message names a position, never the content
        raise PayloadError(f"invalid JSON ({err})") from None


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into (lower-case media type, parameters)."""
    if any(ord(c) < 32 or ord(c) > 126 for c in content_type):
        raise PayloadError("Content-Type header contains invalid characters")
    msg = Message()
    msg["Content-Type"] = content_type or "application/octet-stream"
    params = {k.lower(): v for k, v in msg.get_params(failobj=[])[1:]}
    return msg.get_content_type(), params


# --- multipart ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """One body part of a multipart request."""

    name: str
    filename: str
    content_type: str
    data: bytes


_MAX_PART_HEADER = 8 * 1024  # a part's header block; real ones are ~150 bytes


def _split_multipart(body: bytes, content_type: str) -> list[_Part]:
    """Split a multipart body at its boundaries (binary-safe), rejecting truncation.

    Works on bytes with find(): each part's data is copied once. The stdlib MIME
    parser needed ~12x the body in memory (100 MB for one 8 MB push) and pure
    Python time per part (590,000 parts: seconds); only the small header block of
    each part goes through it.
    """
    _, params = _media_type(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise PayloadError("multipart Content-Type has no boundary")
    if len(boundary) > 70:  # RFC 2046
        raise PayloadError("multipart boundary longer than 70 characters")
    delimiter = b"--" + boundary.encode("ascii", "replace")
    # Count delimiters before splitting: refuses a many-part body in one C-level pass.
    if body.count(delimiter) > MAX_PARTS + 1:
        raise PayloadError(f"multipart body has more than {MAX_PARTS} parts")
    pos = body.find(delimiter)
    if pos < 0 or (pos > 0 and body[pos - 1 : pos] != b"\n"):
        raise PayloadError("multipart body does not start with its boundary")
    view = memoryview(body)
    out: list[_Part] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return out  # the close delimiter
        line_end = body.find(b"\n", pos)
        if line_end < 0:
            raise PayloadError("multipart body is truncated (no closing boundary)")
        start = line_end + 1
        following = body.find(b"\n" + delimiter, start)
        if following < 0:
            raise PayloadError("multipart body is truncated (no closing boundary)")
        end = following - 1 if body[following - 1 : following] == b"\r" else following
        if len(out) >= MAX_PARTS:
            raise PayloadError(f"multipart body has more than {MAX_PARTS} parts")
        out.append(_part(body, view, start, max(start, end)))
        pos = following + 1


def _part(body: bytes, view: memoryview, start: int, end: int) -> _Part:
    """One part between `start` and `end`: headers parsed by the stdlib, data copied once."""
    if body.startswith((b"\r\n", b"\n"), start):  # no headers at all
        header_end = start
        data_start = start + (2 if body.startswith(b"\r\n", start) else 1)
    else:
        crlf = body.find(b"\r\n\r\n", start, min(end, start + _MAX_PART_HEADER))
        lf = body.find(b"\n\n", start, min(end, start + _MAX_PART_HEADER))
        if crlf < 0 and lf < 0:
            raise PayloadError("multipart part has no end of headers")
        if crlf >= 0 and (lf < 0 or crlf <= lf):
            header_end, data_start = crlf, crlf + 4
        else:
            header_end, data_start = lf, lf + 2
    headers = BytesParser(policy=email.policy.compat32).parsebytes(
        bytes(view[start:header_end]) + b"\r\n\r\n", headersonly=True
    )
    if headers.get_content_maintype() == "multipart":
        raise PayloadError("nested multipart bodies are not accepted")
    data = bytes(view[data_start:end]) if data_start < end else b""
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        try:
            data = base64.b64decode(data)
        except (binascii.Error, ValueError):
            raise PayloadError("multipart part is not valid base64") from None
    elif encoding == "quoted-printable":
        data = quopri.decodestring(data)
    return _Part(
        name=str(headers.get_param("name", "", header="content-disposition") or ""),
        filename=str(headers.get_filename("") or ""),
        content_type=headers.get_content_type(),
        data=data,
    )


def _is_multipart(media: str) -> bool:
    return media.startswith("multipart/")


# --- XML (Hikvision) ------------------------------------------------------------------


def _forbid_dtd(*_args: Any) -> None:
    raise PayloadError("XML with a DTD or entity declarations is refused")


def _parse_xml(data: bytes) -> ET.Element:
    """Parse untrusted XML: size-capped, DTDs and entities refused (billion laughs, XXE).

    Does what defusedxml does for expat, without the extra dependency: expat
    feeds an ElementTree builder, and the handlers below fire before any entity
    could be declared or expanded.
    """
    if len(data) > MAX_XML_BYTES:
        raise PayloadError(f"XML document larger than {MAX_XML_BYTES // 1024} KiB")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = lambda tag, attrs: builder.start(_ns_tag(tag), attrs)
    parser.EndElementHandler = lambda tag: builder.end(_ns_tag(tag))
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _forbid_dtd
    parser.EntityDeclHandler = _forbid_dtd
    parser.UnparsedEntityDeclHandler = _forbid_dtd
    parser.ExternalEntityRefHandler = _forbid_dtd
    try:
        parser.Parse(data, True)
        return builder.close()
    except expat.ExpatError as err:
        # expat's message names a line and column, never the content
        raise PayloadError(f"malformed XML ({expat.ErrorString(err.code)})") from None


def _ns_tag(tag: str) -> str:
    """expat's 'uri}local' as ElementTree's '{uri}local'."""
    return "{" + tag if "}" in tag else tag


def _local(tag: str) -> str:
    """Tag name without its {namespace}."""
    return tag.rpartition("}")[2]


def _child(elem: ET.Element | None, name: str) -> ET.Element | None:
    """First direct child with this local name."""
    if elem is None:
        return None
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


def _text(elem: ET.Element | None, name: str) -> str | None:
    """Stripped text of a direct child, None when absent or empty."""
    child = _child(elem, name)
    if child is None or child.text is None:
        return None
    return child.text.strip() or None


# Scene pictures first: the journal keeps one snapshot per read, and the whole
# vehicle in its lane is better evidence than the plate crop alone.
_HIK_PICTURE_ORDER = ("detectionpicture", "vehiclepicture", "licenseplatepicture")


def _hikvision(body: bytes, content_type: str, received_at: float) -> list[ParsedRead]:
    media, _ = _media_type(content_type)
    images: list[_Part] = []
    xml_data: bytes | None = None
    if _is_multipart(media):
        for part in _split_multipart(body, content_type):
            looks_xml = (
                "xml" in part.content_type
                or part.filename.lower().endswith(".xml")
                or part.name.lower().endswith(".xml")
                or part.data.lstrip()[:1] == b"<"
            )
            if looks_xml and xml_data is None:
                xml_data = part.data
            elif part.data.startswith(_JPEG_MAGIC):
                images.append(part)
        if xml_data is None:
            raise PayloadError("multipart alarm has no XML part")
    elif "xml" in media or body.lstrip()[:1] == b"<":
        xml_data = body
    else:
        raise PayloadError(f"unsupported Content-Type {media!r} for a Hikvision alarm")

    root = _parse_xml(xml_data)
    if _local(root.tag) != "EventNotificationAlert":
        raise PayloadError("XML root is not EventNotificationAlert")
    event_type = (_text(root, "eventType") or "").upper()
    if event_type != "ANPR":
        return []  # heartbeat (videoloss/inactive) or another alarm: valid, no plate
    anpr = _child(root, "ANPR")
    if anpr is None:
        raise PayloadError("ANPR alarm has no <ANPR> element")
    # "unknown" or empty: a vehicle was there but its plate was not read
    text = _plate_text(_text(anpr, "licensePlate"))
    extra: dict[str, Any] = {}
    raw_time = _text(root, "dateTime")
    captured_at = _capture_time(raw_time, _iso_time(raw_time), extra)
    # Hikvision's direction is relative to the camera (forward = approaching), not
    # in/out of the site: it is passed on raw, and the source's config says what it means.
    raw_direction = _text(anpr, "direction")
    _put(extra, "direction", raw_direction)
    _put(extra, "country", _text(anpr, "country"))
    _put(extra, "plate_type", _text(anpr, "plateType"))
    _put(extra, "plate_color", _text(anpr, "plateColor"))
    _put(extra, "vehicle_type", _text(anpr, "vehicleType"))
    _put(extra, "line", _text(anpr, "line"))
    vehicle = _child(anpr, "vehicleInfo")
    _put(extra, "vehicle_color", _text(vehicle, "color"))
    _put(extra, "channel", _text(root, "channelID"))
    _put(extra, "event_uuid", _text(root, "UUID"))
    _put(extra, "list_type", _text(anpr, "listType"))

    snapshot = None
    by_name = {(p.filename or p.name).lower(): p.data for p in images}
    for wanted in _HIK_PICTURE_ORDER:
        for name, data in by_name.items():
            if name.startswith(wanted):
                snapshot = data
                break
        if snapshot is not None:
            break
    if snapshot is None and images:
        snapshot = images[0].data
    return [
        ParsedRead(
            text=text,
            read_at=received_at,
            # a camera that read nothing reports confidence 0: say "unknown" instead
            confidence=_confidence(_text(anpr, "confidenceLevel"), scale=100.0) if text else None,
            snapshot=snapshot,
            captured_at=captured_at,
            camera_direction=_camera_direction(raw_direction),
            extra=extra,
        )
    ]


# --- JSON envelopes (Axis, Plate Recognizer) -------------------------------------------


def _json_and_image(
    body: bytes, content_type: str, json_field: str | None
) -> tuple[Any, bytes | None]:
    """The JSON document and an optional JPEG from a JSON, form or multipart body."""
    media, _ = _media_type(content_type)
    if _is_multipart(media):
        doc_data: bytes | None = None
        image: bytes | None = None
        for part in _split_multipart(body, content_type):
            is_json = (
                (json_field is not None and part.name == json_field and not part.filename)
                or "json" in part.content_type
                or part.data.lstrip()[:1] == b"{"
            )
            if is_json and doc_data is None:
                doc_data = part.data
            elif image is None and part.data.startswith(_JPEG_MAGIC):
                image = part.data
        if doc_data is None:
            raise PayloadError("multipart body has no JSON part")
        return _decode_json(doc_data), image
    if media == "application/x-www-form-urlencoded" and json_field is not None:
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=32)
        except (UnicodeDecodeError, ValueError):
            raise PayloadError("malformed form body") from None
        values = fields.get(json_field)
        if not values:
            raise PayloadError(f"form body has no {json_field!r} field")
        return _decode_json(values[0].encode("utf-8")), None
    if "json" in media or body.lstrip()[:1] in (b"{", b"["):
        return _decode_json(body), None
    raise PayloadError(f"unsupported Content-Type {media!r}")


_AXIS_DATETIME = re.compile(
    r"^(\d{4})(\d{2})(\d{2}) (\d{2})(\d{2})(\d{2})(\d{3})?\s*(?:([+-])(\d{2}):?(\d{2}))?$"
)


def _axis_time(raw: Any) -> float | None:
    """Epoch of an FF Group 'YYYYMMDD HHMMSSFFF+HHMM' time; None without an offset.

    Without an offset the string is the camera's local time in a zone gated does
    not know (documented as UTC, seen 3 h off on a camera at UTC+3).
    """
    if not isinstance(raw, str):
        return None
    m = _AXIS_DATETIME.match(raw.strip())
    if not m:
        return _iso_time(raw)
    y, mo, d, h, mi, s, ms, sign, oh, om = m.groups()
    if not sign:
        return None
    delta = timedelta(hours=int(oh), minutes=int(om))
    tz = timezone(delta if sign == "+" else -delta)
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(ms or 0) * 1000, tz)
    except ValueError:
        return None
    return dt.timestamp()


# epoch milliseconds between 2001 and 2286: anything else is not a capture time
_EPOCH_MS_RANGE = (1e12, 1e13)


def _epoch_ms(raw: Any) -> float | None:
    """Epoch seconds from an epoch-milliseconds number or numeric string; None when implausible."""
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not _EPOCH_MS_RANGE[0] <= value < _EPOCH_MS_RANGE[1]:  # also refuses NaN and inf
        return None
    return value / 1000.0


def _axis(body: bytes, content_type: str, received_at: float) -> list[ParsedRead]:
    doc, image = _json_and_image(body, content_type, json_field=None)
    if not isinstance(doc, dict):
        raise PayloadError("Axis event is not a JSON object")
    state = str(doc.get("carState", "")).lower()
    if state == "lost":
        # 'lost' repeats a plate ~10 s after it left the frame; acting on it would
        # open the gate again after the vehicle has gone. new/updated are the
        # access-control events.
        return []
    raw_text = doc.get("plateUTF8") or doc.get("plateUnicode") or doc.get("plateText")
    text = _plate_text(raw_text)  # "": a vehicle event without a readable plate
    extra: dict[str, Any] = {}
    raw_time = doc.get("datetime")
    _put(extra, "camera_datetime", raw_time)  # local time, kept for people only
    captured_at = _epoch_ms(doc.get("capture_timestamp"))
    if captured_at is None:
        captured_at = _axis_time(raw_time)
    _put(extra, "country", doc.get("plateCountry"))
    _put(extra, "car_state", state)
    _put(extra, "car_id", doc.get("carID"))
    _put(extra, "roi", doc.get("roiID"))
    _put(extra, "sensor", doc.get("sensorProviderID"))
    _put(extra, "image_type", doc.get("imageType"))
    camera_direction = _camera_direction(doc.get("carMoveDirection"))
    _put(extra, "direction", camera_direction)
    return [
        ParsedRead(
            text=text,
            read_at=received_at,
            confidence=_confidence(doc.get("plateConfidence")) if text else None,
            snapshot=_jpeg_or_none(image),
            captured_at=captured_at,
            camera_direction=camera_direction,
            extra=extra,
        )
    ]


def _pr_first(items: Any, key: str) -> Any:
    """The `key` of the first entry of a Plate Recognizer candidate list (color, model_make …)."""
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return items[0].get(key)
    return None


def _platerecognizer(body: bytes, content_type: str, received_at: float) -> list[ParsedRead]:
    doc, image = _json_and_image(body, content_type, json_field="json")
    if not isinstance(doc, dict):
        raise PayloadError("Plate Recognizer webhook is not a JSON object")
    hook = doc.get("hook")
    if isinstance(hook, dict) and hook.get("event") not in (None, "recognition"):
        return []  # heartbeat or another hook event: valid, no plate
    data = doc.get("data", doc)  # Snapshot webhooks and direct API answers lack the hook envelope
    if not isinstance(data, dict):
        raise PayloadError("Plate Recognizer 'data' is not an object")
    results = data.get("results", [])
    if not isinstance(results, list):
        raise PayloadError("Plate Recognizer 'results' is not a list")
    if len(results) > MAX_READS:
        raise PayloadError(f"more than {MAX_READS} results in one webhook")
    raw_time = data.get("timestamp")
    base_extra: dict[str, Any] = {}
    captured_at = _capture_time(raw_time, _iso_time(raw_time), base_extra)
    _put(base_extra, "camera_id", data.get("camera_id"))
    snapshot = _jpeg_or_none(image)
    reads: list[ParsedRead] = []
    for result in results:
        if not isinstance(result, dict):
            raise PayloadError("Plate Recognizer result is not an object")
        text = _plate_text(result.get("plate"))  # "": a vehicle without a readable plate
        extra = dict(base_extra)
        region = result.get("region")
        if isinstance(region, dict):
            _put(extra, "country", region.get("code"))
        vehicle = result.get("vehicle")
        if isinstance(vehicle, dict):
            _put(extra, "vehicle_type", vehicle.get("type"))
        _put(extra, "detection_score", result.get("dscore"))
        _put(extra, "vehicle_color", _pr_first(result.get("color"), "color"))
        _put(extra, "make", _pr_first(result.get("model_make"), "make"))
        _put(extra, "model", _pr_first(result.get("model_make"), "model"))
        _put(extra, "orientation", _pr_first(result.get("orientation"), "orientation"))
        # Stream's `direction` is a travel angle in degrees, not in/out
        _put(extra, "direction", result.get("direction"))
        reads.append(
            ParsedRead(
                text=text,
                read_at=received_at,
                confidence=_confidence(result.get("score")) if text else None,
                snapshot=snapshot,
                captured_at=captured_at,
                extra=extra,
            )
        )
    return reads


# --- generic JSON -----------------------------------------------------------------------


class GenericRead(msgspec.Struct, frozen=True):
    """gated's generic push format; see docs/cameras.md."""

    plate: str
    confidence: float | None = None  # 0..1
    time: str | float | None = None  # ISO 8601 with offset, or epoch seconds
    direction: str | None = None  # "in" | "out"
    image_jpeg_base64: str | None = None
    country: str | None = None
    camera: str | None = None
    extra: dict[str, str | int | float | bool | None] = {}


def _generic(body: bytes, content_type: str, received_at: float) -> list[ParsedRead]:
    media, _ = _media_type(content_type)
    if "json" not in media:
        raise PayloadError(f"unsupported Content-Type {media!r} (expected application/json)")
    if len(body) > MAX_JSON_BYTES:
        raise PayloadError("JSON document too large")
    try:
        decoded = msgspec.json.decode(body, type=GenericRead | list[GenericRead])
    except msgspec.ValidationError as err:
        raise PayloadError(f"invalid generic read ({err})") from None
    except msgspec.DecodeError as err:
        raise PayloadError(f"invalid JSON ({err})") from None
    items = decoded if isinstance(decoded, list) else [decoded]
    if len(items) > MAX_READS:
        raise PayloadError(f"more than {MAX_READS} reads in one request")
    reads: list[ParsedRead] = []
    for item in items:
        text = _plate_text(item.plate)  # "": a vehicle without a readable plate
        extra: dict[str, Any] = {}
        if len(item.extra) > 32:
            raise PayloadError("'extra' has more than 32 keys")
        for key, value in item.extra.items():
            _put(extra, str(key)[:64], value)
        if isinstance(item.time, int | float) and not isinstance(item.time, bool):
            parsed = float(item.time) if 0 < item.time < 1e11 else None
        else:
            parsed = _iso_time(item.time)
        captured_at = _capture_time(item.time, parsed, extra)
        direction: Direction | None = None
        if item.direction is not None:
            try:
                direction = Direction(item.direction.strip().lower())
            except ValueError:
                raise PayloadError("direction must be 'in' or 'out'") from None
        if item.confidence is not None and not 0.0 <= item.confidence <= 1.0:
            raise PayloadError("confidence must be between 0 and 1")
        _put(extra, "country", item.country)
        _put(extra, "camera", item.camera)
        reads.append(
            ParsedRead(
                text=text,
                read_at=received_at,
                confidence=item.confidence if text else None,
                snapshot=_b64_jpeg(item.image_jpeg_base64),
                captured_at=captured_at,
                camera_direction=direction.value if direction is not None else None,
                extra=extra,
            )
        )
    return reads


# --- entry point ------------------------------------------------------------------------

_Parser = Callable[[bytes, str, float], list[ParsedRead]]

FORMATS: Mapping[str, _Parser] = {
    "hikvision": _hikvision,
    "axis": _axis,
    "platerecognizer": _platerecognizer,
    "generic": _generic,
}


def parse_payload(fmt: str, body: bytes, content_type: str, received_at: float) -> list[ParsedRead]:
    """Parse one pushed request body; PayloadError when malformed, [] when it carries no plate."""
    try:
        parser = FORMATS[fmt]
    except KeyError:
        raise PayloadError(f"unknown payload format {fmt!r}") from None
    if not body:
        raise PayloadError("empty body")
    try:
        return parser(body, content_type, received_at)
    except PayloadError:
        raise
    except (RecursionError, MemoryError):
        raise PayloadError("payload too deeply nested or too large") from None
    except (ValueError, TypeError, LookupError, AttributeError, UnicodeError) as err:
        # Last line of defence: a shape no rule above anticipated is still a bad
        # payload, never a crashed listener. The message names the error type only.
        raise PayloadError(f"unreadable payload ({type(err).__name__})") from err
