-- Lifecycle: promotion policy, stage history, aliases with history, traffic policies, and the change feed.

-- 1 stages and aliases, 2 stages only, 3 aliases only, 4 immutable (modelreg.v1.PromotionPolicy).
ALTER TABLE models ADD COLUMN promotion_policy smallint NOT NULL DEFAULT 1 CHECK (promotion_policy BETWEEN 1 AND 4);

-- The change feed. Revisions come from a one-row counter taken as the last step of a transaction: its row
-- lock orders committing writers, so revisions are gap-free and become visible in revision order, and a
-- reader that has seen revision N never later finds a smaller one.
CREATE TABLE registry_revision (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    value bigint NOT NULL
);
INSERT INTO registry_revision (value) VALUES (0);

CREATE TABLE registry_events (
    revision    bigint PRIMARY KEY,
    model_id    text NOT NULL,
    change_type smallint NOT NULL,
    alias       text,
    version     bigint,
    payload     jsonb NOT NULL DEFAULT '{}',
    actor       text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX registry_events_model_idx ON registry_events (model_id, revision);
CREATE INDEX registry_events_create_time_idx ON registry_events (create_time);

CREATE TABLE stage_transitions (
    id          bigserial PRIMARY KEY,
    model_id    text NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    version     bigint NOT NULL,
    from_stage  smallint NOT NULL,
    to_stage    smallint NOT NULL,
    actor       text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    revision    bigint NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);
CREATE INDEX stage_transitions_model_idx ON stage_transitions (model_id, id);
CREATE INDEX stage_transitions_version_idx ON stage_transitions (model_id, version, id);

CREATE TABLE aliases (
    model_id    text NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    alias       text NOT NULL CHECK (alias ~ '^[a-z][a-z0-9-]{0,62}$'),
    version     bigint NOT NULL,
    revision    bigint NOT NULL,
    updater     text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);
CREATE INDEX aliases_version_idx ON aliases (model_id, version);

CREATE TABLE alias_history (
    id               bigserial PRIMARY KEY,
    model_id         text NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    alias            text NOT NULL,
    version          bigint,
    previous_version bigint,
    actor            text NOT NULL,
    comment          text NOT NULL DEFAULT '',
    revision         bigint NOT NULL,
    create_time      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (version IS NOT NULL OR previous_version IS NOT NULL)
);
CREATE INDEX alias_history_alias_idx ON alias_history (model_id, alias, id);
CREATE INDEX alias_history_time_idx ON alias_history (model_id, alias, create_time);

CREATE TABLE traffic_policies (
    model_id    text PRIMARY KEY REFERENCES models (model_id) ON DELETE CASCADE,
    routes      jsonb NOT NULL CHECK (jsonb_typeof(routes) = 'array'),
    revision    bigint NOT NULL,
    updater     text NOT NULL,
    update_time timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Versions pinned by a traffic policy, kept by the domain in the same transaction as the policy, so the
-- database can refuse to archive a version that still serves traffic.
CREATE TABLE traffic_pins (
    model_id text NOT NULL,
    version  bigint NOT NULL,
    PRIMARY KEY (model_id, version),
    FOREIGN KEY (model_id) REFERENCES traffic_policies (model_id) ON DELETE CASCADE,
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);

-- Invariants enforced whoever writes: policy, legal stage moves, nothing points at ARCHIVED versions.
CREATE FUNCTION model_versions_stage_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    policy smallint;
BEGIN
    IF NEW.stage = OLD.stage THEN
        RETURN NEW;
    END IF;
    SELECT promotion_policy INTO policy FROM models WHERE model_id = NEW.model_id;
    IF policy IN (3, 4) THEN
        RAISE EXCEPTION 'the promotion policy of model % forbids stage changes', NEW.model_id
            USING ERRCODE = 'MR002';
    END IF;
    IF NOT ((OLD.stage = 1 AND NEW.stage IN (2, 4)) OR (OLD.stage = 2 AND NEW.stage IN (1, 3, 4))
            OR (OLD.stage = 3 AND NEW.stage IN (2, 4)) OR (OLD.stage = 4 AND NEW.stage = 1)) THEN
        RAISE EXCEPTION 'stage move % -> % is not allowed', OLD.stage, NEW.stage USING ERRCODE = 'MR004';
    END IF;
    IF NEW.stage = 4 AND (
        EXISTS (SELECT 1 FROM aliases a WHERE a.model_id = NEW.model_id AND a.version = NEW.version)
        OR EXISTS (SELECT 1 FROM traffic_pins t WHERE t.model_id = NEW.model_id AND t.version = NEW.version)) THEN
        RAISE EXCEPTION 'version %/% still holds aliases or traffic', NEW.model_id, NEW.version
            USING ERRCODE = 'MR003';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER model_versions_stage_rules BEFORE UPDATE OF stage ON model_versions
    FOR EACH ROW EXECUTE FUNCTION model_versions_stage_rules();

-- FOR SHARE on the version row makes a concurrent archive and alias move wait for each other.
CREATE FUNCTION aliases_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_stage smallint;
BEGIN
    IF (SELECT promotion_policy FROM models WHERE model_id = NEW.model_id) IN (2, 4) THEN
        RAISE EXCEPTION 'the promotion policy of model % forbids aliases', NEW.model_id USING ERRCODE = 'MR002';
    END IF;
    SELECT stage INTO current_stage FROM model_versions
        WHERE model_id = NEW.model_id AND version = NEW.version FOR SHARE;
    IF current_stage = 4 THEN
        RAISE EXCEPTION 'version %/% is archived', NEW.model_id, NEW.version USING ERRCODE = 'MR003';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER aliases_rules BEFORE INSERT OR UPDATE ON aliases FOR EACH ROW EXECUTE FUNCTION aliases_rules();

CREATE FUNCTION traffic_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_stage smallint;
BEGIN
    IF (SELECT promotion_policy FROM models WHERE model_id = NEW.model_id) IN (2, 4) THEN
        RAISE EXCEPTION 'the promotion policy of model % forbids traffic policies', NEW.model_id
            USING ERRCODE = 'MR002';
    END IF;
    IF TG_TABLE_NAME = 'traffic_pins' THEN
        SELECT stage INTO current_stage FROM model_versions
            WHERE model_id = NEW.model_id AND version = NEW.version FOR SHARE;
    END IF;
    IF current_stage = 4 THEN
        RAISE EXCEPTION 'version %/% is archived', NEW.model_id, NEW.version USING ERRCODE = 'MR003';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER traffic_policies_rules BEFORE INSERT OR UPDATE ON traffic_policies
    FOR EACH ROW EXECUTE FUNCTION traffic_rules();
CREATE TRIGGER traffic_pins_rules BEFORE INSERT OR UPDATE ON traffic_pins
    FOR EACH ROW EXECUTE FUNCTION traffic_rules();
