"""Devices' lawful erasures applied to what the service stores (`gated central erasures`).

A device that erases personal data (`gated journal redact`, unknown plates forgotten after
their time) journals a `personal_data_erased` audit row and syncs it upstream like any row
(docs/protocol.md section 3). Its metadata lists the erased seqs (`journal.erased_seqs`),
and for a redaction the event ids and the SHA-256 of the pictures the device deleted.

This owner-run job clears, for that tenant and device only, exactly what the edge clears
(access rows: vehicle_plate and visitor_name; audit rows: ip_address and user_agent), keeps
every hashed column (the salted digests, snapshot_sha256, prev_hash, row_hash), so the
witness's chain and every row_hash still verify, deletes the tenant's listing of the
pictures no other of its rows names, deletes the stored object once no tenant lists it,
and records what it did as an audit row of the tenant (origin service).

Why an owner job and not a SECURITY DEFINER function called by ingest: the service role
keeps no way at all to change a stored event row, so a bug or a compromise of the
internet-facing ingest cannot rewrite history; the job's writes run one tenant per
transaction under the same row-level security as the service's; and erasure is not
latency-critical (a systemd timer every few minutes is ample against the law's month).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gated.central.snapshots import SHA256, SnapshotStore

log = logging.getLogger("gated.central.erasure")

ACTION = "personal_data_erased"
ERASED_KEY = "journal.erased_seqs"
MAX_ITEMS = 100_000  # an erasure names at most 5000 rows per pass on the edge; far above
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# the service's audit rows of applied erasures get ids derived from the device row's
_NAMESPACE = uuid.UUID("5b0f2d0e-8f3b-4d55-9a57-2f7c3c1e9a10")


@dataclass(frozen=True)
class Applied:
    """What applying one device erasure row did."""

    tenant_id: str
    device_id: str
    event_id: str
    access_rows: int
    audit_rows: int
    listings_removed: int
    objects_removed: int
    ignored: int  # entries of the metadata that were not a seq, an event id or a hash


def _tenant(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))


def _scan(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT set_config('gated.lookup', 'erasures', true)")


def targets(metadata: Any) -> tuple[list[int], list[str], list[str], int]:
    """The seqs, event ids and picture hashes an erasure row names, and how many entries
    were refused (a device's metadata is input like any other: only well-formed entries
    are acted on)."""
    meta = metadata if isinstance(metadata, dict) else {}
    ignored = 0

    def listed(key: str) -> list[Any]:
        nonlocal ignored
        value = meta.get(key, [])
        if not isinstance(value, list):
            ignored += 1
            return []
        if len(value) > MAX_ITEMS:
            ignored += len(value) - MAX_ITEMS
        return value[:MAX_ITEMS]

    seqs: set[int] = set()
    for seq in listed(ERASED_KEY):
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**63:
            seqs.add(seq)
        else:
            ignored += 1
    ids: set[str] = set()
    for event_id in listed("event_ids"):
        if isinstance(event_id, str) and _UUID.match(event_id.lower()):
            ids.add(event_id.lower())
        else:
            ignored += 1
    shas: set[str] = set()
    for sha in listed("snapshot_sha256"):
        if isinstance(sha, str) and SHA256.match(sha):
            shas.add(sha)
        else:
            ignored += 1
    return sorted(seqs), sorted(ids), sorted(shas), ignored


def pending(conn: psycopg.Connection[Any], limit: int = 100) -> list[tuple[str, str, str, Any]]:
    """Device erasure rows not applied yet, oldest first: (tenant, event id, device, metadata)."""
    with conn.transaction():
        _scan(conn)
        rows = conn.execute(
            "SELECT a.tenant_id, a.event_id::text, a.device_id, a.metadata FROM audit_logs a "
            "WHERE a.action = %s AND a.origin = 'device' AND a.device_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM erasures_applied e WHERE e.tenant_id = a.tenant_id "
            "AND e.event_id = a.event_id) ORDER BY a.created_at, a.event_id LIMIT %s",
            (ACTION, limit)).fetchall()
    return [(str(t), str(e), str(d), m) for t, e, d, m in rows]


def apply_one(conn: psycopg.Connection[Any], tenant_id: str, event_id: str, device_id: str,
              metadata: Any, instance: str = "central") -> tuple[Applied, list[str]]:
    """Clear the named rows of one tenant's device and record it, in one transaction.

    Returns what was done and the store paths whose listing was removed (their objects are
    deleted by `delete_objects` once no tenant lists them).
    """
    seqs, ids, shas, ignored = targets(metadata)
    match = ("tenant_id = %(t)s AND device_id = %(d)s "
             "AND (seq = ANY(%(seqs)s) OR event_id = ANY(%(ids)s::uuid[]))")
    params = {"t": tenant_id, "d": device_id, "seqs": seqs, "ids": ids}
    with conn.transaction():
        _tenant(conn, tenant_id)
        # the device row itself, re-read under the tenant: it must exist and be this device's
        if conn.execute("SELECT 1 FROM audit_logs WHERE tenant_id = %s AND event_id = %s "
                        "AND device_id = %s AND action = %s AND origin = 'device'",
                        (tenant_id, event_id, device_id, ACTION)).fetchone() is None:
            raise LookupError(f"{tenant_id}: no erasure row {event_id} of {device_id}")
        access_rows = conn.execute(
            "UPDATE access_logs SET vehicle_plate = NULL, visitor_name = NULL "
            f"WHERE {match} AND (vehicle_plate IS NOT NULL OR visitor_name IS NOT NULL)",
            params).rowcount
        audit_rows = conn.execute(
            "UPDATE audit_logs SET ip_address = NULL, user_agent = NULL "
            f"WHERE {match} AND origin = 'device' "
            "AND (ip_address IS NOT NULL OR user_agent IS NOT NULL)", params).rowcount
        # pictures: those the erasure names and those of the rows it erased
        named = {str(s) for (s,) in conn.execute(
            f"SELECT DISTINCT snapshot_sha256 FROM access_logs WHERE {match} "
            "AND snapshot_sha256 IS NOT NULL", params).fetchall()}
        candidates = sorted(named | set(shas))
        # a picture another row of this tenant names (not erased by this request) is kept
        removed = conn.execute(
            "DELETE FROM snapshots s WHERE s.tenant_id = %(t)s AND s.sha256 = ANY(%(shas)s) "
            "AND NOT EXISTS (SELECT 1 FROM access_logs a WHERE a.tenant_id = s.tenant_id "
            "AND a.snapshot_sha256 = s.sha256 AND NOT (a.device_id = %(d)s "
            "AND (a.seq = ANY(%(seqs)s) OR a.event_id = ANY(%(ids)s::uuid[])))) "
            "RETURNING s.path", {**params, "shas": candidates}).fetchall()
        paths = sorted(str(p) for (p,) in removed)
        conn.execute(
            "INSERT INTO erasures_applied (tenant_id, event_id, device_id, access_rows,"
            " audit_rows, removed_paths) VALUES (%s, %s, %s, %s, %s, %s)",
            (tenant_id, event_id, device_id, access_rows, audit_rows, paths))
        # the tenant's own audit trail says what the service did; never a plate
        conn.execute(
            "INSERT INTO audit_logs (event_id, tenant_id, action, resource_type, resource_id,"
            " actor_id, actor_type, status, metadata, created_at, device_id, origin)"
            " VALUES (%s, %s, %s, 'device', %s, %s, 'system', %s, %s, now(), %s, 'service')",
            (uuid.uuid5(_NAMESPACE, f"{tenant_id}/{event_id}"), tenant_id, ACTION, device_id,
             f"gated-central:{instance}", "partial" if ignored else "success",
             Jsonb({"applies": event_id, "erased_seqs": len(seqs), "event_ids": len(ids),
                    "access_rows": access_rows, "audit_rows": audit_rows,
                    "snapshot_sha256": sorted(p.rsplit("/", 1)[-1] for p in paths),
                    "ignored_entries": ignored}),
             device_id))
    return Applied(tenant_id, device_id, event_id, access_rows, audit_rows, len(paths), 0,
                   ignored), paths


def delete_objects(conn: psycopg.Connection[Any], store: SnapshotStore | None,
                   tenant_id: str, event_id: str, paths: Sequence[str]) -> int:
    """Delete the objects of `paths` that no tenant lists any more; mark the erasure done.

    A picture is stored once for every tenant that uploaded it: another tenant's listing
    keeps the object. Store errors propagate (the next run tries again).
    """
    gone = 0
    with conn.transaction():
        _scan(conn)
        listed = {str(p) for (p,) in conn.execute(
            "SELECT DISTINCT path FROM snapshots WHERE path = ANY(%s)", (list(paths),)
        ).fetchall()}
    for path in paths:
        if path not in listed and store is not None and store.remove(path):
            gone += 1
    with conn.transaction():
        _tenant(conn, tenant_id)
        conn.execute("UPDATE erasures_applied SET objects_done = true "
                     "WHERE tenant_id = %s AND event_id = %s", (tenant_id, event_id))
    return gone


def unfinished(conn: psycopg.Connection[Any]) -> list[tuple[str, str, list[str]]]:
    """Applied erasures whose objects were not deleted yet: (tenant, event id, paths)."""
    with conn.transaction():
        _scan(conn)
        rows = conn.execute("SELECT tenant_id, event_id::text, removed_paths FROM "
                            "erasures_applied WHERE NOT objects_done").fetchall()
    return [(str(t), str(e), list(p)) for t, e, p in rows]


def run(conn: psycopg.Connection[Any], store: SnapshotStore | None,
        instance: str = "central", batch: int = 100) -> list[Applied]:
    """Apply every pending device erasure, then delete the objects nobody lists any more.

    `conn` is the owner role's autocommit connection. Idempotent: an applied erasure is
    recorded and never applied twice; a run stopped midway finishes on the next one.
    """
    done: list[Applied] = []
    while True:
        todo = pending(conn, batch)
        for tenant_id, event_id, device_id, metadata in todo:
            applied, _ = apply_one(conn, tenant_id, event_id, device_id, metadata, instance)
            done.append(applied)
            log.info("tenant %s device %s: erasure %s cleared %d access and %d audit row(s), "
                     "%d picture listing(s)", tenant_id, device_id, event_id,
                     applied.access_rows, applied.audit_rows, applied.listings_removed)
        if len(todo) < batch:
            break
    objects: dict[tuple[str, str], int] = {}
    for tenant_id, event_id, paths in unfinished(conn):
        objects[(tenant_id, event_id)] = delete_objects(conn, store, tenant_id, event_id,
                                                        paths)
    return [Applied(a.tenant_id, a.device_id, a.event_id, a.access_rows, a.audit_rows,
                    a.listings_removed, objects.get((a.tenant_id, a.event_id), 0), a.ignored)
            for a in done]
