"""`gated demo` says when a pushed read was merged into an earlier read of the same car."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


@pytest.mark.timeout(60)
def test_the_demo_says_a_repeated_plate_was_merged(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "gated", "demo", "--dir", str(tmp_path / "demo"),
         "--port", "0", "--interval", "600", "--duration", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    try:
        url = None
        for line in demo.stdout:
            found = re.search(r"(http://127\.0\.0\.1:\d+/anpr/main-in)", line)
            url = url or (found.group(1) if found else None)
            if "Ctrl-C stops" in line:
                break
        assert url, "the demo printed no camera URL"
        lines: list[str] = []
        with httpx.Client(timeout=10) as client:
            for _ in range(2):  # the README's curl, run twice in a row
                while True:
                    try:
                        answer = client.post(url, json={"plate": "AB-123-C", "confidence": 0.95})
                        break
                    except httpx.TransportError:  # the listener is still starting
                        continue
                assert answer.status_code == 200
        for line in demo.stdout:
            lines.append(line)
            if "MERGE" in line:
                break
        decided = [line for line in lines if "AB123C" in line and "MERGE" not in line]
        merged = [line for line in lines if "MERGE" in line]
        assert decided and merged, "".join(lines)
        assert "AB123C" in merged[0] and "dedup_window_s" in merged[0]
    finally:
        demo.terminate()
        demo.wait(30)
