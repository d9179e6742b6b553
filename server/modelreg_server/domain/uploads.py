"""Blob uploads: one-shot and resumable sessions, hashed while streaming, committed only when verified.

Every upload is a session row (one-shot ones are deleted at the end). Chunks are gathered into parts of
`part_size`; each part is hashed in a worker thread, then sent to an S3 multipart upload while the next
one fills, with at most `parts_in_flight` parts in flight, so memory stays O(part size) and a slow S3
slows the gRPC stream down. After each part, the part's etag and the SHA-256 state are recorded in
PostgreSQL: that is the commit point a resumed upload continues from.

A multipart upload assembles the final blob key when the digest is declared, else `staging/<id>`.
Nothing appears under a blob key before its digest is checked: CompleteMultipartUpload (or the copy
out of staging, or the single PUT of a small blob) runs only afterwards, under the digest's advisory
lock and in the transaction that records the `blobs` row.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from modelreg_server.domain import errors, resumable_hash
from modelreg_server.domain.resumable_hash import ResumableSha256
from modelreg_server.storage import blob_repo
from modelreg_server.storage.blob_repo import PartRecord, SessionRow
from modelreg_server.storage.blobstore import BlobStore, blob_key, staging_key
from modelreg_server.storage.db import Connection, Database

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
MAX_CHUNK = MiB
MIN_PART = 5 * MiB
MAX_PARTS = 10_000


@dataclass(frozen=True)
class UploadTuning:
    """Sizes and timeouts of the upload pipeline."""

    part_size: int = 8 * MiB
    parts_in_flight: int = 2
    session_ttl: timedelta = timedelta(hours=24)
    lease: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload stream, validated."""

    digest: str | None
    size: int | None
    upload_id: uuid.UUID | None
    write_offset: int


@dataclass(frozen=True)
class Chunk:
    """Bytes of the blob; `finish` on the last one."""

    data: bytes
    finish: bool = False


@dataclass(frozen=True)
class UploadResult:
    """What an upload stream achieved."""

    digest: str
    size: int
    committed_size: int
    complete: bool
    deduplicated: bool = False


def upload_not_found(upload_id: uuid.UUID) -> errors.NotFound:
    """The error for an unknown (or expired, or finished) session."""
    return errors.NotFound(
        f"upload {upload_id} not found (finished, cancelled or expired)",
        "UPLOAD_NOT_FOUND",
        {"upload_id": str(upload_id)},
    )


def effective_committed(session: SessionRow) -> int:
    """Where a resumed upload must start: 0 when the hash state cannot be restored here."""
    if session.committed_size and (session.sha256_state is None or not resumable_hash.available()):
        return 0
    return session.committed_size


def part_size_for(size: int | None, default: int) -> int:
    """The default part size, raised (in whole MiB) when a declared size needs more than 10,000 parts."""
    if size is None or size <= default * MAX_PARTS:
        return default
    needed = -(-size // MAX_PARTS)
    return -(-needed // MiB) * MiB


@dataclass(frozen=True)
class _Held:
    """The blob is already stored: the upload completes without its bytes."""

    digest: str
    size: int


class _Fatal(Exception):
    """Wraps an error after which a resumable session cannot continue either."""


class Uploads:
    """Upload sessions and the streaming writer."""

    def __init__(self, db: Database, store: BlobStore, tuning: UploadTuning | None = None) -> None:
        self._db = db
        self._store = store
        self.tuning = tuning or UploadTuning()
        self._cleanups: set[asyncio.Task[None]] = set()

    # --- sessions ----------------------------------------------------------------------------------------

    async def start(self, digest: str | None, size: int | None) -> SessionRow:
        """Creates a resumable session."""
        upload_id = uuid.uuid4()
        key = blob_key(digest) if digest else staging_key(str(upload_id))
        part_size = part_size_for(size, self.tuning.part_size)
        async with self._db.connection() as conn:
            return await blob_repo.insert_session(
                conn,
                upload_id,
                resumable=True,
                expected_digest=digest,
                expected_size=size,
                part_size=part_size,
                object_key=key,
                ttl=self.tuning.session_ttl,
                writer=None,
                lease=self.tuning.lease,
            )

    async def status(self, upload_id: uuid.UUID) -> SessionRow:
        """The session, or UPLOAD_NOT_FOUND."""
        async with self._db.connection() as conn:
            session = await blob_repo.get_session(conn, upload_id)
        if session is None or not session.resumable:
            raise upload_not_found(upload_id)
        return session

    async def cancel(self, upload_id: uuid.UUID) -> None:
        """Discards a resumable session and its parts."""
        writer = uuid.uuid4()
        async with self._db.connection() as conn:
            session = await blob_repo.claim_session(conn, upload_id, writer, self.tuning.lease)
            if session is None:
                if await blob_repo.get_session(conn, upload_id) is None:
                    raise upload_not_found(upload_id)
                raise _busy(upload_id)
        await self._discard(session)

    async def _discard(self, session: SessionRow) -> None:
        if session.s3_upload_id:
            await self._store.abort_multipart(session.object_key, session.s3_upload_id)
        if session.object_key.startswith("staging/"):
            await self._store.remove(session.object_key)
        async with self._db.connection() as conn:
            await blob_repo.delete_session(conn, session.upload_id)

    # --- the stream --------------------------------------------------------------------------------------

    async def touch(self, digest: str) -> int | None:
        """The size of a held blob (restarting its GC grace period), or None."""
        async with self._db.connection() as conn:
            return (await blob_repo.touch_blobs(conn, [digest])).get(digest)

    async def upload(self, header: UploadHeader, chunks: AsyncIterator[Chunk]) -> UploadResult:
        """Runs one UploadBlob stream (see the module docstring)."""
        writer = uuid.uuid4()
        if header.upload_id is None:
            session = await self._start_one_shot(header, writer)
        else:
            session = await self._claim(header, writer)
        if isinstance(session, _Held):
            return UploadResult(session.digest, session.size, session.size, complete=True, deduplicated=True)
        run = _Run(self, session, writer)
        outcome = "failed"
        try:
            result = await run.consume(header.write_offset, chunks)
            outcome = "complete" if result.complete else "paused"
            return result
        except _Fatal as exc:
            outcome = "fatal"
            assert exc.__cause__ is not None
            raise exc.__cause__ from None
        finally:
            # Shielded: a cancelled stream must still clean up, and a second cancel must not stop it.
            task = asyncio.ensure_future(run.finish(outcome))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            await asyncio.shield(task)

    async def _start_one_shot(self, header: UploadHeader, writer: uuid.UUID) -> SessionRow | _Held:
        if header.write_offset != 0:
            raise errors.invalid(
                "header.write_offset", "must be 0 without upload_id", "WRITE_OFFSET_MISMATCH"
            )
        held = await self._held(header.digest, header.size)
        if held is not None:
            return held
        upload_id = uuid.uuid4()
        key = blob_key(header.digest) if header.digest else staging_key(str(upload_id))
        async with self._db.connection() as conn:
            return await blob_repo.insert_session(
                conn,
                upload_id,
                resumable=False,
                expected_digest=header.digest,
                expected_size=header.size,
                part_size=part_size_for(header.size, self.tuning.part_size),
                object_key=key,
                ttl=self.tuning.session_ttl,
                writer=writer,
                lease=self.tuning.lease,
            )

    async def _claim(self, header: UploadHeader, writer: uuid.UUID) -> SessionRow | _Held:
        assert header.upload_id is not None
        async with self._db.connection() as conn:
            session = await blob_repo.claim_session(conn, header.upload_id, writer, self.tuning.lease)
            if session is None:
                if await blob_repo.get_session(conn, header.upload_id) is None:
                    raise upload_not_found(header.upload_id)
                raise _busy(header.upload_id)
        try:
            if not session.resumable:
                raise upload_not_found(header.upload_id)
            if header.digest and session.expected_digest and header.digest != session.expected_digest:
                raise errors.invalid("header.digest", "differs from the digest given to StartUpload")
            if (
                header.size is not None
                and session.expected_size is not None
                and header.size != session.expected_size
            ):
                raise errors.invalid(
                    "header.size", "differs from the size given to StartUpload", "SIZE_MISMATCH"
                )
            size = header.size if header.size is not None else session.expected_size
            held = await self._held(header.digest or session.expected_digest, size)
            if held is not None:
                await self._discard(session)
                return held
        except BaseException:
            async with self._db.connection() as conn:
                await blob_repo.release_session(conn, session.upload_id, writer)
            raise
        return session

    async def _held(self, digest: str | None, size: int | None) -> _Held | None:
        if not digest:
            return None
        held = await self.touch(digest)
        if held is None:
            return None
        if size is not None and held != size:
            raise errors.invalid(
                "header.size", f"the blob {digest} has {held} bytes, not {size}", "SIZE_MISMATCH"
            )
        return _Held(digest, held)

    # --- commit ------------------------------------------------------------------------------------------

    async def commit_small(self, session: SessionRow, digest: str, data: bytes) -> None:
        """Stores a blob that fits in one part with a single PUT, once its digest is known to match."""

        async def work(conn: Connection) -> None:
            await blob_repo.lock_digest(conn, digest)
            if await blob_repo.get_blob(conn, digest) is None:
                await self._store.put(blob_key(digest), data)
            await blob_repo.upsert_blob(conn, digest, len(data))
            await blob_repo.delete_session(conn, session.upload_id)

        await self._db.transact(work, attempts=1)

    async def commit_multipart(
        self, session: SessionRow, parts: list[PartRecord], digest: str, size: int
    ) -> None:
        """Completes a verified multipart upload into its blob (through staging when the key was unknown)."""
        assert session.s3_upload_id is not None
        listed = [(p.number, p.etag) for p in parts]
        final = blob_key(digest)
        if session.object_key == final:

            async def direct(conn: Connection) -> None:
                await blob_repo.lock_digest(conn, digest)
                await self._store.complete_multipart(final, session.s3_upload_id or "", listed)
                await blob_repo.upsert_blob(conn, digest, size)
                await blob_repo.delete_session(conn, session.upload_id)

            await self._db.transact(direct, attempts=1)
            return
        await self._store.complete_multipart(session.object_key, session.s3_upload_id, listed)

        async def from_staging(conn: Connection) -> None:
            await blob_repo.lock_digest(conn, digest)
            if await blob_repo.get_blob(conn, digest) is None:
                await self._store.copy(session.object_key, final)
            await blob_repo.upsert_blob(conn, digest, size)
            await blob_repo.delete_session(conn, session.upload_id)

        try:
            await self._db.transact(from_staging, attempts=1)
        finally:
            await self._store.remove(session.object_key)

    @property
    def store(self) -> BlobStore:
        """The blob store."""
        return self._store

    @property
    def db(self) -> Database:
        """The database."""
        return self._db


def _busy(upload_id: uuid.UUID) -> errors.Aborted:
    return errors.Aborted(
        f"upload {upload_id} is being written by another stream; retry when it ends",
        "UPLOAD_BUSY",
        {"upload_id": str(upload_id)},
    )


def _lost(upload_id: uuid.UUID) -> errors.Aborted:
    return errors.Aborted(
        f"upload {upload_id} was taken over or expired while writing; query its status and resume",
        "UPLOAD_LOST",
        {"upload_id": str(upload_id)},
    )


class _Run:
    """The state of one stream writing one session."""

    def __init__(self, uploads: Uploads, session: SessionRow, writer: uuid.UUID) -> None:
        self.uploads = uploads
        self.session = session
        self.writer = writer
        self.tuning = uploads.tuning
        self.parts: list[PartRecord] = list(session.parts)
        self.committed = session.committed_size
        self.s3_upload_id = session.s3_upload_id
        self.next_number = len(self.parts) + 1
        # Parts go to S3 concurrently; the committer records them in order as they finish. One buffer fills
        # while the others upload; the stream is not read while all are taken (gRPC flow control then
        # slows the client). Reused buffers keep the process's memory flat over a long upload.
        expected = session.expected_size
        buffer_size = session.part_size if expected is None else max(1, min(session.part_size, expected))
        self.buffers = _BufferPool(self.tuning.parts_in_flight + 1, buffer_size)
        self.queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self.uploading: list[asyncio.Task[str]] = []
        self.committer: asyncio.Task[None] | None = None
        self.hasher = ResumableSha256()
        self.last_renewal = time.monotonic()
        self.completed = False

    @property
    def db(self) -> Database:
        return self.uploads.db

    @property
    def store(self) -> BlobStore:
        return self.uploads.store

    async def consume(self, write_offset: int, chunks: AsyncIterator[Chunk]) -> UploadResult:
        await self._restore()
        if write_offset != self.committed:
            raise errors.InvalidArgument(
                f"write_offset {write_offset} is not the committed size {self.committed}",
                "WRITE_OFFSET_MISMATCH",
                {"committed_size": str(self.committed)},
                [errors.FieldViolation("header.write_offset", f"must be {self.committed}")],
            )
        expected = self.session.expected_size
        part_size = self.session.part_size
        buffer = await self._next_buffer()
        filled = 0
        received = self.committed
        finished = False
        async for chunk in chunks:
            if finished:
                raise errors.invalid("finish_write", "no message may follow finish_write")
            if len(chunk.data) > MAX_CHUNK:
                raise errors.invalid("chunk", f"chunks are at most {MAX_CHUNK} bytes", "CHUNK_TOO_LARGE")
            received += len(chunk.data)
            if expected is not None and received > expected:
                raise _Fatal() from _size_mismatch(expected, received, "at least ")
            data = memoryview(chunk.data)
            while data:
                n = min(part_size - filled, len(data))
                buffer[filled : filled + n] = data[:n]
                filled += n
                data = data[n:]
                if filled == part_size:
                    await self._send_part(buffer, filled)
                    buffer, filled = await self._next_buffer(), 0
            await self._keep_lease()
            finished = chunk.finish
        if self.session.resumable and not finished:
            await self._drain()
            return UploadResult("", 0, self.committed, complete=False)
        if expected is not None and received != expected:
            raise _Fatal() from _size_mismatch(expected, received, "")
        if self.s3_upload_id is None and not self.parts and self.next_number == 1:
            return await self._finish_small(bytes(buffer[:filled]))
        if filled or self.next_number == 1:
            await self._send_part(buffer, filled)
        await self._drain()
        digest = await self._verified_digest(received)
        await self.uploads.commit_multipart(self._current_session(), self.parts, digest, received)
        self.completed = True
        return UploadResult(digest, received, received, complete=True)

    async def _restore(self) -> None:
        session = self.session
        if effective_committed(session) == 0 and session.committed_size > 0:
            # The saved hash state is unusable here: start the session over (same S3 upload).
            if not await self._with_conn(
                lambda c: blob_repo.set_s3_upload(c, session.upload_id, self.writer, session.s3_upload_id)
            ):
                raise _lost(session.upload_id)
            self.parts, self.committed, self.next_number = [], 0, 1
        elif session.committed_size > 0:
            assert session.sha256_state is not None
            self.hasher = ResumableSha256.from_state(session.sha256_state, session.committed_size)

    async def _finish_small(self, data: bytes) -> UploadResult:
        await asyncio.to_thread(self.hasher.update, data)
        digest = await self._verified_digest(len(data))
        await self.uploads.commit_small(self.session, digest, data)
        self.completed = True
        return UploadResult(digest, len(data), len(data), complete=True)

    async def _verified_digest(self, size: int) -> str:
        digest = "sha256:" + self.hasher.hexdigest()
        expected = self.session.expected_digest
        if expected is not None and digest != expected:
            raise _Fatal() from errors.DataLoss(
                f"received {size} bytes whose digest is {digest}, not the declared {expected}",
                "DIGEST_MISMATCH",
                {"expected": expected, "actual": digest},
            )
        return digest

    async def _send_part(self, buffer: bytearray, size: int) -> None:
        """Hashes and uploads buffer[:size]; the buffer returns to the pool once S3 has it."""
        if self.next_number > MAX_PARTS:
            raise _Fatal() from errors.invalid(
                "header.size", "blob too large for the part size; declare its size up front", "BLOB_TOO_LARGE"
            )
        self._check_committer()
        data = memoryview(buffer)[:size]
        await asyncio.to_thread(self.hasher.update, data)
        state = self.hasher.state()
        if self.s3_upload_id is None:
            self.s3_upload_id = await self.store.create_multipart(self.session.object_key)
            upload_id = self.s3_upload_id
            if not await self._with_conn(
                lambda c: blob_repo.set_s3_upload(c, self.session.upload_id, self.writer, upload_id)
            ):
                await self.store.abort_multipart(self.session.object_key, upload_id)
                raise _lost(self.session.upload_id)
        number = self.next_number
        self.next_number += 1
        task = asyncio.ensure_future(
            self.store.upload_part(self.session.object_key, self.s3_upload_id, number, data)
        )
        self.uploading.append(task)
        task.add_done_callback(self._forget)
        task.add_done_callback(lambda _: self.buffers.put(buffer))
        if self.committer is None:
            self.committer = asyncio.ensure_future(self._commit_in_order())
        self.queue.put_nowait(_Pending(number, len(data), state, task))

    async def _next_buffer(self) -> bytearray:
        buffer = await self.buffers.get()
        if buffer is None:
            self._check_committer()
            raise AssertionError("buffer pool failed without a committer error")
        return buffer

    def _forget(self, task: asyncio.Task[str]) -> None:
        self.uploading.remove(task)

    def _check_committer(self) -> None:
        if self.committer is not None and self.committer.done():
            self.committer.result()  # raises what made it stop
            raise AssertionError("committer stopped early")

    async def _commit_in_order(self) -> None:
        try:
            while (pending := await self.queue.get()) is not None:
                etag = await pending.task
                part = PartRecord(pending.number, etag, pending.size)
                async with self.db.connection() as conn:
                    recorded = await blob_repo.record_part(
                        conn,
                        self.session.upload_id,
                        self.writer,
                        part,
                        committed_before=self.committed,
                        sha256_state=pending.state,
                        ttl=self.tuning.session_ttl,
                        lease=self.tuning.lease,
                    )
                if not recorded:
                    raise _lost(self.session.upload_id)
                self.parts.append(part)
                self.committed += part.size
                self.last_renewal = time.monotonic()
        except BaseException:
            self.buffers.fail()  # wake a writer waiting for a buffer so that it sees the failure
            raise

    async def _drain(self) -> None:
        if self.committer is not None:
            self.queue.put_nowait(None)
            await self.committer
            self.committer = None

    async def _keep_lease(self) -> None:
        if time.monotonic() - self.last_renewal < self.tuning.lease.total_seconds() / 3:
            return
        renewed = await self._with_conn(
            lambda c: blob_repo.renew_lease(c, self.session.upload_id, self.writer, self.tuning.lease)
        )
        if not renewed:
            raise _lost(self.session.upload_id)
        self.last_renewal = time.monotonic()

    def _current_session(self) -> SessionRow:
        s = self.session
        return SessionRow(
            s.upload_id, s.resumable, s.expected_digest, s.expected_size, s.part_size, s.object_key,
            self.s3_upload_id, tuple(self.parts), self.committed, None, self.writer, None, s.expire_time,
        )  # fmt: skip

    async def _with_conn(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        async with self.db.connection() as conn:
            return await fn(conn)

    async def finish(self, outcome: str) -> None:
        """Cleans up after the stream: waits for parts still uploading, then keeps or discards the session."""
        if self.uploading:
            await asyncio.wait(list(self.uploading))
        if self.committer is not None:
            keep = self.session.resumable and outcome != "fatal"
            if keep:
                self.queue.put_nowait(None)  # record the parts that made it, so a resume starts after them
            else:
                self.committer.cancel()
            await asyncio.wait([self.committer])
            if not self.committer.cancelled() and self.committer.exception() is not None:
                log.info("upload %s stopped: %s", self.session.upload_id, self.committer.exception())
        if self.completed:
            return
        try:
            if self.session.resumable and outcome != "fatal":
                async with self.db.connection() as conn:
                    await blob_repo.release_session(conn, self.session.upload_id, self.writer)
            else:
                await self.uploads._discard(self._current_session())
        except errors.RegistryError as exc:
            # Garbage collection removes what is left once the session's lease or expiry runs out.
            log.warning("could not clean up upload %s: %s", self.session.upload_id, exc)


@dataclass(frozen=True)
class _Pending:
    """A part on its way to S3, with the hash state after it."""

    number: int
    size: int
    state: bytes | None
    task: asyncio.Task[str]


class _BufferPool:
    """At most `count` part buffers, created on first need and handed back after each upload."""

    def __init__(self, count: int, size: int) -> None:
        self._count = count
        self._size = size
        self._created = 0
        self._free: asyncio.Queue[bytearray | None] = asyncio.Queue()

    async def get(self) -> bytearray | None:
        """A free buffer, waiting for one when all are in use; None once the pool has failed."""
        if self._free.empty() and self._created < self._count:
            self._created += 1
            return bytearray(self._size)
        buffer = await self._free.get()
        if buffer is None:
            self._free.put_nowait(None)
        return buffer

    def put(self, buffer: bytearray) -> None:
        """Returns a buffer."""
        self._free.put_nowait(buffer)

    def fail(self) -> None:
        """Makes waiting and future `get` calls stop (the committer failed)."""
        self._free.put_nowait(None)


def _size_mismatch(expected: int, received: int, qualifier: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        f"declared size {expected} but received {qualifier}{received} bytes",
        "SIZE_MISMATCH",
        {"expected": str(expected), "received": str(received)},
        [errors.FieldViolation("header.size", f"does not match the {qualifier}{received} bytes sent")],
    )
