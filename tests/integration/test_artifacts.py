"""ArtifactService against a real server process, SeaweedFS and PostgreSQL; package checks and GC at the
domain level in the test's event loop against the same database and bucket."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import grpc
import pytest

from modelreg.v1 import artifact_service_pb2 as pb
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as reg_pb
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg_server.devstack import SeaweedS3
from modelreg_server.domain import errors
from modelreg_server.domain.artifacts import Artifacts, lock_package
from modelreg_server.domain.gc import collect
from modelreg_server.domain.manifest import Manifest, ManifestFile, canonical_bytes
from modelreg_server.storage.blobstore import BlobStore, blob_key
from modelreg_server.storage.db import Connection, Database, create_pool
from tests.integration.conftest import TEST_BUCKET
from tests.support.packages import chunks_of, header, messages, publish, sha, upload
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub as Stub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub as RegistryStub

Code = grpc.StatusCode
MiB = 1024 * 1024
PART = 8 * MiB
T = TypeVar("T")


def open_upload(stub: Stub) -> grpc.aio.StreamUnaryCall[pb.UploadBlobRequest, pb.UploadBlobResponse]:
    """A call to write messages into one by one (grpc.aio allows no iterator; the stubs' types do not)."""
    return stub.UploadBlob()  # type: ignore[call-arg]


async def download(stub: Stub, digest: str, offset: int = 0, limit: int = 0) -> bytes:
    call = stub.DownloadBlob(pb.DownloadBlobRequest(digest=digest, read_offset=offset, read_limit=limit))
    return b"".join([r.data async for r in call])


async def eventually(check: Callable[[], Awaitable[T]], *, within: float = 15.0) -> T:
    """Polls check until it returns a truthy value, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def stub(server_address: str) -> AsyncIterator[Stub]:
    async with open_channel(server_address) as channel:
        yield ArtifactServiceStub(channel)


@pytest.fixture
async def registry(server_address: str) -> AsyncIterator[RegistryStub]:
    async with open_channel(server_address) as channel:
        yield ModelRegistryServiceStub(channel)


@pytest.fixture
async def db(database_url: str, server_address: str) -> AsyncIterator[Database]:
    """The server's database (migrated by the server) from the test's event loop."""
    database = Database(await create_pool(database_url, min_size=1, max_size=8))
    yield database
    await database.close()


@pytest.fixture
async def store(s3: SeaweedS3) -> AsyncIterator[BlobStore]:
    blob_store = BlobStore.connect(s3.endpoint, s3.access_key, s3.secret_key, TEST_BUCKET)
    await blob_store.ready()
    yield blob_store
    blob_store.close()


@pytest.fixture
def artifacts(db: Database, store: BlobStore) -> Artifacts:
    return Artifacts(db, store)


async def pending_uploads(store: BlobStore, key: str) -> list[str]:
    return [u.upload_id for u in await store.list_multipart_uploads(key) if u.key == key]


async def sessions_for(db: Database, digest: str) -> int:
    async with db.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM upload_sessions WHERE expected_digest = $1", digest)
    return int(count)


async def assert_nothing_left(stub: Stub, store: BlobStore, db: Database, digest: str) -> None:
    failure = await fails(stub.StatBlob(pb.StatBlobRequest(digest=digest)))
    assert (failure.code, failure.reason) == (Code.NOT_FOUND, "BLOB_NOT_FOUND")
    assert await store.stat(blob_key(digest)) is None
    assert await pending_uploads(store, blob_key(digest)) == []
    assert await sessions_for(db, digest) == 0


# --- upload and download ---------------------------------------------------------------------------------


async def test_round_trip_of_a_multi_part_blob_is_bit_exact(stub: Stub) -> None:
    data = os.urandom(2 * PART + 3 * MiB + 123)
    result = await upload(stub, data)
    assert (result.digest, result.size, result.complete, result.deduplicated) == (
        sha(data),
        len(data),
        True,
        False,
    )
    stat = await stub.StatBlob(pb.StatBlobRequest(digest=sha(data)))
    assert stat.size == len(data)
    assert await download(stub, sha(data)) == data


async def test_upload_without_declared_digest_goes_through_staging(stub: Stub, store: BlobStore) -> None:
    data = os.urandom(PART + 5)
    result = await upload(stub, data, declare=False)
    assert (result.digest, result.size, result.complete) == (sha(data), len(data), True)
    assert await download(stub, sha(data)) == data
    assert [o.key for o in await store.list_objects("staging/")] == []


async def test_small_and_empty_blobs(stub: Stub) -> None:
    for data in (b"", b"x", os.urandom(3 * MiB)):
        result = await upload(stub, data)
        assert (result.digest, result.complete) == (sha(data), True)
        assert await download(stub, sha(data)) == data


async def test_second_upload_completes_from_the_header_alone(stub: Stub) -> None:
    data = os.urandom(PART + 1)
    await upload(stub, data)
    call = open_upload(stub)
    await call.write(header(sha(data), len(data)))
    result = await call  # no chunk sent and the stream never closed: the server answered at once
    assert (result.digest, result.size, result.complete, result.deduplicated) == (
        sha(data),
        len(data),
        True,
        True,
    )


async def test_find_missing_blobs(stub: Stub) -> None:
    held = os.urandom(100)
    await upload(stub, held)
    absent = sha(os.urandom(100))
    response = await stub.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=[absent, sha(held), absent]))
    assert list(response.missing_digests) == [absent]
    failure = await fails(stub.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=["sha256:nope"])))
    assert failure.code == Code.INVALID_ARGUMENT


async def test_digest_mismatch_is_data_loss_and_leaves_nothing(
    stub: Stub, store: BlobStore, db: Database
) -> None:
    for data in (os.urandom(PART + MiB), os.urandom(1000)):  # multipart, and single-PUT
        claimed = sha(data + b"!")
        failure = await fails(stub.UploadBlob(iter(messages(header(claimed, len(data)), data))))
        assert (failure.code, failure.reason) == (Code.DATA_LOSS, "DIGEST_MISMATCH")
        assert failure.metadata["actual"] == sha(data)
        await assert_nothing_left(stub, store, db, claimed)
        assert await store.stat(blob_key(sha(data))) is None


async def test_size_mismatch_is_invalid_argument(stub: Stub, store: BlobStore) -> None:
    data = os.urandom(PART + 10)
    for declared in (len(data) + 1, len(data) - 1):
        failure = await fails(stub.UploadBlob(iter(messages(header("", declared), data))))
        assert (failure.code, failure.reason) == (Code.INVALID_ARGUMENT, "SIZE_MISMATCH")
    assert await store.list_multipart_uploads("staging/") == []
    assert await store.list_objects("staging/") == []


async def test_bad_streams_are_refused(stub: Stub) -> None:
    failure = await fails(stub.UploadBlob(iter([pb.UploadBlobRequest(chunk=b"x")])))
    assert failure.code == Code.INVALID_ARGUMENT
    failure = await fails(stub.UploadBlob(iter([header(), pb.UploadBlobRequest(chunk=b"x" * (MiB + 1))])))
    assert (failure.code, failure.reason) == (Code.INVALID_ARGUMENT, "CHUNK_TOO_LARGE")
    failure = await fails(stub.UploadBlob(iter([header(), header()])))
    assert failure.code == Code.INVALID_ARGUMENT
    failure = await fails(stub.UploadBlob(iter([header(digest="sha256:short")])))
    assert failure.field_violations[0][0] == "header.digest"


async def test_cancelled_upload_leaves_nothing_visible(stub: Stub, store: BlobStore, db: Database) -> None:
    data = os.urandom(3 * PART)
    digest = sha(data)
    call = open_upload(stub)
    await call.write(header(digest, len(data)))
    for chunk in chunks_of(data[: 2 * PART + MiB]):
        await call.write(pb.UploadBlobRequest(chunk=chunk))

    async def some_part_committed() -> bool:
        async with db.connection() as conn:
            committed = await conn.fetchval(
                "SELECT max(committed_size) FROM upload_sessions WHERE expected_digest = $1", digest
            )
        return bool(committed)

    await eventually(some_part_committed)
    call.cancel()

    async def cleaned_up() -> bool:
        return await sessions_for(db, digest) == 0 and await pending_uploads(store, blob_key(digest)) == []

    await eventually(cleaned_up)
    await assert_nothing_left(stub, store, db, digest)


async def test_download_ranges(stub: Stub) -> None:
    data = os.urandom(2 * MiB + 17)
    digest = (await upload(stub, data)).digest
    assert await download(stub, digest, 5, 10) == data[5:15]
    assert await download(stub, digest, MiB - 1, MiB + 2) == data[MiB - 1 : 2 * MiB + 1]
    assert await download(stub, digest, len(data) - 3) == data[-3:]
    assert await download(stub, digest, 100, 10 * len(data)) == data[100:]
    assert await download(stub, digest, len(data)) == b""
    for offset in (len(data) + 1, -1):
        failure = await fails(download(stub, digest, offset))
        assert (failure.code, failure.reason) == (Code.OUT_OF_RANGE, "READ_OFFSET_OUT_OF_RANGE")
    failure = await fails(download(stub, digest, 0, -1))
    assert failure.code == Code.INVALID_ARGUMENT
    failure = await fails(download(stub, sha(b"never uploaded")))
    assert (failure.code, failure.reason) == (Code.NOT_FOUND, "BLOB_NOT_FOUND")


async def test_presigned_url_serves_the_bytes(stub: Stub) -> None:
    data = os.urandom(MiB + 3)
    digest = (await upload(stub, data)).digest
    response = await stub.GetBlobDownloadUrl(pb.GetBlobDownloadUrlRequest(digest=digest))
    assert response.expire_time.seconds > time.time() + 14 * 60

    def fetch() -> bytes:
        with urllib.request.urlopen(response.url, timeout=10) as page:
            return bytes(page.read())

    assert await asyncio.to_thread(fetch) == data


# --- resumable uploads -----------------------------------------------------------------------------------


async def resume_until_free(stub: Stub, requests: list[pb.UploadBlobRequest]) -> pb.UploadBlobResponse:
    """Retries while the previous (cancelled) stream still holds the session's lease."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await stub.UploadBlob(iter(requests))
        except grpc.aio.AioRpcError as err:
            if err.code() != Code.ABORTED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_resume_after_a_cut_stream(stub: Stub) -> None:
    data = os.urandom(2 * PART + 3 * MiB + 7)
    digest = sha(data)
    status = await stub.StartUpload(pb.StartUploadRequest(digest=digest, size=len(data)))
    assert (status.committed_size, status.part_size, status.size) == (0, PART, len(data))
    upload_id = status.upload_id

    call = open_upload(stub)
    await call.write(header(upload_id=upload_id))
    for chunk in chunks_of(data[: 2 * PART + 2 * MiB]):
        await call.write(pb.UploadBlobRequest(chunk=chunk))

    async def two_parts() -> bool:
        query = pb.QueryUploadStatusRequest(upload_id=upload_id)
        return (await stub.QueryUploadStatus(query)).committed_size == 2 * PART

    await eventually(two_parts)
    call.cancel()
    committed = (
        await stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=upload_id))
    ).committed_size
    assert committed == 2 * PART  # the 2 MiB of the unfinished third part are not committed

    wrong = messages(header(upload_id=upload_id, offset=committed + 1), data[committed + 1 :], finish=True)
    failure = await fails(resume_until_free(stub, wrong))
    assert (failure.code, failure.reason) == (Code.INVALID_ARGUMENT, "WRITE_OFFSET_MISMATCH")
    assert failure.metadata["committed_size"] == str(committed)

    rest = messages(header(upload_id=upload_id, offset=committed), data[committed:], finish=True)
    result = await resume_until_free(stub, rest)
    assert (result.digest, result.size, result.complete) == (digest, len(data), True)
    assert await download(stub, digest) == data
    failure = await fails(stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=upload_id)))
    assert (failure.code, failure.reason) == (Code.NOT_FOUND, "UPLOAD_NOT_FOUND")


async def test_resumable_stream_without_finish_pauses(stub: Stub) -> None:
    data = os.urandom(PART + MiB)
    upload_id = (await stub.StartUpload(pb.StartUploadRequest())).upload_id
    paused = await stub.UploadBlob(iter(messages(header(upload_id=upload_id), data[: PART + 100])))
    assert (paused.complete, paused.committed_size, paused.digest) == (False, PART, "")
    done = await stub.UploadBlob(
        iter(messages(header(upload_id=upload_id, offset=PART), data[PART:], finish=True))
    )
    assert (done.complete, done.digest) == (True, sha(data))
    assert await download(stub, sha(data)) == data


async def test_cancel_upload_discards_the_session(stub: Stub, store: BlobStore) -> None:
    data = os.urandom(PART + MiB)
    status = await stub.StartUpload(pb.StartUploadRequest(digest=sha(data)))
    await stub.UploadBlob(iter(messages(header(upload_id=status.upload_id), data)))
    assert await pending_uploads(store, blob_key(sha(data)))
    await stub.CancelUpload(pb.CancelUploadRequest(upload_id=status.upload_id))
    assert await pending_uploads(store, blob_key(sha(data))) == []
    failure = await fails(stub.CancelUpload(pb.CancelUploadRequest(upload_id=status.upload_id)))
    assert failure.code == Code.NOT_FOUND


# --- packages --------------------------------------------------------------------------------------------


async def test_verify_package(stub: Stub, artifacts: Artifacts, db: Database) -> None:
    digest, manifest = await publish(stub, {"model.onnx": os.urandom(1000), "conf/labels.txt": b"cat\ndog\n"})
    verified = await artifacts.verify_package(digest)
    assert verified == manifest
    async with db.connection() as conn:
        recorded = await conn.fetch(
            "SELECT file_digest FROM manifest_files WHERE manifest_digest = $1", digest
        )
    assert {r["file_digest"] for r in recorded} == set(manifest.file_digests)


async def test_verify_package_reports_missing_blobs(stub: Stub, artifacts: Artifacts) -> None:
    present, absent = os.urandom(10), os.urandom(10)
    await upload(stub, present)
    manifest = Manifest.of(
        "sklearn", [ManifestFile("a.pkl", sha(present), 10), ManifestFile("b.pkl", sha(absent), 10)]
    )
    await upload(stub, canonical_bytes(manifest))
    with pytest.raises(errors.FailedPrecondition) as caught:
        await artifacts.verify_package(sha(canonical_bytes(manifest)))
    assert caught.value.reason == "BLOBS_MISSING"
    assert [(v.type, v.subject) for v in caught.value.violations] == [("BLOB_MISSING", sha(absent))]
    assert "b.pkl" in caught.value.violations[0].description


@pytest.mark.parametrize("path", ["../../etc/cron.d/x", "/abs", "a\\b", "dup", "a/./b"])
async def test_verify_package_refuses_unsafe_paths(stub: Stub, artifacts: Artifacts, path: str) -> None:
    content = os.urandom(8)
    await upload(stub, content)
    files = [
        ManifestFile(path, sha(content), 8),
        ManifestFile("dup" if path == "dup" else "ok", sha(content), 8),
    ]
    data = canonical_bytes(Manifest.of("custom", files))
    await upload(stub, data)
    with pytest.raises(errors.InvalidArgument) as caught:
        await artifacts.verify_package(sha(data))
    assert caught.value.reason == "UNSAFE_MANIFEST"


async def test_verify_package_refuses_bad_manifests(stub: Stub, artifacts: Artifacts) -> None:
    with pytest.raises(errors.NotFound) as missing:
        await artifacts.verify_package(sha(b"no such manifest"))
    assert missing.value.reason == "MANIFEST_NOT_FOUND"
    not_json = (await upload(stub, b"model weights, not a manifest")).digest
    with pytest.raises(errors.InvalidArgument) as invalid:
        await artifacts.verify_package(not_json)
    assert invalid.value.reason == "INVALID_MANIFEST"
    content = os.urandom(8)
    await upload(stub, content)
    lying = (
        await upload(stub, canonical_bytes(Manifest.of("onnx", [ManifestFile("m", sha(content), 9)])))
    ).digest
    with pytest.raises(errors.InvalidArgument) as size:
        await artifacts.verify_package(lying)
    assert size.value.reason == "INVALID_MANIFEST"


# --- garbage collection ----------------------------------------------------------------------------------


async def register(db: Database, artifacts: Artifacts, model_id: str, digest: str) -> int:
    """What CreateModelVersion does: verify the package, then lock its blobs in the inserting transaction."""
    manifest = await artifacts.verify_package(digest)

    async def work(conn: Connection) -> int:
        await lock_package(conn, digest, manifest)
        number = await conn.fetchval(
            "UPDATE models SET latest_version = latest_version + 1 WHERE model_id = $1"
            " RETURNING latest_version",
            model_id,
        )
        await conn.execute(
            "INSERT INTO model_versions (model_id, version, creator, artifact_digest)"
            " VALUES ($1, $2, 'test', $3)",
            model_id,
            number,
            digest,
        )
        return int(number)

    return await db.transact(work)


async def new_model(registry: RegistryStub) -> str:
    model_id = f"gc-{uuid.uuid4().hex[:12]}"
    await registry.CreateModel(reg_pb.CreateModelRequest(model_id=model_id, model=model_pb2.Model()))
    return model_id


async def assert_stored(store: BlobStore, db: Database, digests: Iterable[str]) -> None:
    for digest in digests:
        async with db.connection() as conn:
            row = await conn.fetchval("SELECT 1 FROM blobs WHERE digest = $1", digest)
        assert row == 1, f"{digest} lost its row"
        assert await store.stat(blob_key(digest)) is not None, f"{digest} lost its object"


async def test_gc_keeps_referenced_blobs_and_deletes_the_rest(
    stub: Stub, registry: RegistryStub, artifacts: Artifacts, db: Database, store: BlobStore
) -> None:
    model_id = await new_model(registry)
    manifest_digest, manifest = await publish(stub, {"w.bin": os.urandom(PART + 1), "cfg.json": b"{}"})
    await register(db, artifacts, model_id, manifest_digest)
    loose_bytes = os.urandom(5000)
    loose = (await upload(stub, loose_bytes)).digest

    kept = await collect(db, store, grace=timedelta(hours=1), dry_run=False)
    assert loose not in kept.deleted_blobs
    dry = await collect(db, store, grace=timedelta(0), dry_run=True)
    assert loose in dry.deleted_blobs
    await assert_stored(store, db, [loose])

    report = await collect(db, store, grace=timedelta(0), dry_run=False)
    assert loose in report.deleted_blobs
    assert await store.stat(blob_key(loose)) is None
    failure = await fails(stub.StatBlob(pb.StatBlobRequest(digest=loose)))
    assert failure.code == Code.NOT_FOUND
    assert not {manifest_digest, *manifest.file_digests} & set(report.deleted_blobs)
    await assert_stored(store, db, [manifest_digest, *manifest.file_digests])
    again = await upload(stub, loose_bytes)
    assert (again.complete, again.deduplicated) == (True, False)
    assert await download(stub, loose) == loose_bytes


async def test_concurrent_registration_and_gc_never_strand_a_version(
    stub: Stub, registry: RegistryStub, artifacts: Artifacts, db: Database, store: BlobStore
) -> None:
    model_id = await new_model(registry)
    outcomes: dict[str, int] = {}
    for _ in range(8):
        digest, manifest = await publish(stub, {"model.bin": os.urandom(2000), "meta.txt": os.urandom(10)})
        results = await asyncio.gather(
            register(db, artifacts, model_id, digest),
            collect(db, store, grace=timedelta(0), dry_run=False),
            collect(db, store, grace=timedelta(0), dry_run=False),
            return_exceptions=True,
        )
        registered = results[0]
        for other in results[1:]:
            assert not isinstance(other, BaseException), other
        if isinstance(registered, BaseException):
            assert isinstance(registered, (errors.FailedPrecondition, errors.NotFound)), registered
            assert registered.reason in {"BLOBS_MISSING", "MANIFEST_NOT_FOUND"}
            outcomes[registered.reason] = outcomes.get(registered.reason, 0) + 1
        else:
            outcomes["registered"] = outcomes.get("registered", 0) + 1
            await assert_stored(store, db, [digest, *manifest.file_digests])
    await collect(db, store, grace=timedelta(0), dry_run=False)
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT artifact_digest FROM model_versions WHERE model_id = $1", model_id)
    for row in rows:
        manifest = await artifacts.verify_package(row["artifact_digest"])
        await assert_stored(store, db, [row["artifact_digest"], *manifest.file_digests])
    assert sum(outcomes.values()) == 8


async def test_gc_expires_stale_sessions_and_orphan_uploads(
    stub: Stub, db: Database, store: BlobStore
) -> None:
    data = os.urandom(PART + 1)
    status = await stub.StartUpload(pb.StartUploadRequest(digest=sha(data)))
    await stub.UploadBlob(iter(messages(header(upload_id=status.upload_id), data)))
    orphan_key = blob_key(sha(b"orphan"))
    orphan = await store.create_multipart(orphan_key)
    kept = await collect(db, store, grace=timedelta(hours=1), dry_run=False)
    assert kept.expired_sessions == 0
    assert await pending_uploads(store, orphan_key) == [orphan]

    async with db.connection() as conn:
        await conn.execute(
            "UPDATE upload_sessions SET expire_time = now() - interval '1 second' WHERE upload_id = $1",
            uuid.UUID(status.upload_id),
        )
    report = await collect(db, store, grace=timedelta(0), dry_run=False)
    assert report.expired_sessions >= 1
    assert report.aborted_multipart_uploads >= 1
    assert await pending_uploads(store, blob_key(sha(data))) == []
    assert await pending_uploads(store, orphan_key) == []
    failure = await fails(stub.QueryUploadStatus(pb.QueryUploadStatusRequest(upload_id=status.upload_id)))
    assert failure.code == Code.NOT_FOUND


async def test_server_killed_mid_upload_leaves_nothing_visible(
    stub: Stub, db: Database, store: BlobStore, start_replica: Callable[[], ServerProcess]
) -> None:
    replica = start_replica()
    data = os.urandom(3 * PART)
    digest = sha(data)
    async with open_channel(replica.address) as channel:
        doomed: Stub = ArtifactServiceStub(channel)
        call = open_upload(doomed)
        await call.write(header(digest, len(data)))
        for chunk in chunks_of(data[: 2 * PART]):
            await call.write(pb.UploadBlobRequest(chunk=chunk))

        async def part_committed() -> bool:
            async with db.connection() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT max(committed_size) FROM upload_sessions WHERE expected_digest = $1", digest
                    )
                )

        await eventually(part_committed)
        replica.kill()
        failure = await fails(call)
        assert failure.code == Code.UNAVAILABLE
    assert (await fails(stub.StatBlob(pb.StatBlobRequest(digest=digest)))).code == Code.NOT_FOUND
    assert await pending_uploads(store, blob_key(digest))  # debris, invisible until the lease runs out

    async with db.connection() as conn:
        await conn.execute(
            "UPDATE upload_sessions SET lease_expires = now() - interval '1 second'"
            " WHERE expected_digest = $1",
            digest,
        )
    await collect(db, store, grace=timedelta(hours=1), dry_run=False)
    await assert_nothing_left(stub, store, db, digest)


async def test_without_s3_the_service_says_so(
    server_env: dict[str, str], tmp_path: pytest.TempPathFactory
) -> None:
    env = {**server_env, "MODELREG_S3_ENDPOINT": ""}
    unconfigured = ServerProcess(env, tmp_path / "no-s3.log")  # type: ignore[operator]
    try:
        async with open_channel(unconfigured.address) as channel:
            failure = await fails(ArtifactServiceStub(channel).StatBlob(pb.StatBlobRequest(digest=sha(b""))))
        assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "STORAGE_NOT_CONFIGURED")
    finally:
        unconfigured.stop()


async def test_s3_down_is_unavailable(server_env: dict[str, str], tmp_path: pytest.TempPathFactory) -> None:
    env = {**server_env, "MODELREG_S3_ENDPOINT": "127.0.0.1:9"}  # discard port: nothing listens
    unreachable = ServerProcess(env, tmp_path / "s3-down.log")  # type: ignore[operator]
    try:
        async with open_channel(unreachable.address) as channel:
            artifact_stub: Stub = ArtifactServiceStub(channel)
            failure = await fails(
                artifact_stub.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=[sha(b"")]))
            )
            assert failure.code == Code.UNAVAILABLE
            failure = await fails(artifact_stub.UploadBlob(iter(messages(header(), b"data"))))
            assert failure.code == Code.UNAVAILABLE
    finally:
        unreachable.stop()
