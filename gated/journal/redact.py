"""`gated journal redact --plate P | --resident ID`: lawful erasure from the command line.

Finds the access rows of a plate (as typed and normalised, the form the lanes journal)
or of a resident, clears their personal fields through the journal's one erasure path
(`Journal.erase_personal`: plate, visitor name and the per-row salt, in one transaction
with the chained `personal_data_erased` record), then deletes their snapshot files. The
chain still verifies: personal text is not hashed, its salted digest is and stays.

The record names what was erased (seqs, event ids, snapshot SHA-256s) but never the
plate itself. It is an audit row like any other, so the sync uplink sends it upstream as
its own CloudEvent; the service clears the same rows and pictures (docs/protocol.md §3).
Safe while the daemon runs: the journal takes a second writer (the chain head is
re-read inside the write lock).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gated import unix_user
from gated.errors import GatedError, JournalError
from gated.journal.journal import Journal
from gated.journal.privacy import ACTION
from gated.model import AuditEvent, SiteIdentity
from gated.plates import normalise
from gated.snapshots import SnapshotStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Redaction:
    """What one redaction erased and the seq of the audit row recording it."""

    erased_seqs: tuple[int, ...]
    snapshots_removed: int
    snapshot_bytes: int
    audit_seq: int


async def redact(journal: Journal, snapshots: SnapshotStore | None,
                 build_request: Callable[[dict[str, object]], AuditEvent], *,
                 plate: str | None = None, resident_id: str | None = None) -> Redaction:
    """Erase the personal fields and snapshots of one plate's or one resident's events.

    `build_request(metadata)` makes the audit record of the request (who asked, why);
    the metadata handed to it already lists the event ids and snapshot hashes erased.
    """
    if (plate is None) == (resident_id is None):
        raise JournalError("redact: give exactly one of a plate or a resident id")
    plates: list[str] = []
    key: str | None = None
    if plate is not None:
        plate = plate.strip()
        if not plate:
            raise JournalError("redact: the plate is empty")
        try:
            key = normalise(plate) or plate
            plates = sorted({plate, key})
        except GatedError as err:
            raise JournalError(f"redact: {err}") from err
    if resident_id is not None and not resident_id.strip():
        raise JournalError("redact: the resident id is empty")
    matches = await journal.access_matching(plates=plates, resident_id=resident_id)
    metadata: dict[str, object] = {
        "selector": "plate" if plate is not None else "resident",
        "event_ids": [m["event_id"] for m in matches],
        "snapshot_sha256": sorted({m["snapshot_sha256"] for m in matches
                                   if m["snapshot_sha256"]}),
    }
    request = build_request(metadata)
    # The plate text goes to the writer as the match key (rows that arrive between the
    # read above and the erasure are caught by it) and is never stored in the record.
    erasure = await journal.erase_personal(
        request, plate=key,
        event_ids=[m["event_id"] for m in matches])
    removed = freed = 0
    if snapshots is not None:
        for m in matches:
            if m["snapshot_path"]:
                gone = snapshots.remove([m["snapshot_path"]])
                if gone:
                    removed += 1
                    freed += gone
    log.info("redacted %d row(s), %d snapshot(s); recorded as seq %d",
             len(erasure.erased_seqs), removed, erasure.audit_seq)
    return Redaction(erasure.erased_seqs, removed, freed, erasure.audit_seq)


async def _redact_cli(journal_path: str, snapshot_dir: str, identity: SiteIdentity,
                      plate: str | None, resident_id: str | None, reason: str) -> Redaction:
    from gated.audit import Auditor

    journal = await Journal.open(journal_path)
    try:
        auditor = Auditor(journal.append, identity)
        snapshots = SnapshotStore(snapshot_dir, 1) if snapshot_dir else None

        def build(metadata: dict[str, object]) -> AuditEvent:
            return auditor.build(ACTION, "person", actor_type="local_user",
                                 actor_id=unix_user.name_of(), resource_id=resident_id,
                                 metadata={**metadata, "reason": reason})

        return await redact(journal, snapshots, build, plate=plate, resident_id=resident_id)
    finally:
        await journal.close()


def run_cli(*, journal_path: str, snapshot_dir: str, identity: SiteIdentity,
            plate: str | None, resident_id: str | None, reason: str) -> int:
    """`gated journal redact`: erase, print one line, return the exit status."""
    if not Path(journal_path).is_file():
        print(f"gated: no journal at {journal_path}", file=sys.stderr)
        return 66
    try:
        # No snapshot folder: nothing to delete beside the rows.
        folder = snapshot_dir if Path(snapshot_dir).is_dir() else ""
        done = asyncio.run(_redact_cli(journal_path, folder, identity, plate,
                                       resident_id, reason))
    except GatedError as err:
        print(f"gated: {err}", file=sys.stderr)
        return 1
    print(f"redacted {len(done.erased_seqs)} row(s) and {done.snapshots_removed} snapshot(s) "
          f"({done.snapshot_bytes} bytes); recorded as audit seq {done.audit_seq} "
          f"({ACTION}), sent upstream with the next sync")
    return 0
