-- gated central, schema version 2: the log viewer's users, sessions and own audit trail
-- (docs/central.md, "Viewer"). Same tenancy as 0001: primary keys lead with tenant_id, row-level
-- security forced, one tenant per transaction through gated_tenant().
--
-- A user belongs to one tenant: the same name in two tenants is two users. Passwords are
-- scrypt hashes in the status page's format (gated/web/users.py). A session is kept as the
-- SHA-256 of its token, never the token: reading this table hands out no live session.

CREATE TABLE viewer_users (
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('viewer', 'auditor', 'admin')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE viewer_sessions (
    tenant_id    text NOT NULL,
    token_sha256 text NOT NULL CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    user_name    text NOT NULL,
    csrf         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, token_sha256),
    -- a removed user's sessions go with the user
    FOREIGN KEY (tenant_id, user_name) REFERENCES viewer_users (tenant_id, name)
        ON DELETE CASCADE
);
CREATE INDEX viewer_sessions_user ON viewer_sessions (tenant_id, user_name, last_seen);

-- Who logged in, failed to, logged out, or changed a user: the viewer's own trail, append-only
-- for the service like the event tables.
CREATE TABLE viewer_audit (
    tenant_id text NOT NULL REFERENCES tenants (tenant_id),
    id        bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL DEFAULT now(),
    action    text NOT NULL,
    actor     text,
    address   text,
    status    text NOT NULL DEFAULT 'success' CHECK (status IN ('success', 'failure')),
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX viewer_audit_at ON viewer_audit (tenant_id, at DESC);

GRANT SELECT, INSERT, UPDATE, DELETE ON viewer_users, viewer_sessions TO gated_service;
GRANT SELECT, INSERT ON viewer_audit TO gated_service;

ALTER TABLE viewer_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE viewer_users FORCE ROW LEVEL SECURITY;
ALTER TABLE viewer_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE viewer_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE viewer_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE viewer_audit FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON viewer_users
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON viewer_sessions
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
CREATE POLICY tenant_isolation ON viewer_audit
    USING (tenant_id = gated_tenant()) WITH CHECK (tenant_id = gated_tenant());
