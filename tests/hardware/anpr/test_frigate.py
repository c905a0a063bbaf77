"""Frigate plates: the pure de-duplicating core, and the MQTT source against a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gated.config import FrigateSourceConfig, MqttConfig
from gated.errors import PayloadError
from gated.hardware.base import PlateSource
from gated.hardware.frigate import (
    MAX_TRACKED_OBJECTS,
    OBJECT_MEMORY_S,
    FrigatePlates,
    FrigateSource,
)
from gated.model import PlateRead
from gated.mqttlink import MqttMessage
from tests.support.broker import MOSQUITTO, Broker, wait_until_accepting

NOW = 1_757_347_000.0
SOURCES = [
    (FrigateSourceConfig(name="frig-drive", camera="driveway"), "main-in"),
    (FrigateSourceConfig(name="frig-exit", camera="exit_cam", topic_prefix="nvr2"), "main-out"),
]


def obj(
    oid: str, camera: str = "driveway", plate: Any = None, score: Any = None, **more: Any
) -> dict[str, Any]:
    """A Frigate tracked object as published in frigate/events (0.16 fields)."""
    data: dict[str, Any] = {
        "id": oid,
        "camera": camera,
        "frame_time": NOW + 1.25,
        "label": "car",
        "sub_label": None,
        "top_score": 0.91,
        "false_positive": False,
        "start_time": NOW,
        "end_time": None,
        "score": 0.88,
        "box": [424, 500, 536, 712],
        "current_zones": ["gate_zone"],
        "entered_zones": ["gate_zone"],
        "has_snapshot": True,
        "stationary": False,
        "recognized_license_plate": plate,
        "recognized_license_plate_score": score,
    }
    data.update(more)
    return data


def event(kind: str, after: dict[str, Any], before: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"type": kind, "before": before or after, "after": after}).encode()


def lpr(
    oid: str, plate: str, score: float, camera: str = "driveway", name: str | None = None
) -> bytes:
    return json.dumps(
        {
            "type": "lpr",
            "id": oid,
            "name": name,
            "plate": plate,
            "score": score,
            "camera": camera,
            "timestamp": NOW + 2,
        }
    ).encode()


# --- pure core --------------------------------------------------------------------------


def test_topics() -> None:
    assert FrigatePlates(SOURCES).topics == [
        "frigate/events",
        "frigate/tracked_object_update",
        "nvr2/events",
        "nvr2/tracked_object_update",
    ]


def test_one_read_per_new_or_better_plate_of_an_object() -> None:
    core = FrigatePlates(SOURCES)
    feed: Callable[[str, bytes], list[PlateRead]] = lambda t, p: core.feed(t, p, NOW + 10, 5.0)  # noqa: E731
    assert feed("frigate/events", event("new", obj("1.1-a"))) == []
    [read] = feed("frigate/events", event("update", obj("1.1-a", plate="AB123CD", score=0.91)))
    assert (read.access_point, read.source, read.text, read.confidence) == (
        "main-in",
        "frig-drive",
        "AB123CD",
        0.91,
    )
    assert read.read_at == NOW + 10  # the device's clock when it arrived
    assert read.captured_at == NOW + 1.25  # Frigate's frame_time
    assert read.retained is False
    assert read.vendor == "frigate"
    assert read.received_mono == 5.0
    assert read.extra["zones"] == ["gate_zone"]
    assert read.extra["frigate_id"] == "1.1-a"
    # the same plate at the same or a lower score, from either topic, is a true repeat
    assert feed("frigate/events", event("update", obj("1.1-a", plate="AB123CD", score=0.91))) == []
    assert feed("frigate/tracked_object_update", lpr("1.1-a", "ab123cd", 0.9)) == []
    # a corrected text is a new read
    [better] = feed("frigate/tracked_object_update", lpr("1.1-a", "AB123C0", 0.97))
    assert (better.text, better.confidence, better.captured_at) == ("AB123C0", 0.97, NOW + 2)
    # a new object with the same plate emits again
    assert feed("frigate/events", event("end", obj("1.1-a", plate="AB123C0", score=0.97))) == []
    [again] = feed("frigate/events", event("update", obj("2.2-b", plate="AB123C0", score=0.9)))
    assert again.extra["frigate_id"] == "2.2-b"
    assert core.dropped["repeat"] == 2


def test_better_score_of_the_same_text_reaches_the_lane() -> None:
    """0.55 is denied low_confidence by the lane; Frigate's 0.93 for the same object must follow."""
    core = FrigatePlates(SOURCES)
    [first] = core.feed(
        "frigate/events", event("update", obj("4.4-d", plate="AB123CD", score=0.55)), NOW, 1.0
    )
    [second] = core.feed(
        "frigate/events", event("update", obj("4.4-d", plate="AB123CD", score=0.93)), NOW, 2.0
    )
    assert (first.confidence, second.confidence) == (0.55, 0.93)
    assert core.feed("frigate/tracked_object_update", lpr("4.4-d", "AB123CD", 0.93), NOW, 3) == []
    assert core.feed("frigate/tracked_object_update", lpr("4.4-d", "AB123CD", 0.8), NOW, 4) == []


def test_capture_time_and_retained_flag_on_every_read() -> None:
    core = FrigatePlates(SOURCES)
    [ev] = core.feed(
        "frigate/events",
        event("update", obj("5.5-e", plate="OLD1", score=0.9)),
        NOW + 3600,
        0,
        retained=True,
    )
    [up] = core.feed("frigate/tracked_object_update", lpr("6.6-f", "OLD2", 0.9), NOW, 0)
    assert (ev.captured_at, ev.retained, ev.read_at) == (NOW + 1.25, True, NOW + 3600)
    assert (up.captured_at, up.retained) == (NOW + 2, False)
    # no usable time in the message: no capture time (the lane decides what that means)
    [none] = core.feed(
        "frigate/events", event("update", obj("7.7-g", plate="OLD3", frame_time=None)), NOW, 0
    )
    assert none.captured_at is None


def test_handled_objects_outlast_end_and_redelivery() -> None:
    """A late lpr update 10 s after `end`, or the `end` re-delivered 40 s later, opens nothing."""
    core = FrigatePlates(SOURCES)
    first = core.feed(
        "frigate/events", event("update", obj("8.8-h", plate="AB123CD", score=0.9)), NOW, 100.0
    )
    assert [r.text for r in first] == ["AB123CD"]
    end = event("end", obj("8.8-h", plate="AB123CD", score=0.9, end_time=NOW + 5))
    assert core.feed("frigate/events", end, NOW + 5, 105.0) == []
    assert core.feed("frigate/tracked_object_update", lpr("8.8-h", "AB123CD", 0.95), NOW, 115) == []
    assert core.feed("frigate/tracked_object_update", lpr("8.8-h", "AB1Z3CD", 0.99), NOW, 116) == []
    assert core.feed("frigate/events", end, NOW + 45, 145.0) == []
    assert core.dropped["ended"] == 3
    # remembered for OBJECT_MEMORY_S after the last message, then forgotten (bounded)
    core.feed("frigate/events", event("new", obj("9.9-i")), NOW, 145.0 + OBJECT_MEMORY_S + 1)
    assert "8.8-h" not in core.tracked


def test_the_source_drops_are_the_link_stats_the_metrics_read() -> None:
    source = FrigateSource(MqttConfig(), SOURCES, client_id="gated-test")
    reads: list[PlateRead] = []
    source._emit = reads.append  # type: ignore[assignment]
    body = event("update", obj("1.1-a", plate="AB123CD", score=0.91))
    for _ in range(3):
        source._handle(MqttMessage("frigate/events", body, 1, False))
    assert len(reads) == 1
    assert source.stats.dropped == {"repeat": 2}
    assert source.counters["dropped_repeat"] == 2


def test_plates_on_objects_of_other_labels_are_dropped_and_counted() -> None:
    core = FrigatePlates(SOURCES)
    person = obj("p.1", plate="AB123CD", score=0.95, label="person", sub_label=["John Smith", 0.79])
    dog = obj("d.1", plate="AB123CD", score=0.95, label="dog")
    assert core.feed("frigate/events", event("update", person), NOW, 0) == []
    assert core.feed("frigate/events", event("update", dog), NOW, 0) == []
    # the object's label is remembered: an lpr update for the person is dropped too
    assert core.feed("frigate/tracked_object_update", lpr("p.1", "AB123CD", 0.97), NOW, 0) == []
    assert core.dropped["label"] == 3
    [truck] = core.feed(
        "frigate/events", event("update", obj("t.1", plate="TR1", score=0.9, label="truck")), NOW, 0
    )
    assert truck.extra["label"] == "truck"
    only_dogs = FrigatePlates(
        [(FrigateSourceConfig(name="k9", camera="driveway", labels=["dog"]), "kennel")]
    )
    [allowed] = only_dogs.feed("frigate/events", event("update", dog), NOW, 0)
    assert allowed.access_point == "kennel"


def test_names_from_frigate_never_reach_the_read() -> None:
    """Face and known-plate names (sub_label, lpr name) are personal data: not metadata."""
    core = FrigatePlates(SOURCES)
    car = obj("c.1", plate="AB123CD", score=0.9, sub_label=["Alice Smith", 0.9])
    [read] = core.feed("frigate/events", event("update", car), NOW, 0)
    [named] = core.feed(
        "frigate/tracked_object_update", lpr("c.2", "XY99", 0.9, name="Bob's car"), NOW, 0
    )
    for r in (read, named):
        assert "Alice" not in repr(r) and "Bob" not in repr(r)
        assert r.extra["known_plate"] is True


def test_routes_by_prefix_and_camera() -> None:
    core = FrigatePlates(SOURCES)
    assert (
        core.feed(
            "frigate/events", event("update", obj("x", camera="backyard", plate="ZZ1")), NOW, 0
        )
        == []
    )
    assert (
        core.feed(
            "frigate/events", event("update", obj("x", camera="exit_cam", plate="ZZ1")), NOW, 0
        )
        == []
    )
    [read] = core.feed(
        "nvr2/events", event("update", obj("x", camera="exit_cam", plate="ZZ1")), NOW, 0
    )
    assert read.access_point == "main-out"


def test_plate_as_list() -> None:
    core = FrigatePlates(SOURCES)
    after = obj("y", plate=["XY99", 0.8], score=None)
    [read] = core.feed("frigate/events", event("update", after), NOW, 0)
    assert (read.text, read.confidence, read.extra["known_plate"]) == ("XY99", 0.8, False)


def test_other_update_types_ignored() -> None:
    core = FrigatePlates(SOURCES)
    msg = json.dumps({"type": "description", "id": "z", "description": "a red car"}).encode()
    assert core.feed("frigate/tracked_object_update", msg, NOW, 0) == []
    assert core.feed("frigate/available", b"online", NOW, 0) == []


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("frigate/events", b"{not json"),
        ("frigate/events", b"[1]"),
        ("frigate/events", b'{"type": "update"}'),
        ("frigate/events", b'{"type": "weird", "after": {}}'),
        ("frigate/events", event("update", {"camera": "driveway"})),
        ("frigate/events", event("update", obj("q", plate=5))),
        ("frigate/events", event("update", obj("q", plate="A" * 100))),
        ("frigate/events", event("update", obj("q", plate="AB1", score="high"))),
        ("frigate/events", event("update", obj("q", plate="AB1", score=7))),
        ("frigate/tracked_object_update", b'{"type": "lpr", "plate": "AB1"}'),
        ("frigate/tracked_object_update", b"\xff\xfe"),
        ("frigate/events", b"{" * 100_000),
    ],
)
def test_malformed_messages(topic: str, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        FrigatePlates(SOURCES).feed(topic, payload, NOW, 0)


def test_memory_is_bounded() -> None:
    core = FrigatePlates(SOURCES)
    for i in range(MAX_TRACKED_OBJECTS + 50):
        core.feed("frigate/tracked_object_update", lpr(f"id-{i}", "AB1", 0.9), NOW, 0)
    assert len(core.tracked) == MAX_TRACKED_OBJECTS


# --- against a real broker ----------------------------------------------------------------


def publisher(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-frigate-publisher")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


async def wait_for(predicate: Callable[[], bool], limit_s: float = 15.0) -> None:
    """Poll a condition set by another thread's callbacks, failing after limit_s."""
    async with asyncio.timeout(limit_s):
        while not predicate():  # noqa: ASYNC110 - the state lives in paho's callbacks
            await asyncio.sleep(0.02)


def test_is_a_plate_source() -> None:
    assert isinstance(FrigateSource(MqttConfig(), SOURCES), PlateSource)


async def test_reads_from_real_broker(broker: Broker) -> None:
    reads: list[PlateRead] = []
    source = FrigateSource(
        MqttConfig(host=broker.host, port=broker.port), SOURCES, client_id="gated-test"
    )
    task = asyncio.create_task(source.run(reads.append))
    await asyncio.wait_for(source.subscribed.wait(), 15)
    pub = publisher(broker)
    try:
        messages = [
            ("frigate/events", event("new", obj("1.1-a"))),
            ("frigate/events", event("update", obj("1.1-a", plate="AB123CD", score=0.91))),
            ("frigate/tracked_object_update", lpr("1.1-a", "AB123CD", 0.93)),
            ("frigate/events", b"{garbage"),
            (
                "frigate/events",
                event("update", obj("2.2-b", camera="backyard", plate="QQ1", score=0.9)),
            ),
            ("frigate/tracked_object_update", lpr("1.1-a", "AB123C0", 0.97)),
            ("nvr2/tracked_object_update", lpr("3.3-c", "EX1T", 0.88, camera="exit_cam")),
        ]
        for topic, body in messages:
            pub.publish(topic, body, qos=1).wait_for_publish(5)
        await wait_for(lambda: len(reads) >= 4 and source.counters["messages"] >= len(messages))
    finally:
        pub.loop_stop()
        pub.disconnect()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(r.access_point, r.text, r.confidence) for r in reads] == [
        ("main-in", "AB123CD", 0.91),
        ("main-in", "AB123CD", 0.93),  # a better score of the same object's plate
        ("main-in", "AB123C0", 0.97),
        ("main-out", "EX1T", 0.88),
    ]
    assert source.counters["malformed"] == 1
    assert source.client_id == "gated-test-frigate"


@pytest.mark.slow
async def test_reconnects_after_broker_restart(broker: Broker) -> None:
    reads: list[PlateRead] = []
    source = FrigateSource(MqttConfig(host=broker.host, port=broker.port), SOURCES)
    task = asyncio.create_task(source.run(reads.append))
    try:
        await asyncio.wait_for(source.subscribed.wait(), 15)
        broker.process.terminate()
        broker.process.wait(5)
        await wait_for(lambda: not source.subscribed.is_set())
        restarted = await asyncio.to_thread(
            subprocess.Popen,
            [MOSQUITTO, "-c", str(broker.config_path)],
            stderr=subprocess.DEVNULL,
        )
        try:
            assert await asyncio.to_thread(wait_until_accepting, broker.host, broker.port)
            await asyncio.wait_for(source.subscribed.wait(), 30)
            pub = publisher(broker)
            pub.publish(
                "frigate/tracked_object_update", lpr("9.9-z", "BACK1", 0.9), qos=1
            ).wait_for_publish(5)
            await wait_for(lambda: len(reads) == 1)
            disconnects = source.counters["disconnects"]
            pub.loop_stop()
            pub.disconnect()
        finally:
            restarted.terminate()
            restarted.wait(5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert reads[0].text == "BACK1"
    assert disconnects == 1


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "id": _json_values | st.text(max_size=8),
        "camera": _json_values | st.just("driveway"),
        "label": _json_values | st.sampled_from(["car", "person", "dog"]),
        "frame_time": _json_values,
        "timestamp": _json_values,
        "sub_label": _json_values,
        "recognized_license_plate": _json_values,
        "recognized_license_plate_score": _json_values,
        "plate": _json_values,
        "score": _json_values,
        "name": _json_values,
        "current_zones": _json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["new", "update", "end", "lpr", "face", None]),
    body=_fields,
    topic=st.sampled_from(["frigate/events", "frigate/tracked_object_update"]),
    retained=st.booleans(),
)
def test_hostile_messages_are_reads_or_payload_errors(
    kind: str | None, body: dict[str, Any], topic: str, retained: bool
) -> None:
    """Any shape of message: a PayloadError or well-formed reads, never another exception."""
    doc: dict[str, Any] = {"type": kind, "after": body, **body}
    try:
        payload = json.dumps(doc).encode()
    except ValueError:  # NaN/inf are fine for json.dumps; anything else is not a message
        return
    core = FrigatePlates(SOURCES)
    try:
        reads = core.feed(topic, payload, NOW, 0.0, retained=retained)
    except PayloadError:
        return
    for read in reads:
        assert read.text and len(read.text) <= 32
        assert read.confidence is None or 0.0 <= read.confidence <= 1.0
        assert read.captured_at is None or isinstance(read.captured_at, float)
        assert read.retained is retained
        assert "name" not in read.extra
