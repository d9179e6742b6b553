"""Uploading blobs and model packages through ArtifactService in tests."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from modelreg.v1 import artifact_service_pb2 as pb
from modelreg_server.domain.manifest import Manifest, ManifestFile, canonical_bytes

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    """`sha256:<hex>` of data."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunks_of(data: bytes, size: int = MiB) -> list[bytes]:
    """data cut into chunks of at most `size`."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def header(
    digest: str = "", size: int | None = None, upload_id: str = "", offset: int = 0
) -> pb.UploadBlobRequest:
    """The first message of an upload."""
    h = pb.UploadHeader(digest=digest, upload_id=upload_id, write_offset=offset)
    if size is not None:
        h.size = size
    return pb.UploadBlobRequest(header=h)


def messages(first: pb.UploadBlobRequest, data: bytes, *, finish: bool = False) -> list[pb.UploadBlobRequest]:
    """A whole upload stream: header, chunks, optionally finish_write."""
    out = [first] + [pb.UploadBlobRequest(chunk=c) for c in chunks_of(data)]
    if finish:
        out.append(pb.UploadBlobRequest(finish_write=True))
    return out


async def upload(
    stub: ArtifactServiceAsyncStub, data: bytes, *, declare: bool = True
) -> pb.UploadBlobResponse:
    """Uploads one blob in a single stream."""
    first = header(sha(data), len(data)) if declare else header()
    return await stub.UploadBlob(iter(messages(first, data)))


async def publish(
    stub: ArtifactServiceAsyncStub, files: dict[str, bytes], fmt: str = "onnx"
) -> tuple[str, Manifest]:
    """Uploads the files and the canonical manifest; returns the manifest digest and the manifest."""
    for content in files.values():
        await upload(stub, content)
    manifest = Manifest.of(fmt, [ManifestFile(p, sha(c), len(c)) for p, c in files.items()])
    data = canonical_bytes(manifest)
    await upload(stub, data)
    return sha(data), manifest
