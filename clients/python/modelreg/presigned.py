"""Blob transfers straight to and from object storage over presigned URLs.

**Downloads** come in parallel byte ranges.

A large blob is split into ranges of :data:`RANGE_SIZE`; up to `parallelism` of them are fetched at once
and written into the blob's partial file at their offsets. As soon as the ranges from the current end of
the verified prefix on have arrived, the :class:`~modelreg.packages.BlobWriter` reads them back and hashes
them, so the sha256 check overlaps the transfer and a broken fetch keeps every byte up to the first gap.

With `use_presigned_urls=None` (the SDK default), blobs of :data:`PRESIGNED_MIN_SIZE` and more take this
path and smaller ones stream through the registry. When object storage cannot be reached from the client
(an S3 endpoint that is only visible inside the cluster, say), the SDK falls back to the registry stream.

**Uploads** of blobs from :data:`PRESIGNED_MIN_SIZE` to :data:`MAX_DIRECT_UPLOAD` are one PUT to the URL
of `CreateDirectUpload`, which signs the blob's SHA-256 and `If-None-Match: *`: object storage itself
refuses bytes that do not hash to the digest, and `CommitDirectUpload` then makes the blob visible. A
registry whose object store does not enforce that (FAILED_PRECONDITION), or an object store the client
cannot reach, sends the blob through the registry's UploadBlob stream instead.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO, Final

import grpc

from modelreg import packages
from modelreg.errors import Cancelled, DataLoss, ModelregError

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
PRESIGNED_MIN_SIZE: Final = 16 * MiB
"""In the default mode, blobs this large or larger are fetched from presigned URLs."""
RANGE_SIZE: Final = 64 * MiB
"""Bytes per ranged GET of a parallel presigned download."""
RANGE_PARALLELISM: Final = 4
"""Ranged GETs of one blob in flight at once."""
MAX_DIRECT_UPLOAD: Final = 5 * 1024 * MiB
"""The largest blob one S3 PUT may create; larger ones go through the registry (resumable)."""

# A registry that cannot issue URLs (no object store configured, an older server) answers with these.
_NO_URLS = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED})


class Route:
    """Which path the blobs of one download take, for `use_presigned_urls=mode`.

    True: presigned URLs only. False: the registry stream only. None: presigned URLs for blobs of
    :data:`PRESIGNED_MIN_SIZE` and more. If object storage is not reached at all (nothing arrived from it
    yet in this download), every blob from then on streams through the registry; once bytes have come
    from object storage, a broken fetch is retried there like any other transfer.
    """

    def __init__(self, mode: bool | None) -> None:
        self.mode = mode
        self._unreachable = False
        self._reached = False

    def direct(self, size: int) -> bool:
        """Whether a blob of `size` bytes is fetched from a presigned URL."""
        if self.mode is None:
            return not self._unreachable and size >= PRESIGNED_MIN_SIZE
        return self.mode

    def reached(self) -> None:
        """Record that bytes came from object storage."""
        self._reached = True

    def fall_back(self, error: BaseException) -> bool:
        """Record a failed presigned fetch; True when the blob should go on through the registry."""
        if self.mode is not None or self._reached or not can_fall_back(error):
            return False
        if not self._unreachable:
            log.warning("presigned download failed (%s); streaming through the registry instead", error)
        self._unreachable = True
        return True


class UploadRoute(Route):
    """Which path the blobs of one upload take, for `use_presigned_urls=mode` (as :class:`Route`).

    Blobs over :data:`MAX_DIRECT_UPLOAD` always go through the registry. In the default mode a blob the
    direct path fails for goes through the registry; if object storage was never reached, every later
    blob of the upload goes through the registry at once.
    """

    def direct(self, size: int) -> bool:
        """Whether a blob of `size` bytes is PUT straight to object storage."""
        return size <= MAX_DIRECT_UPLOAD and super().direct(size)

    def fall_back(self, error: BaseException) -> bool:
        """Record a failed direct upload; True when the blob should go through the registry instead."""
        if self.mode is not None or not can_fall_back(error):
            return False
        if not self._reached and not self._unreachable:
            log.warning("direct upload failed (%s); uploading through the registry instead", error)
            self._unreachable = True
        return True


def put_blob(
    url: str,
    headers: Mapping[str, str],
    blob: packages.BlobUpload,
    *,
    on_sent: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
    timeout: float | None = None,
) -> None:
    """PUT the blob's bytes to a `CreateDirectUpload` URL with its signed headers. Blocking.

    An object that exists already (HTTP 412: stored meanwhile by another upload) counts as done; the
    commit checks it.

    Raises:
        DataLoss: Object storage refused the bytes as not matching the digest (`DIGEST_MISMATCH`: the
            file changed while it was read).
        http.client.HTTPException, ConnectionError, TimeoutError: The request failed or was refused.
    """
    packages.check_url(url)
    parts = urllib.parse.urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.netloc, timeout=timeout, blocksize=packages.CHUNK_SIZE)
    try:
        with blob.open() as source:
            body = _Reader(source, on_sent, cancelled)
            connection.request(
                "PUT",
                f"{parts.path}?{parts.query}",
                body=body,
                headers={**headers, "Content-Length": str(blob.size)},
            )
            response = connection.getresponse()
            answer = response.read(4096)
    finally:
        connection.close()
    if response.status in (200, 412):
        return
    if response.status == 400 and b"BadDigest" in answer:
        raise DataLoss(
            f"object storage refused the bytes of {blob.digest}: they hash differently "
            "(did the file change while it was uploaded?)",
            reason="DIGEST_MISMATCH",
        )
    raise DirectUploadRefused(f"object storage answered HTTP {response.status}: {answer[:300]!r}")


class DirectUploadRefused(http.client.HTTPException):
    """Object storage refused a direct upload (expired URL, signature, permissions)."""


class _Reader:
    """A file reader that reports the bytes read so far and stops when cancelled."""

    def __init__(
        self, source: IO[bytes], on_sent: Callable[[int], None] | None, cancelled: threading.Event | None
    ) -> None:
        self._source = source
        self._on_sent = on_sent
        self._cancelled = cancelled
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        if self._cancelled is not None and self._cancelled.is_set():
            raise Cancelled("upload cancelled")
        data = self._source.read(size)
        self._position += len(data)
        if self._on_sent is not None:
            self._on_sent(self._position)
        return data


def can_fall_back(error: BaseException) -> bool:
    """Whether a presigned fetch failed in a way that the registry stream may overcome: object storage
    unreachable or refusing, or a registry that cannot presign. Integrity errors are never among them."""
    if isinstance(error, ModelregError):
        return error.code in _NO_URLS
    return isinstance(error, packages.HTTP_ERRORS)


def fetch_ranges(
    url: str,
    writer: packages.BlobWriter,
    *,
    parallelism: int | None = None,
    range_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
    timeout: float | None = None,
) -> None:
    """Fill the rest of the blob from `url` with up to `parallelism` ranged GETs of `range_size` bytes at
    once (default :data:`RANGE_PARALLELISM` and :data:`RANGE_SIZE`). Blocking.

    Small remainders (one range or less) take a single request (:func:`modelreg.packages.fetch_url`).
    On any failure the partial file is cut back to the verified prefix, which a retry resumes from.

    Raises:
        urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError: A request failed
            or a server ignored the range (worth retrying with a fresh URL).
        Cancelled: `cancelled` was set.
        DataLoss: More or fewer bytes than the blob's size.
    """
    parallelism = RANGE_PARALLELISM if parallelism is None else parallelism
    range_size = RANGE_SIZE if range_size is None else range_size
    start, end = writer.offset, writer.fetch.size
    if parallelism <= 1 or end - start <= range_size:
        packages.fetch_url(url, writer, on_progress=on_progress, cancelled=cancelled, timeout=timeout)
        return
    packages.check_url(url)
    writer.flush()
    try:
        _fetch_in_parallel(url, writer, parallelism, range_size, on_progress, cancelled, timeout)
    except _RangeIgnored:
        # Object storage sends whole objects only: take it in one request after all.
        packages.fetch_url(url, writer, on_progress=on_progress, cancelled=cancelled, timeout=timeout)


class _RangeIgnored(ConnectionError):
    """The server answered a ranged GET with the whole object."""


def _fetch_in_parallel(
    url: str,
    writer: packages.BlobWriter,
    parallelism: int,
    range_size: int,
    on_progress: Callable[[int], None] | None,
    cancelled: threading.Event | None,
    timeout: float | None,
) -> None:
    start, end = writer.offset, writer.fetch.size
    ranges = [(low, min(low + range_size, end)) for low in range(start, end, range_size)]
    stop = threading.Event()
    progress = _Progress(writer.offset, on_progress)
    fd = os.open(writer.path, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(min(parallelism, len(ranges)), thread_name_prefix="modelreg-range") as pool:
            futures: dict[Future[None], tuple[int, int]] = {
                pool.submit(_fetch_range, url, fd, low, high, stop, cancelled, progress, timeout): (low, high)
                for low, high in ranges
            }
            arrived: set[int] = set()
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    failed = [f for f in done if f.exception() is not None]
                    arrived.update(futures[f][0] for f in done if f.exception() is None)
                    # Hash whatever now continues the verified prefix (while later ranges still arrive, or
                    # before giving up, so that a retry resumes after every range that did arrive).
                    for low, high in ranges:
                        if low == writer.offset and low in arrived:
                            writer.absorb(high)
                    if failed:
                        failed[0].result()
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                raise
    except BaseException:
        writer.drop_unabsorbed()
        raise
    finally:
        os.close(fd)


class _Progress:
    """Bytes received by all ranges, reported as a position in the blob (never two calls at once)."""

    def __init__(self, start: int, callback: Callable[[int], None] | None) -> None:
        self._position = start
        self._callback = callback
        self._lock = threading.Lock()

    def add(self, amount: int) -> None:
        with self._lock:
            self._position += amount
            if self._callback is not None:
                self._callback(self._position)


def _fetch_range(
    url: str,
    fd: int,
    low: int,
    high: int,
    stop: threading.Event,
    cancelled: threading.Event | None,
    progress: _Progress,
    timeout: float | None,
) -> None:
    """GET bytes [low, high) of `url` and write them at their offset in `fd`."""
    if stop.is_set():
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={low}-{high - 1}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status != 206:
            raise _RangeIgnored(f"object storage ignored the byte range (HTTP {response.status})")
        position = low
        buffer = memoryview(bytearray(packages.CHUNK_SIZE))  # reused: no allocation per read
        while position < high:
            if stop.is_set():
                return
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("download cancelled")
            received = response.readinto(buffer[: min(len(buffer), high - position)])
            if not received:
                raise ConnectionError(f"object storage ended the range at byte {position} of {low}-{high}")
            os.pwrite(fd, buffer[:received], position)
            position += received
            progress.add(received)
