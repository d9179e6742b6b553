"""The S3 blob store: an async API over the synchronous minio SDK, run on a bounded thread pool.

Keys: committed blobs live at `blobs/sha256/<2 hex>/<64 hex>`; uploads whose digest is not known in
advance are assembled at `staging/<upload id>` and copied to their blob key once hashed. Every S3 error
that means "storage cannot be reached or misbehaves" becomes errors.Unavailable; a missing object or
upload becomes `Missing`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.datatypes import Part
from minio.error import MinioException, S3Error
from opentelemetry.trace import Span, Status, StatusCode

from modelreg_server import telemetry
from modelreg_server.domain import errors
from modelreg_server.storage.s3_presign import Credentials, presign

log = logging.getLogger(__name__)

T = TypeVar("T")

BLOB_PREFIX = "blobs/sha256/"
STAGING_PREFIX = "staging/"
READ_CHUNK = 1024 * 1024
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchUpload", "NoSuchObject"})


class Missing(Exception):
    """The object or multipart upload does not exist."""


def blob_key(digest: str) -> str:
    """The key of a committed blob: `blobs/sha256/ab/abcd…` for `sha256:abcd…`."""
    hex_digest = digest.removeprefix("sha256:")
    return f"{BLOB_PREFIX}{hex_digest[:2]}/{hex_digest}"


def digest_of_key(key: str) -> str | None:
    """The digest a blob key stands for, or None for any other key."""
    if not key.startswith(BLOB_PREFIX):
        return None
    hex_digest = key.rsplit("/", 1)[-1]
    return (
        f"sha256:{hex_digest}" if key == blob_key(f"sha256:{hex_digest}") and len(hex_digest) == 64 else None
    )


def staging_key(upload_id: str) -> str:
    """Where an upload of unknown digest is assembled."""
    return f"{STAGING_PREFIX}{upload_id}"


@dataclass(frozen=True)
class ObjectInfo:
    """Size and age of a stored object."""

    key: str
    size: int
    last_modified: datetime | None


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished S3 multipart upload."""

    key: str
    upload_id: str
    initiated: datetime | None


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, S3Error):
        if exc.code in _MISSING_CODES:
            return Missing(exc.code)
        return errors.Unavailable(
            f"object storage refused the request: {exc.code}", "STORAGE_ERROR", {"s3_code": exc.code or ""}
        )
    if isinstance(exc, (MinioException, urllib3.exceptions.HTTPError, OSError)):
        return errors.Unavailable("object storage unavailable; retry later", "STORAGE_UNAVAILABLE")
    return exc


class BlobStore:
    """One bucket, with every minio call moved off the event loop."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        max_workers: int = 16,
        presigner: Minio | None = None,
        signing: DirectSigning | None = None,
    ) -> None:
        self._client = client
        self._presigner = presigner or client
        self._signing = signing
        # Not probed yet (False), supported (None), or why not (str).
        self._direct_checked: str | bool | None = False
        self.bucket = bucket
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="blobstore")
        self._bucket_ready = False
        self._bucket_lock = asyncio.Lock()

    @classmethod
    def connect(
        cls,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        public_endpoint: str = "",
    ) -> BlobStore:
        """A store for an S3 endpoint (`host:port`); nothing is contacted yet.

        Presigned URLs name `public_endpoint` (`http(s)://host[:port]`) when it is given.
        """
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=120),
            maxsize=32,
            retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
        )
        client = Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region="us-east-1",  # fixed, so presigning needs no GetBucketLocation round trip
            http_client=http,
        )
        presigner = None
        base_url = f"{'https' if secure else 'http'}://{endpoint}"
        public_url = base_url
        if public_endpoint:
            public_url = public_endpoint.rstrip("/")
            public = urllib.parse.urlsplit(public_endpoint)
            if public.scheme not in ("http", "https") or not public.netloc or public.path.strip("/"):
                raise ValueError(
                    f"MODELREG_S3_PUBLIC_ENDPOINT must be http(s)://host[:port], not {public_endpoint!r}"
                )
            presigner = Minio(
                public.netloc,
                access_key=access_key or None,
                secret_key=secret_key or None,
                secure=public.scheme == "https",
                region="us-east-1",  # signing only: this client never connects
            )
        signing = None
        if access_key and secret_key:
            signing = DirectSigning(Credentials(access_key, secret_key), base_url, public_url, http)
        return cls(client, bucket, presigner=presigner, signing=signing)

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        if telemetry.tracer_enabled():
            span = telemetry.tracer.start_span(
                f"s3 {getattr(fn, '__name__', 'call')}",
                attributes={"rpc.system": "s3", "s3.bucket": self.bucket},
            )
            future.add_done_callback(lambda done: _end_span(span, done))
        return future

    @staticmethod
    async def _result(future: asyncio.Future[T]) -> T:
        try:
            return await future
        except Exception as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._result(self._submit(fn, *args, **kwargs))

    async def ready(self) -> None:
        """Creates the bucket on first use; raises errors.Unavailable while S3 cannot be reached."""
        if self._bucket_ready:
            return
        async with self._bucket_lock:
            if self._bucket_ready:
                return
            if not await self._call(self._client.bucket_exists, self.bucket):
                try:
                    await self._call(self._client.make_bucket, self.bucket)
                except errors.Unavailable as exc:
                    # Another replica may have created it in the meantime.
                    if not await self._call(self._client.bucket_exists, self.bucket):
                        raise exc from None
                log.info("created bucket %s", self.bucket)
            self._bucket_ready = True

    # --- multipart uploads -------------------------------------------------------------------------------

    async def create_multipart(self, key: str) -> str:
        """Starts a multipart upload to key; returns its S3 upload id."""
        headers = {"Content-Type": "application/octet-stream"}
        return await self._call(self._client._create_multipart_upload, self.bucket, key, headers)

    async def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | memoryview) -> str:
        """Uploads one part (≥ 5 MiB unless last); returns its etag. `data` must not change until then."""
        # minio declares bytes, but only hashes the body and hands it to urllib3, which take any buffer.
        body = cast(bytes, data)
        return await self._call(
            self._client._upload_part, self.bucket, key, body, None, upload_id, part_number
        )

    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Assembles the listed parts (number, etag) into the object; only now does it appear."""
        listed = [Part(number, etag) for number, etag in parts]
        await self._call(self._client._complete_multipart_upload, self.bucket, key, upload_id, listed)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Discards a multipart upload and its parts; an upload already gone is fine."""
        with contextlib.suppress(Missing):
            await self._call(self._client._abort_multipart_upload, self.bucket, key, upload_id)

    async def list_multipart_uploads(self, prefix: str) -> list[PendingUpload]:
        """Unfinished multipart uploads under prefix."""
        found: list[PendingUpload] = []
        key_marker: str | None = None
        while True:
            result = await self._call(
                self._client._list_multipart_uploads, self.bucket, prefix=prefix, key_marker=key_marker
            )
            for upload in result.uploads:
                if upload.upload_id:
                    found.append(PendingUpload(upload.object_name, upload.upload_id, upload.initiated_time))
            if not result.is_truncated or not result.next_key_marker or result.next_key_marker == key_marker:
                return found
            key_marker = result.next_key_marker

    # --- whole objects -----------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        """Stores a small object in one request."""
        await self._call(
            self._client._put_object, self.bucket, key, data, {"Content-Type": "application/octet-stream"}
        )

    async def copy(self, source: str, target: str) -> None:
        """Server-side copy (up to 5 GiB in one request; larger objects in copied parts)."""
        info = await self.stat(source)
        if info is None:
            raise Missing(source)
        if info.size <= 5 * 1024**3:
            await self._call(self._client.copy_object, self.bucket, target, CopySource(self.bucket, source))
        else:
            await self._call(
                self._client.compose_object, self.bucket, target, [ComposeSource(self.bucket, source)]
            )

    async def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time, or None when absent."""
        try:
            result = await self._call(self._client.stat_object, self.bucket, key)
        except Missing:
            return None
        return ObjectInfo(key, int(result.size or 0), result.last_modified)

    async def remove(self, key: str) -> None:
        """Deletes an object; deleting an absent one is fine."""
        with contextlib.suppress(Missing):
            await self._call(self._client.remove_object, self.bucket, key)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under prefix."""

        def listing() -> list[ObjectInfo]:
            return [
                ObjectInfo(str(o.object_name), int(o.size or 0), o.last_modified)
                for o in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]

        return await self._call(listing)

    async def read_all(self, key: str, limit: int) -> bytes:
        """The whole object, refused (ValueError) when it is larger than limit bytes."""

        def read() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                data = response.read(limit + 1)
                if len(data) > limit:
                    raise ValueError(f"object larger than {limit} bytes")
                return bytes(data)
            finally:
                response.close()
                response.release_conn()

        return await self._call(read)

    async def stream(self, key: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """Yields bytes [offset, offset+length) in chunks of READ_CHUNK, reading one chunk ahead."""
        if length <= 0:
            return
        response = await self._call(self._client.get_object, self.bucket, key, offset=offset, length=length)
        remaining = length
        pending: asyncio.Future[bytes] | None = self._submit(response.read, min(READ_CHUNK, remaining))
        try:
            while pending is not None:
                chunk = await self._result(pending)
                pending = None
                if not chunk:
                    raise errors.DataLoss(f"object {key} ended early", "BLOB_TRUNCATED", {"key": key})
                remaining -= len(chunk)
                if remaining > 0:
                    pending = self._submit(response.read, min(READ_CHUNK, remaining))
                yield bytes(chunk)
        finally:
            if pending is not None:
                # Never close the response under a read still running in a worker thread.
                await asyncio.wait([pending])
            response.close()
            response.release_conn()

    async def presigned_get(self, key: str, expires: timedelta) -> str:
        """A URL that GETs the object without credentials until it expires."""
        return await self._call(self._presigner.presigned_get_object, self.bucket, key, expires=expires)

    # --- direct uploads ---------------------------------------------------------------------------------

    def presigned_put(self, key: str, headers: Mapping[str, str], expires: timedelta) -> str:
        """A URL (on the public endpoint) that PUTs key only when sent with exactly `headers`."""
        if self._signing is None:
            raise errors.FailedPrecondition(
                "object storage has no credentials to sign with", "DIRECT_UPLOAD_UNSUPPORTED"
            )
        return self._signing.url("PUT", self.bucket, key, headers, expires, public=True)

    async def head_checksum(self, key: str) -> tuple[int, str | None] | None:
        """Size and stored SHA-256 checksum (base64, None when the object has none), or None when absent."""

        def head() -> tuple[int, str | None]:
            response = self._client._execute(
                "HEAD", self.bucket, key, headers={"x-amz-checksum-mode": "ENABLED"}
            )
            return int(response.headers.get("content-length", "0")), response.headers.get(
                "x-amz-checksum-sha256"
            )

        try:
            return await self._call(head)
        except Missing:
            return None

    async def direct_upload_problem(self) -> str | None:
        """Why direct uploads cannot be offered, or None when they can (probed once per process).

        Direct uploads are safe only where object storage enforces what the URL signs: the checksum (bytes
        that do not hash to it are refused), the signed headers themselves (a PUT without them is
        refused) and `If-None-Match: *` (an existing object is never replaced). A store that lets any of
        these pass (SeaweedFS without identities accepts anything) gets uploads through the registry only.
        """
        if self._direct_checked is not False:
            return self._direct_checked if isinstance(self._direct_checked, str) else None
        if self._signing is None:
            problem: str | None = "object storage has no credentials to sign URLs with"
        else:
            await self.ready()
            problem = await self._call(
                self._signing.probe, self.bucket, f"{STAGING_PREFIX}probe-{uuid.uuid4()}"
            )
        if problem is not None:
            log.warning("direct uploads disabled: %s", problem)
        self._direct_checked = problem
        return problem

    async def probe(self) -> None:
        """One cheap request: raises errors.Unavailable when S3 does not answer."""
        await self._call(self._client.bucket_exists, self.bucket)

    def close(self) -> None:
        """Stops the worker threads once their current calls end."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class DirectSigning:
    """Signs URLs with headers (see `s3_presign`) and probes whether the store enforces them."""

    credentials: Credentials
    base_url: str
    public_url: str
    http: urllib3.PoolManager

    def url(
        self,
        method: str,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        expires: timedelta,
        *,
        public: bool,
    ) -> str:
        """A presigned URL on the public (or the registry's own) endpoint."""
        base = self.public_url if public else self.base_url
        return presign(method, base, bucket, key, self.credentials, expires=expires, headers=headers)

    def probe(self, bucket: str, key: str) -> str | None:
        """Tries a direct upload's guarantees on a scratch key; returns what failed, or None. Blocking;
        urllib3 errors (storage unreachable: nothing learned) propagate."""
        data = b"modelreg direct-upload probe"
        headers = {
            "x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
            "If-None-Match": "*",
        }
        url = self.url("PUT", bucket, key, headers, timedelta(minutes=1), public=False)
        try:
            attempts = [
                ("bytes that do not match the signed checksum were stored", headers, b"tampered", 400),
                ("a PUT without the signed headers was accepted", {}, data, 403),
                ("the direct upload itself failed", headers, data, 200),
                ("an existing object was replaced despite If-None-Match", headers, data, 412),
            ]
            for failure, sent, body, expected in attempts:
                response = self.http.request("PUT", url, body=body, headers=sent, retries=False)
                if response.status != expected:
                    return f"{failure} (HTTP {response.status}, expected {expected})"
            return None
        finally:
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                remove = self.url("DELETE", bucket, key, {}, timedelta(minutes=1), public=False)
                self.http.request("DELETE", remove, retries=False)


def _end_span(span: Span, done: asyncio.Future[Any]) -> None:
    if done.cancelled():
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
    elif done.exception() is not None:
        span.set_status(Status(StatusCode.ERROR, type(done.exception()).__name__))
    span.end()
