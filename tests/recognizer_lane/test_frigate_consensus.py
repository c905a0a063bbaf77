"""Frigate's updates of one car must agree before a plate below unless_confidence opens.

The daemon in-process with a fake relay, a real Mosquitto, messages shaped as Frigate
publishes them (the helpers of tests/daemon/test_frigate_live.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from gated.config import parse_config
from gated.rules.files import import_rules
from gated.rules.store import RuleStore
from tests.daemon.test_frigate_live import (
    RULES,
    Broker,
    Publisher,
    lpr,
    of,
    pulses,
    running,
    site_config,
    until,
)
from tests.daemon.test_frigate_live import broker as broker  # the fixture

pytestmark = pytest.mark.slow


async def test_frigate_updates_must_agree_before_an_unsure_plate_opens(
    tmp_path: Path, broker: Broker
) -> None:
    (tmp_path / "rules.json").write_text(json.dumps(RULES))
    with RuleStore(tmp_path / "rules.sqlite3") as store:
        import_rules(store, tmp_path / "rules.json")
    doc = msgspec.to_builtins(site_config(tmp_path, broker))
    doc["lanes"][0]["sources"][0]["consensus"] = {
        "reads": 2, "unless_confidence": 0.9, "window_s": 1.0}
    cfg = parse_config(doc)
    journal = Path(cfg.journal.path)
    frigate = Publisher(broker)
    try:
        async with running(cfg) as daemon:
            now = time.time()
            # One car, read twice as Frigate's score for it rises: agreed, one opening.
            frigate.send("frigate/tracked_object_update", lpr("car.1", "AB123CD", 0.82, now))
            await until(lambda: daemon.lane("main-in").metrics.held == 1)
            assert pulses(daemon) == 0
            frigate.send("frigate/tracked_object_update",
                         lpr("car.1", "AB123CD", 0.86, now + 0.2))
            await until(lambda: of(journal, "AB123CD"))
            assert pulses(daemon) == 1
            (row,) = of(journal, "AB123CD")
            assert json.loads(row["metadata"])["consensus"]["reads"] == 2

            # Another resident's plate, read once at 0.85 (a badge can read like that):
            # held, never opens, journaled as no_consensus when its passage ends.
            frigate.send("frigate/tracked_object_update",
                         lpr("car.2", "GH456JK", 0.85, time.time()))
            await until(lambda: of(journal, "GH456JK"), 5)
            (denied,) = of(journal, "GH456JK")
            assert (denied["decision_reason"], denied["gate_opened"]) == ("no_consensus", None)
            assert pulses(daemon) == 1

            # One read sure enough by itself opens at once.
            frigate.send("frigate/tracked_object_update",
                         lpr("car.3", "MN789PQ", 0.95, time.time()))
            await until(lambda: of(journal, "MN789PQ"))
            assert pulses(daemon) == 2
    finally:
        frigate.close()
