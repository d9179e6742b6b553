"""SQL for the artifact store: blobs, manifest_files and upload_sessions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from modelreg_server.storage.db import Connection

# Second key of the per-digest advisory locks, so they cannot meet another feature's locks.
_DIGEST_LOCK_SEED = 0x626C6F62  # "blob"

# A blob is referenced when a version names it as its artifact, or a version's manifest lists it.
_REFERENCED = """(
    EXISTS (SELECT 1 FROM model_versions v WHERE v.artifact_digest = b.digest)
    OR EXISTS (SELECT 1 FROM manifest_files mf
               JOIN model_versions v ON v.artifact_digest = mf.manifest_digest
               WHERE mf.file_digest = b.digest))"""
# Retained blobs belong to versions that held PRODUCTION or a protected alias (migration 0005).
_RETAINED = (
    "EXISTS (SELECT 1 FROM retained_blobs r WHERE r.digest = b.digest AND r.retain_until > clock_timestamp())"
)


@dataclass(frozen=True)
class BlobRow:
    """A committed blob."""

    digest: str
    size: int
    create_time: datetime
    touch_time: datetime


@dataclass(frozen=True)
class PartRecord:
    """One committed part of a multipart upload."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class SessionRow:
    """An upload session."""

    upload_id: uuid.UUID
    resumable: bool
    expected_digest: str | None
    expected_size: int | None
    part_size: int
    object_key: str
    s3_upload_id: str | None
    parts: tuple[PartRecord, ...]
    committed_size: int
    sha256_state: bytes | None
    writer: uuid.UUID | None
    lease_expires: datetime | None
    expire_time: datetime


def _blob(row: asyncpg.Record) -> BlobRow:
    return BlobRow(row["digest"], row["size"], row["create_time"], row["touch_time"])


def _session(row: asyncpg.Record) -> SessionRow:
    return SessionRow(
        upload_id=row["upload_id"],
        resumable=row["resumable"],
        expected_digest=row["expected_digest"],
        expected_size=row["expected_size"],
        part_size=row["part_size"],
        object_key=row["object_key"],
        s3_upload_id=row["s3_upload_id"],
        parts=tuple(PartRecord(p["n"], p["etag"], p["size"]) for p in row["parts"]),
        committed_size=row["committed_size"],
        sha256_state=None if row["sha256_state"] is None else bytes(row["sha256_state"]),
        writer=row["writer"],
        lease_expires=row["lease_expires"],
        expire_time=row["expire_time"],
    )


# --- per-digest commit lock ------------------------------------------------------------------------------


async def lock_digest(conn: Connection, digest: str) -> None:
    """Transaction-scoped advisory lock on a digest: making its S3 object appear or vanish needs it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", digest, _DIGEST_LOCK_SEED)


async def try_lock_digest(conn: Connection, digest: str) -> bool:
    """Like lock_digest, without waiting: False when someone else holds it."""
    got = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended($1, $2))", digest, _DIGEST_LOCK_SEED
    )
    return bool(got)


# --- blobs -----------------------------------------------------------------------------------------------


async def get_blob(conn: Connection, digest: str) -> BlobRow | None:
    """The blob's row, or None."""
    row = await conn.fetchrow(
        "SELECT digest, size, create_time, touch_time FROM blobs WHERE digest = $1", digest
    )
    return None if row is None else _blob(row)


async def touch_blobs(conn: Connection, digests: Sequence[str]) -> dict[str, int]:
    """Restarts the GC grace period of the blobs that exist; returns their sizes by digest.

    The UPDATE waits for a garbage collector that holds a row, then sees it gone: a blob reported
    present here was not deleted under the caller's feet at that moment.
    """
    rows = await conn.fetch(
        """UPDATE blobs SET touch_time = clock_timestamp() WHERE digest = ANY($1::text[])
           RETURNING digest, size""",
        list(dict.fromkeys(digests)),
    )
    return {r["digest"]: r["size"] for r in rows}


async def blob_sizes(conn: Connection, digests: Sequence[str]) -> dict[str, int]:
    """Sizes of the blobs among digests that exist."""
    rows = await conn.fetch("SELECT digest, size FROM blobs WHERE digest = ANY($1::text[])", list(digests))
    return {r["digest"]: r["size"] for r in rows}


async def upsert_blob(conn: Connection, digest: str, size: int) -> None:
    """Records a committed blob (again); call holding lock_digest, after the S3 object is complete."""
    await conn.execute(
        """INSERT INTO blobs (digest, size) VALUES ($1, $2)
           ON CONFLICT (digest) DO UPDATE SET touch_time = clock_timestamp()""",
        digest,
        size,
    )


async def lock_blobs_shared(conn: Connection, digests: Sequence[str]) -> list[str]:
    """Takes FOR SHARE locks on the blobs' rows until the transaction ends; returns the missing digests.

    Call it inside the transaction that inserts a model version referencing these blobs, before the
    insert. Garbage collection deletes a row only while holding it FOR UPDATE and re-checks references
    in a later statement, so a blob locked here and referenced by the committed version is never
    deleted, and one deleted first is reported missing here.
    """
    wanted = sorted(set(digests))  # a fixed order keeps concurrent lockers from deadlocking
    rows = await conn.fetch(
        "SELECT digest FROM blobs WHERE digest = ANY($1::text[]) ORDER BY digest FOR SHARE", wanted
    )
    present = {r["digest"] for r in rows}
    return [d for d in dict.fromkeys(digests) if d not in present]


async def record_manifest_files(conn: Connection, manifest_digest: str, file_digests: Sequence[str]) -> None:
    """Remembers which blobs a verified manifest lists (idempotent)."""
    await conn.execute(
        """INSERT INTO manifest_files (manifest_digest, file_digest)
           SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING""",
        manifest_digest,
        list(dict.fromkeys(file_digests)),
    )


async def collectable_blobs(conn: Connection, grace: timedelta, limit: int) -> list[BlobRow]:
    """Unreferenced blobs untouched for longer than grace (a snapshot; re-checked before deleting)."""
    rows = await conn.fetch(
        f"""SELECT b.digest, b.size, b.create_time, b.touch_time FROM blobs b
            WHERE b.touch_time < clock_timestamp() - $1::interval AND NOT {_REFERENCED}
            ORDER BY b.touch_time LIMIT $2""",
        grace,
        limit,
    )
    return [_blob(r) for r in rows]


async def lock_for_collection(conn: Connection, digest: str) -> bool:
    """FOR UPDATE SKIP LOCKED on a blob's row: False when it is gone or someone else holds it."""
    row = await conn.fetchrow("SELECT 1 FROM blobs WHERE digest = $1 FOR UPDATE SKIP LOCKED", digest)
    return row is not None


async def delete_if_collectable(conn: Connection, digest: str, grace: timedelta) -> bool:
    """Deletes a locked blob row if it is still unreferenced, unretained and past grace.

    A new statement, hence (in READ COMMITTED) a fresh snapshot: it sees every version committed before
    the row lock was taken.
    """
    row = await conn.fetchrow(
        f"""DELETE FROM blobs b WHERE b.digest = $1
              AND b.touch_time < clock_timestamp() - $2::interval AND NOT {_REFERENCED} AND NOT {_RETAINED}
            RETURNING b.digest""",
        digest,
        grace,
    )
    return row is not None


async def retention_of(conn: Connection, digests: Sequence[str]) -> dict[str, str]:
    """Why each retained digest among these is kept: until when, for which version."""
    rows = await conn.fetch(
        """SELECT digest, retain_until, model_id, version FROM retained_blobs
           WHERE digest = ANY($1::text[]) AND retain_until > clock_timestamp()""",
        list(digests),
    )
    return {
        r["digest"]: f"retained until {r['retain_until'].isoformat()} for models/{r['model_id']}/versions/"
        f"{r['version']}, which held PRODUCTION or a protected alias"
        for r in rows
    }


async def known_digests(conn: Connection, digests: Sequence[str]) -> set[str]:
    """The digests among these that have a row."""
    rows = await conn.fetch("SELECT digest FROM blobs WHERE digest = ANY($1::text[])", list(digests))
    return {r["digest"] for r in rows}


# --- upload sessions -------------------------------------------------------------------------------------

_SESSION_COLUMNS = (
    "upload_id, resumable, expected_digest, expected_size, part_size, object_key, s3_upload_id, parts, "
    "committed_size, sha256_state, writer, lease_expires, expire_time"
)


async def insert_session(
    conn: Connection,
    upload_id: uuid.UUID,
    *,
    resumable: bool,
    expected_digest: str | None,
    expected_size: int | None,
    part_size: int,
    object_key: str,
    ttl: timedelta,
    writer: uuid.UUID | None,
    lease: timedelta,
) -> SessionRow:
    """Creates a session (leased to writer when given)."""
    row = await conn.fetchrow(
        f"""INSERT INTO upload_sessions (upload_id, resumable, expected_digest, expected_size, part_size,
                                         object_key, writer, lease_expires, expire_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7,
                    CASE WHEN $7::uuid IS NULL THEN NULL ELSE clock_timestamp() + $9::interval END,
                    clock_timestamp() + $8::interval)
            RETURNING {_SESSION_COLUMNS}""",
        upload_id,
        resumable,
        expected_digest,
        expected_size,
        part_size,
        object_key,
        writer,
        ttl,
        lease,
    )
    assert row is not None
    return _session(row)


async def get_session(conn: Connection, upload_id: uuid.UUID) -> SessionRow | None:
    """The session, or None."""
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM upload_sessions WHERE upload_id = $1", upload_id
    )
    return None if row is None else _session(row)


async def claim_session(
    conn: Connection, upload_id: uuid.UUID, writer: uuid.UUID, lease: timedelta
) -> SessionRow | None:
    """Leases a session to writer unless another live writer holds it; None when not claimed."""
    row = await conn.fetchrow(
        f"""UPDATE upload_sessions SET writer = $2, lease_expires = clock_timestamp() + $3::interval
            WHERE upload_id = $1 AND (writer IS NULL OR writer = $2 OR lease_expires < clock_timestamp())
            RETURNING {_SESSION_COLUMNS}""",
        upload_id,
        writer,
        lease,
    )
    return None if row is None else _session(row)


async def renew_lease(conn: Connection, upload_id: uuid.UUID, writer: uuid.UUID, lease: timedelta) -> bool:
    """Extends writer's lease; False when it lost the session."""
    result = await conn.execute(
        """UPDATE upload_sessions SET lease_expires = clock_timestamp() + $3::interval
           WHERE upload_id = $1 AND writer = $2""",
        upload_id,
        writer,
        lease,
    )
    return result.endswith(" 1")


async def release_session(conn: Connection, upload_id: uuid.UUID, writer: uuid.UUID) -> None:
    """Gives up writer's lease (the session stays)."""
    await conn.execute(
        "UPDATE upload_sessions SET writer = NULL, lease_expires = NULL WHERE upload_id = $1 AND writer = $2",
        upload_id,
        writer,
    )


async def set_s3_upload(
    conn: Connection, upload_id: uuid.UUID, writer: uuid.UUID, s3_upload_id: str | None
) -> bool:
    """Records (or clears) the session's S3 multipart upload id and resets its parts."""
    result = await conn.execute(
        """UPDATE upload_sessions
              SET s3_upload_id = $3, parts = '[]', committed_size = 0, sha256_state = NULL,
                  update_time = clock_timestamp()
           WHERE upload_id = $1 AND writer = $2""",
        upload_id,
        writer,
        s3_upload_id,
    )
    return result.endswith(" 1")


async def record_part(
    conn: Connection,
    upload_id: uuid.UUID,
    writer: uuid.UUID,
    part: PartRecord,
    *,
    committed_before: int,
    sha256_state: bytes | None,
    ttl: timedelta,
    lease: timedelta,
) -> bool:
    """Appends a committed part if writer still holds the session at committed_before; False otherwise."""
    result = await conn.execute(
        """UPDATE upload_sessions
              SET parts = parts || $4::jsonb, committed_size = committed_size + $5, sha256_state = $6,
                  update_time = clock_timestamp(), expire_time = clock_timestamp() + $7::interval,
                  lease_expires = clock_timestamp() + $8::interval
            WHERE upload_id = $1 AND writer = $2 AND committed_size = $3""",
        upload_id,
        writer,
        committed_before,
        [{"n": part.number, "etag": part.etag, "size": part.size}],
        part.size,
        sha256_state,
        ttl,
        lease,
    )
    return result.endswith(" 1")


async def delete_session(conn: Connection, upload_id: uuid.UUID) -> SessionRow | None:
    """Deletes a session; returns what it was."""
    row = await conn.fetchrow(
        f"DELETE FROM upload_sessions WHERE upload_id = $1 RETURNING {_SESSION_COLUMNS}", upload_id
    )
    return None if row is None else _session(row)


async def stale_sessions(conn: Connection, limit: int) -> list[SessionRow]:
    """Sessions past their expiry, and one-shot sessions whose writer's lease ran out (it crashed)."""
    rows = await conn.fetch(
        f"""SELECT {_SESSION_COLUMNS} FROM upload_sessions
            WHERE expire_time < clock_timestamp()
               OR (NOT resumable AND (lease_expires IS NULL OR lease_expires < clock_timestamp()))
            ORDER BY expire_time LIMIT $1""",
        limit,
    )
    return [_session(r) for r in rows]


async def lock_stale_session(conn: Connection, upload_id: uuid.UUID) -> SessionRow | None:
    """Locks a session that is still stale (FOR UPDATE SKIP LOCKED); None when not."""
    row = await conn.fetchrow(
        f"""SELECT {_SESSION_COLUMNS} FROM upload_sessions
            WHERE upload_id = $1
              AND (expire_time < clock_timestamp()
                   OR (NOT resumable AND (lease_expires IS NULL OR lease_expires < clock_timestamp())))
              AND (writer IS NULL OR lease_expires < clock_timestamp())
            FOR UPDATE SKIP LOCKED""",
        upload_id,
    )
    return None if row is None else _session(row)


async def session_claims(conn: Connection) -> tuple[set[str], set[str]]:
    """S3 upload ids and object keys that sessions own (keys of sessions without an upload id yet too)."""
    rows = await conn.fetch("SELECT object_key, s3_upload_id FROM upload_sessions")
    upload_ids = {r["s3_upload_id"] for r in rows if r["s3_upload_id"]}
    keys = {r["object_key"] for r in rows}
    return upload_ids, keys
