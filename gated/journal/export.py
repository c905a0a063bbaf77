"""Journal export (JSON Lines or CSV) and statistics, for `gated journal export|stats`.

Synchronous and read-only; rows stream in seq order so memory does not grow with the
journal. The per-row salt never leaves the device; digests and hashes do (they let a
receiver check the chain).
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal, TextIO

import msgspec

from gated.errors import JournalError
from gated.journal.rows import COLUMNS, JSON_COLUMNS, TABLES
from gated.journal.schema import iter_rows

ExportFormat = Literal["jsonl", "csv"]
ExportStream = Literal["access", "audit", "all"]

# CSV cells starting with these are run as formulas by spreadsheet programs; plate text
# comes from cameras and must not become a formula on an operator's laptop.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise JournalError(f"no journal at {path}")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise JournalError(f"cannot open {path}: {err}") from err


def _csv_columns(stream: ExportStream) -> list[str]:
    streams = list(TABLES) if stream == "all" else [stream]
    columns = ["stream", "created_at_utc"]
    for s in streams:
        columns += [c for c in COLUMNS[s] if c != "pii_salt" and c not in columns]
    return columns


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def _rows(conn: sqlite3.Connection, since: float | None,
          stream: ExportStream) -> Iterator[tuple[str, dict[str, Any]]]:
    where, params = ("WHERE created_at >= ?", (float(since),)) if since is not None else ("", ())
    for name, row in iter_rows(conn, where, params):
        if stream in ("all", name):
            del row["pii_salt"]
            row["created_at_utc"] = _utc(row["created_at"])
            yield name, row


def _safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export(path: str | os.PathLike[str], out: str | os.PathLike[str] | TextIO, *,
           since: float | None = None, fmt: ExportFormat = "jsonl",
           stream: ExportStream = "all") -> int:
    """Write rows (created_at >= since) of a stream to `out`; return how many were written."""
    if fmt not in ("jsonl", "csv"):
        raise JournalError(f"format: expected jsonl or csv, got {fmt!r}")
    if stream not in ("access", "audit", "all"):
        raise JournalError(f"stream: expected access, audit or all, got {stream!r}")
    conn = _connect(path)
    count = 0
    with ExitStack() as stack:
        stack.callback(conn.close)
        if isinstance(out, io.TextIOBase) or hasattr(out, "write"):
            sink: TextIO = out  # type: ignore[assignment]
        else:
            try:
                sink = stack.enter_context(open(out, "w", encoding="utf-8", newline=""))
            except OSError as err:
                raise JournalError(f"cannot write {out}: {err}") from err
        encoder = msgspec.json.Encoder(order="sorted")
        writer = None
        if fmt == "csv":
            writer = csv.DictWriter(sink, fieldnames=_csv_columns(stream), extrasaction="ignore")
            writer.writeheader()
        try:
            for name, row in _rows(conn, since, stream):
                row["stream"] = name
                if writer is not None:
                    writer.writerow({k: _safe_cell(v) for k, v in row.items()})
                else:
                    for col in JSON_COLUMNS:
                        if row.get(col) is not None:
                            row[col] = msgspec.json.decode(row[col])
                    sink.write(encoder.encode(row).decode() + "\n")
                count += 1
        except sqlite3.Error as err:
            raise JournalError(f"cannot read the journal: {err}") from err
    return count


def _dir_usage(directory: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            if name.endswith(".jpg"):
                try:
                    size += (Path(root) / name).stat().st_size
                    files += 1
                except OSError:
                    continue  # removed while we walked
    return files, size


def stats(path: str | os.PathLike[str], snapshot_dir: str | os.PathLike[str] | None = None,
          *, now: float | None = None) -> dict[str, Any]:
    """Counts per table and event_type, oldest unsynced (seq, age), file sizes, snapshots."""
    now = time.time() if now is None else now
    db = Path(path)
    conn = _connect(db)
    try:
        result: dict[str, Any] = {"path": str(db)}
        for stream, table in TABLES.items():
            count, head = conn.execute(f"SELECT count(*), max(seq) FROM {table}").fetchone()
            unsynced = conn.execute(
                f"SELECT count(*) FROM {table} WHERE synced_at IS NULL").fetchone()[0]
            oldest = conn.execute(f"SELECT seq, created_at FROM {table} WHERE synced_at IS NULL "
                                  "ORDER BY seq LIMIT 1").fetchone()
            result[stream] = {
                "rows": count, "head_seq": head, "unsynced": unsynced,
                "oldest_unsynced_seq": oldest[0] if oldest else None,
                "oldest_unsynced_age_s": round(now - oldest[1], 3) if oldest else None,
            }
        result["access"]["by_event_type"] = dict(conn.execute(
            "SELECT event_type, count(*) FROM access_logs GROUP BY event_type").fetchall())
        result["audit"]["by_action"] = dict(conn.execute(
            "SELECT action, count(*) FROM audit_logs GROUP BY action").fetchall())
        result["checkpoint_seq"] = conn.execute(
            "SELECT seq FROM journal_checkpoint WHERE id = 1").fetchone()[0]
        result["schema_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as err:
        raise JournalError(f"cannot read the journal: {err}") from err
    finally:
        conn.close()
    wal = db.with_name(db.name + "-wal")
    result["db_bytes"] = db.stat().st_size
    result["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    if snapshot_dir is not None:
        files, size = _dir_usage(Path(snapshot_dir))
        result["snapshots"] = {"files": files, "bytes": size}
    return result
