-- The artifact store: committed blobs, the files of verified manifests, and upload sessions.

-- One row per blob committed to S3 (written in the transaction that completes the S3 object, under an
-- advisory lock on the digest). A row means the object exists; garbage collection deletes the row
-- before the object, holding the row lock that CreateModelVersion's FOR SHARE check waits on.
CREATE TABLE blobs (
    digest      text PRIMARY KEY CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size >= 0),
    create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Last upload, dedup hit or FindMissingBlobs of this blob: the GC grace period runs from here.
    touch_time  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX blobs_touch_time_idx ON blobs (touch_time);

-- Files listed by a verified manifest. A blob is referenced when it is some version's artifact_digest
-- or a file of such a manifest.
CREATE TABLE manifest_files (
    manifest_digest text NOT NULL REFERENCES blobs (digest) ON DELETE CASCADE,
    file_digest     text NOT NULL,
    PRIMARY KEY (manifest_digest, file_digest)
);
CREATE INDEX manifest_files_file_digest_idx ON manifest_files (file_digest);

-- Uploads in progress. One-shot uploads have a row too (resumable = false), so garbage collection can
-- tell their multipart uploads from abandoned ones.
CREATE TABLE upload_sessions (
    upload_id       uuid PRIMARY KEY,
    resumable       boolean NOT NULL,
    expected_digest text CHECK (expected_digest ~ '^sha256:[0-9a-f]{64}$'),
    expected_size   bigint CHECK (expected_size >= 0),
    part_size       bigint NOT NULL CHECK (part_size >= 5242880),
    -- The S3 key the multipart upload assembles (the blob key, or staging/<upload_id>), and its S3
    -- upload id once the first part is sent.
    object_key      text NOT NULL,
    s3_upload_id    text,
    -- Committed parts in order: [{"n": part number, "etag": …, "size": …}].
    parts           jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(parts) = 'array'),
    committed_size  bigint NOT NULL DEFAULT 0 CHECK (committed_size >= 0),
    -- OpenSSL SHA256_CTX after committed_size bytes (NULL when it could not be saved).
    sha256_state    bytea,
    -- The stream writing now holds the lease; a crashed writer's lease runs out.
    writer          uuid,
    lease_expires   timestamptz,
    create_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time     timestamptz NOT NULL DEFAULT clock_timestamp(),
    expire_time     timestamptz NOT NULL
);
CREATE INDEX upload_sessions_expire_time_idx ON upload_sessions (expire_time);
CREATE INDEX upload_sessions_object_key_idx ON upload_sessions (object_key);
