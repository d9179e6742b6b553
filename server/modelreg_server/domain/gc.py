"""Garbage collection of the artifact store (`modelreg-server gc`).

Removes, in this order: upload sessions past expiry (and one-shot sessions whose writer died), S3
multipart uploads and staging objects no session owns, blobs no model version references (unless a
promoted version's retention still covers them: `skipped_retained`), and blob objects without a row
(left by a crash between the S3 commit and the database commit).

Never a referenced blob, even while versions are being registered: a blob row is deleted only while
holding it FOR UPDATE (skipping rows a registration holds FOR SHARE, see `artifacts.lock_package`) and
by a statement that re-checks references and the grace period with a fresh snapshot; its S3 object is
deleted before that transaction commits, under the digest's advisory lock that uploads take to commit.
Grace runs from a blob's last upload, dedup hit or FindMissingBlobs, so a blob uploaded a moment ago and
about to be referenced survives; S3 debris without a session is collected only when older than grace
too. A grace of zero is for tests: a one-shot upload started within the same instant could lose its
multipart upload (it then fails; nothing wrong becomes visible).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from modelreg_server.config import Settings
from modelreg_server.domain import errors
from modelreg_server.storage import blob_repo
from modelreg_server.storage.blobstore import BLOB_PREFIX, STAGING_PREFIX, BlobStore, blob_key, digest_of_key
from modelreg_server.storage.db import Connection, Database, create_pool

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class GcReport:
    """What a collection removed (or, in a dry run, would remove)."""

    dry_run: bool
    expired_sessions: int = 0
    aborted_multipart_uploads: int = 0
    deleted_staging_objects: int = 0
    deleted_blobs: list[str] = field(default_factory=list)
    deleted_bytes: int = 0
    deleted_orphan_objects: int = 0
    skipped_busy: int = 0
    # Unreferenced blobs kept because a promoted version's retention period still covers them.
    skipped_retained: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return asdict(self)


async def run_gc(settings: Settings, *, grace: timedelta, dry_run: bool) -> GcReport:
    """Connects with these settings and collects garbage once (see the module docstring)."""
    if not settings.s3_endpoint:
        raise errors.FailedPrecondition("artifact storage not configured", "STORAGE_NOT_CONFIGURED")
    db = Database(await create_pool(settings.database_url, min_size=1, max_size=4))
    store = BlobStore.connect(
        settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key, settings.s3_bucket,
        secure=settings.s3_secure,
    )  # fmt: skip
    try:
        await store.ready()
        return await collect(db, store, grace=grace, dry_run=dry_run)
    finally:
        store.close()
        await db.close()


async def collect(db: Database, store: BlobStore, *, grace: timedelta, dry_run: bool) -> GcReport:
    """One collection over an open database and store."""
    if grace < timedelta(0):
        raise errors.invalid("grace", "must not be negative")
    report = GcReport(dry_run=dry_run)
    await _expire_sessions(db, store, report)
    await _abort_orphan_uploads(db, store, grace, report)
    await _delete_orphan_staging(db, store, grace, report)
    await _delete_unreferenced_blobs(db, store, grace, report)
    await _delete_orphan_blob_objects(db, store, grace, report)
    counts = {"deleted_blobs": len(report.deleted_blobs), "skipped_retained": len(report.skipped_retained)}
    log.info("gc %s", report.as_dict() | counts)
    return report


async def _expire_sessions(db: Database, store: BlobStore, report: GcReport) -> None:
    async with db.connection() as conn:
        stale = await blob_repo.stale_sessions(conn, 10 * BATCH)
    for candidate in stale:

        async def expire(conn: Connection, upload_id: uuid.UUID = candidate.upload_id) -> bool:
            session = await blob_repo.lock_stale_session(conn, upload_id)
            if session is None:
                return False
            if not report.dry_run:
                if session.s3_upload_id:
                    await store.abort_multipart(session.object_key, session.s3_upload_id)
                if session.object_key.startswith(STAGING_PREFIX):
                    await store.remove(session.object_key)
                await blob_repo.delete_session(conn, session.upload_id)
            return True

        if await db.transact(expire, attempts=1):
            report.expired_sessions += 1


def _older_than(when: datetime | None, grace: timedelta) -> bool:
    return when is not None and when < datetime.now(UTC) - grace


async def _abort_orphan_uploads(db: Database, store: BlobStore, grace: timedelta, report: GcReport) -> None:
    # List S3 first: a session row is committed before its multipart upload is created, so any upload
    # listed here that belongs to a session has its row visible below.
    pending = [
        *await store.list_multipart_uploads(BLOB_PREFIX),
        *await store.list_multipart_uploads(STAGING_PREFIX),
    ]
    async with db.connection() as conn:
        owned_ids, owned_keys = await blob_repo.session_claims(conn)
    for upload in pending:
        if (
            upload.upload_id in owned_ids
            or upload.key in owned_keys
            or not _older_than(upload.initiated, grace)
        ):
            continue
        if not report.dry_run:
            await store.abort_multipart(upload.key, upload.upload_id)
        report.aborted_multipart_uploads += 1


async def _delete_orphan_staging(db: Database, store: BlobStore, grace: timedelta, report: GcReport) -> None:
    objects = await store.list_objects(STAGING_PREFIX)
    async with db.connection() as conn:
        _, owned_keys = await blob_repo.session_claims(conn)
    for obj in objects:
        if obj.key in owned_keys or not _older_than(obj.last_modified, grace):
            continue
        if not report.dry_run:
            await store.remove(obj.key)
        report.deleted_staging_objects += 1


async def _delete_unreferenced_blobs(
    db: Database, store: BlobStore, grace: timedelta, report: GcReport
) -> None:
    seen: set[str] = set()
    while True:
        async with db.connection() as conn:
            candidates = [
                b
                for b in await blob_repo.collectable_blobs(conn, grace, BATCH + len(seen))
                if b.digest not in seen
            ]
            retained = await blob_repo.retention_of(conn, [b.digest for b in candidates])
        if not candidates:
            return
        for blob in candidates:
            seen.add(blob.digest)
            if blob.digest in retained:
                report.skipped_retained.append(blob.digest)
                log.info("gc keeps %s: %s", blob.digest, retained[blob.digest])
                continue
            if report.dry_run:
                report.deleted_blobs.append(blob.digest)
                report.deleted_bytes += blob.size
                continue

            async def delete(conn: Connection, digest: str = blob.digest) -> bool | None:
                if not await blob_repo.lock_for_collection(conn, digest):
                    return None
                if not await blob_repo.try_lock_digest(conn, digest):
                    return None
                if not await blob_repo.delete_if_collectable(conn, digest, grace):
                    return False
                # Inside the transaction: if S3 fails, the row comes back and the blob stays consistent.
                await store.remove(blob_key(digest))
                return True

            outcome = await db.transact(delete, attempts=1)
            if outcome is None:
                report.skipped_busy += 1
            elif outcome:
                report.deleted_blobs.append(blob.digest)
                report.deleted_bytes += blob.size


async def _delete_orphan_blob_objects(
    db: Database, store: BlobStore, grace: timedelta, report: GcReport
) -> None:
    objects = [o for o in await store.list_objects(BLOB_PREFIX) if _older_than(o.last_modified, grace)]
    by_digest = {d: o for o in objects if (d := digest_of_key(o.key)) is not None}
    for start in range(0, len(objects), BATCH):
        batch = [digest_of_key(o.key) for o in objects[start : start + BATCH]]
        digests = [d for d in batch if d is not None]
        async with db.connection() as conn:
            known = await blob_repo.known_digests(conn, digests)
        for digest in digests:
            if digest in known or (report.dry_run and digest in report.deleted_blobs):
                continue
            if report.dry_run:
                report.deleted_orphan_objects += 1
                continue

            async def delete(conn: Connection, digest: str = digest) -> bool:
                if not await blob_repo.try_lock_digest(conn, digest):
                    return False
                if await blob_repo.get_blob(conn, digest) is not None:
                    return False
                await store.remove(by_digest[digest].key)
                return True

            if await db.transact(delete, attempts=1):
                report.deleted_orphan_objects += 1
