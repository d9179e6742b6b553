-- Governance: promotion gates, promotion requests with approvals, version signatures, and retention.

-- Per model: the rules a version must pass before a guarded move (into PRODUCTION or onto a protected
-- alias) and how many approvals such a move needs. No row = no rules, no approvals.
CREATE TABLE promotion_gates (
    model_id           text PRIMARY KEY REFERENCES models (model_id) ON DELETE CASCADE,
    -- [{"kind": "METRIC_THRESHOLD", ...}, ...] as written by domain/gate_rules.py
    rules              jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(rules) = 'array'),
    required_approvals integer NOT NULL DEFAULT 0 CHECK (required_approvals BETWEEN 0 AND 10),
    request_ttl        interval NOT NULL DEFAULT interval '7 days'
        CHECK (request_ttl BETWEEN interval '1 second' AND interval '30 days'),
    revision           bigint NOT NULL DEFAULT 1,
    updater            text NOT NULL,
    update_time        timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE promotion_requests (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id           text NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    version            bigint NOT NULL,
    -- Exactly one target: PRODUCTION (3) or an alias.
    target_stage       smallint CHECK (target_stage = 3),
    target_alias       text CHECK (target_alias ~ '^[a-z][a-z0-9-]{0,62}$'),
    archive_existing   boolean NOT NULL DEFAULT false,
    -- 1 pending, 2 approved, 3 executed, 4 rejected, 5 cancelled, 6 expired, 7 failed
    -- (modelreg.v1.PromotionRequestState)
    state              smallint NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 7),
    requester          text NOT NULL,
    comment            text NOT NULL DEFAULT '',
    required_approvals integer NOT NULL CHECK (required_approvals >= 1),
    state_message      text NOT NULL DEFAULT '',
    -- [{"type": …, "subject": …, "description": …}] when the execution was refused
    failures           jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(failures) = 'array'),
    create_time        timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time        timestamptz NOT NULL DEFAULT clock_timestamp(),
    expire_time        timestamptz NOT NULL,
    CHECK ((target_stage IS NULL) <> (target_alias IS NULL)),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);
-- At most one open request per version and target.
CREATE UNIQUE INDEX promotion_requests_open_idx
    ON promotion_requests (model_id, version, COALESCE(target_alias, '')) WHERE state IN (1, 2);
CREATE INDEX promotion_requests_model_idx ON promotion_requests (model_id, create_time, id);
CREATE INDEX promotion_requests_pending_idx ON promotion_requests (model_id, expire_time) WHERE state = 1;

-- Only the state (and its note) of a request changes, and only along the allowed moves.
CREATE FUNCTION promotion_requests_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.model_id, NEW.version, NEW.target_stage, NEW.target_alias, NEW.archive_existing,
        NEW.requester, NEW.comment, NEW.create_time, NEW.expire_time)
       IS DISTINCT FROM
       (OLD.id, OLD.model_id, OLD.version, OLD.target_stage, OLD.target_alias, OLD.archive_existing,
        OLD.requester, OLD.comment, OLD.create_time, OLD.expire_time) THEN
        RAISE EXCEPTION 'only the state of promotion request % changes', OLD.id USING ERRCODE = 'MR001';
    END IF;
    IF NEW.state <> OLD.state AND NOT ((OLD.state = 1 AND NEW.state IN (2, 4, 5, 6))
                                       OR (OLD.state = 2 AND NEW.state IN (3, 5, 7))) THEN
        RAISE EXCEPTION 'promotion request % cannot move from state % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'MR009';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER promotion_requests_rules BEFORE UPDATE ON promotion_requests
    FOR EACH ROW EXECUTE FUNCTION promotion_requests_rules();

-- Approvals and rejections, one per reviewer and request.
CREATE TABLE promotion_reviews (
    request_id  bigint NOT NULL REFERENCES promotion_requests (id) ON DELETE CASCADE,
    principal   text NOT NULL,
    approved    boolean NOT NULL,
    comment     text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (request_id, principal)
);

-- Four eyes: nobody reviews their own request.
CREATE FUNCTION promotion_reviews_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM promotion_requests r WHERE r.id = NEW.request_id AND r.requester = NEW.principal) THEN
        RAISE EXCEPTION '% cannot review their own promotion request %', NEW.principal, NEW.request_id
            USING ERRCODE = 'MR008';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER promotion_reviews_rules BEFORE INSERT OR UPDATE ON promotion_reviews
    FOR EACH ROW EXECUTE FUNCTION promotion_reviews_rules();

-- Signatures of versions, written by the signing feature; the SIGNATURE rule reads verified ones.
CREATE TABLE version_signatures (
    model_id    text NOT NULL,
    version     bigint NOT NULL,
    key_id      text NOT NULL,
    bundle      bytea NOT NULL,
    verified    boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    creator     text NOT NULL,
    PRIMARY KEY (model_id, version, key_id),
    FOREIGN KEY (model_id, version) REFERENCES model_versions (model_id, version) ON DELETE CASCADE
);

-- Retention. A version is held while it is in PRODUCTION or a protected alias points at it; it is retained
-- while held and for `retention_period` after it last stopped being held. `retention_period` is the
-- server's MODELREG_RETENTION_DAYS when the version was last promoted (stamped by the promotion guard).
ALTER TABLE model_versions
    ADD COLUMN last_held_time   timestamptz,
    ADD COLUMN retention_period interval NOT NULL DEFAULT interval '365 days'
        CHECK (retention_period >= interval '0');

-- Package blobs of promoted versions, kept from garbage collection until retain_until even after the
-- versions are gone. model_id and version name the last version that extended the retention.
CREATE TABLE retained_blobs (
    digest       text PRIMARY KEY,
    retain_until timestamptz NOT NULL,
    model_id     text NOT NULL,
    version      bigint NOT NULL
);

CREATE FUNCTION retain_version_blobs(p_model_id text, p_version bigint, p_digest text, p_period interval)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO retained_blobs AS r (digest, retain_until, model_id, version)
    SELECT package.digest, clock_timestamp() + p_period, p_model_id, p_version
      FROM (SELECT p_digest AS digest
            UNION SELECT mf.file_digest FROM manifest_files mf WHERE mf.manifest_digest = p_digest) AS package
     WHERE p_digest <> '' AND p_period > interval '0'
    ON CONFLICT (digest) DO UPDATE
        SET retain_until = EXCLUDED.retain_until, model_id = EXCLUDED.model_id, version = EXCLUDED.version
        WHERE EXCLUDED.retain_until > r.retain_until;
$$;

CREATE FUNCTION mark_version_held(p_model_id text, p_version bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    held record;
BEGIN
    UPDATE model_versions SET last_held_time = clock_timestamp()
     WHERE model_id = p_model_id AND version = p_version
    RETURNING artifact_digest, retention_period INTO held;
    IF FOUND THEN
        PERFORM retain_version_blobs(p_model_id, p_version, held.artifact_digest, held.retention_period);
    END IF;
END;
$$;

-- Entering or leaving PRODUCTION.
CREATE FUNCTION model_versions_track_holding() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.stage = 3) <> (NEW.stage = 3) THEN
        NEW.last_held_time := clock_timestamp();
        PERFORM retain_version_blobs(NEW.model_id, NEW.version, NEW.artifact_digest, NEW.retention_period);
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER model_versions_track_holding BEFORE UPDATE OF stage ON model_versions
    FOR EACH ROW EXECUTE FUNCTION model_versions_track_holding();

-- Gaining or losing a protected alias.
CREATE FUNCTION aliases_track_holding() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    protected text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT protected_aliases INTO protected FROM models WHERE model_id = OLD.model_id;
    ELSE
        SELECT protected_aliases INTO protected FROM models WHERE model_id = NEW.model_id;
    END IF;
    IF protected IS NULL THEN
        RETURN NULL;  -- the model is being deleted with its aliases
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.alias = ANY (protected) THEN
            PERFORM mark_version_held(NEW.model_id, NEW.version);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.alias = ANY (protected) THEN
            PERFORM mark_version_held(OLD.model_id, OLD.version);
        END IF;
    ELSIF OLD.version <> NEW.version AND NEW.alias = ANY (protected) THEN
        PERFORM mark_version_held(OLD.model_id, OLD.version);
        PERFORM mark_version_held(NEW.model_id, NEW.version);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER aliases_track_holding AFTER INSERT OR UPDATE OR DELETE ON aliases
    FOR EACH ROW EXECUTE FUNCTION aliases_track_holding();

-- An alias that stops being protected releases its version now.
CREATE FUNCTION models_track_unprotected() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mark_version_held(a.model_id, a.version)
       FROM aliases a
      WHERE a.model_id = NEW.model_id
        AND a.alias = ANY (OLD.protected_aliases) AND NOT a.alias = ANY (NEW.protected_aliases);
    RETURN NULL;
END;
$$;
CREATE TRIGGER models_track_unprotected AFTER UPDATE OF protected_aliases ON models
    FOR EACH ROW WHEN (OLD.protected_aliases IS DISTINCT FROM NEW.protected_aliases)
    EXECUTE FUNCTION models_track_unprotected();

-- Versions that keep their model from being deleted: under legal hold (label legal-hold=true on the
-- version), or retained (held now, or less than retention_period since they last were).
CREATE FUNCTION model_deletion_blocks(p_model_id text)
RETURNS TABLE (version bigint, reason text, held_now boolean, retain_until timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT v.version, 'LEGAL_HOLD', false, NULL::timestamptz
      FROM model_versions v
     WHERE v.model_id = p_model_id AND lower(v.labels ->> 'legal-hold') = 'true'
    UNION ALL
    SELECT h.version, 'RETENTION', h.held_now,
           CASE WHEN h.held_now THEN NULL ELSE h.last_held_time + h.retention_period END
      FROM (SELECT v.version, v.last_held_time, v.retention_period,
                   v.stage = 3 OR EXISTS (
                       SELECT 1 FROM aliases a JOIN models m ON m.model_id = a.model_id
                        WHERE a.model_id = v.model_id AND a.version = v.version
                          AND a.alias = ANY (m.protected_aliases)) AS held_now
              FROM model_versions v
             WHERE v.model_id = p_model_id) h
     WHERE h.retention_period > interval '0'
       AND (h.held_now OR h.last_held_time + h.retention_period > clock_timestamp())
     ORDER BY 2, 1;
$$;

CREATE FUNCTION models_deletion_rules() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    listed text;
BEGIN
    IF lower(OLD.labels ->> 'legal-hold') = 'true' THEN
        RAISE EXCEPTION 'models/% is under legal hold (label legal-hold=true)', OLD.model_id
            USING ERRCODE = 'MR007';
    END IF;
    SELECT string_agg(format('models/%s/versions/%s', OLD.model_id, b.version), ', ') INTO listed
      FROM model_deletion_blocks(OLD.model_id) b WHERE b.reason = 'LEGAL_HOLD';
    IF listed IS NOT NULL THEN
        RAISE EXCEPTION 'versions under legal hold (label legal-hold=true): %', listed USING ERRCODE = 'MR007';
    END IF;
    SELECT string_agg(format('models/%s/versions/%s (%s)', OLD.model_id, b.version,
                             CASE WHEN b.held_now THEN 'held now' ELSE 'until ' || b.retain_until END), ', ')
      INTO listed
      FROM model_deletion_blocks(OLD.model_id) b WHERE b.reason = 'RETENTION';
    IF listed IS NOT NULL THEN
        RAISE EXCEPTION 'versions within their retention period: %', listed USING ERRCODE = 'MR006';
    END IF;
    RETURN OLD;
END;
$$;
CREATE TRIGGER models_deletion_rules BEFORE DELETE ON models
    FOR EACH ROW EXECUTE FUNCTION models_deletion_rules();

-- Versions that held PRODUCTION or a protected alias before this migration.
UPDATE model_versions v SET last_held_time = held.at
  FROM (SELECT e.model_id, e.version, max(e.at) AS at
          FROM (SELECT t.model_id, t.version, t.create_time AS at
                  FROM stage_transitions t WHERE t.from_stage = 3 OR t.to_stage = 3
                UNION ALL
                SELECT h.model_id, x.version, h.create_time
                  FROM alias_history h
                  JOIN models m ON m.model_id = h.model_id
                 CROSS JOIN LATERAL (VALUES (h.version), (h.previous_version)) AS x (version)
                 WHERE h.alias = ANY (m.protected_aliases) AND x.version IS NOT NULL) e
         GROUP BY e.model_id, e.version) held
 WHERE v.model_id = held.model_id AND v.version = held.version;
