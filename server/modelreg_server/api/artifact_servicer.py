"""modelreg.v1.ArtifactService: validation and protobuf in/out around the artifact store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from modelreg.v1 import artifact_service_pb2 as pb
from modelreg.v1 import artifact_service_pb2_grpc as pb_grpc
from modelreg_server import telemetry
from modelreg_server.api import validation as val
from modelreg_server.api.identity import caller
from modelreg_server.api.status import streaming, unary
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.artifacts import MAX_FIND_MISSING, Artifacts
from modelreg_server.domain.direct_uploads import DirectUploads
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.uploads import Chunk, UploadHeader, effective_committed
from modelreg_server.storage.blob_repo import SessionRow

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(when: Any) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _digest(field: str, digest: str, *, required: bool) -> str:
    v = val.Violations()
    val.check_digest(field, digest, v, required=required)
    v.check()
    return digest


def _upload_id(field: str, text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise errors.invalid(field, "must be an upload id from StartUpload") from None


def _status(session: SessionRow) -> pb.UploadStatus:
    status = pb.UploadStatus(
        upload_id=str(session.upload_id),
        committed_size=effective_committed(session),
        digest=session.expected_digest or "",
        part_size=session.part_size,
        expire_time=_timestamp(session.expire_time),
    )
    if session.expected_size is not None:
        status.size = session.expected_size
    return status


def _header(message: pb.UploadBlobRequest) -> UploadHeader:
    if message.WhichOneof("kind") != "header":
        raise errors.invalid("header", "the first message must carry the upload header")
    h = message.header
    v = val.Violations()
    val.check_digest("header.digest", h.digest, v)
    if h.HasField("size") and h.size < 0:
        v.add("header.size", "must be ≥ 0")
    if h.write_offset < 0:
        v.add("header.write_offset", "must be ≥ 0")
    v.check()
    return UploadHeader(
        digest=h.digest or None,
        size=h.size if h.HasField("size") else None,
        upload_id=_upload_id("header.upload_id", h.upload_id) if h.upload_id else None,
        write_offset=h.write_offset,
    )


async def _chunks(
    first: pb.UploadBlobRequest, rest: AsyncIterator[pb.UploadBlobRequest]
) -> AsyncIterator[Chunk]:
    if first.finish_write:
        yield Chunk(b"", finish=True)
    async for message in rest:
        if message.WhichOneof("kind") == "header":
            raise errors.invalid("header", "only the first message may carry a header")
        yield Chunk(message.chunk, message.finish_write)


class ArtifactServicer(pb_grpc.ArtifactServiceServicer):
    """Serves the artifact store; without one, every call is FAILED_PRECONDITION."""

    def __init__(self, artifacts: Artifacts | None, access: AccessControl) -> None:
        self._artifacts = artifacts
        self.access = access

    async def _read(self, context: Context, resource: str) -> None:
        await self.access.require(caller(context), Permission.READ, resource)

    async def _write(self, context: Context, resource: str) -> None:
        await self.access.require(caller(context), Permission.ARTIFACTS_WRITE, resource, any_scope=True)

    @property
    def _store(self) -> Artifacts:
        if self._artifacts is None:
            raise errors.FailedPrecondition(
                "artifact storage not configured (set MODELREG_S3_ENDPOINT)", "STORAGE_NOT_CONFIGURED"
            )
        return self._artifacts

    @unary
    async def FindMissingBlobs(
        self, request: pb.FindMissingBlobsRequest, context: Context
    ) -> pb.FindMissingBlobsResponse:
        await self._read(context, "blobs")
        v = val.Violations()
        if len(request.digests) > MAX_FIND_MISSING:
            v.add("digests", f"at most {MAX_FIND_MISSING} digests per call")
        for i, digest in enumerate(request.digests):
            val.check_digest(f"digests[{i}]", digest, v, required=True)
        v.check()
        missing = await self._store.find_missing(list(request.digests))
        return pb.FindMissingBlobsResponse(missing_digests=missing)

    @unary
    async def StatBlob(self, request: pb.StatBlobRequest, context: Context) -> pb.Blob:
        digest = _digest("digest", request.digest, required=True)
        await self._read(context, f"blobs/{digest}")
        row = await self._store.stat(digest)
        return pb.Blob(digest=row.digest, size=row.size, create_time=_timestamp(row.create_time))

    @unary
    async def StartUpload(self, request: pb.StartUploadRequest, context: Context) -> pb.UploadStatus:
        await self._write(context, "uploads")
        v = val.Violations()
        val.check_digest("digest", request.digest, v)
        if request.HasField("size") and request.size < 0:
            v.add("size", "must be ≥ 0")
        v.check()
        artifacts = self._store
        await artifacts.ready()
        size = request.size if request.HasField("size") else None
        return _status(await artifacts.uploads.start(request.digest or None, size))

    @unary
    async def QueryUploadStatus(
        self, request: pb.QueryUploadStatusRequest, context: Context
    ) -> pb.UploadStatus:
        upload_id = _upload_id("upload_id", request.upload_id)
        await self._write(context, f"uploads/{upload_id}")
        return _status(await self._store.uploads.status(upload_id))

    @unary
    async def CancelUpload(self, request: pb.CancelUploadRequest, context: Context) -> empty_pb2.Empty:
        upload_id = _upload_id("upload_id", request.upload_id)
        await self._write(context, f"uploads/{upload_id}")
        await self._store.uploads.cancel(upload_id)
        return empty_pb2.Empty()

    @unary
    async def UploadBlob(
        self, request: AsyncIterator[pb.UploadBlobRequest], context: Context
    ) -> pb.UploadBlobResponse:
        await self._write(context, "blobs")
        artifacts = self._store
        messages = aiter(request)
        first = await anext(messages, None)
        if first is None:
            raise errors.invalid("header", "the stream must start with an upload header")
        header = _header(first)
        await artifacts.ready()
        result = await artifacts.uploads.upload(header, _chunks(first, messages))
        if result.complete and not result.deduplicated:
            telemetry.bytes_uploaded.add(result.size)
            await self.access.audit.record_alone(caller(context), f"blobs/{result.digest}", size=result.size)
        return pb.UploadBlobResponse(
            digest=result.digest,
            size=result.size,
            committed_size=result.committed_size,
            complete=result.complete,
            deduplicated=result.deduplicated,
        )

    @streaming
    async def DownloadBlob(
        self, request: pb.DownloadBlobRequest, context: Context
    ) -> AsyncIterator[pb.DownloadBlobResponse]:
        digest = _digest("digest", request.digest, required=True)
        await self._read(context, f"blobs/{digest}")
        async for data in self._store.download(digest, request.read_offset, request.read_limit):
            telemetry.bytes_downloaded.add(len(data))
            yield pb.DownloadBlobResponse(data=data)

    @unary
    async def GetBlobDownloadUrl(
        self, request: pb.GetBlobDownloadUrlRequest, context: Context
    ) -> pb.GetBlobDownloadUrlResponse:
        digest = _digest("digest", request.digest, required=True)
        await self._read(context, f"blobs/{digest}")
        v = val.Violations()
        if request.HasField("expiry"):
            val.check_duration("expiry", request.expiry, v)
        v.check()
        expiry = request.expiry.ToTimedelta() if request.HasField("expiry") else timedelta(0)
        url, valid_for = await self._store.download_url(digest, expiry)
        expire = timestamp_pb2.Timestamp()
        expire.GetCurrentTime()
        expire.FromSeconds(expire.seconds + int(valid_for.total_seconds()))
        return pb.GetBlobDownloadUrlResponse(url=url, expire_time=expire)

    @unary
    async def CreateDirectUpload(
        self, request: pb.CreateDirectUploadRequest, context: Context
    ) -> pb.DirectUpload:
        await self._write(context, "blobs")
        v = val.Violations()
        val.check_digest("digest", request.digest, v, required=True)
        if request.size < 0:
            v.add("size", "must be ≥ 0")
        if request.HasField("expiry"):
            val.check_duration("expiry", request.expiry, v)
        v.check()
        expiry = request.expiry.ToTimedelta() if request.HasField("expiry") else timedelta(0)
        ticket = await DirectUploads(self._store).create(request.digest, request.size, expiry)
        response = pb.DirectUpload(
            url=ticket.url, headers=ticket.headers, already_stored=ticket.already_stored
        )
        if ticket.expire_time is not None:
            response.expire_time.CopyFrom(_timestamp(ticket.expire_time))
        return response

    @unary
    async def CommitDirectUpload(self, request: pb.CommitDirectUploadRequest, context: Context) -> pb.Blob:
        await self._write(context, "blobs")
        v = val.Violations()
        val.check_digest("digest", request.digest, v, required=True)
        if request.size < 0:
            v.add("size", "must be ≥ 0")
        v.check()
        row, created = await DirectUploads(self._store).commit(request.digest, request.size)
        if created:
            telemetry.bytes_uploaded.add(row.size)
            await self.access.audit.record_alone(
                caller(context), f"blobs/{row.digest}", size=row.size, path="direct"
            )
        return pb.Blob(digest=row.digest, size=row.size, create_time=_timestamp(row.create_time))
