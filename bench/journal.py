"""Journal benchmark: durable single appends, batched and concurrent appends, raw SQLite.

`python -m bench.journal [--dir DIR] [--single N] [--batch N] [--rounds R]` prints one JSON
object as its last line. All figures use synchronous=FULL in WAL mode (the journal's
setting), on whatever disk --dir is on (default: a temp dir; on a Pi, point it at the SD
card).

* append_*: sequential Journal.append latencies (validation, salted digests, hashing,
  one thread hop each way, one durable commit each).
* raw_single_commit_*: one plain sqlite3 INSERT + COMMIT of a comparable row on the same
  disk; thread_hop_p50_ms: a bare round trip to a thread and back to the event loop (the
  floor the journal's writer thread adds).
  Journal and raw segments alternate (R rounds each), so a noisy neighbour on the disk
  hits both alike.
* batch_events_per_s: Journal.append_many of --batch events (group commit in chunks of
  max_batch); raw_sqlite_events_per_s: plain executemany of comparable rows, prepared
  beforehand and committed in the same chunks, without hashing. Each is the median of R
  alternating runs on fresh files; batch_vs_raw is the ratio of the medians. The *_cpu_us
  figures are process CPU time per event (both threads), steadier than wall time on a
  shared machine.
* concurrent_events_per_s: many tasks each awaiting Journal.append (group commit at work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gated.ids import new_event_id
from gated.journal import Journal
from gated.journal.rows import ACCESS_COLUMNS, prepare
from gated.journal.schema import connect, migrate
from gated.model import AccessEvent

MAX_BATCH = 256
_RAW_SQL = (f"INSERT INTO access_logs ({', '.join(ACCESS_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(ACCESS_COLUMNS))})")


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


def _raw_rows(n: int, first_seq: int = 1) -> list[tuple[Any, ...]]:
    # Comparable rows: the journal's own prepared columns, with a placeholder chain.
    rows = []
    for i in range(n):
        _, row = prepare(_event(i))
        row.update(seq=first_seq + i, prev_hash="0" * 64, row_hash="f" * 64, synced_at=None)
        rows.append(tuple(row[c] for c in ACCESS_COLUMNS))
    return rows


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _raw_conn(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    migrate(conn)
    return conn


async def _single(root: Path, n: int, rounds: int) -> dict[str, list[float]]:
    """Alternate segments of journal appends, raw commits and bare thread hops."""
    journal = await Journal.open(root / "single.sqlite3", max_batch=MAX_BATCH)
    raw = _raw_conn(root / "raw_single.sqlite3")
    raw_rows = _raw_rows(n)
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def answer() -> None:  # the same kind of hop the journal's writer thread makes
        while (future := jobs.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    hops = threading.Thread(target=answer, daemon=True)
    hops.start()
    await journal.append(_event(0))  # warm up
    times: dict[str, list[float]] = {"journal": [], "raw": [], "hop": []}
    per_round = max(1, n // rounds)
    for r in range(rounds):
        for i in range(r * per_round, (r + 1) * per_round):
            event = _event(i)
            start = time.perf_counter()
            await journal.append(event)
            times["journal"].append((time.perf_counter() - start) * 1000)
        for i in range(r * per_round, (r + 1) * per_round):
            start = time.perf_counter()
            raw.execute(_RAW_SQL, raw_rows[i])  # autocommit: one transaction, one WAL fsync
            times["raw"].append((time.perf_counter() - start) * 1000)
        for _ in range(per_round):
            start = time.perf_counter()
            future = loop.create_future()
            jobs.put(future)
            await future
            times["hop"].append((time.perf_counter() - start) * 1000)
    jobs.put(None)
    hops.join()
    raw.close()
    await journal.close()
    return times


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def _batched(path: Path, n: int) -> tuple[float, float]:
    """(wall s, cpu s) of one Journal.append_many of n events on a fresh file."""
    events = [_event(i) for i in range(n)]

    async def run() -> tuple[float, float]:
        journal = await Journal.open(path, max_batch=MAX_BATCH)
        cpu, wall = time.process_time(), time.perf_counter()
        await journal.append_many(events)
        figures = time.perf_counter() - wall, time.process_time() - cpu
        await journal.close()
        return figures

    return asyncio.run(run())


def _raw(path: Path, n: int) -> tuple[float, float]:
    """(wall s, cpu s) of inserting n prepared rows with executemany, chunked like the journal."""
    conn = _raw_conn(path)
    rows = _raw_rows(n)

    def run() -> None:
        for chunk in range(0, n, MAX_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_RAW_SQL, rows[chunk:chunk + MAX_BATCH])
            conn.execute("COMMIT")

    figures = _timed(run)
    conn.close()
    return figures


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


def main() -> None:
    """Run the measurements and print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=None, help="directory for the benchmark databases")
    parser.add_argument("--single", type=int, default=500, help="sequential durable appends")
    parser.add_argument("--batch", type=int, default=10_000, help="batched appends")
    parser.add_argument("--producers", type=int, default=64, help="concurrent producers")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="gated-bench-") as tmp:
        root = Path(tmp)
        single = asyncio.run(_single(root, args.single, args.rounds))
        batch: list[tuple[float, float]] = []
        raw: list[tuple[float, float]] = []
        for r in range(max(1, args.rounds // 2 + 1)):
            batch.append(_batched(root / f"batch{r}.sqlite3", args.batch))
            raw.append(_raw(root / f"raw{r}.sqlite3", args.batch))
        concurrent_rate = asyncio.run(
            _concurrent(root / "concurrent.sqlite3", args.batch, args.producers))
    batch_rate = args.batch / statistics.median(w for w, _ in batch)
    raw_rate = args.batch / statistics.median(w for w, _ in raw)
    batch_cpu = statistics.median(c for _, c in batch) / args.batch * 1e6
    raw_cpu = statistics.median(c for _, c in raw) / args.batch * 1e6
    figures = {
        "append_p50_ms": round(statistics.median(single["journal"]), 3),
        "append_p99_ms": round(_pct(single["journal"], 0.99), 3),
        "append_max_ms": round(max(single["journal"]), 3),
        "raw_single_commit_p50_ms": round(statistics.median(single["raw"]), 3),
        "raw_single_commit_p99_ms": round(_pct(single["raw"], 0.99), 3),
        "thread_hop_p50_ms": round(statistics.median(single["hop"]), 3),
        "batch_events_per_s": round(batch_rate),
        "raw_sqlite_events_per_s": round(raw_rate),
        "batch_vs_raw": round(batch_rate / raw_rate, 3),
        "batch_cpu_us_per_event": round(batch_cpu, 1),
        "raw_cpu_us_per_event": round(raw_cpu, 1),
        "concurrent_events_per_s": round(concurrent_rate),
        "concurrent_producers": args.producers,
        "synchronous": "FULL",
        "journal_mode": "wal",
        "max_batch": MAX_BATCH,
        "single_appends": len(single["journal"]),
        "batched_appends": args.batch,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
