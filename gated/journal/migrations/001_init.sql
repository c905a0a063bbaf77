-- gated journal schema, version 1.
--
-- Two event tables following the central service's access_logs / audit_logs model,
-- plus what an edge device needs: site/device identity, one gap-free sequence number
-- `seq` shared by BOTH tables (one total order and one hash chain across the device's
-- events, see docs/journal-internals.md for why), the UUIDv7 event_id, the hash chain
-- (prev_hash, row_hash) and the sync state (synced_at).
--
-- Times: created_at is wall-clock epoch seconds (REAL, device clock, may be
-- unsynchronised: see clock_unsynced); created_at_utc is a virtual ISO 8601 UTC
-- rendering of it for people reading the file with sqlite3 (computed, never stored).
-- JSON columns (metadata, old_values, new_values) hold canonical JSON text (sorted keys).
--
-- Personal fields (vehicle_plate, visitor_name, ip_address, user_agent) are NOT part of
-- the hashed content; each has a digest column SHA-256(pii_salt || name || 0x00 || value)
-- that is. A lawful erasure clears the personal fields and the per-row pii_salt,
-- leaving the digest (now unlinkable to the text), so the chain still verifies.

CREATE TABLE journal_control (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- 0 idle; 1 a retention pass deletes synced rows; 2 it may delete unsynced rows too
    retention INTEGER NOT NULL DEFAULT 0 CHECK (retention IN (0, 1, 2)),
    -- 1 only while the journal clears personal fields for a lawful erasure request
    erasing INTEGER NOT NULL DEFAULT 0 CHECK (erasing IN (0, 1))
);
INSERT INTO journal_control (id) VALUES (1);

-- Where the chain starts after retention deleted its oldest rows.
CREATE TABLE journal_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,       -- last deleted seq (0: nothing deleted yet)
    row_hash TEXT NOT NULL      -- row_hash of that row (genesis: 64 zeros)
);
INSERT INTO journal_checkpoint (id, seq, row_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Allowed events per visitor pass, kept by a trigger so that retention deleting old
-- access rows never lets a used-up pass be used again.
CREATE TABLE pass_use_counts (
    pass_id TEXT PRIMARY KEY,
    uses INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE access_logs (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_at_utc TEXT GENERATED ALWAYS AS
        (strftime('%Y-%m-%dT%H:%M:%fZ', created_at, 'unixepoch')) VIRTUAL,
    clock_unsynced INTEGER NOT NULL CHECK (clock_unsynced IN (0, 1)),
    event_type TEXT NOT NULL CHECK (event_type IN ('entry', 'exit', 'denied', 'visitor_entry')),
    access_point TEXT NOT NULL,
    direction TEXT CHECK (direction IN ('in', 'out')),
    resident_id TEXT,
    vehicle_id TEXT,
    pass_id TEXT,
    visitor_name TEXT,
    visitor_name_digest TEXT,
    vehicle_plate TEXT,
    vehicle_plate_digest TEXT,
    authorization_method TEXT NOT NULL,
    authorized_by TEXT,
    decision_reason TEXT NOT NULL,
    rules_version INTEGER NOT NULL,
    confidence_score REAL,
    snapshot_path TEXT,
    snapshot_sha256 TEXT,
    snapshot_missing INTEGER NOT NULL CHECK (snapshot_missing IN (0, 1)),
    read_to_relay_ms REAL,
    metadata TEXT NOT NULL,
    pii_salt BLOB,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL,
    synced_at REAL
);

CREATE TABLE audit_logs (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_at_utc TEXT GENERATED ALWAYS AS
        (strftime('%Y-%m-%dT%H:%M:%fZ', created_at, 'unixepoch')) VIRTUAL,
    clock_unsynced INTEGER NOT NULL CHECK (clock_unsynced IN (0, 1)),
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    actor_id TEXT,
    actor_type TEXT NOT NULL,
    actor_role TEXT,
    ip_address TEXT,
    ip_address_digest TEXT,
    user_agent TEXT,
    user_agent_digest TEXT,
    request_id TEXT,
    old_values TEXT,
    new_values TEXT,
    status TEXT NOT NULL CHECK (status IN ('success', 'failure', 'partial')),
    error_message TEXT,
    duration_ms REAL,
    metadata TEXT NOT NULL,
    pii_salt BLOB,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL,
    synced_at REAL
);

-- Few indexes on purpose: every index is more SD-card writes per event.
CREATE INDEX access_logs_created_at ON access_logs (created_at);
CREATE INDEX access_logs_unsynced ON access_logs (seq) WHERE synced_at IS NULL;
CREATE INDEX audit_logs_unsynced ON audit_logs (seq) WHERE synced_at IS NULL;

-- One sequence across both tables: a seq may live in only one of them.
CREATE TRIGGER access_logs_seq_unique BEFORE INSERT ON access_logs
WHEN EXISTS (SELECT 1 FROM audit_logs WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'seq already used by audit_logs');
END;

CREATE TRIGGER audit_logs_seq_unique BEFORE INSERT ON audit_logs
WHEN EXISTS (SELECT 1 FROM access_logs WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'seq already used by access_logs');
END;

-- Entries only: a visitor whose pass is used up must still be able to leave.
CREATE TRIGGER access_logs_pass_use AFTER INSERT ON access_logs
WHEN NEW.pass_id IS NOT NULL AND NEW.event_type IN ('entry', 'visitor_entry')
BEGIN
    INSERT INTO pass_use_counts (pass_id, uses) VALUES (NEW.pass_id, 1)
    ON CONFLICT (pass_id) DO UPDATE SET uses = uses + 1;
END;

-- Retention only: while a pass runs, of synced rows (unless told otherwise), oldest first
-- across both tables, so the remaining chain starts right after the checkpoint.
CREATE TRIGGER access_logs_append_only_delete BEFORE DELETE ON access_logs
WHEN NOT (
    (SELECT retention FROM journal_control) >= 1
    AND (OLD.synced_at IS NOT NULL OR (SELECT retention FROM journal_control) = 2)
    AND OLD.seq <= (SELECT min(seq) FROM access_logs)
    AND OLD.seq < coalesce((SELECT min(seq) FROM audit_logs), OLD.seq + 1)
)
BEGIN
    SELECT RAISE(ABORT, 'access_logs is append-only: rows leave only by retention, oldest synced first');
END;

CREATE TRIGGER audit_logs_append_only_delete BEFORE DELETE ON audit_logs
WHEN NOT (
    (SELECT retention FROM journal_control) >= 1
    AND (OLD.synced_at IS NOT NULL OR (SELECT retention FROM journal_control) = 2)
    AND OLD.seq <= (SELECT min(seq) FROM audit_logs)
    AND OLD.seq < coalesce((SELECT min(seq) FROM access_logs), OLD.seq + 1)
)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only: rows leave only by retention, oldest synced first');
END;

CREATE TRIGGER journal_checkpoint_forward BEFORE UPDATE ON journal_checkpoint
WHEN (SELECT retention FROM journal_control) = 0 OR NEW.seq <= OLD.seq OR NEW.id != OLD.id
BEGIN
    SELECT RAISE(ABORT, 'journal checkpoint moves forward only, during retention');
END;

CREATE TRIGGER journal_checkpoint_keep BEFORE DELETE ON journal_checkpoint
BEGIN
    SELECT RAISE(ABORT, 'journal checkpoint cannot be deleted');
END;

-- Only the sync state may change, or (during a lawful erasure) the personal fields and
-- their salt may be cleared; everything that is hashed stays as written.
CREATE TRIGGER access_logs_append_only_update BEFORE UPDATE ON access_logs
WHEN NOT (
    NEW.seq IS OLD.seq
    AND NEW.event_id IS OLD.event_id
    AND NEW.tenant_id IS OLD.tenant_id
    AND NEW.site_id IS OLD.site_id
    AND NEW.device_id IS OLD.device_id
    AND NEW.created_at IS OLD.created_at
    AND NEW.clock_unsynced IS OLD.clock_unsynced
    AND NEW.event_type IS OLD.event_type
    AND NEW.access_point IS OLD.access_point
    AND NEW.direction IS OLD.direction
    AND NEW.resident_id IS OLD.resident_id
    AND NEW.vehicle_id IS OLD.vehicle_id
    AND NEW.pass_id IS OLD.pass_id
    AND NEW.visitor_name_digest IS OLD.visitor_name_digest
    AND NEW.vehicle_plate_digest IS OLD.vehicle_plate_digest
    AND NEW.authorization_method IS OLD.authorization_method
    AND NEW.authorized_by IS OLD.authorized_by
    AND NEW.decision_reason IS OLD.decision_reason
    AND NEW.rules_version IS OLD.rules_version
    AND NEW.confidence_score IS OLD.confidence_score
    AND NEW.snapshot_path IS OLD.snapshot_path
    AND NEW.snapshot_sha256 IS OLD.snapshot_sha256
    AND NEW.snapshot_missing IS OLD.snapshot_missing
    AND NEW.read_to_relay_ms IS OLD.read_to_relay_ms
    AND NEW.metadata IS OLD.metadata
    AND NEW.prev_hash IS OLD.prev_hash
    AND NEW.row_hash IS OLD.row_hash
    AND (
        (NEW.vehicle_plate IS OLD.vehicle_plate AND NEW.visitor_name IS OLD.visitor_name AND NEW.pii_salt IS OLD.pii_salt)
        OR ((SELECT erasing FROM journal_control) = 1
            AND NEW.vehicle_plate IS NULL AND NEW.visitor_name IS NULL AND NEW.pii_salt IS NULL)
    )
)
BEGIN
    SELECT RAISE(ABORT, 'access_logs is append-only: only sync state and lawful erasure may change');
END;

CREATE TRIGGER audit_logs_append_only_update BEFORE UPDATE ON audit_logs
WHEN NOT (
    NEW.seq IS OLD.seq
    AND NEW.event_id IS OLD.event_id
    AND NEW.tenant_id IS OLD.tenant_id
    AND NEW.site_id IS OLD.site_id
    AND NEW.device_id IS OLD.device_id
    AND NEW.created_at IS OLD.created_at
    AND NEW.clock_unsynced IS OLD.clock_unsynced
    AND NEW.action IS OLD.action
    AND NEW.resource_type IS OLD.resource_type
    AND NEW.resource_id IS OLD.resource_id
    AND NEW.actor_id IS OLD.actor_id
    AND NEW.actor_type IS OLD.actor_type
    AND NEW.actor_role IS OLD.actor_role
    AND NEW.ip_address_digest IS OLD.ip_address_digest
    AND NEW.user_agent_digest IS OLD.user_agent_digest
    AND NEW.request_id IS OLD.request_id
    AND NEW.old_values IS OLD.old_values
    AND NEW.new_values IS OLD.new_values
    AND NEW.status IS OLD.status
    AND NEW.error_message IS OLD.error_message
    AND NEW.duration_ms IS OLD.duration_ms
    AND NEW.metadata IS OLD.metadata
    AND NEW.prev_hash IS OLD.prev_hash
    AND NEW.row_hash IS OLD.row_hash
    AND (
        (NEW.ip_address IS OLD.ip_address AND NEW.user_agent IS OLD.user_agent AND NEW.pii_salt IS OLD.pii_salt)
        OR ((SELECT erasing FROM journal_control) = 1
            AND NEW.ip_address IS NULL AND NEW.user_agent IS NULL AND NEW.pii_salt IS NULL)
    )
)
BEGIN
    SELECT RAISE(ABORT, 'audit_logs is append-only: only sync state and lawful erasure may change');
END;

