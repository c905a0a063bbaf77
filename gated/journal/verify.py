"""Full verification of a journal file: the hash chain, erasures, the retention checkpoint and
the append-only triggers; and the chain's head, the value an outside anchor records.

Synchronous and read-only, for `gated journal verify|head [--db PATH]`; safe while the daemon
runs (WAL readers do not block the writer). Memory stays bounded: rows stream in seq order.

Three outcomes, three exit codes: intact (0); verified and NOT intact (1); cannot verify
(66: no file, not a journal, unreadable, a schema this gated does not know).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gated.errors import JournalError
from gated.file_modes import replace_private
from gated.journal.rows import (
    ERASED_KEY,
    GENESIS,
    PRUNED_HASH_KEY,
    PRUNED_SEQ_KEY,
    check_row,
    is_erased,
)
from gated.journal.schema import HEAD_SQL, iter_rows, trigger_problem
from gated.wording import plural

EXIT_INTACT = 0
EXIT_NOT_INTACT = 1
EXIT_CANNOT_VERIFY = 66  # sysexits EX_NOINPUT: the input is missing or unusable

_JOURNAL_TABLES = ("access_logs", "audit_logs", "journal_checkpoint")
_ANCHOR = re.compile(r"([0-9]{1,19}):([0-9a-fA-F]{64})")


class CannotVerifyError(JournalError):
    """The file is missing, unreadable or not a journal: nothing was verified."""


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
    cannot_verify: bool = False  # nothing was verified: the file is missing or not a journal
    trigger_problem: str | None = None  # triggers dropped, altered or added

    @property
    def exit_code(self) -> int:
        """0 intact, 1 verified and not intact, 66 cannot verify."""
        if self.cannot_verify:
            return EXIT_CANNOT_VERIFY
        return EXIT_INTACT if self.ok else EXIT_NOT_INTACT

    @property
    def message(self) -> str:
        """One line naming the first bad seq, or summarising an intact chain."""
        if self.cannot_verify:
            return f"journal cannot verify: {self.problem}"
        if not self.ok:
            found = []
            if self.problem is not None:
                where = f"seq {self.first_bad_seq}" if self.first_bad_seq is not None else "journal"
                found.append(f"{where}: {self.problem}")
            if self.trigger_problem is not None:
                found.append(self.trigger_problem)
            return f"journal NOT intact: {'; '.join(found)} ({plural(self.rows, 'row')} checked)"
        span = (f"seq {self.checkpoint_seq + 1}..{self.head_seq}" if self.rows else "empty")
        text = (
            f"journal intact: {plural(self.rows, 'row')} ({span}), "
            f"{self.erased_rows} lawfully erased"
        )
        if self.warnings:
            text += "; warnings: " + "; ".join(self.warnings)
        return text


def parse_anchor(text: str) -> tuple[int, str]:
    """`SEQ:HASH` (as `gated journal head` prints it) → (seq, lower-case hex row_hash)."""
    match = _ANCHOR.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise JournalError(
            f"anchor {text!r}: expected SEQ:HASH, a sequence number and a 64-digit hex row_hash "
            "(as `gated journal head` prints it)")
    return int(match.group(1)), match.group(2).lower()


COUNTERSIGNED_FILE_NAME = "countersigned-head.json"  # beside the journal (written by the daemon)


@dataclass(frozen=True, slots=True)
class Countersigned:
    """A chain head the service countersigned, and where it was found."""

    head: dict[str, Any]  # the countersignature as the service signed it (kid, sig included)
    where: str  # "journal row seq N" or the copy's path

    @property
    def anchor(self) -> tuple[int, str]:
        """(seq, row_hash) the chain must still contain."""
        return int(self.head["seq"]), str(self.head["row_hash"]).lower()


def countersigned_copy_path(journal_path: str | os.PathLike[str]) -> Path:
    """Where the daemon keeps its copy of the newest countersigned head."""
    return Path(journal_path).parent / COUNTERSIGNED_FILE_NAME


def save_countersigned_copy(journal_path: str | os.PathLike[str], head: dict[str, Any]) -> None:
    """Keep the newest countersigned head beside the journal (fsynced, renamed into place).

    The journal's own `head_countersigned` rows go when its tail is cut; this copy does not
    (unless it is removed too, which `verify --countersigned` then reports as no anchor).
    """
    target = countersigned_copy_path(journal_path)
    current = _read_copy(target)
    if current is not None and current.anchor[0] >= int(head["seq"]):
        return  # never step the anchor back
    replace_private(target, json.dumps(head, sort_keys=True).encode("utf-8") + b"\n")


def _head_shape(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    seq, row_hash = value.get("seq"), value.get("row_hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return None
    if not isinstance(row_hash, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", row_hash):
        return None
    return value


def _read_copy(path: Path) -> Countersigned | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise JournalError(f"{path}: not a countersigned head: {err}") from err
    head = _head_shape(value)
    if head is None:
        raise JournalError(f"{path}: not a countersigned head")
    return Countersigned(head, str(path))


def countersigned_heads(path: str | os.PathLike[str]) -> list[Countersigned]:
    """The newest countersigned head in the journal's `head_countersigned` rows, and the copy.

    At most two, newest (highest countersigned seq) first. Read, not verified: the caller
    checks each one's service signature (it holds the keys), then `verify(anchor=…)` with
    the newest. CannotVerifyError when there is no journal; JournalError for a broken copy.
    """
    path = Path(path)
    conn = _open_ro(path)
    found: Countersigned | None = None
    try:
        rows = conn.execute(
            "SELECT seq, new_values FROM audit_logs WHERE action = 'head_countersigned' "
            "ORDER BY seq")
        for seq, text in rows:
            try:
                head = _head_shape(json.loads(text)) if text else None
            except ValueError:
                head = None
            if head is not None and (found is None or head["seq"] > found.anchor[0]):
                found = Countersigned(head, f"journal row seq {seq}")
    except sqlite3.Error as err:
        raise CannotVerifyError(f"cannot read {path}: {err}") from err
    finally:
        conn.close()
    heads = [h for h in (found, _read_copy(countersigned_copy_path(path))) if h is not None]
    return sorted(heads, key=lambda h: h.anchor[0], reverse=True)


def _open_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection to a journal file; CannotVerifyError when it is none."""
    if not path.exists():
        raise CannotVerifyError(f"no journal at {path}")
    if not path.is_file():
        raise CannotVerifyError(f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise CannotVerifyError(f"cannot read {path}: permission denied")
    try:
        # mode=ro: verification must never create or modify the file it examines.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise CannotVerifyError(f"cannot open {path}: {err}") from err
    try:
        names = {n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as err:
        conn.close()
        raise CannotVerifyError(f"{path} is not a journal: {err}") from err
    if version == 0 and not names & set(_JOURNAL_TABLES):
        conn.close()
        raise CannotVerifyError(f"{path} is not a journal (no journal tables)")
    return conn


def read_head(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(seq, row_hash) of the chain's newest row; CannotVerifyError when there is no journal.

    Read, not verified: record it somewhere the device cannot rewrite, and check it
    later with `verify(anchor=...)`.
    """
    path = Path(path)
    conn = _open_ro(path)
    try:
        seq, digest = conn.execute(HEAD_SQL).fetchone()
    except (sqlite3.Error, TypeError) as err:
        raise CannotVerifyError(f"cannot read the head of {path}: {err}") from err
    finally:
        conn.close()
    return int(seq), str(digest)


def verify(path: str | os.PathLike[str], *, anchor: tuple[int, str] | None = None) -> VerifyResult:
    """Walk the whole chain and report the FIRST bad seq and what is wrong with it.

    Detects edits of any hashed or personal column, deletions, insertions and
    reordering; erasures not documented by a chained erasure record; a checkpoint
    that does not match the last chained retention record; append-only triggers
    dropped, altered or added. `anchor` (seq, row_hash), e.g. what the upstream
    acknowledged, must be present unless pruned: this is what exposes a rebuilt or
    truncated tail. `cannot_verify` is set when the file is missing or not a journal.
    """
    path = Path(path)
    try:
        conn = _open_ro(path)
    except CannotVerifyError as err:
        return VerifyResult(False, 0, problem=str(err), cannot_verify=True)
    try:
        try:
            triggers = trigger_problem(conn)
        except JournalError as err:  # a schema this gated does not know
            return VerifyResult(False, 0, problem=f"{path}: {err}", cannot_verify=True)
        result = _walk(conn, anchor)
    except (sqlite3.Error, KeyError, TypeError, ValueError) as err:
        result = VerifyResult(False, 0, problem=f"cannot read the journal: {err}")
    finally:
        conn.close()
    if triggers is None:
        return result
    return VerifyResult(False, result.rows, result.first_bad_seq, result.problem,
                        result.head_seq, result.checkpoint_seq, result.erased_rows,
                        result.warnings, trigger_problem=triggers)


def _walk(conn: sqlite3.Connection, anchor: tuple[int, str] | None) -> VerifyResult:
    cp_seq, cp_hash = conn.execute(
        "SELECT seq, row_hash FROM journal_checkpoint WHERE id = 1").fetchone()
    expect_seq, expect_prev = cp_seq + 1, cp_hash
    rows = erased_count = 0
    erased: set[int] = set()
    documented: set[int] = set()
    # As the record holds them (not coerced): a forged type must fail the comparison.
    last_prune: tuple[object, object] | None = None
    anchor_seen = anchor is None or anchor[0] <= cp_seq
    if anchor is not None and anchor[0] == cp_seq and anchor[1] != cp_hash:
        return VerifyResult(False, 0, cp_seq, "the retention checkpoint differs from the "
                            "anchor: the chain was rebuilt", checkpoint_seq=cp_seq)
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
    warnings: tuple[str, ...] = ()
    if anchor is not None and anchor[0] < cp_seq:
        warnings = (f"anchor seq {anchor[0]} was pruned by retention: not checked",)
    return VerifyResult(True, rows, head_seq=expect_seq - 1, checkpoint_seq=cp_seq,
                        erased_rows=erased_count, warnings=warnings)
