-- Lawful erasure on the service (docs/central.md, "Erasure"): a device's
-- `personal_data_erased` audit row is applied to the rows the service stores by the owner-run
-- job `gated central erasures`. The service role gets nothing here: it stays INSERT/SELECT
-- on the event tables, so no code path of ingest can rewrite a stored row.

-- One row per device erasure row applied, in the tenant's scope like everything else.
-- `removed_paths` are the pictures whose listing the erasure deleted; `objects_done` turns
-- true once the store's objects of those that no tenant lists any more were deleted, so a
-- job stopped between the commit and the deletion finishes it on its next run.
CREATE TABLE erasures_applied (
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    event_id      uuid NOT NULL,        -- the device's personal_data_erased row
    device_id     text NOT NULL,
    access_rows   integer NOT NULL,     -- rows whose plate or name this erasure cleared
    audit_rows    integer NOT NULL,     -- rows whose IP or user agent it cleared
    removed_paths text[] NOT NULL DEFAULT '{}',
    objects_done  boolean NOT NULL DEFAULT false,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
ALTER TABLE erasures_applied ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasures_applied FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erasures_applied
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());

-- Finding work across tenants. The job runs as gated_owner, to which forced row-level
-- security applies too; while it sets gated.lookup = 'erasures' in a transaction (and only
-- as gated_owner) it may READ the device erasure rows, what was applied, and which tenants
-- still list a picture (a picture is one object for every tenant that uploaded it). Every
-- write stays under tenant_isolation: the job changes rows of one tenant per transaction,
-- with gated.tenant_id set to that tenant, exactly as the service does.
CREATE POLICY erasure_scan ON audit_logs FOR SELECT
    USING (current_user = 'gated_owner' AND current_setting('gated.lookup', true) = 'erasures'
           AND action = 'personal_data_erased' AND origin = 'device');
CREATE POLICY erasure_scan ON erasures_applied FOR SELECT
    USING (current_user = 'gated_owner' AND current_setting('gated.lookup', true) = 'erasures');
CREATE POLICY erasure_scan ON snapshots FOR SELECT
    USING (current_user = 'gated_owner' AND current_setting('gated.lookup', true) = 'erasures');

CREATE INDEX audit_logs_erasures ON audit_logs (created_at)
    WHERE action = 'personal_data_erased' AND origin = 'device';
