"""Faults with real processes: PostgreSQL stopped under load, S3 stopped mid-upload, a server SIGKILLed
mid-upload and collected after, a replica killed under watching alias resolvers.

Every test breaks only what it started itself: its own embedded PostgreSQL, its own SeaweedFS, its own
server processes (on a database and bucket of their own where garbage collection or an outage could
touch other tests' data). The session's shared PostgreSQL and S3 are never stopped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from minio import Minio
from minio.error import S3Error

from modelreg import AliasResolver, AsyncAliasResolver, Change, ChangeType, NotFound, Registry
from modelreg.errors import ModelregError
from modelreg.v1 import artifact_service_pb2 as pb
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb
from modelreg.v1 import model_registry_service_pb2 as registry_pb
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.lifecycle_service_pb2_grpc import ServingServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg_server.devstack import EmbeddedPostgres, SeaweedS3
from modelreg_server.storage.blobstore import BLOB_PREFIX, STAGING_PREFIX, blob_key
from tests.support.packages import chunks_of, header, publish, sha
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails
from tests.support.server import ServerProcess
from tests.support.services import provision_database

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub
    from modelreg.v1.lifecycle_service_pb2_grpc import ServingServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub

Code = grpc.StatusCode
MiB = 1024 * 1024
PART = 8 * MiB  # the server's default part size
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ALIAS_SET, ALIAS_DELETED, STAGE_CHANGED = (
    ChangeType.Value(f"CHANGE_TYPE_{t}") for t in ("ALIAS_SET", "ALIAS_DELETED", "STAGE_CHANGED")
)

# Every SDK call under load has this deadline (the SDK retries UNAVAILABLE inside it).
CALL_TIMEOUT = 8.0
# How long a component may take to go down, come back, or be noticed.
RECOVERY = 60.0
# A server answers a failure caused by a dead dependency promptly, well inside the deadline.
PROMPT = CALL_TIMEOUT + 1.0
# Connections per server process on the shared PostgreSQL, which has a connection limit.
SMALL_POOL = "4"


# --- helpers ------------------------------------------------------------------------------------------------


def bootstrap_admin(database_url: str) -> str:
    """Creates the first admin of a database (migrating it first); returns the token."""
    result = subprocess.run(
        [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A database of its own on the shared PostgreSQL server, dropped afterwards."""
    databases = provision_database()  # runs its own event loops: keep it off this one
    url = await asyncio.to_thread(next, databases)
    try:
        yield url
    finally:
        await asyncio.to_thread(next, databases, None)  # the generator's clean-up: DROP DATABASE


def s3_env(s3: SeaweedS3, bucket: str) -> dict[str, str]:
    """Server settings for one bucket on a SeaweedFS server."""
    return {
        "MODELREG_S3_ENDPOINT": s3.endpoint,
        "MODELREG_S3_ACCESS_KEY": s3.access_key,
        "MODELREG_S3_SECRET_KEY": s3.secret_key,
        "MODELREG_S3_BUCKET": bucket,
        "MODELREG_S3_SECURE": "false",
    }


def wait_for(check: Callable[[], bool], what: str, timeout: float = RECOVERY) -> None:
    """Polls `check` until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, within: float = RECOVERY
) -> None:
    """`wait_for` on the event loop; `check` may be a coroutine function."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        assert time.monotonic() < deadline, f"timed out after {within}s waiting for {what}"
        await asyncio.sleep(0.05)


# Readiness is reported per service; "" is liveness and stays SERVING while the process runs.
READINESS: str = registry_pb.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name


def health(address: str, service: str = READINESS) -> int:
    """The health status the server reports for a service (its health service lives in memory)."""
    with grpc.insecure_channel(address) as chan:
        request = health_pb2.HealthCheckRequest(service=service)
        response = health_pb2_grpc.HealthStub(chan).Check(request, timeout=5)
    return int(response.status)


def open_upload(stub: ArtifactServiceAsyncStub) -> grpc.aio.StreamUnaryCall[pb.UploadBlobRequest, Any]:
    """An upload call to write messages into one by one (the stubs' types want an iterator)."""
    return stub.UploadBlob()  # type: ignore[call-arg]


async def write_all(call: grpc.aio.StreamUnaryCall[pb.UploadBlobRequest, Any], data: bytes) -> None:
    """Writes data as chunks; stops quietly when the server has already ended the call."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for chunk in chunks_of(data):
            await call.write(pb.UploadBlobRequest(chunk=chunk))


async def committed_bytes(database_url: str, where: str, *args: object) -> int:
    """Bytes the upload sessions matching `where` have committed (parts recorded in PostgreSQL)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        value = await conn.fetchval(
            f"SELECT coalesce(max(committed_size), 0) FROM upload_sessions WHERE {where}", *args
        )
    finally:
        await conn.close()
    return int(value)


def multipart_uploads(client: Minio, bucket: str) -> list[tuple[str, str]]:
    """(key, upload id) of every unfinished multipart upload in the bucket."""
    found: list[tuple[str, str]] = []
    marker: str | None = None
    while True:
        page = client._list_multipart_uploads(bucket, key_marker=marker)
        found.extend((str(u.object_name), str(u.upload_id)) for u in page.uploads)
        if not page.is_truncated or not page.next_key_marker:
            return sorted(found)
        marker = page.next_key_marker


def object_keys(client: Minio, bucket: str, prefix: str) -> list[str]:
    """Keys of the objects under prefix."""
    return sorted(str(o.object_name) for o in client.list_objects(bucket, prefix=prefix, recursive=True))


def object_exists(client: Minio, bucket: str, key: str) -> bool:
    """Whether an object is stored at key."""
    try:
        client.stat_object(bucket, key)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject"):
            return False
        raise
    return True


async def download(stub: ArtifactServiceAsyncStub, digest: str) -> bytes:
    """A blob's bytes."""
    call = stub.DownloadBlob(pb.DownloadBlobRequest(digest=digest), timeout=60)
    return b"".join([r.data async for r in call])


# --- PostgreSQL stopped and restarted under load ----------------------------------------------------------


class RestartablePostgres:
    """An embedded PostgreSQL of the test's own whose server can be stopped and started on the same data."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "pgdata"
        self.server = EmbeddedPostgres.start(self.data_dir)
        self.url = self.server.url

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated, as when an operator restarts the database."""
        self.server.stop()

    def start(self) -> None:
        """Start again on the same data directory (and the same socket, hence the same URL)."""
        self.server = EmbeddedPostgres.start(self.data_dir)
        assert self.server.url == self.url


@pytest.fixture
def own_postgres() -> Iterator[RestartablePostgres]:
    root = Path(tempfile.mkdtemp(prefix="modelreg-faults-pg-"))
    postgres: RestartablePostgres | None = None
    try:
        postgres = RestartablePostgres(root)
        yield postgres
    finally:
        if postgres is not None:
            postgres.server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Call:
    """One SDK call made under load."""

    kind: str  # "write" or "read"
    started: float
    ended: float
    code: Code
    request_id: str = ""
    version: int = 0


@dataclass
class Load:
    """A writer registering versions (each request id retried until it succeeds) and a reader."""

    address: str
    token: str
    model: str
    calls: list[Call] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _abandon: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Starts the writer and the reader threads."""
        self._threads = [
            threading.Thread(target=self._write, name="faults-writer", daemon=True),
            threading.Thread(target=self._read, name="faults-reader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = RECOVERY) -> None:
        """Lets the writer finish its current request id, then joins both threads."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # A writer still retrying its request id after `timeout` gives up (its id stays unacknowledged).
        self._abandon.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 1)
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"load threads did not stop: {stuck}"

    def snapshot(self) -> list[Call]:
        """The calls recorded so far."""
        with self._lock:
            return list(self.calls)

    def count(self, kind: str, *, since: float, ok: bool) -> int:
        """How many calls of a kind started at or after `since` succeeded (or failed)."""
        return sum(
            c.kind == kind and c.started >= since and (c.code == Code.OK) == ok for c in self.snapshot()
        )

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def _write(self) -> None:
        with Registry(self.address, token=self.token, timeout=CALL_TIMEOUT) as client:
            while not self._stop.is_set():
                request_id = f"write-{len(self.issued) + 1:05d}"
                self.issued.append(request_id)
                # The same request id until it succeeds: a retry of a write whose response was lost in the
                # outage must return the version created the first time, not register a second one.
                while not self._abandon.is_set():
                    started = time.monotonic()
                    try:
                        created = client.create_model_version(
                            self.model, run_id=request_id, request_id=request_id
                        )
                    except ModelregError as err:
                        self._record(Call("write", started, time.monotonic(), err.code, request_id))
                        self._abandon.wait(0.05)  # pace the retries
                        continue
                    self._record(
                        Call("write", started, time.monotonic(), Code.OK, request_id, created.version)
                    )
                    break
                self._stop.wait(0.02)  # pace the writes

    def _read(self) -> None:
        with Registry(self.address, token=self.token, timeout=CALL_TIMEOUT) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    client.get_model(self.model)
                    next(iter(client.list_model_versions(self.model, page_size=5)), None)
                except ModelregError as err:
                    self._record(Call("read", started, time.monotonic(), err.code))
                else:
                    self._record(Call("read", started, time.monotonic(), Code.OK))
                self._stop.wait(0.02)


def test_postgres_outage_under_load_recovers_without_losing_or_duplicating_writes(
    own_postgres: RestartablePostgres, tmp_path: Path
) -> None:
    token = bootstrap_admin(own_postgres.url)
    env = {"MODELREG_DATABASE_URL": own_postgres.url, "MODELREG_HEALTH_INTERVAL_S": "0.5"}
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        with Registry(server.address, token=token, timeout=CALL_TIMEOUT) as admin:
            model = admin.create_model("under-load").name
            load = Load(server.address, token, model)
            load.start()
            try:
                wait_for(lambda: load.count("write", since=0, ok=True) >= 10, "writes before the outage")

                own_postgres.stop()
                down = time.monotonic()
                wait_for(lambda: health(server.address) == NOT_SERVING, "health NOT_SERVING")

                wait_for(
                    lambda: min(load.count(kind, since=down, ok=False) for kind in ("write", "read")) >= 3,
                    "writes and reads to fail during the outage",
                )
                assert health(server.address) == NOT_SERVING
                assert health(server.address, service="") == SERVING, "liveness must not follow the database"

                up = time.monotonic()
                own_postgres.start()
                wait_for(lambda: health(server.address) == SERVING, "health SERVING again")
                wait_for(lambda: load.count("write", since=up, ok=True) >= 5, "writes after the restart")
            finally:
                load.stop()
            assert server.proc.poll() is None, "the server exited; it must recover without a restart"

            calls = load.snapshot()
            codes = collections.Counter((c.kind, c.code.name) for c in calls)
            assert {c.code for c in calls} <= {Code.OK, Code.UNAVAILABLE}, codes
            slowest = max(calls, key=lambda c: c.ended - c.started)
            assert slowest.ended - slowest.started < PROMPT, f"a call hung: {slowest}"
            during = [c for c in calls if c.started >= down and c.ended <= up]
            assert {c.code for c in during if c.kind == "write"} == {Code.UNAVAILABLE}, codes
            assert Code.UNAVAILABLE in {c.code for c in during if c.kind == "read"}, codes

            # Every write that returned OK is there with the number it returned; none is there twice.
            versions = list(admin.list_model_versions(model, order_by="version", page_size=1000))
            numbers = [v.version for v in versions]
            assert numbers == list(range(1, len(numbers) + 1)), "version numbers have gaps"
            by_request = collections.Counter(v.run_id for v in versions)
            assert [rid for rid, n in by_request.items() if n > 1] == []
            assert sorted(by_request) == sorted(load.issued)
            stored = {v.run_id: v.version for v in versions}
            acknowledged: dict[str, set[int]] = collections.defaultdict(set)
            for c in calls:
                if c.kind == "write" and c.code == Code.OK:
                    acknowledged[c.request_id].add(c.version)
            assert {rid: {stored[rid]} for rid in acknowledged} == dict(acknowledged)
            assert admin.get_model(model).latest_version == len(numbers)
    finally:
        server.stop()


# --- S3 stopped mid-upload ---------------------------------------------------------------------------------


class RestartableS3:
    """A SeaweedFS of the test's own that can be stopped and started again on the same data and ports."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "s3"
        self.server = SeaweedS3.start(self.data_dir)
        self.endpoint = self.server.endpoint

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 2 s: S3 vanishes under the server's feet."""
        self.server.stop(grace=2)

    def start(self) -> None:
        """Start again; the ports are remembered in the data directory, so the endpoint stays."""
        self.server = SeaweedS3.start(self.data_dir)
        assert self.server.endpoint == self.endpoint, "SeaweedFS came back on other ports"


@pytest.fixture
def own_s3() -> Iterator[RestartableS3]:
    root = Path(tempfile.mkdtemp(prefix="modelreg-faults-s3-"))
    s3: RestartableS3 | None = None
    try:
        s3 = RestartableS3(root)
        yield s3
    finally:
        if s3 is not None:
            s3.server.stop(grace=2)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Stack:
    """A server process with its admin token, database and bucket."""

    server: ServerProcess
    token: str
    database_url: str
    bucket: str
    env: dict[str, str]


@contextlib.asynccontextmanager
async def stack(s3: SeaweedS3, log_dir: Path) -> AsyncIterator[Stack]:
    """A fresh database and bucket, their admin, and one server on them."""
    async with fresh_database() as database_url:
        token = await asyncio.to_thread(bootstrap_admin, database_url)
        bucket = f"faults-{secrets.token_hex(4)}"
        env = {
            "MODELREG_DATABASE_URL": database_url,
            "MODELREG_HEALTH_INTERVAL_S": "0.5",
            "MODELREG_DB_POOL_SIZE": SMALL_POOL,
            **s3_env(s3, bucket),
        }
        server = await asyncio.to_thread(ServerProcess, env, log_dir / "server.log")
        try:
            yield Stack(server, token, database_url, bucket, env)
        finally:
            await asyncio.to_thread(server.stop)


def blocking_upload(
    address: str, token: str, stream: Iterable[pb.UploadBlobRequest]
) -> tuple[Code, pb.UploadBlobResponse | None]:
    """One UploadBlob call with the blocking API: (status, response).

    grpc.aio would report a stream the server ends before the client half-closes as INTERNAL "Internal error
    from Core" (grpc/grpc#36066) instead of the server's status; the blocking API reports the status.
    """
    with grpc.insecure_channel(address) as chan:
        stub = ArtifactServiceStub(chan)
        try:
            response = stub.UploadBlob(
                iter(stream), timeout=RECOVERY + PROMPT, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.RpcError as err:
            return cast(grpc.Call, err).code(), None
    return Code.OK, response


def held_back(data: bytes, release_after: int, gate: threading.Event) -> Iterator[pb.UploadBlobRequest]:
    """An upload stream that pauses after `release_after` bytes until `gate` is set."""
    yield header(sha(data), len(data))
    yield from (pb.UploadBlobRequest(chunk=c) for c in chunks_of(data[:release_after]))
    if gate.wait(RECOVERY):
        yield from (pb.UploadBlobRequest(chunk=c) for c in chunks_of(data[release_after:]))


async def test_s3_outage_mid_upload_is_unavailable_leaves_nothing_and_metadata_keeps_serving(
    own_s3: RestartableS3, tmp_path: Path
) -> None:
    async with stack(own_s3.server, tmp_path) as env, open_channel(env.server.address, env.token) as channel:
        address, token = env.server.address, env.token
        artifacts: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)
        registry: ModelRegistryServiceAsyncStub = ModelRegistryServiceStub(channel)
        serving: ServingServiceAsyncStub = ServingServiceStub(channel)
        package, _ = await publish(artifacts, {"weights.bin": os.urandom(1000)})
        with Registry(address, token=token, timeout=CALL_TIMEOUT) as admin:
            model = admin.create_model("s3-outage").name
            admin.create_model_version(model, artifact_digest=package)
            admin.set_alias(model, "champion", 1)

        data = os.urandom(3 * PART)
        digest = sha(data)
        gate = threading.Event()
        upload = asyncio.ensure_future(
            asyncio.to_thread(blocking_upload, address, token, held_back(data, 2 * PART, gate))
        )
        try:

            async def part_committed() -> bool:
                return await committed_bytes(env.database_url, "expected_digest = $1", digest) > 0

            await eventually(part_committed, "a part of the upload to be committed")
            await asyncio.to_thread(own_s3.stop)
        finally:
            gate.set()
        stopped = time.monotonic()
        code, _ = await asyncio.wait_for(upload, RECOVERY)
        assert code == Code.UNAVAILABLE
        assert time.monotonic() - stopped < PROMPT, "the upload did not fail promptly"
        small = b"written while S3 is down"
        code, _ = await asyncio.to_thread(
            blocking_upload,
            address,
            token,
            [header(sha(small), len(small)), pb.UploadBlobRequest(chunk=small)],
        )
        assert code == Code.UNAVAILABLE

        # Metadata lives in PostgreSQL and keeps serving; readiness follows PostgreSQL only.
        got = await registry.GetModel(registry_pb.GetModelRequest(name=model), timeout=5)
        assert got.latest_version == 1
        listed = await registry.ListModelVersions(
            registry_pb.ListModelVersionsRequest(parent=model), timeout=5
        )
        assert [v.artifact_digest for v in listed.model_versions] == [package]
        resolved = await serving.ResolveAlias(
            lifecycle_pb.ResolveAliasRequest(name=f"{model}/aliases/champion"), timeout=5
        )
        assert (resolved.version, resolved.artifact_digest) == (1, package)
        assert await asyncio.to_thread(health, address) == SERVING
        missing = await fails(artifacts.StatBlob(pb.StatBlobRequest(digest=digest), timeout=5))
        assert missing.code == Code.NOT_FOUND

        await asyncio.to_thread(own_s3.start)
        missing = await fails(artifacts.StatBlob(pb.StatBlobRequest(digest=digest), timeout=5))
        assert (missing.code, missing.reason) == (Code.NOT_FOUND, "BLOB_NOT_FOUND")
        assert not await asyncio.to_thread(
            object_exists, own_s3.server.client(), env.bucket, blob_key(digest)
        )
        found = await artifacts.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=[digest, package]))
        assert list(found.missing_digests) == [digest]

        # The same server process stores and serves again once S3 is back.
        whole = [header(digest, len(data)), *(pb.UploadBlobRequest(chunk=c) for c in chunks_of(data))]

        async def uploads_again() -> bool:
            code, response = await asyncio.to_thread(blocking_upload, address, token, whole)
            assert code in (Code.OK, Code.UNAVAILABLE), code
            return response is not None and response.digest == digest

        await eventually(uploads_again, "an upload to succeed after S3 returned")
        assert await download(artifacts, digest) == data
        assert env.server.proc.poll() is None


# --- server SIGKILLed mid-upload, then garbage collection ---------------------------------------------------


def run_gc(env: dict[str, str]) -> dict[str, Any]:
    """`modelreg-server gc --grace-hours 0`, as an operator runs it; returns its JSON report."""
    result = subprocess.run(
        [
            sys.executable, "-m", "modelreg_server", "gc", "--grace-hours", "0",
            "--database-url", env["MODELREG_DATABASE_URL"],
        ],
        env={**os.environ, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def test_server_killed_mid_upload_then_gc_leaves_a_clean_store(s3: SeaweedS3, tmp_path: Path) -> None:
    # The session's S3 with a bucket of this test's own: gc with zero grace must only see this test's data.
    async with stack(s3, tmp_path) as env:
        client = s3.client()
        kept = {"model.onnx": os.urandom(3 * MiB), "config.json": b'{"layers": 3}'}
        declared, undeclared, resumable = (os.urandom(2 * PART + MiB) for _ in range(3))
        async with open_channel(env.server.address, env.token) as channel:
            artifacts: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)
            package, manifest = await publish(artifacts, kept)
            with Registry(env.server.address, token=env.token, timeout=CALL_TIMEOUT) as admin:
                model = admin.create_model("killed-mid-upload").name
                admin.create_model_version(model, artifact_digest=package)
            session = await artifacts.StartUpload(
                pb.StartUploadRequest(digest=sha(resumable), size=len(resumable))
            )
            # Three uploads in flight: to the blob key, through staging (digest unknown), and resumable.
            calls = [open_upload(artifacts) for _ in range(3)]
            await calls[0].write(header(sha(declared), len(declared)))
            await calls[1].write(header())
            await calls[2].write(header(upload_id=session.upload_id))
            for call, data in zip(calls, (declared, undeclared, resumable), strict=True):
                await write_all(call, data[: 2 * PART])

            async def every_upload_committed_a_part() -> bool:
                conn = await asyncpg.connect(env.database_url, timeout=10)
                try:
                    sizes = await conn.fetch("SELECT committed_size FROM upload_sessions")
                finally:
                    await conn.close()
                return len(sizes) == 3 and all(r["committed_size"] > 0 for r in sizes)

            await eventually(every_upload_committed_a_part, "each upload to commit a part")
            env.server.kill()
            for call in calls:
                assert (await fails(call)).code == Code.UNAVAILABLE

        debris = await asyncio.to_thread(multipart_uploads, client, env.bucket)
        assert len(debris) == 3, debris
        assert {key.split("/")[0] for key, _ in debris} == {BLOB_PREFIX.split("/")[0], STAGING_PREFIX[:-1]}

        restarted = await asyncio.to_thread(ServerProcess, env.env, tmp_path / "restarted.log")
        try:
            # The dead writer's leases still run: gc must not take uploads that may be alive.
            first = await asyncio.to_thread(run_gc, env.env)
            assert first["aborted_multipart_uploads"] == 0 and first["expired_sessions"] == 0, first
            assert await asyncio.to_thread(multipart_uploads, client, env.bucket) == debris

            # Let the leases run out (UploadTuning.lease: a minute) without waiting for them, then collect.
            conn = await asyncpg.connect(env.database_url, timeout=10)
            try:
                await conn.execute(
                    "UPDATE upload_sessions SET lease_expires = now() - interval '1 second'"
                    " WHERE lease_expires IS NOT NULL"
                )
            finally:
                await conn.close()
            second = await asyncio.to_thread(run_gc, env.env)
            assert second["expired_sessions"] == 2, second

            left = await asyncio.to_thread(multipart_uploads, client, env.bucket)
            assert [key for key, _ in left] == [blob_key(sha(resumable))], (
                "only the resumable session remains"
            )
            assert await asyncio.to_thread(object_keys, client, env.bucket, STAGING_PREFIX) == []

            async with open_channel(restarted.address, env.token) as channel:
                artifacts = ArtifactServiceStub(channel)
                for gone in (declared, undeclared):
                    assert (
                        await fails(artifacts.StatBlob(pb.StatBlobRequest(digest=sha(gone))))
                    ).code == Code.NOT_FOUND
                    assert not await asyncio.to_thread(object_exists, client, env.bucket, blob_key(sha(gone)))
                # Referenced blobs survive, bit-exact.
                assert {d: await download(artifacts, d) for d in manifest.file_digests} == {
                    sha(content): content for content in kept.values()
                }
                assert (await artifacts.StatBlob(pb.StatBlobRequest(digest=package))).digest == package
                # The resumable session survived the crash and the collections: resume and finish it.
                status = await artifacts.QueryUploadStatus(
                    pb.QueryUploadStatusRequest(upload_id=session.upload_id)
                )
                assert status.committed_size > 0
                rest = [header(upload_id=session.upload_id, offset=status.committed_size)]
                rest += [pb.UploadBlobRequest(chunk=c) for c in chunks_of(resumable[status.committed_size :])]
                rest.append(pb.UploadBlobRequest(finish_write=True))
                done = await artifacts.UploadBlob(iter(rest))
                assert (done.complete, done.digest) == (True, sha(resumable))
                assert await download(artifacts, sha(resumable)) == resumable

            third = await asyncio.to_thread(run_gc, env.env)
            assert sha(resumable) in third["deleted_blobs"]  # unreferenced, zero grace: collected
            assert package not in third["deleted_blobs"]
            assert await asyncio.to_thread(multipart_uploads, client, env.bucket) == []
            assert await asyncio.to_thread(object_keys, client, env.bucket, STAGING_PREFIX) == []
            stored = await asyncio.to_thread(object_keys, client, env.bucket, BLOB_PREFIX)
            assert stored == sorted(blob_key(d) for d in {package, *manifest.file_digests})
        finally:
            await asyncio.to_thread(restarted.stop)


# --- a replica killed under watching resolvers --------------------------------------------------------------


@dataclass
class Watcher:
    """A resolver and the changes it reported, in order."""

    name: str
    resolver: AliasResolver | AsyncAliasResolver
    seen: list[Change]

    @classmethod
    def of(cls, name: str, addresses: list[str], model: str, token: str, *, asynchronous: bool) -> Watcher:
        """A resolver recording every change from the start (so none can be missed before recording)."""
        seen: list[Change] = []
        kind = AsyncAliasResolver if asynchronous else AliasResolver
        return cls(name, kind(addresses, models=[model], token=token, on_change=seen.append), seen)


ALIASES = ("champion", "canary", "shadow")


def _operations(model: str, versions: int, count: int) -> list[Callable[[Registry], object]]:
    """A deterministic mix of alias moves, alias deletions and stage changes (NONE <-> STAGING)."""
    ops: list[Callable[[Registry], object]] = []
    staged: set[int] = set()
    present: set[str] = set()
    for i in range(count):
        version = i % versions + 1
        if i % 11 == 10 and "shadow" in present:
            present.discard("shadow")
            ops.append(functools.partial(Registry.delete_alias, model=model, alias="shadow"))
        elif i % 7 == 6:
            stage = "none" if version in staged else "staging"
            staged ^= {version}
            ops.append(
                functools.partial(Registry.transition_stage, version=f"{model}/{version}", stage=stage)
            )
        else:
            alias = ALIASES[i % len(ALIASES)]
            present.add(alias)
            ops.append(functools.partial(Registry.set_alias, model=model, alias=alias, version=version))
    return ops


@pytest.fixture
def two_replicas(server_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two replicas on the session's database and S3, with small connection pools."""
    env = {**server_env, "MODELREG_DB_POOL_SIZE": SMALL_POOL}
    started: list[ServerProcess] = []
    try:
        for n in range(2):
            started.append(ServerProcess(env, tmp_path / f"replica{n}.log"))
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.stop()


async def test_resolvers_fail_over_together_without_missing_changes_made_during_the_kill(
    two_replicas: tuple[ServerProcess, ServerProcess], admin_token: str
) -> None:
    victim, survivor = two_replicas
    writer = Registry(survivor.address, token=admin_token, timeout=CALL_TIMEOUT)
    model = f"faults-{uuid.uuid4().hex[:10]}"
    writer.create_model(model)
    for _ in range(6):
        writer.create_model_version(model)
    order = [victim.address, survivor.address]  # every resolver starts on the victim
    watchers = [Watcher.of(f"sync-{i}", order, model, admin_token, asynchronous=False) for i in range(3)]
    watchers.append(Watcher.of("async", order, model, admin_token, asynchronous=True))
    operations = _operations(model, 6, 60)
    done = 0
    try:
        for watcher in watchers:
            if isinstance(watcher.resolver, AsyncAliasResolver):
                await watcher.resolver.start()
            else:
                await asyncio.to_thread(watcher.resolver.start)
        assert {w.resolver.connected_address for w in watchers} == {victim.address}

        def write(ops: list[Callable[[Registry], object]]) -> None:
            nonlocal done
            for op in ops:
                op(writer)
                done += 1

        first = asyncio.create_task(asyncio.to_thread(write, operations))
        await eventually(lambda: done >= 15, "changes before the kill")
        killed_at = max(w.resolver.revision for w in watchers)
        await asyncio.to_thread(victim.kill)  # while the writer keeps changing aliases and stages
        await asyncio.wait_for(first, 2 * RECOVERY)  # bounded; a loaded machine makes each change slow

        history = sorted(e.revision for e in writer.list_alias_history(model))
        stages = sorted(t.revision for t in writer.list_stage_transitions(model))
        last = max(history + stages)
        assert killed_at < last and any(r > killed_at for r in history), "no change after the kill"
        await eventually(
            lambda: all(w.resolver.revision >= last for w in watchers), "every resolver to catch up"
        )
        for watcher in watchers:
            assert watcher.resolver.connected_address == survivor.address, watcher.name
            seen = [c.revision for c in watcher.seen]
            assert seen == sorted(set(seen)), f"{watcher.name}: revisions out of order or repeated"
            alias_changes = [c.revision for c in watcher.seen if c.type in (ALIAS_SET, ALIAS_DELETED)]
            assert alias_changes == history, f"{watcher.name} missed or invented alias changes"
            assert [c.revision for c in watcher.seen if c.type == STAGE_CHANGED] == stages, watcher.name
            for alias in ALIASES:
                try:
                    expected: int | None = writer.resolve_alias(model, alias).version
                except NotFound:
                    expected = None
                try:
                    local: int | None = watcher.resolver.resolve(model, alias).version
                except NotFound:
                    local = None
                assert local == expected, f"{watcher.name}: {alias} is {local}, the registry says {expected}"
    finally:
        for watcher in watchers:
            if isinstance(watcher.resolver, AsyncAliasResolver):
                await watcher.resolver.stop()
            else:
                await asyncio.to_thread(watcher.resolver.stop)
        writer.close()
