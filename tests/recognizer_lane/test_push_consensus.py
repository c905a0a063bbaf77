"""Consensus for a push camera, through `gated run` and its real HTTP camera listener.

A camera configured with `consensus = { reads = 2, unless_confidence = 0.9 }` must agree
with itself before a plate below 0.9 opens; one low-confidence read (a badge read as a
plate) never opens and is journaled as denied, reason no_consensus, when its passage ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon.harness import (
    LCUS_ON,
    RESIDENT_RULES,
    PtyPort,
    Site,
    lcus_frames,
    lcus_relay,
    running,
    wait_until,
)

PATH = "/anpr/main-in"


def lane(relay: str, consensus: str) -> str:
    return f"""
[[lanes]]
id = "main-in"
direction = "in"
dedup_window_s = 6
[lanes.relay]
{relay}
[[lanes.sources]]
kind = "anpr_http"
name = "cam"
format = "generic"
path = "{PATH}"
consensus = {consensus}
[lanes.sources.auth]
allowed_ips = ["127.0.0.1/32"]
"""


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-tty")
    yield port
    port.close()


def push(site: Site, plate: str, confidence: float) -> int:
    url = f"http://127.0.0.1:{site.listener_port}{PATH}"
    return httpx.post(url, json={"plate": plate, "confidence": confidence},
                      timeout=10).status_code


def pulses(port: PtyPort) -> int:
    return lcus_frames(port.drain(0.5)).count(LCUS_ON)


@pytest.fixture
def site(tmp_path: Path, relay_port: PtyPort) -> Site:
    site = Site(tmp_path)
    site.write_config(
        lane(lcus_relay(relay_port), "{ reads = 2, unless_confidence = 0.9, window_s = 1.5 }"),
        policy="min_confidence = 0.5",
    )
    site.import_rules(RESIDENT_RULES)
    return site


def test_three_reads_of_one_passage_open_once_with_the_agreement_journaled(
    site: Site, relay_port: PtyPort
) -> None:
    with running(site):
        relay_port.drain()
        # The first read is held (answered at once: the camera may await each answer).
        assert push(site, "AB123CD", 0.7) == 200
        assert site.rows() == [] and pulses(relay_port) == 0
        assert push(site, "A8123CD", 0.65) == 200  # an OCR look-alike of the same plate
        assert push(site, "AB123CD", 0.75) == 200
        rows = site.wait_rows(1)
        assert pulses(relay_port) == 1
    (row,) = [r for r in site.rows() if r["event_type"] != "denied"]
    assert (row["vehicle_plate"], row["decision_reason"], row["gate_opened"]) == (
        "AB123CD", "resident", 1)
    agreement = json.loads(row["metadata"])["consensus"]
    assert (agreement["reads"], agreement["of"], agreement["by"]) == (2, 2, "reads")
    assert len(rows) == 1 and len(site.rows()) == 1  # the third read merged, nothing else


def test_a_single_low_confidence_badge_read_never_opens_and_is_journaled(
    site: Site, relay_port: PtyPort
) -> None:
    with running(site) as daemon:
        relay_port.drain()
        assert push(site, "AB123CD", 0.6) == 200  # a resident's plate, read once, unsure
        (row,) = site.wait_rows(1, timeout_s=5)  # journaled when the 1.5 s passage ends
        assert pulses(relay_port) == 0
        assert (row["event_type"], row["decision_reason"], row["gate_opened"]) == (
            "denied", "no_consensus", None)
        assert row["vehicle_plate"] == "AB123CD"
        meta = json.loads(row["metadata"])
        assert meta["consensus"]["by"] == "none" and meta["consensus"]["reads"] == 1
        assert daemon.alive()


def test_one_confident_read_opens_at_once(site: Site, relay_port: PtyPort) -> None:
    with running(site):
        relay_port.drain()
        assert push(site, "AB123CD", 0.95) == 200
        (row,) = site.wait_rows(1)
        assert pulses(relay_port) == 1
    assert (row["decision_reason"], row["gate_opened"]) == ("resident", 1)
    assert json.loads(row["metadata"])["consensus"]["by"] == "confidence"


def test_a_source_without_consensus_decides_every_read_as_before(
    tmp_path: Path, relay_port: PtyPort
) -> None:
    site = Site(tmp_path)
    site.write_config(lane(lcus_relay(relay_port), "{}"), policy="min_confidence = 0.5")
    site.import_rules(RESIDENT_RULES)
    with running(site):
        relay_port.drain()
        assert push(site, "AB123CD", 0.6) == 200
        (row,) = site.wait_rows(1)
        assert wait_until(lambda: pulses(relay_port) == 1, 3)
    assert "consensus" not in json.loads(row["metadata"])
