-- gated central, schema version 1: the event tables, devices, the witness's chain heads,
-- snapshots, alerts; tenant isolation by row-level security (docs/central.md).
--
-- Roles (created by the operator before the first migration, docs/central.md):
--   gated_owner    owns every object here and runs the migrations; never used by the service.
--   gated_service  the ingest service's login: owns nothing, NOBYPASSRLS; on the event tables
--                  only INSERT and SELECT, so a compromised service can add rows but never
--                  rewrite or remove history.
--
-- Tenancy: every table's primary key leads with tenant_id and every unique and foreign key
-- includes it, so the schema can later be distributed by tenant without changing queries.
-- Every policy compares tenant_id with current_setting('gated.tenant_id', true): the service
-- sets it per transaction with set_config('gated.tenant_id', $1, true), which survives a
-- transaction-pooling connection pooler; with no setting the comparison is against NULL and
-- no row matches (fails closed). FORCE ROW LEVEL SECURITY applies the policies to the owner
-- too, so only a superuser or a BYPASSRLS role sees across tenants.

-- The tenant of the current transaction, or NULL (no row will match).
CREATE FUNCTION gated_tenant() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('gated.tenant_id', true), '') $$;

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[A-Za-z0-9._-]{1,128}$'),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per enrolled device. The chain columns are the witness's state: the end of the
-- contiguous prefix it has verified (chain_seq, chain_hash) and the newest head it
-- countersigned. Health comes from heartbeats and the retained status.
CREATE TABLE devices (
    tenant_id             text NOT NULL REFERENCES tenants (tenant_id),
    device_id             text NOT NULL CHECK (device_id ~ '^[A-Za-z0-9._-]{1,128}$'),
    site_id               text,
    -- HTTP bearer token: SHA-256 hex of the token, never the token itself
    token_sha256          text UNIQUE,
    -- the device's Ed25519 public key (raw 32 bytes, base64) and its kid
    public_key            text,
    public_kid            text,
    rules_version         bigint,
    rules_bundle          jsonb,
    last_heartbeat_at     timestamptz,
    heartbeat             jsonb,
    backlog               bigint,
    status                text,
    status_at             timestamptz,
    chain_seq             bigint NOT NULL DEFAULT 0,
    chain_hash            text NOT NULL DEFAULT repeat('0', 64),
    head_seq              bigint,
    head_hash             text,
    head_countersignature jsonb,
    forked                boolean NOT NULL DEFAULT false,
    enrolled_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

-- Idempotency across partitions. access_logs and audit_logs are partitioned by month on
-- created_at, and PostgreSQL requires every unique key of a partitioned table to include the
-- partition key, so (tenant_id, event_id) cannot be unique there. This non-partitioned index
-- of every stored event is: ingest inserts here first with ON CONFLICT DO NOTHING in the same
-- transaction and writes the event row only for the ids that were new. It also serves the
-- witness (rows by device and seq) without scanning the partitions.
CREATE TABLE event_ids (
    tenant_id   text NOT NULL,
    event_id    uuid NOT NULL,
    device_id   text NOT NULL,
    stream      text NOT NULL CHECK (stream IN ('access', 'audit')),
    seq         bigint NOT NULL,
    prev_hash   text NOT NULL,
    row_hash    text NOT NULL,
    created_at  timestamptz NOT NULL,
    -- 'linked' (verified into the chain), 'unlinked' (not yet reached), 'fork' (evidence only)
    chain       text NOT NULL DEFAULT 'unlinked' CHECK (chain IN ('linked', 'unlinked', 'fork')),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id)
);
CREATE INDEX event_ids_device_seq ON event_ids (tenant_id, device_id, seq);

-- The seed's access_logs columns as they are, plus the edge's (docs/protocol.md section 3).
-- Ids that the edge writes as text (resident_id, authorized_by …) are text, not UUID.
CREATE TABLE access_logs (
    event_id             uuid NOT NULL,
    tenant_id            text NOT NULL,
    event_type           text NOT NULL,
    access_point         text NOT NULL,
    direction            text,
    resident_id          text,
    visitor_name         text,
    vehicle_plate        text,
    authorization_method text,
    authorized_by        text,
    camera_snapshot_url  text,
    confidence_score     double precision,
    metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL,
    -- the edge's columns
    site_id              text,
    device_id            text NOT NULL,
    seq                  bigint NOT NULL,
    prev_hash            text NOT NULL,
    row_hash             text NOT NULL,
    clock_unsynced       smallint NOT NULL DEFAULT 0,
    vehicle_plate_digest text,
    visitor_name_digest  text,
    vehicle_id           text,
    pass_id              text,
    decision_reason      text,
    rules_version        bigint,
    snapshot_path        text,
    snapshot_sha256      text,
    snapshot_missing     smallint NOT NULL DEFAULT 0,
    snapshot_state       text,          -- gatedsnapshot as sent: uploaded | missing | pending
    read_to_relay_ms     double precision,
    captured_at          timestamptz,   -- camera time
    gate_opened          smallint,
    received_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, created_at, event_id)
) PARTITION BY RANGE (created_at);

-- The seed's audit_logs columns as they are, plus the edge's.
CREATE TABLE audit_logs (
    event_id          uuid NOT NULL,
    tenant_id         text NOT NULL,
    action            text NOT NULL,
    resource_type     text NOT NULL,
    resource_id       text,
    actor_id          text,
    actor_type        text NOT NULL DEFAULT 'user',
    actor_email       text,
    actor_role        text,
    -- text, not INET: the edge sends what its peer claimed, and an unparsable address must
    -- not make a whole batch fail; the viewer casts where it filters.
    ip_address        text,
    user_agent        text,
    request_id        text,
    old_values        jsonb,
    new_values        jsonb,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status            text NOT NULL DEFAULT 'success'
                          CHECK (status IN ('success', 'failure', 'partial')),
    error_message     text,
    created_at        timestamptz NOT NULL,
    duration_ms       double precision,
    -- the edge's columns (null for the service's own audit rows, e.g. alerts)
    site_id           text,
    device_id         text,
    seq               bigint,
    prev_hash         text,
    row_hash          text,
    clock_unsynced    smallint NOT NULL DEFAULT 0,
    ip_address_digest text,
    user_agent_digest text,
    origin            text NOT NULL DEFAULT 'device' CHECK (origin IN ('device', 'service')),
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, created_at, event_id)
) PARTITION BY RANGE (created_at);

-- A device clock that is not synchronised can say 1970 or 2099: such rows land in the
-- default partition instead of being refused. gated_create_partitions moves them out when
-- their month's partition is created.
CREATE TABLE access_logs_default PARTITION OF access_logs DEFAULT;
CREATE TABLE audit_logs_default PARTITION OF audit_logs DEFAULT;

-- Indexes for the viewer's filters (created on the parent: every partition gets them).
CREATE INDEX access_logs_tenant_created ON access_logs (tenant_id, created_at DESC);
CREATE INDEX access_logs_device_seq ON access_logs (tenant_id, device_id, seq);
CREATE INDEX access_logs_plate ON access_logs (tenant_id, vehicle_plate, created_at DESC);
CREATE INDEX access_logs_resident ON access_logs (tenant_id, resident_id, created_at DESC);
CREATE INDEX access_logs_point_type
    ON access_logs (tenant_id, access_point, event_type, created_at DESC);
CREATE INDEX access_logs_site ON access_logs (tenant_id, site_id, created_at DESC);
CREATE INDEX access_logs_snapshot ON access_logs (tenant_id, snapshot_sha256)
    WHERE snapshot_sha256 IS NOT NULL;
CREATE INDEX audit_logs_tenant_created ON audit_logs (tenant_id, created_at DESC);
CREATE INDEX audit_logs_device_seq ON audit_logs (tenant_id, device_id, seq);
CREATE INDEX audit_logs_actor ON audit_logs (tenant_id, actor_id, created_at DESC);
CREATE INDEX audit_logs_resource ON audit_logs (tenant_id, resource_type, resource_id);
CREATE INDEX audit_logs_action ON audit_logs (tenant_id, action, created_at DESC);
CREATE INDEX audit_logs_request ON audit_logs (tenant_id, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX audit_logs_status ON audit_logs (tenant_id, status, created_at DESC)
    WHERE status <> 'success';

-- Every signed head a device sent and what the witness made of it: the history that makes a
-- rewritten device history provable (two heads, both signed by the device, one seq, two
-- hashes). Append-only like the events.
CREATE TABLE chain_heads (
    tenant_id         text NOT NULL,
    device_id         text NOT NULL,
    seq               bigint NOT NULL,
    row_hash          text NOT NULL,
    answer_id         uuid NOT NULL,    -- one per answer: a head sent again is answered again
    head_id           uuid NOT NULL,    -- the CloudEvent id the head came in
    signed_head       jsonb NOT NULL,
    signature         text NOT NULL,
    countersignature  jsonb,
    status            text NOT NULL CHECK (status IN ('countersigned', 'pending', 'refused')),
    reason            text,
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id, seq, answer_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id)
);

-- Pictures, content-addressed: one file per SHA-256 (path relative to the snapshot store).
-- A picture two tenants both upload is stored once on disk but listed per tenant.
CREATE TABLE snapshots (
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    path        text NOT NULL,
    size        bigint NOT NULL,
    device_id   text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sha256)
);

-- Access control for the service ------------------------------------------------------------

GRANT USAGE ON SCHEMA public TO gated_service;
GRANT EXECUTE ON FUNCTION gated_tenant() TO gated_service;
GRANT SELECT ON tenants TO gated_service;
GRANT SELECT, INSERT ON access_logs, audit_logs, event_ids, chain_heads, snapshots
    TO gated_service;
-- event_ids.chain moves 'unlinked' -> 'linked' | 'fork' as the witness reaches a row; the
-- event rows themselves stay immutable.
GRANT UPDATE (chain) ON event_ids TO gated_service;
-- health and witness state; enrolment (INSERT, tokens, keys) stays with the owner
GRANT SELECT ON devices TO gated_service;
GRANT UPDATE (rules_version, rules_bundle, last_heartbeat_at, heartbeat, backlog, status,
              status_at, chain_seq, chain_hash, head_seq, head_hash, head_countersignature,
              forked)
    ON devices TO gated_service;

-- Row-level security: every table, forced, one tenant per transaction ----------------------

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE devices ENABLE ROW LEVEL SECURITY;
ALTER TABLE devices FORCE ROW LEVEL SECURITY;
ALTER TABLE event_ids ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_ids FORCE ROW LEVEL SECURITY;
ALTER TABLE access_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE access_logs FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY;
ALTER TABLE chain_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE chain_heads FORCE ROW LEVEL SECURITY;
ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE snapshots FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON devices
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON event_ids
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON access_logs
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON audit_logs
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON chain_heads
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON snapshots
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());

-- Device lookup by credentials before the tenant is known. An HTTP request carries only a
-- bearer token; the service must find whose it is without reading across tenants. This
-- SECURITY DEFINER function (owned by gated_owner, with a fixed search_path) answers exactly
-- one question, "whose token has this hash", and nothing else.
CREATE FUNCTION gated_device_by_token(token_hash text)
    RETURNS TABLE (tenant_id text, device_id text, site_id text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
BEGIN
    -- FORCE RLS applies to the owner too, and the tenant is what we are looking for: the
    -- token_lookup policy below opens devices to the owner while this flag is set, and the
    -- flag is cleared again before returning.
    PERFORM set_config('gated.lookup', 'token', true);
    RETURN QUERY SELECT d.tenant_id, d.device_id, d.site_id FROM devices d
        WHERE d.token_sha256 = token_hash;
    PERFORM set_config('gated.lookup', '', true);
END $$;
REVOKE ALL ON FUNCTION gated_device_by_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gated_device_by_token(text) TO gated_service;
CREATE POLICY token_lookup ON devices FOR SELECT
    USING (current_setting('gated.lookup', true) = 'token' AND current_user = 'gated_owner');

-- Partitions and retention ---------------------------------------------------------------

-- Monthly partitions from the month of `first` for `months` months; rows already in the
-- default partition for those months are moved into the new partition.
CREATE FUNCTION gated_create_partitions(first date, months integer) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
    AS $$
DECLARE
    parent text;
    lo date;
    hi date;
    part text;
    made integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['access_logs', 'audit_logs'] LOOP
        FOR i IN 0 .. months - 1 LOOP
            lo := (date_trunc('month', first) + make_interval(months => i))::date;
            hi := (lo + interval '1 month')::date;
            part := format('%s_%s', parent, to_char(lo, 'YYYY_MM'));
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part, parent);
            -- Partitions have no row-level security of their own (the parent's policies
            -- apply to queries on the parent), and the service has no grant on them: only
            -- this owner-run function reads the default partition directly.
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE created_at >= %L AND created_at < %L'
                           ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                           parent || '_default', lo, hi, part);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, lo, hi);
            made := made + 1;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;
REVOKE ALL ON FUNCTION gated_create_partitions(date, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION gated_create_partitions(date, integer) TO gated_service;

-- Retention: drop whole monthly partitions that end before `keep_from` (no row DELETEs).
-- Run by the owner (`gated central retention`), never by the service.
CREATE FUNCTION gated_drop_partitions_before(keep_from date) RETURNS SETOF text
    LANGUAGE plpgsql SET search_path = public, pg_temp
    AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.relname, p.relname AS parent
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('access_logs', 'audit_logs')
          AND c.relname ~ '_\d{4}_\d{2}$'
          AND to_date(right(c.relname, 7), 'YYYY_MM') + interval '1 month' <= keep_from
    LOOP
        EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', r.parent, r.relname);
        EXECUTE format('DROP TABLE %I', r.relname);
        RETURN NEXT r.relname;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION gated_drop_partitions_before(date) FROM PUBLIC;

SELECT gated_create_partitions((now() - interval '1 month')::date, 4);
