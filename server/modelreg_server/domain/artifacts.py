"""The artifact store's rules: blobs by digest, downloads, presigned URLs and model package checks."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from modelreg_server.config import Settings
from modelreg_server.domain import errors
from modelreg_server.domain.manifest import DIGEST_RE, MAX_MANIFEST_BYTES, Manifest, parse_manifest
from modelreg_server.domain.uploads import Uploads, UploadTuning
from modelreg_server.storage import blob_repo
from modelreg_server.storage.blob_repo import BlobRow
from modelreg_server.storage.blobstore import BlobStore, Missing, blob_key
from modelreg_server.storage.db import Connection, Database

log = logging.getLogger(__name__)

MAX_FIND_MISSING = 10_000
DEFAULT_URL_EXPIRY = timedelta(minutes=15)
MAX_URL_EXPIRY = timedelta(days=7)


def url_expiry(requested: timedelta) -> timedelta:
    """How long a presigned URL stays valid: 15 minutes unless asked (0), from 1 second to 7 days."""
    expiry = DEFAULT_URL_EXPIRY if requested == timedelta(0) else requested
    if not timedelta(seconds=1) <= expiry <= MAX_URL_EXPIRY:
        raise errors.invalid("expiry", "must be between 1 second and 7 days")
    return expiry


def blob_not_found(digest: str) -> errors.NotFound:
    """The error for a digest the store does not hold."""
    return errors.NotFound(f"blob {digest} not found", "BLOB_NOT_FOUND", {"digest": digest})


def _blobs_missing(missing: Sequence[str], paths: dict[str, str]) -> errors.FailedPrecondition:
    shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
    return errors.FailedPrecondition(
        f"the package lacks {len(missing)} blob(s); upload them first: {shown}",
        "BLOBS_MISSING",
        {"missing": str(len(missing))},
        [
            errors.PreconditionViolation("BLOB_MISSING", d, f"not uploaded: {paths.get(d, 'the manifest')}")
            for d in missing
        ],
    )


async def lock_package(conn: Connection, digest: str, manifest: Manifest) -> None:
    """Inside the transaction that registers a version with artifact `digest`, before inserting it:
    share-locks the blob rows of the manifest and its files, so garbage collection cannot delete them
    until the transaction ends; raises FailedPrecondition (BLOBS_MISSING) for any already gone.
    """
    missing = await blob_repo.lock_blobs_shared(conn, [digest, *manifest.file_digests])
    if missing:
        paths = {f.digest: f.path for f in manifest.files}
        raise _blobs_missing(missing, paths)


class Artifacts:
    """Blobs in S3, their rows in PostgreSQL, uploads and package verification."""

    def __init__(self, db: Database, store: BlobStore, tuning: UploadTuning | None = None) -> None:
        self._db = db
        self._store = store
        self.uploads = Uploads(db, store, tuning)

    @property
    def store(self) -> BlobStore:
        """The blob store."""
        return self._store

    async def ready(self) -> None:
        """Raises errors.Unavailable until S3 answers and the bucket exists."""
        await self._store.ready()

    async def find_missing(self, digests: Sequence[str]) -> list[str]:
        """The digests not held, in order, without duplicates; held ones get a fresh GC grace period."""
        await self.ready()
        async with self._db.connection() as conn:
            held = await blob_repo.touch_blobs(conn, digests)
        return [d for d in dict.fromkeys(digests) if d not in held]

    async def stat(self, digest: str) -> BlobRow:
        """The blob's row, or BLOB_NOT_FOUND."""
        async with self._db.connection() as conn:
            row = await blob_repo.get_blob(conn, digest)
        if row is None:
            raise blob_not_found(digest)
        return row

    async def download(self, digest: str, offset: int, limit: int) -> AsyncIterator[bytes]:
        """Streams [offset, offset+limit) of a blob (limit 0: to the end) in chunks of at most 1 MiB."""
        if limit < 0:
            raise errors.invalid("read_limit", "must be ≥ 0")
        await self.ready()
        row = await self.stat(digest)
        if offset < 0 or offset > row.size:
            raise errors.OutOfRange(
                f"read_offset {offset} is outside the blob's {row.size} bytes",
                "READ_OFFSET_OUT_OF_RANGE",
                {"size": str(row.size), "read_offset": str(offset)},
            )
        length = row.size - offset if limit == 0 else min(limit, row.size - offset)
        try:
            async for chunk in self._store.stream(blob_key(digest), offset, length):
                yield chunk
        except Missing as exc:
            raise errors.DataLoss(
                f"blob {digest} is recorded but its bytes are gone", "BLOB_LOST", {"digest": digest}
            ) from exc

    async def download_url(self, digest: str, expiry: timedelta) -> tuple[str, timedelta]:
        """A presigned GET URL and how long it stays valid (default 15 minutes, at most 7 days)."""
        expiry = url_expiry(expiry)
        await self.ready()
        await self.stat(digest)
        return await self._store.presigned_get(blob_key(digest), expiry), expiry

    async def verify_package(self, digest: str) -> Manifest:
        """Reads, checks and returns the manifest stored under digest.

        Records which blobs it lists (so they count as referenced once a version names the manifest).
        Raises NotFound (MANIFEST_NOT_FOUND) when the blob is absent, InvalidArgument (INVALID_MANIFEST or
        UNSAFE_MANIFEST) when it is not a valid, safe canonical manifest or a file's size disagrees with
        its blob, and FailedPrecondition (BLOBS_MISSING, one violation per digest) when file blobs are
        missing. Then call `lock_package` inside the transaction that registers the version.
        """
        if not DIGEST_RE.fullmatch(digest):
            raise errors.invalid("artifact_digest", "must be 'sha256:' followed by 64 lowercase hex digits")
        await self.ready()
        async with self._db.connection() as conn:
            row = await blob_repo.get_blob(conn, digest)
        if row is None:
            raise errors.NotFound(
                f"manifest blob {digest} not found", "MANIFEST_NOT_FOUND", {"digest": digest}
            )
        if row.size > MAX_MANIFEST_BYTES:
            raise errors.invalid("manifest", f"larger than {MAX_MANIFEST_BYTES} bytes", "INVALID_MANIFEST")
        try:
            data = await self._store.read_all(blob_key(digest), MAX_MANIFEST_BYTES)
        except Missing as exc:
            raise errors.NotFound(
                f"manifest blob {digest} not found", "MANIFEST_NOT_FOUND", {"digest": digest}
            ) from exc
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise errors.DataLoss(
                f"stored bytes of {digest} do not match it", "BLOB_CORRUPT", {"digest": digest}
            )
        manifest = parse_manifest(data)
        await self._check_files(digest, manifest)
        return manifest

    async def _check_files(self, digest: str, manifest: Manifest) -> None:
        file_digests = manifest.file_digests
        async with self._db.connection() as conn:
            sizes = await blob_repo.blob_sizes(conn, file_digests)
        wrong = [
            errors.FieldViolation(
                f"files[{i}].size", f"{f.size}, but blob {f.digest} has {sizes[f.digest]} bytes"
            )
            for i, f in enumerate(manifest.files)
            if f.digest in sizes and sizes[f.digest] != f.size
        ]
        if wrong:
            raise errors.InvalidArgument(
                f"invalid manifest: {wrong[0].field}: {wrong[0].description}",
                "INVALID_MANIFEST",
                {"violations": str(len(wrong))},
                wrong,
            )
        missing = [d for d in file_digests if d not in sizes]
        if missing:
            raise _blobs_missing(missing, {f.digest: f.path for f in manifest.files})
        await self._db.transact(lambda conn: blob_repo.record_manifest_files(conn, digest, file_digests))

    def close(self) -> None:
        """Releases the blob store's threads."""
        self._store.close()


async def open_artifacts(settings: Settings, db: Database) -> Artifacts | None:
    """The artifact store of these settings, or None when S3 is not configured.

    S3 being down does not stop the server: the bucket is created on first successful use, and calls
    fail with UNAVAILABLE until then.
    """
    if not settings.s3_endpoint:
        log.warning("MODELREG_S3_ENDPOINT not set: artifact storage disabled")
        return None
    store = BlobStore.connect(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        secure=settings.s3_secure,
        public_endpoint=settings.s3_public_endpoint,
    )
    try:
        await store.ready()
    except errors.Unavailable as exc:
        log.warning("S3 at %s not reachable yet (%s); will retry on use", settings.s3_endpoint, exc)
    return Artifacts(db, store)
