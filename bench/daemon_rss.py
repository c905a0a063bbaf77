"""Memory of the real daemon holding a large rule set.

Imports N vehicles, N/2 residents and P visitor passes into a rule store (CSV,
the installer's path), then starts the gated Daemon in this process on it and
measures resident memory before the daemon starts and once it is ready (rule
set indexed, lanes running), and after a rule-set swap (a second version
indexed while the first is live).

    python -m bench.daemon_rss [--vehicles 1000000] [--passes 100000] [--swaps 3] [--dir DIR]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.rules_import import _write_input


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _run(work: Path, vehicles: int, passes: int, swaps_wanted: int) -> dict[str, object]:
    from gated.app import Daemon
    from gated.config import parse_config
    from gated.health import Health, SystemdNotifier
    from gated.rules.files import import_rules
    from gated.rules.store import RuleStore

    rules_db = work / "rules.sqlite3"
    t0 = time.perf_counter()
    if not rules_db.exists():
        csv_dir = work / "csv"
        csv_dir.mkdir(parents=True, exist_ok=True)
        _write_input(csv_dir, vehicles, passes)
        with RuleStore(rules_db) as store:
            import_rules(store, csv_dir)
    import_s = time.perf_counter() - t0
    cfg = parse_config(
        {
            "site": {"tenant_id": "bench", "site_id": "bench", "device_id": "bench"},
            "journal": {"path": str(work / "journal.sqlite3"), "snapshot_dir": str(work / "snaps")},
            "rules": {"path": str(rules_db)},
            "lanes": [{"id": "main-in"}, {"id": "main-out", "direction": "out"}],
            "log": {"level": "warning"},
        }
    )
    gc.collect()
    before = _rss_mb()
    daemon = Daemon(cfg, health=Health(SystemdNotifier(env={})))
    t0 = time.perf_counter()
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 600)
    ready_s = time.perf_counter() - t0
    gc.collect()
    ready = _rss_mb()
    # New versions (one more vehicle each) while the daemon runs: each index is rebuilt
    # beside the live one and swapped; the old one's memory must be handed back, so
    # RSS after several swaps must not keep growing.
    swaps: list[float] = []
    swap_s = 0.0
    for n in range(swaps_wanted):
        with RuleStore(rules_db) as store:
            from gated.rules.entities import Resident, Vehicle

            tag = f"{int(time.time())}{n}"
            store.apply(
                [
                    Resident(id=f"bench-{tag}", name="Bench"),
                    Vehicle(id=f"bench-{tag}", plate=f"BN{tag[-7:]}", resident_id=f"bench-{tag}"),
                ],
                actor="bench",
                source="bench.daemon_rss",
            )
            version = store.version
        t0 = time.perf_counter()
        assert daemon.generation is not None and daemon.generation.rules is not None
        while daemon.generation.rules.current.version != version:  # noqa: ASYNC110 - polled like the daemon polls the store
            await asyncio.sleep(0.1)
        swap_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        gc.collect()
        swaps.append(round(_rss_mb(), 1))
    daemon.request_stop()
    status = await task
    return {
        "vehicles": vehicles,
        "passes": passes,
        "import_s": round(import_s, 1),
        "rss_before_mb": round(before, 1),
        "rss_ready_mb": round(ready, 1),
        "rules_rss_growth_mb": round(ready - before, 1),
        "ready_s": round(ready_s, 1),
        "rss_after_swaps_mb": swaps,
        "swap_s": round(swap_s, 1),
        "daemon_exit": status,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }


def main() -> None:
    """Run the benchmark and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=1_000_000)
    parser.add_argument("--passes", type=int, default=100_000)
    parser.add_argument("--dir", help="work folder; an existing rules.sqlite3 there is reused")
    parser.add_argument("--swaps", type=int, default=3, help="rule-set versions swapped in")
    args = parser.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="gated-bench-rss-"))
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(_run(work, args.vehicles, args.passes, args.swaps))))


if __name__ == "__main__":
    main()
