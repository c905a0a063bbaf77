-- gated journal schema, version 2: what the camera saw, and whether the gate opened.
--
-- captured_at: the camera's own capture time of the read (epoch seconds, REAL, by the
--   camera's clock), beside the device's created_at; NULL when the source gave none.
-- gate_opened: did the gate open for this event? NULL when no opening was asked (a
--   denial); 1 opened (or was already held open); 0 allowed or ordered, but the relay
--   failed. `gate_opened = 0` counts the events a person was let down by the hardware.
--
-- Both are hashed (see gated/journal/rows.py, ADDED: a row with both NULL hashes as a version-1
-- row, so chains written before this migration still verify). The append-only update
-- trigger is re-created to cover them, and the pass-use trigger no longer counts an
-- entry whose relay failed (nobody went through; the live policy state agrees).

ALTER TABLE access_logs ADD COLUMN captured_at REAL;
ALTER TABLE access_logs ADD COLUMN gate_opened INTEGER CHECK (gate_opened IN (0, 1));

DROP TRIGGER access_logs_pass_use;
-- Entries only: a visitor whose pass is used up must still be able to leave.
CREATE TRIGGER access_logs_pass_use AFTER INSERT ON access_logs
WHEN NEW.pass_id IS NOT NULL AND NEW.event_type IN ('entry', 'visitor_entry')
    AND coalesce(NEW.gate_opened, 1) = 1
BEGIN
    INSERT INTO pass_use_counts (pass_id, uses) VALUES (NEW.pass_id, 1)
    ON CONFLICT (pass_id) DO UPDATE SET uses = uses + 1;
END;

DROP TRIGGER access_logs_append_only_update;
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
    AND NEW.captured_at IS OLD.captured_at
    AND NEW.gate_opened IS OLD.gate_opened
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
