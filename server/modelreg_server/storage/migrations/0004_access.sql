-- Access control (principals, tokens, role bindings) and the tamper-evident audit trail.

CREATE TABLE principals (
    principal_id text PRIMARY KEY CHECK (principal_id ~ '^[a-z][a-z0-9._-]{0,62}$'),
    display_name text NOT NULL DEFAULT '',
    -- 1 user, 2 service account (automation)
    kind         smallint NOT NULL DEFAULT 1 CHECK (kind IN (1, 2)),
    disabled     boolean NOT NULL DEFAULT false,
    creator      text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE tokens (
    token_id     uuid PRIMARY KEY,
    principal_id text NOT NULL REFERENCES principals (principal_id) ON DELETE CASCADE,
    -- sha256 of the secret; the secret itself is shown once and never stored.
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    description  text NOT NULL DEFAULT '',
    creator      text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expire_time  timestamptz,
    revoke_time  timestamptz
);
CREATE INDEX tokens_principal_idx ON tokens (principal_id);

CREATE TABLE role_bindings (
    binding_id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    principal_id text NOT NULL REFERENCES principals (principal_id) ON DELETE CASCADE,
    -- 1 viewer, 2 data_scientist, 3 ml_engineer, 4 lead, 5 automation, 6 admin (modelreg.v1.Role)
    role         smallint NOT NULL CHECK (role BETWEEN 1 AND 6),
    -- '' global, 'models/{m}', or 'labels.{key}={value}'
    scope        text NOT NULL DEFAULT ''
        CHECK (scope = '' OR scope ~ '^models/[a-z][a-z0-9._-]{0,62}$' OR scope ~ '^labels\.[A-Za-z][A-Za-z0-9_.-]{0,62}=.{0,256}$'),
    creator      text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (principal_id, role, scope)
);

-- Aliases only leads and automation may move (champion by default).
ALTER TABLE models ADD COLUMN protected_aliases text[] NOT NULL DEFAULT '{champion}';

-- The audit trail: append-only and hash-chained. Each event stores the sha256 of its predecessor's hash and
-- its own content; the head row, locked by every append, orders the chain like commits.
CREATE TABLE audit_head (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_id   bigint NOT NULL,
    last_hash bytea NOT NULL
);
INSERT INTO audit_head (last_id, last_hash) VALUES (0, '\x0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_events (
    id          bigint PRIMARY KEY,
    event_time  timestamptz NOT NULL,
    principal   text NOT NULL,
    action      text NOT NULL,
    resource    text NOT NULL,
    request_id  text NOT NULL DEFAULT '',
    peer        text NOT NULL DEFAULT '',
    outcome     text NOT NULL,
    -- Canonical JSON text (sorted keys, no spaces): hashed exactly as stored.
    details     text NOT NULL DEFAULT '{}',
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX audit_events_resource_idx ON audit_events (resource, id);
CREATE INDEX audit_events_principal_idx ON audit_events (principal, id);
CREATE INDEX audit_events_time_idx ON audit_events (event_time);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only' USING ERRCODE = 'MR005';
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
