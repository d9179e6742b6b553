-- Signed packages: the public keys the registry trusts, and the verification state of the signatures in
-- version_signatures (0005). A signature row is written only after its bundle verified; `verified` turns
-- false when its key is revoked or a later VerifySignatures fails (the SIGNATURE gate rule reads it).

CREATE TABLE signing_keys (
    key_id         text PRIMARY KEY CHECK (key_id ~ '^[a-z][a-z0-9-]{0,62}$'),
    public_key_pem text NOT NULL,
    -- sha256 hex of the key's PEM SubjectPublicKeyInfo: the key hint model-signing writes into bundles.
    -- One key, one id: revoking an id must not leave the same key trusted under another.
    fingerprint    text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    algorithm      text NOT NULL,
    description    text NOT NULL DEFAULT '',
    creator        text NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoke_time    timestamptz,
    revoker        text NOT NULL DEFAULT '',
    revoke_reason  text NOT NULL DEFAULT ''
);

-- A key never changes, and a revocation is final.
CREATE FUNCTION signing_keys_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.key_id, NEW.public_key_pem, NEW.fingerprint, NEW.algorithm, NEW.creator, NEW.create_time)
       IS DISTINCT FROM
       (OLD.key_id, OLD.public_key_pem, OLD.fingerprint, OLD.algorithm, OLD.creator, OLD.create_time)
       OR (OLD.revoke_time IS NOT NULL
           AND (NEW.revoke_time, NEW.revoker, NEW.revoke_reason)
               IS DISTINCT FROM (OLD.revoke_time, OLD.revoker, OLD.revoke_reason)) THEN
        RAISE EXCEPTION 'signing key % cannot change (only an unrevoked key can be revoked)', OLD.key_id
            USING ERRCODE = 'MR001';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER signing_keys_rules BEFORE UPDATE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION signing_keys_rules();

ALTER TABLE version_signatures
    ADD COLUMN verify_time    timestamptz NOT NULL DEFAULT clock_timestamp(),
    ADD COLUMN verify_message text NOT NULL DEFAULT '';

-- Revocation marks every signature of the key.
CREATE INDEX version_signatures_key_idx ON version_signatures (key_id);
