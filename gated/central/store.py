"""PostgreSQL storage of the central service: idempotent ingest, the witness, device health.

Every write runs in one transaction with the tenant set by set_config('gated.tenant_id', …,
true), as the service role (INSERT/SELECT only on the events, under forced row-level
security). Nothing is acknowledged before that transaction commits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from gated.central import witness

log = logging.getLogger("gated.central")

ACCESS_COLUMNS = (
    "event_id", "tenant_id", "event_type", "access_point", "direction", "resident_id",
    "visitor_name", "vehicle_plate", "authorization_method", "authorized_by",
    "confidence_score", "metadata", "created_at", "site_id", "device_id", "seq", "prev_hash",
    "row_hash", "clock_unsynced", "vehicle_plate_digest", "visitor_name_digest", "vehicle_id",
    "pass_id", "decision_reason", "rules_version", "snapshot_path", "snapshot_sha256",
    "snapshot_missing", "snapshot_state", "read_to_relay_ms", "captured_at", "gate_opened",
)
AUDIT_COLUMNS = (
    "event_id", "tenant_id", "action", "resource_type", "resource_id", "actor_id",
    "actor_type", "actor_role", "ip_address", "user_agent", "request_id", "old_values",
    "new_values", "metadata", "status", "error_message", "created_at", "duration_ms",
    "site_id", "device_id", "seq", "prev_hash", "row_hash", "clock_unsynced",
    "ip_address_digest", "user_agent_digest",
)
_TIMES = ("created_at", "captured_at")
# Events are COPYed into a temporary staging table of the session (COPY into the event
# tables themselves is refused under row-level security), then one statement inserts the
# new ids into event_ids and, for exactly those, the rows into the stream's table. A staged
# row leads with event_id and device_id; its times are the device's epoch seconds, turned
# into timestamps by PostgreSQL (cheaper than formatting them in Python, and an impossible
# time is a refused event instead of an exception); `chain` is the witness's verdict at
# insert. ON COMMIT DELETE ROWS and IF NOT EXISTS in every transaction: nothing staged
# outlives its transaction, so this is safe behind a transaction-pooling pooler too.
_STAGE_LEAD = ("event_id", "device_id", "created_at", "seq", "prev_hash", "row_hash")
# the columns taken from an event's data; access rows add snapshot_state (from the envelope)
_DATA_COLUMNS = {
    stream: _STAGE_LEAD + tuple(c for c in cols if c not in (*_STAGE_LEAD, "snapshot_state"))
    for stream, cols in (("access", ACCESS_COLUMNS), ("audit", AUDIT_COLUMNS))
}
_STAGE_COLUMNS = {"access": (*_DATA_COLUMNS["access"], "snapshot_state"),
                  "audit": _DATA_COLUMNS["audit"]}
# positions in a staged row of the JSON columns, encoded before COPY
_FIX_JSON = {stream: [cols.index(c) for c in ("metadata", "old_values", "new_values")
                      if c in cols] for stream, cols in _STAGE_COLUMNS.items()}
_PICK = {stream: operator.itemgetter(*cols) for stream, cols in _DATA_COLUMNS.items()}
_JSON = msgspec.json.Encoder()


def _stage_row(stream: str, event: Mapping[str, Any], data: Mapping[str, Any]) -> list[Any]:
    """An event's values in its stream's staging column order, ready for COPY."""
    try:  # every column present (what current devices send): one C-level lookup
        row = list(_PICK[stream](data))
    except KeyError:
        row = [data.get(name) for name in _DATA_COLUMNS[stream]]
    row[0] = event["id"].lower()
    for at in _FIX_JSON[stream]:
        if row[at] is not None:
            row[at] = _JSON.encode(row[at]).decode("utf-8")
    if stream == "access":
        row.append(event.get("gatedsnapshot"))
    return row


@dataclass(frozen=True)
class _Staging:
    """The staging statements, built from the event tables' columns as the database has them."""

    create: tuple[str, ...]  # each stream's CREATE TEMP TABLE IF NOT EXISTS
    copy: dict[str, str]
    move: dict[str, str]


def _staging(conn: psycopg.Connection[Any]) -> _Staging:
    """Read the event tables' column types and build the staging statements."""
    creates, copies, moves = [], {}, {}
    for stream, cols in _STAGE_COLUMNS.items():
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"{stream}_logs",)).fetchall())
        columns = ", ".join(f"{c} {'float8' if c in _TIMES else types[c]}" for c in cols)
        # named after its layout, so a session that staged for an older schema never reuses
        # a table of the wrong shape
        name = f"gated_stage_{stream}_{hashlib.sha256(columns.encode()).hexdigest()[:8]}"
        creates.append(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns}, chain text NOT NULL)"
                       " ON COMMIT DELETE ROWS")
        copies[stream] = f"COPY {name} ({', '.join(cols)}, chain) FROM STDIN"
        picks = ", ".join(f"to_timestamp(s.{c})" if c in _TIMES else f"s.{c}" for c in cols)
        moves[stream] = (
            "WITH new AS (INSERT INTO event_ids (tenant_id, event_id, device_id, stream, seq,"
            " prev_hash, row_hash, created_at, chain) SELECT tenant_id, event_id, device_id,"
            f" '{stream}', seq, prev_hash, row_hash, to_timestamp(created_at), chain FROM {name}"
            " ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING event_id, device_id),"
            f" kept AS (INSERT INTO {stream}_logs ({', '.join(cols)}) SELECT {picks} FROM {name} s"
            " JOIN new ON new.event_id = s.event_id AND new.device_id = s.device_id)"
            " SELECT event_id::text, device_id FROM new")
    return _Staging(tuple(creates), copies, moves)


def _copy_staged(conn: psycopg.Connection[Any], staging: _Staging, stream: str,
                 rows: list[list[Any]], linked: set[str]) -> None:
    """COPY one stream's rows into its staging table, each with its chain verdict."""
    with conn.cursor().copy(staging.copy[stream]) as copy:
        for row in rows:
            row.append("linked" if row[0] in linked else "unlinked")
            copy.write_row(row)
            row.pop()


# The devices of an upload, locked in device order (two instances locking overlapping devices
# queue up instead of deadlocking), and which of them hold rows past their verified prefix:
# a statement of its own after the lock, so it sees what a transaction we waited for
# committed; LATERAL … LIMIT 1 is one index probe per device, under a generic plan too.
_LOCK = ("SELECT device_id, chain_seq, chain_hash, public_key, forked FROM devices "
         "WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE")
_BEYOND = ("SELECT d.device_id FROM devices d CROSS JOIN LATERAL (SELECT 1 FROM event_ids e "
           "WHERE e.tenant_id = d.tenant_id AND e.device_id = d.device_id AND "
           "e.seq > d.chain_seq LIMIT 1) AS x WHERE d.device_id = ANY(%s)")
_MOVE_PREFIXES = ("UPDATE devices SET chain_seq = t.q, chain_hash = t.h FROM unnest("
                  "%s::text[], %s::bigint[], %s::text[]) AS t(d, q, h) "
                  "WHERE devices.device_id = t.d")


# one device's share of an ingest: (events, heads)
Upload = tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]


class _Indexed(NamedTuple):
    """What the witness needs of an event being stored."""

    event_id: str
    device_id: str
    stream: str
    seq: int
    prev_hash: str
    row_hash: str


class _WalkHeldRows(Exception):
    """A row linked before the insert turned out to be held already: walk what is held."""


class DevicesBusy(Exception):
    """Another transaction holds a device of the upload (ingest_tenant with wait=False)."""


@dataclass
class Outcome:
    """What one ingest transaction did: ids stored, duplicates, refusals, head answer."""

    stored: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    head: dict[str, Any] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        """The body of an ack / batch response."""
        return {"stored": self.stored, "duplicate": self.duplicate, "rejected": self.rejected,
                **self.head}


@dataclass(frozen=True)
class Device:
    """An enrolled device as the service knows it."""

    tenant_id: str
    device_id: str
    site_id: str | None


def token_hash(token: str) -> str:
    """How a bearer token is stored: SHA-256 hex (tokens are long random strings)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    """The service's connection pool and every statement it runs."""

    def __init__(self, conninfo: str, service_key: Ed25519PrivateKey, *, min_size: int = 1,
                 max_size: int = 8, instance: str = "central",
                 prepared_statements: bool = True) -> None:
        # Prepared statements halve the cost of the ingest's statements (planning a partitioned
        # table under row-level security is not cheap). prepared_statements = false turns them
        # off for a transaction pooler that cannot track them (PgBouncer before 1.21).
        self.pool = ConnectionPool(conninfo, min_size=min_size, max_size=max_size, open=False,
                                   kwargs={"prepare_threshold": 2 if prepared_statements
                                           else None, "autocommit": True},
                                   name=f"gated-{instance}")
        self.key = service_key
        self.instance = instance
        self._staging: _Staging | None = None  # read from the catalog at the first ingest

    def open(self, wait: float = 30.0) -> Store:
        """Open the pool (waits until PostgreSQL answers) and make next months' partitions."""
        self.pool.open(wait=True, timeout=wait)
        with self.pool.connection() as conn:
            conn.execute("SELECT gated_create_partitions(now()::date, 3)")
        return self

    def close(self) -> None:
        """Close every connection."""
        self.pool.close()

    # --- device lookup --------------------------------------------------------------------

    def device_by_token(self, token: str) -> Device | None:
        """The device a bearer token belongs to (None: no such token)."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT * FROM gated_device_by_token(%s)",
                               (token_hash(token),)).fetchone()
        return Device(*row) if row else None

    def device(self, tenant_id: str, device_id: str) -> Device | None:
        """An enrolled device of a tenant (None: not enrolled)."""
        with self.pool.connection() as conn, conn.transaction():
            _tenant(conn, tenant_id)
            row = conn.execute("SELECT tenant_id, device_id, site_id FROM devices "
                               "WHERE device_id = %s", (device_id,)).fetchone()
        return Device(*row) if row else None

    # --- events ---------------------------------------------------------------------------

    def ingest(self, tenant_id: str, device_id: str, events: Sequence[Mapping[str, Any]],
               heads: Sequence[Mapping[str, Any]] = ()) -> Outcome:
        """Store validated access/audit events of one device and judge its heads, atomically.

        The caller has checked each event's schema and that its source is this device.
        Redelivered ids are answered `duplicate` and change nothing. An event PostgreSQL
        itself refuses (a NUL character in a text, a number out of range: valid JSON that
        no column can hold) is refused alone, for good; the rest are stored. Errors of the
        database's availability propagate: the caller retries, nothing is acknowledged.
        """
        return self.ingest_tenant(tenant_id, {device_id: (events, heads)})[device_id]

    def ingest_tenant(self, tenant_id: str, uploads: Mapping[str, Upload], *,
                      wait: bool = True) -> dict[str, Outcome]:
        """Store the events and judge the heads of several devices of one tenant, atomically.

        `uploads` maps a device id to its (events, heads), each as `ingest` takes them; one
        transaction with set-based statements covers every device. The answer has one
        Outcome per device. When PostgreSQL refuses an event, each device is stored on its
        own, and within the device each event, so only the offending event is refused.
        wait=False: raise DevicesBusy at once, nothing done, when another transaction holds
        one of the devices (the caller stores other tenants first).
        """
        try:
            try:
                return self._ingest(tenant_id, uploads, wait)
            except _WalkHeldRows:
                return self._ingest(tenant_id, uploads, wait, link_at_insert=False)
        except psycopg.errors.LockNotAvailable as err:
            raise DevicesBusy(tenant_id) from err
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded
                ) as err:
            if len(uploads) > 1:
                return {device_id: self.ingest(tenant_id, device_id, events, heads)
                        for device_id, (events, heads) in uploads.items()}
            ((device_id, (events, heads)),) = uploads.items()
            if len(events) + len(heads) <= 1:
                outcome = Outcome()
                for event in events:
                    outcome.rejected.append({"id": event["id"], "retryable": False,
                                             "reason": f"storage refused it: {err.sqlstate}: "
                                                       f"{str(err)[:200]}"})
                for head in heads:
                    outcome.head = {"head": None, "head_status": "refused",
                                    "head_seq": head["data"]["seq"],
                                    "head_reason": f"storage refused it: {err.sqlstate}"}
                log.warning("tenant %s device %s: refused by storage: %s", tenant_id,
                            device_id, err)
                return {device_id: outcome}
        # one at a time, so only the offending event is refused
        merged = Outcome()
        for event in events:
            part = self.ingest(tenant_id, device_id, [event])
            merged.stored += part.stored
            merged.duplicate += part.duplicate
            merged.rejected += part.rejected
            merged.alerts += part.alerts
        if heads:
            merged.head = self.ingest(tenant_id, device_id, [], heads[-1:]).head
        return {device_id: merged}

    def _ingest(self, tenant_id: str, uploads: Mapping[str, Upload],
                wait: bool = True, link_at_insert: bool = True) -> dict[str, Outcome]:
        outcomes = {device_id: Outcome() for device_id in uploads}
        rows: dict[str, list[list[Any]]] = {"access": [], "audit": []}
        index: list[_Indexed] = []
        for device_id, (events, _heads) in uploads.items():
            outcome = outcomes[device_id]
            seen: set[str] = set()
            sites: dict[str, str | None] = {}
            for event in events:
                data = event["data"]
                stream = event["gatedstream"]
                event_id = event["id"]
                problem = _event_problem(tenant_id, device_id, event, data, sites)
                if problem is None and witness.row_hash(stream, data) != data["row_hash"]:
                    problem = "row_hash does not recompute from the data"
                    outcome.alerts.append(f"seq {data['seq']}: {problem}")
                if problem is not None:
                    outcome.rejected.append({"id": event_id, "reason": problem,
                                             "retryable": False})
                    continue
                if event_id in seen:  # the same id twice in one upload
                    outcome.duplicate.append(event_id)
                    continue
                seen.add(event_id)
                row = _stage_row(stream, event, data)
                rows[stream].append(row)
                index.append(_Indexed(row[0], device_id, stream, data["seq"],
                                      data["prev_hash"], data["row_hash"]))
        with self.pool.connection() as conn, conn.transaction():
            if self._staging is None:
                self._staging = _staging(conn)
            staging = self._staging
            devices = sorted(uploads)
            # one round trip: the transaction's tenant, the staging tables, the locks
            with conn.pipeline():
                conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))
                for create in staging.create:
                    conn.execute(create)
                locked = conn.execute(_LOCK + ("" if wait else " NOWAIT"), (devices,))
                held = conn.execute(_BEYOND, (devices,))
            states: dict[str, list[Any]] = {str(r[0]): list(r[1:]) for r in locked.fetchall()}
            beyond = {str(r[0]) for r in held.fetchall()}
            for device_id in uploads:
                if device_id not in states:
                    # not enrolled (yet): nothing stored, nothing acked; the device sends again
                    outcomes[device_id].rejected += [
                        {"id": e.event_id, "reason": "device not enrolled", "retryable": True}
                        for e in index if e.device_id == device_id]
            index = [e for e in index if e.device_id in states]
            walks = _walks_at_insert(index, states, beyond) if link_at_insert else {}
            linked = {event_id for walk in walks.values() for event_id in walk.linked}
            streams = []
            for stream, stream_rows in rows.items():
                staged = [r for r in stream_rows if r[1] in states]
                if staged:
                    _copy_staged(conn, staging, stream, staged, linked)
                    streams.append(stream)
            moved = [(d, w.seq, w.hash) for d, w in walks.items() if w.linked]
            # one round trip: the rows in, and the prefixes of the devices linked at insert
            # moved (undone with the transaction if the check below fails)
            with conn.pipeline():
                inserted = [conn.execute(staging.move[stream])
                            for stream in streams]
                if moved:
                    conn.execute(_MOVE_PREFIXES, tuple(map(list, zip(*moved, strict=True))))
            new_keys = {(str(r[0]), str(r[1])) for cur in inserted for r in cur.fetchall()}
            new_ids = {event_id for event_id, _device in new_keys}
            if not linked <= new_ids:
                # a row linked before the insert was already held (the same id, stored
                # earlier out of order): the chain must be walked over what is held
                raise _WalkHeldRows
            for entry in index:
                outcome = outcomes[entry.device_id]
                (outcome.stored if (entry.event_id, entry.device_id) in new_keys
                 else outcome.duplicate).append(entry.event_id)
            for device_id, seq, hash_ in moved:
                states[device_id][:2] = [seq, hash_]
            walked = [e for e in index if e.device_id not in walks and e.event_id in new_ids]
            if walked:
                self._forks_at_held_seqs(conn, tenant_id, walked, new_ids, states, outcomes)
                self._extend(conn, tenant_id, sorted({e.device_id for e in walked}),
                             states, outcomes)
            for device_id, (_events, heads) in uploads.items():
                if device_id not in states:
                    continue
                chain_seq, _hash, public_b64, forked = states[device_id][:4]
                for head in heads:
                    outcomes[device_id].head = self._judge_head(
                        conn, tenant_id, device_id, head, public_b64, chain_seq, forked)
                for alert in outcomes[device_id].alerts:
                    log.warning("tenant %s device %s: %s", tenant_id, device_id, alert)
        return outcomes

    def _forks_at_held_seqs(self, conn: psycopg.Connection[Any], tenant_id: str,
                            index: list[_Indexed], new_ids: set[str],
                            states: dict[str, list[Any]], outcomes: dict[str, Outcome]) -> None:
        """A new row at a seq already held by another row: both kept, the new one is a fork."""
        fresh = [e for e in index if e.event_id in new_ids]
        clashes = conn.execute(
            "SELECT device_id, seq, array_agg(event_id::text ORDER BY received_at, event_id) "
            "FROM event_ids WHERE (device_id, seq) IN (SELECT d, q FROM unnest(%s::text[], "
            "%s::bigint[]) AS t(d, q)) GROUP BY device_id, seq HAVING count(*) > 1",
            ([e.device_id for e in fresh], [e.seq for e in fresh])).fetchall()
        for device_id, seq, ids in clashes:
            later = [i for i in ids[1:] if i in new_ids]
            if not later:
                continue
            conn.execute("UPDATE event_ids SET chain = 'fork' WHERE event_id = ANY(%s::uuid[])",
                         (later,))
            reason = f"seq {seq}: a second, different row ({', '.join(later)}; first {ids[0]})"
            self._alert(conn, tenant_id, device_id, "chain_fork_refused", seq, reason,
                        {"seq": seq, "event_ids": ids})
            conn.execute("UPDATE devices SET forked = true WHERE device_id = %s", (device_id,))
            outcomes[device_id].alerts.append(reason)
            states[device_id][3] = True

    def _extend(self, conn: psycopg.Connection[Any], tenant_id: str, device_ids: list[str],
                states: dict[str, list[Any]], outcomes: dict[str, Outcome]) -> None:
        """Extend each unforked device's verified prefix over the rows now held.

        One statement reads every device's unlinked rows past its prefix (up to 10,000 per
        device per round), one marks the linked rows, one moves the devices' prefixes.
        """
        todo = [d for d in device_ids if not states[d][3]]
        while todo:
            found: dict[str, list[witness.ChainRow]] = {d: [] for d in todo}
            for device_id, event_id, seq, prev_hash, row_hash in conn.execute(
                    "SELECT e.device_id, e.event_id, e.seq, e.prev_hash, e.row_hash FROM unnest("
                    "%s::text[], %s::bigint[]) AS t(d, q) CROSS JOIN LATERAL (SELECT device_id,"
                    " event_id, seq, prev_hash, row_hash FROM event_ids WHERE device_id = t.d"
                    " AND seq > t.q AND chain = 'unlinked' ORDER BY seq LIMIT 10000) AS e",
                    (todo, [states[d][0] for d in todo])).fetchall():
                found[device_id].append(witness.ChainRow(str(event_id), seq, prev_hash,
                                                         row_hash))
            linked: list[str] = []
            moved: list[tuple[str, int, str, bool]] = []
            again: list[str] = []
            for device_id in todo:
                chain_seq, chain_hash = states[device_id][0], states[device_id][1]
                held = sorted(found[device_id], key=lambda r: r.seq)
                walk = witness.extend(chain_seq, chain_hash, held)
                linked += walk.linked
                forked = False
                if walk.fork is not None:
                    row, reason = walk.fork
                    conn.execute("UPDATE event_ids SET chain = 'fork' WHERE event_id = %s",
                                 (row.event_id,))
                    self._alert(conn, tenant_id, device_id, "chain_fork_refused", row.seq,
                                reason, {"seq": row.seq, "event_id": row.event_id,
                                         "expected_prev_hash": walk.hash,
                                         "prev_hash": row.prev_hash})
                    outcomes[device_id].alerts.append(reason)
                    forked = True
                if walk.seq != chain_seq or forked:
                    moved.append((device_id, walk.seq, walk.hash, forked))
                states[device_id][:2] = [walk.seq, walk.hash]
                states[device_id][3] = forked
                if not forked and len(held) >= 10000 and walk.seq != chain_seq:
                    again.append(device_id)
            if linked:
                conn.execute("UPDATE event_ids SET chain = 'linked' "
                             "WHERE event_id = ANY(%s::uuid[])", (linked,))
            if moved:
                conn.execute(
                    "UPDATE devices SET chain_seq = t.q, chain_hash = t.h, forked = t.f FROM "
                    "unnest(%s::text[], %s::bigint[], %s::text[], %s::boolean[]) AS t(d, q, h, f)"
                    " WHERE devices.device_id = t.d", tuple(map(list, zip(*moved, strict=True))))
            todo = again

    def _judge_head(self, conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
                    head_event: Mapping[str, Any], public_b64: str | None,
                    chain_seq: int, forked: bool) -> dict[str, Any]:
        head = head_event["data"]
        key = None
        if public_b64:
            try:
                key = witness.public_key(public_b64)
            except ValueError:
                key = None
        held = conn.execute(
            "SELECT row_hash FROM event_ids WHERE device_id = %s AND seq = %s AND chain = 'linked'",
            (device_id, head["seq"])).fetchone()
        verdict = witness.judge_head(head, device_id, key, chain_seq, held[0] if held else None,
                                     forked)
        counter = None
        if verdict.status == "countersigned":
            counter = witness.countersign(head, self.key, time.time())
            conn.execute("UPDATE devices SET head_seq = %s, head_hash = %s, "
                         "head_countersignature = %s WHERE device_id = %s "
                         "AND (head_seq IS NULL OR head_seq <= %s)",
                         (head["seq"], head["row_hash"], Jsonb(counter), device_id, head["seq"]))
        elif verdict.status == "refused":
            self._alert(conn, tenant_id, device_id,
                        "chain_fork_refused" if verdict.fork else "chain_head_refused",
                        head["seq"], verdict.reason or "refused", {"head": dict(head)})
        conn.execute(
            "INSERT INTO chain_heads (tenant_id, device_id, seq, row_hash, answer_id, head_id,"
            " signed_head, signature, countersignature, status, reason) VALUES (%s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s)",
            (tenant_id, device_id, head["seq"], head["row_hash"], uuid.uuid4(),
             head_event["id"], Jsonb(head),
             head.get("sig", ""), Jsonb(counter) if counter else None, verdict.status,
             verdict.reason))
        return {"head": counter, "head_status": verdict.status, "head_seq": head["seq"],
                "head_reason": verdict.reason}

    def _alert(self, conn: psycopg.Connection[Any], tenant_id: str, device_id: str,
               action: str, seq: int, reason: str, metadata: Mapping[str, Any]) -> None:
        """An alert is an audit row of the service's own, in the tenant's audit_logs."""
        conn.execute(
            "INSERT INTO audit_logs (event_id, tenant_id, action, resource_type, resource_id,"
            " actor_id, actor_type, status, error_message, metadata, created_at, device_id,"
            " origin) VALUES (%s, %s, %s, 'journal', %s, %s, 'system', 'failure', %s, %s, now(),"
            " %s, 'service')",
            (uuid.uuid4(), tenant_id, action, str(seq), f"gated-central:{self.instance}",
             reason[:4000], Jsonb(dict(metadata)), device_id))

    # --- health -------------------------------------------------------------------------

    def heartbeat(self, tenant_id: str, device_id: str, data: Mapping[str, Any]) -> None:
        """Record a device's heartbeat: rule-set version, backlog, chain head, health."""
        backlog = data.get("backlog") or {}
        total = sum(v for v in backlog.values() if isinstance(v, int)) if isinstance(
            backlog, dict) else None
        bundle = data.get("rules_bundle")
        with self.pool.connection() as conn, conn.transaction():
            _tenant(conn, tenant_id)
            conn.execute(
                "UPDATE devices SET last_heartbeat_at = now(), heartbeat = %s, backlog = %s,"
                " rules_version = %s, rules_bundle = coalesce(%s, rules_bundle)"
                " WHERE device_id = %s",
                (Jsonb(dict(data)), total, data.get("rules_version"),
                 Jsonb(bundle) if isinstance(bundle, dict) else None, device_id))

    def status(self, tenant_id: str, device_id: str, status: str) -> None:
        """Record the device's retained online/offline status."""
        with self.pool.connection() as conn, conn.transaction():
            _tenant(conn, tenant_id)
            conn.execute("UPDATE devices SET status = %s, status_at = now() WHERE device_id = %s",
                         (status, device_id))

    def snapshot_kept(self, tenant_id: str, device_id: str, sha256: str, path: str,
                      size: int) -> bool:
        """List a stored picture for the tenant; False when it was already listed."""
        with self.pool.connection() as conn, conn.transaction():
            _tenant(conn, tenant_id)
            row = conn.execute(
                "INSERT INTO snapshots (tenant_id, sha256, path, size, device_id) VALUES "
                "(%s, %s, %s, %s, %s) ON CONFLICT (tenant_id, sha256) DO NOTHING RETURNING 1",
                (tenant_id, sha256, path, size, device_id)).fetchone()
        return row is not None


def _walks_at_insert(index: list[_Indexed], states: dict[str, list[Any]],
                     beyond: set[str]) -> dict[str, witness.Walk]:
    """The chain walks that can be decided before the insert, by device.

    A device qualifies when nothing is held past its verified prefix (`beyond` names those
    that hold rows there), it has not forked, and its new rows all lie past the prefix at
    distinct seqs: then no held row can clash with them, and walking them is what walking
    the held rows after the insert would find, so its rows are inserted already linked (no
    UPDATE of each row).
    """
    by_device: dict[str, list[_Indexed]] = {}
    for entry in index:
        by_device.setdefault(entry.device_id, []).append(entry)
    walks: dict[str, witness.Walk] = {}
    for device_id, entries in by_device.items():
        chain_seq, chain_hash, _key, forked = states[device_id][:4]
        if forked or device_id in beyond:
            continue
        entries.sort(key=lambda e: e.seq)
        if entries[0].seq <= chain_seq or len({e.seq for e in entries}) != len(entries):
            continue
        walk = witness.extend(chain_seq, chain_hash, (
            witness.ChainRow(e.event_id, e.seq, e.prev_hash, e.row_hash) for e in entries))
        if walk.fork is None:  # a fork is alerted by the walk over held rows
            walks[device_id] = walk
    return walks


def _tenant(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    """Set the transaction's tenant; transaction-local, so a pooler cannot leak it."""
    conn.execute("SELECT set_config('gated.tenant_id', %s, true)", (tenant_id,))


def _event_problem(tenant_id: str, device_id: str, event: Mapping[str, Any],
                   data: Mapping[str, Any], sites: dict[str, str | None]) -> str | None:
    """Why an (already schema-valid) event cannot be this device's, or None.

    `sites` remembers each source string's site (None: not this device's) across the events
    of one upload, which all carry the same source.
    """
    source = event.get("source", "")
    site = sites.get(source, _UNSEEN)
    if site is _UNSEEN:
        parts = source[len("gated://"):].split("/") if source.startswith("gated://") else []
        site = parts[1] if (len(parts) == 3 and parts[0] == tenant_id
                            and parts[2] == device_id) else None
        sites[source] = site
    if site is None:
        return "source is not the authenticated device"
    if data.get("tenant_id") != tenant_id or data.get("device_id") != device_id:
        return "data names another tenant or device"
    if data.get("site_id") != site:
        return "data.site_id differs from the source"
    event_id = data.get("event_id")
    if event_id != event.get("id") and str(event_id).lower() != str(event.get("id")).lower():
        return "id differs from data.event_id"
    if data.get("seq") != event.get("gatedseq"):
        return "gatedseq differs from data.seq"
    return None


_UNSEEN: Any = object()


def dumps(message: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
