"""Benchmark: build the plate index over a large rule set and time decide().

    python -m bench.decide [--vehicles N] [--passes N] [--decisions N] [--seed N]
                           [--deny-distance 0-2] [--entity-path]

Prints progress, then one JSON object as the last line. The rule set lives in
the shared in-memory RuleSource (`gated.rules.memory`), so the figures measure
the index and the policy, not a store. Like the SQLite store it also lists its
vehicles with their residents in bulk, so resident decisions take the vehicle
facts path; --entity-path builds without facts (a Vehicle and a Resident per
decision, as from a plain RuleSource).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import time
import zoneinfo

import numpy as np

from gated.config import PolicyConfig
from gated.model import AntiPassback, Direction, PlateRead
from gated.plates import CONFUSION_CLASSES
from gated.policy import AccessPoint, MemoryPolicyState, decide
from gated.rules.entities import (
    DenyEntry,
    Group,
    Resident,
    Schedule,
    TimeWindow,
    Vehicle,
    VisitorPass,
)
from gated.rules.index import RuleIndex
from gated.rules.memory import MemoryRuleSource

LETTERS = np.frombuffer(b"ABCDEFGHJKLMNPRSTUVWXYZ", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
# Plate layouts seen in Europe and North America: L = letter, D = digit.
LAYOUTS = ("LLDDLLL", "DDLLLD", "LLDDDL", "LLDDDLL", "DLLLDDD", "LLLDDDD", "LDDDLL", "LLLDDD")


def random_plates(n: int, rng: np.random.Generator) -> list[str]:
    """n plates in realistic layouts (duplicates possible, as in real fleets)."""
    layout_of = rng.integers(0, len(LAYOUTS), n)
    out: list[str] = [""] * n
    for li, layout in enumerate(LAYOUTS):
        rows = np.flatnonzero(layout_of == li)
        cols = [
            (LETTERS if ch == "L" else DIGITS)[rng.integers(0, 23 if ch == "L" else 10, len(rows))]
            for ch in layout
        ]
        mat = np.ascontiguousarray(np.stack(cols, axis=1))
        texts = mat.view(f"S{len(layout)}").ravel().astype(f"U{len(layout)}").tolist()
        for r, t in zip(rows.tolist(), texts, strict=True):
            out[r] = t
    return out


def bench_source(vehicles: list[str], passes: list[str], deny: list[str],
                 now: float) -> MemoryRuleSource:
    """The benchmark's rule set, in the shared in-memory RuleSource.

    Vehicle k (from 1) belongs to resident r{k // 2} and every 97th is inactive;
    every 101st resident is suspended, every third is in block-a (scheduled, two
    lanes), the rest are staff (anywhere, any time); every tenth pass is not yet
    valid. The source lists vehicles with their residents in bulk, like the store.
    """
    src = MemoryRuleSource()
    day = TimeWindow(frozenset(range(7)), dt.time(6), dt.time(22))
    src.add_schedule(Schedule("day", "day", (day,)))
    src.add_group(Group("staff", "staff", None, None))
    src.add_group(Group("block-a", "block-a", frozenset({"main-in", "main-out"}), "day"))
    for n in range(len(vehicles) // 2 + 1):
        group = "block-a" if n % 3 == 0 else "staff"
        src.add_resident(Resident(f"r{n}", "", "", n % 101 != 0, (group,), frozenset()))
    for k, plate in enumerate(vehicles, 1):
        src.add_vehicle(Vehicle(f"v{k}", plate, f"r{k // 2}", active=k % 97 != 0))
    for i, plate in enumerate(passes):
        start = now - 3600 if i % 10 else now + 3600
        src.add_pass(VisitorPass(f"p{i}", plate, f"r{i}", start, start + 86400, "Visitor", None, 3))
    for i, plate in enumerate(deny):
        src.add_deny(DenyEntry(f"d{i}", plate, "stolen"))
    return src


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_CONFUSABLE = {c: cls for cls in CONFUSION_CLASSES for c in cls}


def _confuse(plate: str, rnd: random.Random) -> str:
    spots = [i for i, c in enumerate(plate) if c in _CONFUSABLE]
    if not spots:
        return plate
    i = rnd.choice(spots)
    others = [c for c in _CONFUSABLE[plate[i]] if c != plate[i]]
    return plate[:i] + rnd.choice(others) + plate[i + 1 :]


def _typo(plate: str, rnd: random.Random) -> str:
    i = rnd.randrange(len(plate))
    op = rnd.random()
    ch = rnd.choice("CEFHJKMNPRUVWXY3479")
    if op < 0.6:
        return plate[:i] + ch + plate[i + 1 :]
    if op < 0.8:
        return plate[:i] + plate[i + 1 :]
    return plate[:i] + ch + plate[i:]


def _reads(plates: dict[str, list[str]], n: int, now: float,
           seed: int) -> tuple[list[PlateRead], dict]:
    rnd = random.Random(seed)
    unknown = random_plates(n, np.random.default_rng(seed + 1))
    mix = {"exact": 0, "confusion": 0, "fuzzy": 0, "unknown": 0, "pass": 0, "deny": 0}
    reads = []
    for i in range(n):
        r = rnd.random()
        if r < 0.45:
            kind, text = "exact", rnd.choice(plates["vehicles"])
        elif r < 0.60:
            kind, text = "confusion", _confuse(rnd.choice(plates["vehicles"]), rnd)
        elif r < 0.70:
            kind, text = "fuzzy", _typo(rnd.choice(plates["vehicles"]), rnd)
        elif r < 0.88:
            kind, text = "unknown", unknown[i]
        elif r < 0.97 and plates["passes"]:
            kind, text = "pass", rnd.choice(plates["passes"])
        elif plates["deny"]:
            kind, text = "deny", _typo(rnd.choice(plates["deny"]), rnd)
        else:
            kind, text = "unknown", unknown[i]
        mix[kind] += 1
        if rnd.random() < 0.3:  # as cameras send it: separators, lower case
            text = f"{text[:2]}-{text[2:]}".lower()
        confidence = 0.93 if rnd.random() < 0.9 else 0.55
        reads.append(PlateRead("main-in", text, "cam1", now, 0.0, confidence))
    return reads, mix


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=1_000_000)
    ap.add_argument("--passes", type=int, default=100_000)
    ap.add_argument("--deny", type=int, default=1_000)
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--deny-distance", type=int, default=1, choices=(0, 1, 2),
        help="policy deny_fuzzy_distance (the index is built to depth 2 either way)",
    )  # fmt: skip
    ap.add_argument(
        "--entity-path", action="store_true",
        help="build without vehicle facts: every resident decision reads Vehicle and Resident",
    )  # fmt: skip
    args = ap.parse_args(argv)

    # 10:00 local on a weekday, so schedules are open for most reads
    tz = zoneinfo.ZoneInfo("Europe/Amsterdam")
    now = dt.datetime(2025, 3, 12, 10, 0, tzinfo=tz).timestamp()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    plates = {
        "vehicles": random_plates(args.vehicles, rng),
        "passes": random_plates(args.passes, rng),
        "deny": random_plates(args.deny, rng),
    }
    src = bench_source(plates["vehicles"], plates["passes"], plates["deny"], now)
    print(f"generated source in {time.perf_counter() - t0:.1f}s", flush=True)

    gc.collect()
    rss0 = _rss_bytes()
    t0 = time.perf_counter()
    rules = RuleIndex.build(src, vehicle_facts=not args.entity_path)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss1 = _rss_bytes()
    print(f"built index in {build_s:.2f}s: {rules.counts()}", flush=True)

    policy = PolicyConfig(
        anti_passback=AntiPassback.SOFT, deny_fuzzy_distance=args.deny_distance
    )
    access_point = AccessPoint("main-in", Direction.IN, policy, tz)
    state = MemoryPolicyState()
    reads, mix = _reads(plates, args.decisions, now, args.seed)
    # Warm up on other reads of the same mix (a running daemon is in steady state:
    # the index pages are resident and the interpreter's caches are warm).
    warm, _ = _reads(plates, min(args.decisions, 20_000), now, args.seed + 1)
    for read in warm:
        decide(read, access_point, rules, state, now)
    gc.collect()
    gc.freeze()  # as the daemon does after start-up: the rule set is long-lived
    times = np.empty(len(reads), dtype=np.int64)
    cpu = np.empty(len(reads), dtype=np.int64)
    reasons: dict[str, int] = {}
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns  # CPU time: excludes preemption by other processes
    for i, read in enumerate(reads):
        c = cpu_clock()
        t = clock()
        decision = decide(read, access_point, rules, state, now)
        times[i] = clock() - t
        cpu[i] = cpu_clock() - c
        reasons[decision.reason.value] = reasons.get(decision.reason.value, 0) + 1
    us = times / 1000.0
    cpu_us = cpu / 1000.0
    result = {
        "vehicles": args.vehicles,
        "passes": args.passes,
        "deny": args.deny,
        "decisions": len(reads),
        "deny_distance": args.deny_distance,
        "path": "entity" if args.entity_path else "facts",
        "decide_p50_us": round(float(np.percentile(us, 50)), 2),
        "decide_p99_us": round(float(np.percentile(us, 99)), 2),
        "decide_p999_us": round(float(np.percentile(us, 99.9)), 2),
        "decide_max_us": round(float(us.max()), 2),
        "decide_cpu_p50_us": round(float(np.percentile(cpu_us, 50)), 2),
        "decide_cpu_p99_us": round(float(np.percentile(cpu_us, 99)), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "rules_rss_mb": round((rss1 - rss0) / 2**20, 1),
        "index_mb": round(rules.nbytes() / 2**20, 1),
        "index_entries": rules.counts()["entries"],
        "index_build_s": round(build_s, 2),
        "read_mix": mix,
        "reasons": reasons,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
