"""Journal benchmark: durable single appends, batched and concurrent appends, raw SQLite.

`python -m bench.journal [--dir DIR] [--single N] [--batch N]` prints one JSON object as
its last line. All figures use synchronous=FULL in WAL mode (the journal's setting), on
whatever disk --dir is on (default: a temp dir; on a Pi, point it at the SD card).
batch_events_per_s is Journal.append_many (validation, salted digests, hashing, group
commit); concurrent_events_per_s is many tasks each awaiting Journal.append.
The raw baseline inserts comparable rows with plain sqlite3 executemany, committing in
chunks of the journal's max batch size, without hashing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from gated.ids import new_event_id
from gated.journal import ACCESS_COLUMNS, Journal, connect, migrate, prepare
from gated.model import AccessEvent

MAX_BATCH = 256


def _event(n: int) -> AccessEvent:
    return AccessEvent(
        event_id=new_event_id(), tenant_id="tenant-1", site_id="site-1", device_id="gate-pi-1",
        created_at=time.time(), event_type="entry", access_point="main-in",
        authorization_method="auto_plate", decision_reason="resident", rules_version=7,
        direction="in", resident_id=f"res-{n % 500}", vehicle_id=f"veh-{n % 700}",
        vehicle_plate=f"AB{n % 10000:04d}CD", confidence_score=0.93, read_to_relay_ms=41.7,
        snapshot_path=f"2024/06/10/{n}.jpg", snapshot_sha256="ab" * 32,
        metadata={"country": "NL", "colour": "blue", "source": "cam-1"},
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _single(path: Path, n: int) -> list[float]:
    journal = await Journal.open(path, max_batch=MAX_BATCH)
    await journal.append(_event(0))  # warm up
    times = []
    for i in range(n):
        event = _event(i)
        start = time.perf_counter()
        await journal.append(event)
        times.append((time.perf_counter() - start) * 1000)
    await journal.close()
    return times


async def _batched(path: Path, n: int) -> float:
    journal = await Journal.open(path, max_batch=MAX_BATCH)
    events = [_event(i) for i in range(n)]
    start = time.perf_counter()
    await journal.append_many(events)
    elapsed = time.perf_counter() - start
    await journal.close()
    return n / elapsed


async def _concurrent(path: Path, n: int, producers: int) -> float:
    # Many producers each awaiting their own durable append: group commit at work.
    journal = await Journal.open(path, max_batch=MAX_BATCH)
    events = [_event(i) for i in range(n)]

    async def produce(share: list[AccessEvent]) -> None:
        for event in share:
            await journal.append(event)

    start = time.perf_counter()
    await asyncio.gather(*(produce(events[i::producers]) for i in range(producers)))
    elapsed = time.perf_counter() - start
    await journal.close()
    return n / elapsed


def _raw_single(path: Path, n: int) -> list[float]:
    # Context for append latency: one plain durable commit of one row on this disk.
    conn = connect(path)
    migrate(conn)
    sql = (f"INSERT INTO access_logs ({', '.join(ACCESS_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ACCESS_COLUMNS))})")
    times = []
    for i in range(n):
        _, row = prepare(_event(i))
        row.update(seq=i + 1, prev_hash="0" * 64, row_hash="f" * 64, synced_at=None)
        values = tuple(row[c] for c in ACCESS_COLUMNS)
        start = time.perf_counter()
        conn.execute(sql, values)  # autocommit: one transaction, one WAL fsync
        times.append((time.perf_counter() - start) * 1000)
    conn.close()
    return times


def _raw(path: Path, n: int) -> float:
    conn = connect(path)
    migrate(conn)
    rows = []
    for i in range(n):
        _, row = prepare(_event(i))
        row.update(seq=i + 1, prev_hash="0" * 64, row_hash="f" * 64, synced_at=None)
        rows.append(tuple(row[c] for c in ACCESS_COLUMNS))
    sql = (f"INSERT INTO access_logs ({', '.join(ACCESS_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ACCESS_COLUMNS))})")
    start = time.perf_counter()
    for chunk in range(0, n, MAX_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[chunk:chunk + MAX_BATCH])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def main() -> None:
    """Run the three measurements and print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=None, help="directory for the benchmark databases")
    parser.add_argument("--single", type=int, default=500, help="sequential durable appends")
    parser.add_argument("--batch", type=int, default=10_000, help="batched appends")
    parser.add_argument("--producers", type=int, default=64, help="concurrent producers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gated-bench-") as tmp:
        root = Path(tmp)
        single = asyncio.run(_single(root / "single.sqlite3", args.single))
        batch_rate = asyncio.run(_batched(root / "batch.sqlite3", args.batch))
        concurrent_rate = asyncio.run(
            _concurrent(root / "concurrent.sqlite3", args.batch, args.producers))
        raw_rate = _raw(root / "raw.sqlite3", args.batch)
        raw_single = _raw_single(root / "raw_single.sqlite3", args.single)
    figures = {
        "append_p50_ms": round(statistics.median(single), 3),
        "append_p99_ms": round(_pct(single, 0.99), 3),
        "append_max_ms": round(max(single), 3),
        "raw_single_commit_p50_ms": round(statistics.median(raw_single), 3),
        "raw_single_commit_p99_ms": round(_pct(raw_single, 0.99), 3),
        "batch_events_per_s": round(batch_rate),
        "concurrent_events_per_s": round(concurrent_rate),
        "concurrent_producers": args.producers,
        "raw_sqlite_events_per_s": round(raw_rate),
        "batch_vs_raw": round(batch_rate / raw_rate, 3),
        "synchronous": "FULL",
        "journal_mode": "wal",
        "max_batch": MAX_BATCH,
        "single_appends": args.single,
        "batched_appends": args.batch,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
