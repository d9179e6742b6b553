-- The model catalog: models, versions, and the server-wide secrets replicas share.

CREATE TABLE server_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL CHECK (length(value) >= 32)
);
INSERT INTO server_secrets (name, value)
VALUES ('page_token', sha256(convert_to(gen_random_uuid()::text || clock_timestamp()::text || random()::text, 'UTF8')));

CREATE TABLE models (
    model_id       text PRIMARY KEY CHECK (model_id ~ '^[a-z][a-z0-9._-]{0,62}$'),
    uid            uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    description    text NOT NULL DEFAULT '',
    labels         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    owner_team     text NOT NULL DEFAULT '',
    -- Also the version counter: CreateModelVersion increments it under the row lock, so numbers are
    -- gap-free and race-free across replicas (a rolled-back insert rolls the counter back too).
    latest_version bigint NOT NULL DEFAULT 0 CHECK (latest_version >= 0),
    revision       bigint NOT NULL DEFAULT 1,
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX models_create_time_idx ON models (create_time, model_id);
CREATE INDEX models_update_time_idx ON models (update_time, model_id);
CREATE INDEX models_owner_team_idx ON models (owner_team, model_id);
CREATE INDEX models_latest_version_idx ON models (latest_version, model_id);
CREATE INDEX models_labels_idx ON models USING gin (labels);
CREATE INDEX models_name_idx ON models (('models/' || model_id) text_pattern_ops);

CREATE TABLE model_versions (
    model_id        text NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    version         bigint NOT NULL CHECK (version > 0),
    run_id          text NOT NULL DEFAULT '',
    description     text NOT NULL DEFAULT '',
    labels          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    metrics         jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metrics) = 'object'),
    lineage         jsonb NOT NULL DEFAULT '{}',
    input_schema    jsonb NOT NULL DEFAULT '{}',
    output_schema   jsonb NOT NULL DEFAULT '{}',
    dependencies    jsonb NOT NULL DEFAULT '{}',
    artifact_digest text NOT NULL DEFAULT ''
        CHECK (artifact_digest = '' OR artifact_digest ~ '^sha256:[0-9a-f]{64}$'),
    stage           smallint NOT NULL DEFAULT 1 CHECK (stage BETWEEN 1 AND 4),
    creator         text NOT NULL,
    request_id      text,
    request_hash    bytea,
    revision        bigint NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (model_id, version)
);
CREATE UNIQUE INDEX model_versions_request_id_idx ON model_versions (model_id, request_id)
    WHERE request_id IS NOT NULL;
-- At most one PRODUCTION version per model, whatever the number of replicas.
CREATE UNIQUE INDEX model_versions_one_production_idx ON model_versions (model_id) WHERE stage = 3;
CREATE INDEX model_versions_model_create_time_idx ON model_versions (model_id, create_time, version);
CREATE INDEX model_versions_create_time_idx ON model_versions (create_time, model_id, version);
CREATE INDEX model_versions_run_id_idx ON model_versions (run_id) WHERE run_id <> '';
CREATE INDEX model_versions_digest_idx ON model_versions (artifact_digest) WHERE artifact_digest <> '';
CREATE INDEX model_versions_creator_idx ON model_versions (creator, create_time);
CREATE INDEX model_versions_stage_idx ON model_versions (model_id, stage);
CREATE INDEX model_versions_labels_idx ON model_versions USING gin (labels);
CREATE INDEX model_versions_metrics_idx ON model_versions USING gin (metrics);

-- Registered fields never change: a version is an immutable record of what was registered.
CREATE FUNCTION model_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.model_id, NEW.version, NEW.run_id, NEW.metrics, NEW.lineage, NEW.input_schema,
        NEW.output_schema, NEW.dependencies, NEW.artifact_digest, NEW.creator, NEW.create_time,
        NEW.request_id, NEW.request_hash)
       IS DISTINCT FROM
       (OLD.model_id, OLD.version, OLD.run_id, OLD.metrics, OLD.lineage, OLD.input_schema,
        OLD.output_schema, OLD.dependencies, OLD.artifact_digest, OLD.creator, OLD.create_time,
        OLD.request_id, OLD.request_hash) THEN
        RAISE EXCEPTION 'registered fields of model version %/% are immutable', OLD.model_id, OLD.version
            USING ERRCODE = 'MR001';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER model_versions_immutable BEFORE UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION model_versions_immutable();
