-- gated central, schema version 3: the downlink (docs/protocol.md section 11, docs/central.md
-- "Downlink"). Rule sets as published per site or device, each device's signed bundles, the
-- commands issued and the results devices reported. Same tenancy as 0001: primary keys lead
-- with tenant_id, row-level security forced, one tenant per transaction through gated_tenant().
--
-- Everything here is append-only for the service: a new rule-set version is a new row, a
-- command is issued once, a result is kept as it came. gated_service has INSERT and SELECT
-- only, so a compromised service can add a version but never rewrite one that was signed.

-- A rule set as an operator published it (`gated central rules publish`): the document as the
-- edge's own parser normalised it (gated-rules JSON, docs/rules-format.md), per scope.
CREATE TABLE rule_sets (
    tenant_id    text NOT NULL REFERENCES tenants (tenant_id),
    scope        text NOT NULL CHECK (scope IN ('site', 'device')),
    scope_id     text NOT NULL CHECK (scope_id ~ '^[A-Za-z0-9._-]{1,128}$'),
    version      bigint NOT NULL CHECK (version >= 1),
    document     text NOT NULL,               -- the exact JSON text that was bundled
    sha256       text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    published_by text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, scope, scope_id, version)
);

-- The service's rule-set versions of one device (protocol 11.1: an integer that only grows).
-- Each version keeps its signed full bundle and, from version 2 on, the signed delta on the
-- version before it, as the exact bytes served: a signature is over canonical JSON, and
-- keeping the text (not jsonb) means nothing is re-encoded between signing and serving.
CREATE TABLE rule_bundles (
    tenant_id         text NOT NULL,
    device_id         text NOT NULL,
    version           bigint NOT NULL CHECK (version >= 1),
    rule_set_scope    text NOT NULL,
    rule_set_scope_id text NOT NULL,
    rule_set_version  bigint NOT NULL,
    full_bundle       text NOT NULL,
    full_sha256       text NOT NULL CHECK (full_sha256 ~ '^[0-9a-f]{64}$'),
    delta_bundle      text,                   -- on version - 1; NULL for the first version
    delta_sha256      text CHECK (delta_sha256 ~ '^[0-9a-f]{64}$'),
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id, version),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id),
    FOREIGN KEY (tenant_id, rule_set_scope, rule_set_scope_id, rule_set_version)
        REFERENCES rule_sets (tenant_id, scope, scope_id, version),
    CHECK ((delta_bundle IS NULL) = (delta_sha256 IS NULL))
);

-- Commands issued (`gated central command`), each signed once with its own id and nonce.
CREATE TABLE commands (
    tenant_id  text NOT NULL,
    command_id uuid NOT NULL,
    device_id  text NOT NULL,
    action     text NOT NULL,
    args       jsonb NOT NULL DEFAULT '{}'::jsonb,
    issued_by  text NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    nonce      text NOT NULL,
    kid        text NOT NULL,
    envelope   jsonb NOT NULL,                -- the CloudEvent as published
    PRIMARY KEY (tenant_id, command_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id),
    CHECK (expires_at > issued_at)
);
CREATE INDEX commands_device ON commands (tenant_id, device_id, issued_at DESC);

-- Results as devices reported them on P/commands/result (protocol 11.5). command_id is text:
-- a device also answers a command it refused as malformed, under whatever id it claimed, and
-- such an answer is kept too (no foreign key to commands).
CREATE TABLE command_results (
    tenant_id          text NOT NULL,
    command_id         text NOT NULL CHECK (length(command_id) BETWEEN 1 AND 128),
    result_id          text NOT NULL,         -- the result CloudEvent's id (redelivery: once)
    device_id          text NOT NULL,
    action             text,
    outcome            text NOT NULL CHECK (outcome IN ('success', 'refused', 'failed')),
    reason             text,
    message            text NOT NULL,
    data               jsonb NOT NULL DEFAULT '{}'::jsonb,
    at                 timestamptz NOT NULL,  -- the device's time
    signature_verified boolean NOT NULL,      -- under the device key enrolled
    received_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, command_id, result_id),
    FOREIGN KEY (tenant_id, device_id) REFERENCES devices (tenant_id, device_id)
);

GRANT SELECT, INSERT ON rule_sets, rule_bundles, commands, command_results TO gated_service;

ALTER TABLE rule_sets ENABLE ROW LEVEL SECURITY;
ALTER TABLE rule_sets FORCE ROW LEVEL SECURITY;
ALTER TABLE rule_bundles ENABLE ROW LEVEL SECURITY;
ALTER TABLE rule_bundles FORCE ROW LEVEL SECURITY;
ALTER TABLE commands ENABLE ROW LEVEL SECURITY;
ALTER TABLE commands FORCE ROW LEVEL SECURITY;
ALTER TABLE command_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE command_results FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON rule_sets
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON rule_bundles
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON commands
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON command_results
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
