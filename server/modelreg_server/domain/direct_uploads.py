"""Direct uploads: the client PUTs a blob straight to object storage; the registry signs and then records it.

The presigned URL names the blob's own key and signs two headers: `x-amz-checksum-sha256` (object storage
refuses bytes that do not hash to it) and `If-None-Match: *` (it never replaces an object). So whatever a
direct upload leaves under `blobs/sha256/…/<hex>` is exactly the blob, and no other bytes can ever get
there through the URL. The commit then only checks, under the digest's advisory lock, that the object
is there with that checksum and size, and records the `blobs` row. Where object storage does not enforce
these (probed once per process, see `BlobStore.direct_upload_problem`), no URL is handed out.

An upload that is never committed leaves an object without a row, which `gc` deletes after its grace.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from modelreg_server.domain import errors
from modelreg_server.domain.artifacts import Artifacts, url_expiry
from modelreg_server.storage import blob_repo
from modelreg_server.storage.blob_repo import BlobRow
from modelreg_server.storage.blobstore import blob_key
from modelreg_server.storage.db import Connection

MAX_DIRECT_SIZE = 5 * 1024**3
"""The largest object one S3 PUT may create."""


@dataclass(frozen=True)
class DirectUpload:
    """Where and how to PUT a blob, or that it is stored already."""

    url: str
    headers: dict[str, str]
    expire_time: datetime | None
    already_stored: bool


def checksum_of(digest: str) -> str:
    """The `x-amz-checksum-sha256` value (base64 of the 32 bytes) of a `sha256:<hex>` digest."""
    return base64.b64encode(bytes.fromhex(digest.removeprefix("sha256:"))).decode()


class DirectUploads:
    """Hands out signed PUT URLs and commits what arrived through them."""

    def __init__(self, artifacts: Artifacts) -> None:
        self._artifacts = artifacts

    async def create(self, digest: str, size: int, expiry: timedelta) -> DirectUpload:
        """A URL for a PUT of the blob (or `already_stored`)."""
        if size > MAX_DIRECT_SIZE:
            raise errors.InvalidArgument(
                f"{size} bytes is over the 5 GiB of one direct upload; use UploadBlob",
                "BLOB_TOO_LARGE",
                {"max_size": str(MAX_DIRECT_SIZE)},
                [errors.FieldViolation("size", "must be at most 5 GiB")],
            )
        expiry = url_expiry(expiry)
        store = self._artifacts.store
        await self._artifacts.ready()
        held = await self._artifacts.uploads.touch(digest)
        if held is not None:
            if held != size:
                raise errors.invalid(
                    "size", f"the blob {digest} has {held} bytes, not {size}", "SIZE_MISMATCH"
                )
            return DirectUpload("", {}, None, already_stored=True)
        problem = await store.direct_upload_problem()
        if problem is not None:
            raise errors.FailedPrecondition(
                f"direct uploads are not available here ({problem}); use UploadBlob",
                "DIRECT_UPLOAD_UNSUPPORTED",
            )
        headers = {"x-amz-checksum-sha256": checksum_of(digest), "If-None-Match": "*"}
        url = store.presigned_put(blob_key(digest), headers, expiry)
        return DirectUpload(url, headers, datetime.now(UTC) + expiry, already_stored=False)

    async def commit(self, digest: str, size: int) -> tuple[BlobRow, bool]:
        """Records the blob once object storage holds it; returns its row and whether it is new."""
        store = self._artifacts.store
        expected = checksum_of(digest)
        created = False

        async def work(conn: Connection) -> BlobRow:
            nonlocal created
            await blob_repo.lock_digest(conn, digest)
            row = await blob_repo.get_blob(conn, digest)
            if row is not None:
                if row.size != size:
                    raise errors.invalid(
                        "size", f"the blob {digest} has {row.size} bytes, not {size}", "SIZE_MISMATCH"
                    )
                return row
            found = await store.head_checksum(blob_key(digest))
            if found is None:
                raise _not_uploaded(digest, "object storage does not hold it")
            stored_size, checksum = found
            if checksum != expected or stored_size != size:
                # Bytes not written through a direct URL (an orphan of a failed upload, say): the stream
                # path, which hashes every byte, replaces them.
                raise _not_uploaded(
                    digest, f"object storage holds {stored_size} bytes with checksum {checksum or 'none'}"
                )
            await blob_repo.upsert_blob(conn, digest, size)
            created = True
            fresh = await blob_repo.get_blob(conn, digest)
            assert fresh is not None
            return fresh

        row = await self._artifacts.uploads.db.transact(work, attempts=1)
        return row, created


def _not_uploaded(digest: str, why: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"blob {digest} was not stored by a direct upload: {why}; PUT it first, or use UploadBlob",
        "BLOB_NOT_UPLOADED",
        {"digest": digest},
    )
