"""Metrics: histograms, Prometheus exposition, and the daemon's textfile."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from gated.app import Daemon
from gated.config import parse_config
from gated.health import Health, SystemdNotifier
from gated.metrics import Histogram, LaneMetrics, render_prometheus
from gated.model import PlateRead

_LABEL = r'[a-z_]+="(?:[^"\\]|\\.)*"'
_SAMPLE = re.compile(rf"^[a-z_]+(\{{{_LABEL}(,{_LABEL})*\}})? -?[0-9.]+(e[+-]?[0-9]+)?$")


def test_histogram_quantiles_and_bounded_memory() -> None:
    hist = Histogram()
    for value in [0.2] * 90 + [3.0] * 9 + [700.0]:
        hist.observe(value)
    assert hist.quantile(0.5) == 0.5 and hist.quantile(0.95) == 5 and hist.quantile(1.0) == 1000
    assert hist.recent_quantile(0.5) == 0.2
    for _ in range(20_000):
        hist.observe(1.0)
    assert len(hist.recent) == 10_000


def test_prometheus_exposition_is_well_formed_and_cumulative() -> None:
    metrics = LaneMetrics(reads=3, duplicates=1)
    metrics.decisions["resident"] += 2
    for ms in (0.3, 1.5, 40.0):
        metrics.read_to_relay_ms.observe(ms)
    text = render_prometheus({'gate "A"': metrics}, {"journal": True, "main-relay": False})
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(_SAMPLE.match(line) for line in samples), [
        s for s in samples if not _SAMPLE.match(s)
    ]
    assert 'gated_reads_total{lane="gate \\"A\\""} 3' in text
    assert 'gated_decisions_total{lane="gate \\"A\\"",reason="resident"} 2' in text
    buckets = [
        int(line.rsplit(" ", 1)[1])
        for line in samples
        if line.startswith("gated_read_to_relay_seconds_bucket")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative, +Inf is the count
    assert 'gated_read_to_relay_seconds_bucket{lane="gate \\"A\\"",le="0.0005"} 1' in text
    assert 'gated_component_up{component="main-relay"} 0' in text


async def test_daemon_writes_the_textfile(tmp_path: Path) -> None:
    prom = tmp_path / "run" / "gated.prom"
    cfg = parse_config(
        {
            "site": {"tenant_id": "t", "site_id": "s", "device_id": "d"},
            "journal": {"path": str(tmp_path / "j.sqlite3"), "snapshot_dir": str(tmp_path / "s")},
            "rules": {"path": str(tmp_path / "r.sqlite3")},
            "lanes": [{"id": "main-in"}],
            "metrics": {"textfile": str(prom), "interval_s": 1},
        }
    )
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(daemon.started.wait(), 20)
        daemon.lane("main-in").on_read(
            PlateRead("main-in", "QQ123QQ", "cam", time.time(), time.monotonic(), 0.9)
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (
                prom.exists()
                and 'gated_decisions_total{lane="main-in",reason="unknown_plate"} 1'
                in prom.read_text()
            ):
                break
            await asyncio.sleep(0.1)
        text = prom.read_text()
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
    assert 'gated_reads_total{lane="main-in"} 1' in text
    assert 'gated_component_up{component="journal"} 1' in text
