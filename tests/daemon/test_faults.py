"""Faults of the running daemon (`gated run` as a child process): a relay board unplugged and
plugged back, a camera stream that vanishes and returns, a component that keeps crashing,
SIGTERM in the middle of a stream of reads.

Relays are LCUS boards on pty pairs, cameras are video files written by OpenCV and plate
reads are HTTP pushes on loopback: no real board, camera or USB bus was involved.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gated.plates import confusion_key
from tests.daemon.harness import (
    CAMERA_PATH,
    LCUS_OFF,
    LCUS_ON,
    RESIDENT_RULES,
    DaemonProcess,
    PtyPort,
    Site,
    audit,
    gated,
    generic_lane,
    lcus_frames,
    lcus_relay,
    post_generic,
    post_until_accepted,
    running,
    wait_audit,
    wait_until,
    write_video,
)

pytestmark = pytest.mark.slow

PATH = CAMERA_PATH
RULES = RESIDENT_RULES
lane = generic_lane
lcus = lcus_relay


@pytest.fixture
def relay_port(tmp_path: Path) -> Iterator[PtyPort]:
    port = PtyPort(tmp_path / "relay-board")
    yield port
    port.close()


def verify_journal(site: Site) -> None:
    """`gated journal verify` must accept the journal."""
    result = gated("journal", "verify", "--db", str(site.journal))
    assert result.returncode == 0, result.stdout + result.stderr


# --- 1. relay board unplugged and plugged back --------------------------------------------


def test_relay_board_unplugged_and_replugged(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    site.write_config(lane(lcus(relay_port)))
    site.import_rules(RULES)
    with running(site) as daemon:
        assert LCUS_OFF in relay_port.drain()  # the board is driven released on opening

        relay_port.unplug()
        # A car arrives while the board is gone: decided, journaled, the failure recorded.
        assert post_generic(site.listener_port, PATH, "AB123CD") == 200
        [row] = site.wait_rows(1)
        assert row["event_type"] == "entry" and row["decision_reason"] == "resident"
        assert row["read_to_relay_ms"] is None
        meta = json.loads(row["metadata"])
        assert "relay_error" in meta and "main-in-relay" in meta["relay_error"]
        [fault] = wait_audit(site, "relay_fault")
        assert fault["resource_id"] == "main-in-relay" and fault["status"] == "failure"
        failed = wait_audit(site, "relay_pulse")
        assert failed and failed[0]["status"] == "failure"
        assert json.loads(failed[0]["metadata"])["event_id"] == row["event_id"]
        assert daemon.alive()

        time.sleep(0.5)  # the board stays away for a moment, as a real re-plug takes
        relay_port.replug()
        [recovered] = wait_audit(site, "relay_recovered", timeout_s=15)
        assert recovered["resource_id"] == "main-in-relay" and recovered["status"] == "success"
        assert LCUS_OFF in relay_port.drain()  # reconnecting releases first

        assert post_generic(site.listener_port, PATH, "GH456JK") == 200
        assert relay_port.read(8, timeout_s=5) == LCUS_ON + LCUS_OFF
        rows = site.wait_rows(2)
        assert rows[1]["decision_reason"] == "resident"
        assert rows[1]["read_to_relay_ms"] is not None
        assert "relay_error" not in json.loads(rows[1]["metadata"])
        assert daemon.alive()
        status = daemon.terminate()
    assert status == 0, daemon.log()
    assert len(audit(site, "relay_fault")) == 1  # one fault, reported once, not per retry
    verify_journal(site)


# --- 2. camera stream dropped and restored ------------------------------------------------


def test_camera_stream_dropped_and_restored(tmp_path: Path) -> None:
    site = Site(tmp_path)
    video = tmp_path / "camera.avi"
    write_video(video)
    camera = f'[lanes.camera]\nurl = "{video}"\nfps_limit = 20\nstale_after_s = 0.5'
    site.write_config(lane('kind = "fake"', extra=camera, dedup_window_s=0))
    site.import_rules(RULES)
    plates = iter(f"QZ{n:04d}W" for n in range(10_000))  # unknown plates: still decided

    def push_until(want_missing: bool, timeout_s: float = 20.0) -> dict[str, object] | None:
        """Push reads until one is journaled with (or without) a snapshot; that row."""

        def attempt() -> dict[str, object] | None:
            plate = next(plates)
            assert post_generic(site.listener_port, PATH, plate) == 200
            row = wait_until(
                lambda: next((r for r in site.rows() if r["vehicle_plate"] == plate), None), 5
            )
            assert row is not None, f"read {plate} was not journaled"
            return row if bool(row["snapshot_missing"]) == want_missing else None

        return wait_until(attempt, timeout_s, every_s=0.2)

    with running(site) as daemon:
        row = push_until(want_missing=False)
        assert row is not None, daemon.log()
        assert row["decision_reason"] == "unknown_plate"
        snapshot = site.snapshots / str(row["snapshot_path"])
        assert snapshot.read_bytes()[:2] == b"\xff\xd8"  # a JPEG from the camera's frame

        video.unlink()  # the stream goes away
        row = push_until(want_missing=True)
        assert row is not None, daemon.log()
        assert row["snapshot_path"] is None and row["decision_reason"] == "unknown_plate"

        video.write_bytes(b"\x00not a video\x00" * 64)  # a broken stream is no better
        row = push_until(want_missing=True)
        assert row is not None

        write_video(video)  # the camera is back
        row = push_until(want_missing=False)
        assert row is not None, daemon.log()
        assert (site.snapshots / str(row["snapshot_path"])).read_bytes()[:2] == b"\xff\xd8"
        assert daemon.alive()
        status = daemon.terminate()
    assert status == 0, daemon.log()
    assert not audit(site, "component_failure")  # a lost stream is retried, not a crash
    verify_journal(site)


# --- 3. a component that keeps crashing ---------------------------------------------------


def test_component_failing_too_often_ends_the_process(tmp_path: Path, relay_port: PtyPort) -> None:
    site = Site(tmp_path)
    squatter = socket.socket()  # another program already holds the camera listener's port
    squatter.bind(("127.0.0.1", site.listener_port))
    squatter.listen()
    site.write_config(
        # hold-open: if the board opened before the end, it was energised, and must be
        # released on the way out, not merely left as it was
        lane(lcus(relay_port), extra='mode = "hold_open"'),
        supervisor="max_failures = 3\nfailure_window_s = 60\nrestart_backoff_s = 0.05",
    )
    site.import_rules(RULES)
    daemon = DaemonProcess(site)
    try:
        status = daemon.proc.wait(20)
        written = relay_port.drain(0.3)
        messages = daemon.notify.collect(0.1)
    finally:
        daemon.close()
        squatter.close()
    assert status == 1, daemon.log()
    # READY=1 means cameras can push; a listener that never binds never gets there.
    assert "READY=1" not in messages and "STOPPING=1" in messages
    failures = audit(site, "component_failure")
    assert len(failures) == 3
    assert len({f["resource_id"] for f in failures}) == 1  # the same component each time
    assert all("cannot listen" in f["error_message"] for f in failures)
    [exit_row] = audit(site, "daemon_exit")
    assert exit_row["status"] == "failure" and "3 times" in exit_row["error_message"]
    assert not audit(site, "daemon_stop")
    # Whatever reached the board (it may not have been opened yet), the last word was "release".
    if written:
        assert lcus_frames(written)[-1] == LCUS_OFF
    verify_journal(site)


# --- 4. SIGTERM under load ----------------------------------------------------------------


def far_apart_plates(count: int, seed: int) -> list[str]:
    """Random 7-character plates, no two within one edit or sharing an OCR-confusion key.

    Such plates are never coalesced into one vehicle and never fuzzily match each other.
    Two plates one edit apart share a one-deletion variant, so comparing those sets finds
    every near pair (and a few harmless extra ones) without a quadratic search.
    """
    rng = random.Random(seed)
    alphabet = "ABCDEFGHJKLMNPRSTVWXYZ0123456789"
    near: set[str] = set()
    keys: set[str] = set()
    plates: list[str] = []
    while len(plates) < count:
        plate = "".join(rng.choice(alphabet) for _ in range(7))
        variants = {plate} | {plate[:i] + plate[i + 1 :] for i in range(len(plate))}
        key = confusion_key(plate)
        if variants & near or key in keys:
            continue
        near |= variants
        keys.add(key)
        plates.append(plate)
    return plates


def test_sigterm_under_load_loses_no_acknowledged_read(tmp_path: Path, relay_port: PtyPort) -> None:
    plates = far_apart_plates(1200, seed=4)
    allowed, unknown = plates[:600], plates[600:]
    site = Site(tmp_path)
    site.write_config(lane(lcus(relay_port)))
    site.import_rules(
        {
            "residents": [{"id": "r-1", "name": "Ann Jansen", "access_points": "*"}],
            "vehicles": [
                {"id": f"v-{i}", "plate": plate, "resident_id": "r-1"}
                for i, plate in enumerate(allowed)
            ],
        }
    )
    acknowledged: list[str] = []
    stop = threading.Event()

    def post_as_fast_as_possible(batch: list[str]) -> None:
        with httpx.Client() as client:
            for plate in batch:
                if stop.is_set():
                    return
                try:
                    status = post_generic(
                        site.listener_port, PATH, plate, client=client, timeout_s=5
                    )
                except httpx.TransportError:
                    continue  # the listener is going away: this read was never accepted
                if status == 200:
                    acknowledged.append(plate)  # list.append is atomic under the GIL

    with running(site) as daemon:
        # First prove that this daemon is the one serving the port (and is listening yet).
        assert post_until_accepted(site.listener_port, PATH, "AB123CD") == 200
        assert site.wait_rows(1), daemon.log()
        # Two cameras' worth of pushes: allowed and unknown plates interleave at the lane.
        senders = [
            threading.Thread(target=post_as_fast_as_possible, args=(batch,))
            for batch in (allowed, unknown)
        ]
        for sender in senders:
            sender.start()
        try:
            # Mid-stream: some reads accepted, many more still coming.
            assert wait_until(lambda: len(acknowledged) >= 60, timeout_s=15), daemon.log()
            daemon.proc.send_signal(signal.SIGTERM)
            status = daemon.proc.wait(30)
        finally:
            stop.set()
            for sender in senders:
                sender.join(30)
        messages = daemon.notify.collect(0.1)
        written = relay_port.drain(0.3)
    assert status == 0, daemon.log()
    assert "STOPPING=1" in messages
    journaled = {row["vehicle_plate"]: row for row in site.rows()}
    lost = [plate for plate in acknowledged if plate not in journaled]
    assert not lost, (
        f"{len(lost)} of {len(acknowledged)} acknowledged reads not journaled, "
        f"e.g. {lost[:5]}\n{daemon.log()[-3000:]}"
    )
    allowed_set = set(allowed)
    for plate in acknowledged:
        row = journaled[plate]
        expected = "resident" if plate in allowed_set else "unknown_plate"
        assert row["decision_reason"] == expected, (plate, row["decision_reason"])
    assert any(row["event_type"] == "entry" for row in journaled.values())
    frames = lcus_frames(written)
    assert LCUS_ON in frames and frames[-1] == LCUS_OFF  # the gate is left released
    assert audit(site, "daemon_stop")
    verify_journal(site)
