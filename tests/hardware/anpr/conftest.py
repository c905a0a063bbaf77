"""Fixtures for the camera push and Frigate tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support.broker import Broker, mosquitto_available, mosquitto_broker

PAYLOADS = Path(__file__).parent / "payloads"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, stopped after the test."""
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    with mosquitto_broker(tmp_path / "broker") as running:
        yield running


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    """A real JPEG encoded by OpenCV from a deterministic image."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def payload(name: str) -> bytes:
    """The bytes of a sample payload file."""
    return (PAYLOADS / name).read_bytes()


def multipart(
    parts: list[tuple[str, str, str, bytes]], boundary: str = "MIME_boundary_7f3a"
) -> tuple[bytes, str]:
    """Build a multipart/form-data body from (name, filename, content_type, data) parts."""
    out = bytearray()
    for name, filename, ctype, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {ctype}\r\n".encode()
        out += f"Content-Length: {len(data)}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
