"""Full verification of a journal file: the hash chain, erasures and the retention checkpoint.

Synchronous and read-only, for `gated journal verify [--db PATH]`; safe while the daemon
runs (WAL readers do not block the writer). Memory stays bounded: rows stream in seq order.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gated.journal import (
    ERASED_KEY,
    GENESIS,
    PRUNED_HASH_KEY,
    PRUNED_SEQ_KEY,
    check_row,
    is_erased,
    iter_rows,
)

_TRIGGERS = (
    "access_logs_append_only_update", "access_logs_append_only_delete",
    "audit_logs_append_only_update", "audit_logs_append_only_delete",
    "access_logs_seq_unique", "audit_logs_seq_unique",
    "journal_checkpoint_forward", "journal_checkpoint_keep",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of a full verification; `message` is one line for people, `exit_code` for the CLI."""

    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_seq: int = 0
    checkpoint_seq: int = 0
    erased_rows: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """0 when intact, 1 otherwise."""
        return 0 if self.ok else 1

    @property
    def message(self) -> str:
        """One line naming the first bad seq, or summarising an intact chain."""
        if not self.ok:
            where = f"seq {self.first_bad_seq}" if self.first_bad_seq is not None else "journal"
            return f"journal NOT intact: {where}: {self.problem} ({self.rows} rows checked)"
        span = (f"seq {self.checkpoint_seq + 1}..{self.head_seq}" if self.rows else "empty")
        text = f"journal intact: {self.rows} rows ({span}), {self.erased_rows} lawfully erased"
        if self.warnings:
            text += "; warnings: " + "; ".join(self.warnings)
        return text


def _open_ro(path: Path) -> sqlite3.Connection:
    # mode=ro: verification must never create or modify the file it examines.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def verify(path: str | os.PathLike[str], *, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Walk the whole chain and report the FIRST bad seq and what is wrong with it.

    Detects edits of any hashed or personal column, deletions, insertions and
    reordering; erasures not documented by a chained erasure record; a checkpoint
    that does not match the last chained retention record. `anchor` (seq, row_hash),
    e.g. what the upstream acknowledged, must be present unless pruned: this is what
    exposes a rebuilt or truncated tail.
    """
    path = Path(path)
    if not path.is_file():
        return VerifyResult(False, 0, problem=f"no journal at {path}")
    try:
        conn = _open_ro(path)
    except sqlite3.Error as err:
        return VerifyResult(False, 0, problem=f"cannot open {path}: {err}")
    try:
        return _walk(conn, anchor)
    except (sqlite3.Error, KeyError, TypeError, ValueError) as err:
        return VerifyResult(False, 0, problem=f"cannot read the journal: {err}")
    finally:
        conn.close()


def _walk(conn: sqlite3.Connection, anchor: tuple[int, str] | None) -> VerifyResult:
    cp_seq, cp_hash = conn.execute(
        "SELECT seq, row_hash FROM journal_checkpoint WHERE id = 1").fetchone()
    expect_seq, expect_prev = cp_seq + 1, cp_hash
    rows = erased_count = 0
    erased: set[int] = set()
    documented: set[int] = set()
    last_prune: tuple[int, str] | None = None
    anchor_seen = anchor is None or anchor[0] <= cp_seq
    for stream, row in iter_rows(conn):
        seq = row["seq"]
        problem = check_row(stream, row, expect_seq, expect_prev)
        if problem:
            first = seq if isinstance(seq, int) and seq <= expect_seq else expect_seq
            return VerifyResult(False, rows, first, problem, checkpoint_seq=cp_seq)
        rows += 1
        if is_erased(stream, row):
            erased.add(seq)
            erased_count += 1
        meta_text = row["metadata"]
        if stream == "audit" and "journal." in meta_text:
            meta = msgspec.json.decode(meta_text)
            if isinstance(meta, dict):
                if ERASED_KEY in meta and isinstance(meta[ERASED_KEY], list):
                    documented.update(s for s in meta[ERASED_KEY] if isinstance(s, int))
                if PRUNED_SEQ_KEY in meta:
                    last_prune = (meta[PRUNED_SEQ_KEY], meta.get(PRUNED_HASH_KEY))
        if anchor is not None and seq == anchor[0]:
            if row["row_hash"] != anchor[1]:
                return VerifyResult(False, rows, seq, "row_hash differs from the anchor: "
                                    "the chain was rebuilt", checkpoint_seq=cp_seq)
            anchor_seen = True
        # Erasure records come after the rows they erased; check each row when passed.
        expect_seq, expect_prev = seq + 1, row["row_hash"]
    undocumented = sorted(erased - documented)
    if undocumented:
        return VerifyResult(False, rows, undocumented[0],
                            "personal fields cleared without a chained erasure record",
                            checkpoint_seq=cp_seq)
    if cp_seq == 0 and cp_hash != GENESIS:
        return VerifyResult(False, rows, 1, "checkpoint hash changed", checkpoint_seq=cp_seq)
    if (cp_seq, cp_hash) != (last_prune or (0, GENESIS)):
        return VerifyResult(False, rows, cp_seq + 1, "checkpoint does not match the last chained "
                            "retention record: rows were deleted from the start",
                            checkpoint_seq=cp_seq)
    if not anchor_seen:
        assert anchor is not None
        return VerifyResult(False, rows, anchor[0], "anchored row is missing: the tail was "
                            "truncated", checkpoint_seq=cp_seq)
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    missing = [t for t in _TRIGGERS if t not in names]
    warnings = (f"append-only triggers missing: {', '.join(missing)}",) if missing else ()
    return VerifyResult(True, rows, head_seq=expect_seq - 1, checkpoint_seq=cp_seq,
                        erased_rows=erased_count, warnings=warnings)
