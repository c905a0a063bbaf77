"""Benchmark: import N vehicles (CSV) into a fresh rule store, re-import unchanged, export, read.

    python -m bench.rules_import [--vehicles 1000000] [--passes 100000] [--dir DIR]

Prints one JSON object as its last line: seconds per phase and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from gated.rules.files import export_rules, import_rules
from gated.rules.store import RuleStore


def _write_input(folder: Path, vehicles: int, passes: int) -> None:
    residents = max(1, vehicles // 2)
    with (folder / "residents.csv").open("w") as f:
        f.write("id,name,unit\n")
        for i in range(residents):
            f.write(f"r{i},Resident {i},{i % 500}\n")
    with (folder / "vehicles.csv").open("w") as f:
        f.write("id,plate,resident_id,description\n")
        for i in range(vehicles):
            f.write(f"v{i},{i // 10000:02d}-{i % 10000:04d}-X,r{i % residents},\n")
    with (folder / "visitor_passes.csv").open("w") as f:
        f.write("id,plate,host_resident_id,valid_from,valid_until,access_points\n")
        for i in range(passes):
            f.write(f"p{i},V-{i:07d},r{i % residents},2025-06-01T08:00Z,2025-06-02T08:00Z,*\n")


def main() -> None:
    """Run the benchmark and print its JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--vehicles", type=int, default=1_000_000)
    ap.add_argument("--passes", type=int, default=100_000)
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="gated-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "input"
    src.mkdir(exist_ok=True)
    try:
        _write_input(src, args.vehicles, args.passes)
        db = work / "rules.sqlite3"
        for p in work.glob("rules.sqlite3*"):
            p.unlink()
        figures: dict[str, object] = {"vehicles": args.vehicles, "passes": args.passes}
        with RuleStore(db) as store:
            t = time.perf_counter()
            import_rules(store, src)
            figures["import_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            import_rules(store, src)
            figures["reimport_unchanged_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            n = sum(1 for _ in store.iter_vehicle_plates())
            figures["iter_vehicle_plates_s"] = round(time.perf_counter() - t, 2)
            keys = [store.key_of("vehicles", f"v{i}") for i in range(0, args.vehicles, 997)]
            t = time.perf_counter()
            for k in keys:
                store.vehicle(k)
            figures["vehicle_get_us"] = round((time.perf_counter() - t) / len(keys) * 1e6, 2)
            t = time.perf_counter()
            for _ in range(10_000):
                store.version  # noqa: B018 - the read is the benchmark
            figures["version_us"] = round((time.perf_counter() - t) / 10_000 * 1e6, 2)
            t = time.perf_counter()
            export_rules(store, work / "export", "csv")
            figures["export_csv_s"] = round(time.perf_counter() - t, 2)
            assert n == args.vehicles
        figures["db_mb"] = round(
            sum(p.stat().st_size for p in work.glob("rules.sqlite3*")) / 1e6, 1
        )
        figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        figures["cpu"] = os.uname().machine
        print(json.dumps(figures))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
