"""`upload_model` / `download_model` (sync and asyncio), `modelreg push` / `pull`, and SDK tracing, against
the session's server (fixture `server_address`) with SeaweedFS behind it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from modelreg import AsyncRegistry, DataLoss, FailedPrecondition, NotFound, Registry
from modelreg.cli import main
from modelreg.packages import BlobCache, BlobUpload, Manifest, ManifestFile, Progress
from modelreg.v1 import artifact_service_pb2 as artifact_pb2
from tests.support.server import ServerProcess

MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_package(root: Path, big: int = 20 * MiB) -> dict[str, tuple[bytes, int]]:
    """A directory with nested dirs, an empty file, a duplicate, an executable and a big file."""
    contents = {
        "model.onnx": (os.urandom(100_000), 0o644),
        "weights/big.bin": (os.urandom(big), 0o600),
        "conf/labels.txt": ("cat\ndog\nmodèle\n".encode(), 0o644),
        "conf/deep/nested/empty": (b"", 0o644),
        "conf/deep/same-as-labels.txt": ("cat\ndog\nmodèle\n".encode(), 0o444),
        "bin/serve.sh": (b"#!/bin/sh\nexec python -m serve\n", 0o755),
        "données/é.json": (b'{"a": 1}', 0o640),
    }
    write_tree(root, contents)
    return contents


def write_tree(root: Path, contents: dict[str, tuple[bytes, int]]) -> None:
    """Writes each `relative path: (bytes, mode)` under root."""
    for relative, (data, mode) in contents.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)


def assert_same_tree(dest: Path, contents: dict[str, tuple[bytes, int]]) -> None:
    found = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert found == set(contents)
    for relative, (data, mode) in contents.items():
        target = dest / relative
        assert target.read_bytes() == data, relative
        assert target.stat().st_mode & 0o777 == mode, relative


# --- a spy on the client's ArtifactService stub ------------------------------------------------------------


class BrokenStream(grpc.RpcError):
    """What a cut connection looks like to the client."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "stream cut by the test"

    def trailing_metadata(self) -> tuple[Any, ...]:
        return ()


class CountedDownload:
    """A DownloadBlob call whose bytes are counted (and optionally flipped, as a lying server would)."""

    def __init__(self, call: Any, spy: Spy, digest: str) -> None:
        self._call, self._spy, self._digest = call, spy, digest

    def __iter__(self) -> Iterator[artifact_pb2.DownloadBlobResponse]:
        for response in self._call:
            data = response.data
            self._spy.downloaded[self._digest] = self._spy.downloaded.get(self._digest, 0) + len(data)
            if self._digest in self._spy.corrupt and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            yield artifact_pb2.DownloadBlobResponse(data=data)

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class Spy:
    """Wraps `Registry._artifacts`: counts blob bytes both ways, can cut one resumable upload stream."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.uploaded = 0
        self.uploaded_by_digest: dict[str, int] = {}
        self.upload_headers: list[artifact_pb2.UploadHeader] = []
        self.download_requests: list[artifact_pb2.DownloadBlobRequest] = []
        self.downloaded: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.cut_resumable_after: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def UploadBlob(self, requests: Iterator[artifact_pb2.UploadBlobRequest], **kwargs: Any) -> Any:
        first = next(requests)
        self.upload_headers.append(first.header)

        def counted() -> Iterator[artifact_pb2.UploadBlobRequest]:
            digest = first.header.digest
            for message in itertools.chain([first], requests):
                self.uploaded += len(message.chunk)
                self.uploaded_by_digest[digest] = self.uploaded_by_digest.get(digest, 0) + len(message.chunk)
                yield message

        if first.header.upload_id and self.cut_resumable_after is not None:
            cut, self.cut_resumable_after = self.cut_resumable_after, None
            # The server sees a stream that ends without finish_write: it keeps the session paused.
            paused = self._stub.UploadBlob(itertools.islice(counted(), cut + 1), **kwargs)
            assert not paused.complete
            raise BrokenStream()
        return self._stub.UploadBlob(counted(), **kwargs)

    def DownloadBlob(self, request: artifact_pb2.DownloadBlobRequest, **kwargs: Any) -> CountedDownload:
        self.download_requests.append(request)
        return CountedDownload(self._stub.DownloadBlob(request, **kwargs), self, request.digest)


def spy_on(registry: Registry) -> Spy:
    spy = Spy(registry._artifacts)
    registry._artifacts = spy  # type: ignore[assignment]
    return spy


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def registry(server_address: str) -> Iterator[Registry]:
    with Registry(server_address, timeout=30) as client:
        yield client


@dataclass
class Published:
    model: str
    version: str
    digest: str
    contents: dict[str, tuple[bytes, int]]
    source: Path


@pytest.fixture(scope="module")
def published(server_address: str, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """One package uploaded once for the download tests."""
    source = tmp_path_factory.mktemp("published")
    contents = make_package(source)
    model = unique("pkg")
    with Registry(server_address, timeout=30) as client:
        client.create_model(model)
        version = client.upload_model(model, source, format="onnx", run_id="run-1", metrics={"auc": 0.91})
    return Published(model, version.name, version.artifact_digest, contents, source)


# --- upload and download ---------------------------------------------------------------------------------


def test_round_trip_of_a_directory_is_bit_exact(registry: Registry, tmp_path: Path) -> None:
    contents = make_package(tmp_path / "src")
    model = unique("roundtrip")
    registry.create_model(model)
    seen: list[tuple[int, int]] = []
    version = registry.upload_model(
        f"models/{model}",
        tmp_path / "src",
        format="pytorch",
        progress=lambda done, total: seen.append((done, total)),
        run_id="run-7",
        description="first",
        labels={"team": "risk"},
        metrics={"auc": 0.93},
        dependencies={"python_version": "3.11"},
    )
    assert version.name == f"models/{model}/versions/1"
    assert (version.run_id, version.description, dict(version.labels)) == ("run-7", "first", {"team": "risk"})
    assert version.metrics["auc"] == pytest.approx(0.93)
    assert version.dependencies.python_version == "3.11"
    distinct = {sha(data): len(data) for data, _ in contents.values()}
    assert seen[0] == (0, sum(distinct.values()))
    assert seen[-1] == (sum(distinct.values()), sum(distinct.values()))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    manifest = registry.get_manifest(version.name, use_cache=False)
    assert manifest.digest == version.artifact_digest
    assert manifest.format == "pytorch"
    assert {f.path: (f.digest, f.size, f.mode) for f in manifest.files} == {
        path: (sha(data), len(data), mode) for path, (data, mode) in contents.items()
    }

    dest = registry.download_model(version, tmp_path / "dest", cache_dir=tmp_path / "cache")
    assert dest == tmp_path / "dest"
    assert_same_tree(dest, contents)
    assert not list(dest.rglob("*.partial"))


def test_a_single_file_package(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"pickled")
    model = unique("single")
    registry.create_model(model)
    version = registry.upload_model(model, tmp_path / "model.pkl", format="sklearn")
    assert version.name == f"models/{model}/versions/1"
    dest = registry.download_model(f"{model}/1", tmp_path / "out", use_cache=False)
    assert (dest / "model.pkl").read_bytes() == b"pickled"


def test_repush_sends_no_blob_bytes(registry: Registry, published: Published) -> None:
    spy = spy_on(registry)
    seen: list[tuple[int, int]] = []
    again = registry.upload_model(
        published.model, published.source, format="onnx", progress=lambda d, t: seen.append((d, t))
    )
    assert again.artifact_digest == published.digest
    assert again.name != published.version
    assert (spy.uploaded, spy.upload_headers) == (0, [])  # not even the manifest
    assert seen == [(0, 0)]


def test_second_download_comes_from_the_cache(
    registry: Registry, published: Published, tmp_path: Path
) -> None:
    spy = spy_on(registry)
    registry.download_model(published.version, tmp_path / "one", cache_dir=tmp_path / "cache")
    assert spy.download_requests
    spy.download_requests.clear()
    seen: list[tuple[int, int]] = []
    registry.download_model(
        published.version,
        tmp_path / "two",
        cache_dir=tmp_path / "cache",
        progress=lambda d, t: seen.append((d, t)),
    )
    assert spy.download_requests == []  # neither the manifest nor any file
    assert seen == [(0, 0)]
    assert_same_tree(tmp_path / "two", published.contents)
    entry = BlobCache(tmp_path / "cache").path_for(published.digest)
    assert entry.parent.name == published.digest[7:9] and entry.is_file()


def test_cache_dir_from_the_environment(
    registry: Registry, published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELREG_CACHE_DIR", str(tmp_path / "env-cache"))
    registry.download_model(published.digest, tmp_path / "dest")
    big = sha(published.contents["weights/big.bin"][0])
    assert BlobCache(tmp_path / "env-cache").path_for(big).stat().st_size == 20 * MiB


def test_partial_file_is_resumed(registry: Registry, published: Published, tmp_path: Path) -> None:
    data = published.contents["weights/big.bin"][0]
    half = len(data) // 2
    partial = tmp_path / "dest" / "weights" / "big.bin.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:half])
    spy = spy_on(registry)
    seen: list[tuple[int, int]] = []
    registry.download_model(
        published.version,
        tmp_path / "dest",
        use_cache=False,
        progress=lambda d, t: seen.append((d, t)),
        use_presigned_urls=False,  # the registry stream (the presigned path: test_presigned_downloads.py)
    )
    assert_same_tree(tmp_path / "dest", published.contents)
    big = sha(data)
    assert [(r.read_offset, r.read_limit) for r in spy.download_requests if r.digest == big] == [(half, 0)]
    assert spy.downloaded[big] == len(data) - half
    distinct = {sha(d): len(d) for d, _ in published.contents.values()}
    expected = sum(distinct.values()) - half
    assert seen[0] == (0, expected) and seen[-1] == (expected, expected)


def test_alias_reference(registry: Registry, published: Published, tmp_path: Path) -> None:
    number = int(published.version.rpartition("/")[2])
    registry.set_alias(published.model, "champion", number)
    assert registry.get_manifest(f"{published.model}@champion").digest == published.digest
    dest = registry.download_model(f"models/{published.model}@champion", tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, published.contents)
    with pytest.raises(NotFound):
        registry.download_model(f"models/{published.model}@nobody", tmp_path / "nope")


def test_tampered_cache_entry_is_detected_and_refetched(
    registry: Registry, published: Published, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache")
    registry.download_model(published.version, tmp_path / "one", cache_dir=cache.root)
    big = sha(published.contents["weights/big.bin"][0])
    entry = cache.path_for(big)
    tampered = bytearray(entry.read_bytes())
    tampered[12345] ^= 0x01  # same size, one bit different
    entry.write_bytes(bytes(tampered))
    spy = spy_on(registry)
    registry.download_model(
        published.version, tmp_path / "two", cache_dir=cache.root, use_presigned_urls=False
    )
    assert [r.digest for r in spy.download_requests] == [big]  # only the tampered blob came again
    assert_same_tree(tmp_path / "two", published.contents)
    assert sha(entry.read_bytes()) == big  # the cache entry is repaired


def test_bytes_that_do_not_match_their_digest_are_refused(
    registry: Registry, published: Published, tmp_path: Path
) -> None:
    big = sha(published.contents["weights/big.bin"][0])
    spy = spy_on(registry)
    spy.corrupt.add(big)
    with pytest.raises(DataLoss) as caught:
        registry.download_model(
            published.version, tmp_path / "dest", use_cache=False, parallelism=1, use_presigned_urls=False
        )
    assert caught.value.reason == "DIGEST_MISMATCH"
    assert not (tmp_path / "dest" / "weights" / "big.bin").exists()
    assert not (tmp_path / "dest" / "weights" / "big.bin.partial").exists()


def test_unsafe_manifest_from_the_registry_is_refused(registry: Registry, tmp_path: Path) -> None:
    content = b"#!/bin/sh\nrm -rf ~\n"
    evil = Manifest(
        "custom", (ManifestFile("../../evil.sh", sha(content), len(content), 0o755),), len(content)
    )
    data = evil.canonical_bytes()
    for blob in (BlobUpload(sha(content), len(content), content), BlobUpload(sha(data), len(data), data)):
        registry._upload_blob(blob, Progress(None), threading.Event())
    with pytest.raises(DataLoss) as caught:
        registry.download_model(sha(data), tmp_path / "a" / "b", use_cache=False)
    assert caught.value.reason == "UNSAFE_MANIFEST"
    assert not list(tmp_path.rglob("evil.sh*"))


def test_presigned_urls(registry: Registry, published: Published, tmp_path: Path) -> None:
    data = published.contents["weights/big.bin"][0]
    partial = tmp_path / "dest" / "weights" / "big.bin.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[: 3 * MiB])  # resumed with an HTTP Range request
    spy = spy_on(registry)
    dest = registry.download_model(
        published.version, tmp_path / "dest", use_cache=False, use_presigned_urls=True
    )
    assert_same_tree(dest, published.contents)
    assert [r.digest for r in spy.download_requests] == [published.digest]  # only the manifest over gRPC


def test_large_blob_resumes_after_a_broken_stream(registry: Registry, tmp_path: Path) -> None:
    data = os.urandom(65 * MiB + 1)  # over the 64 MiB threshold: a resumable session
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "huge.bin").write_bytes(data)
    model = unique("resumable")
    registry.create_model(model)
    spy = spy_on(registry)
    spy.cut_resumable_after = 20  # chunks of 1 MiB: the server commits two 8 MiB parts
    # Through the registry (the default would PUT a blob this size straight to object storage).
    version = registry.upload_model(model, tmp_path / "src", use_presigned_urls=False)
    offsets = [h.write_offset for h in spy.upload_headers if h.upload_id]
    assert offsets == [0, 16 * MiB]
    assert len({h.upload_id for h in spy.upload_headers if h.upload_id}) == 1
    # Only the 4 MiB that were sent but not committed went twice.
    assert spy.uploaded_by_digest[sha(data)] == len(data) + 4 * MiB
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False)
    assert (dest / "huge.bin").read_bytes() == data


def test_errors(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(NotFound):
        registry.upload_model(unique("missing"), tmp_path / "f")
    with pytest.raises(ValueError, match="format"):
        registry.upload_model("any", tmp_path / "f", format="Bad Format")
    with pytest.raises(ValueError, match="parallelism"):
        registry.download_model("m/1", tmp_path, parallelism=0)
    model = unique("noartifact")
    registry.create_model(model)
    registry.create_model_version(model)
    with pytest.raises(FailedPrecondition) as caught:
        registry.download_model(f"{model}/1", tmp_path / "d")
    assert caught.value.reason == "NO_ARTIFACT"


# --- asyncio ---------------------------------------------------------------------------------------------


async def test_async_upload_and_download(server_address: str, tmp_path: Path) -> None:
    contents = make_package(tmp_path / "src", big=3 * MiB)
    model = unique("aio")
    async with AsyncRegistry(server_address, timeout=30) as client:
        await client.create_model(model)
        seen: list[tuple[int, int]] = []
        version = await client.upload_model(
            model, tmp_path / "src", format="onnx", progress=lambda d, t: seen.append((d, t)), parallelism=2
        )
        assert seen[-1][0] == seen[-1][1] > 3 * MiB
        seen.clear()
        again = await client.upload_model(
            model, tmp_path / "src", format="onnx", progress=lambda d, t: seen.append((d, t))
        )
        assert (again.artifact_digest, seen) == (version.artifact_digest, [(0, 0)])
        dest = await client.download_model(version, tmp_path / "one", cache_dir=tmp_path / "cache")
        assert_same_tree(dest, contents)
        assert (await client.get_manifest(version.name)).digest == version.artifact_digest
        partial = tmp_path / "two" / "weights" / "big.bin.partial"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(contents["weights/big.bin"][0][:MiB])
        assert_same_tree(
            await client.download_model(version.name, tmp_path / "two", use_cache=False), contents
        )
        three = await client.download_model(
            version.artifact_digest, tmp_path / "three", use_cache=False, use_presigned_urls=True
        )
        assert_same_tree(three, contents)


# --- CLI -------------------------------------------------------------------------------------------------


def test_cli_push_and_pull(server_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contents = make_package(tmp_path / "src", big=2 * MiB)
    model = unique("cli")
    connect = ["--address", server_address]
    assert main(["models", "create", model, *connect]) == 0
    capsys.readouterr()
    argv = ["push", str(tmp_path / "src"), "--model", model, "--format", "onnx", "--run-id", "run-3"]
    argv += ["--metric", "auc=0.9", "--label", "team=risk", "--description", "cli", "--json", *connect]
    assert main(argv) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["name"] == f"models/{model}/versions/1"
    assert (pushed["runId"], pushed["labels"], pushed["metrics"]) == ("run-3", {"team": "risk"}, {"auc": 0.9})

    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["pull", f"{model}/1", str(tmp_path / "dest"), "--json", *cache, *connect]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["destination"] == str(tmp_path / "dest")
    assert pulled["artifact_digest"] == pushed["artifactDigest"]
    assert {f["path"]: f["digest"] for f in pulled["files"]} == {p: sha(d) for p, (d, _) in contents.items()}
    assert_same_tree(tmp_path / "dest", contents)

    assert (
        main(["pull", f"models/{model}/versions/1", str(tmp_path / "text"), "--quiet", *cache, *connect]) == 0
    )
    text = capsys.readouterr().out
    assert pushed["artifactDigest"] in text and "destination" in text

    assert main(["pull", f"{model}/9", str(tmp_path / "none"), *connect]) == 3
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing"), "--model", model, *connect]) == 1
    assert main(["push", str(tmp_path / "src"), "--model", unique("nomodel"), *connect]) == 3
    assert main(["pull", "sha256:bad", str(tmp_path / "x"), *connect]) == 2
    assert main(["push", str(tmp_path / "src"), *connect]) == 2  # --model is required


# --- tracing ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Client spans of this process, collected in memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


def client_spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name and s.kind == SpanKind.CLIENT]


def test_every_rpc_gets_a_client_span(
    spans: InMemorySpanExporter, registry: Registry, published: Published, tmp_path: Path
) -> None:
    spans.clear()
    registry.get_model(published.model)
    with pytest.raises(NotFound):
        registry.get_model(unique("absent"))
    registry.download_model(published.version, tmp_path / "dest", use_cache=False)
    get_model = client_spans(spans, "modelreg.v1.ModelRegistryService/GetModel")
    assert [s.attributes["rpc.grpc.status_code"] for s in get_model if s.attributes] == [0, 5]
    assert get_model[0].attributes is not None and get_model[0].attributes["rpc.method"] == "GetModel"
    assert get_model[0].status.status_code.name == "UNSET"
    assert get_model[1].status.status_code.name == "ERROR"
    downloads = client_spans(spans, "modelreg.v1.ArtifactService/DownloadBlob")
    urls = client_spans(spans, "modelreg.v1.ArtifactService/GetBlobDownloadUrl")
    distinct = {sha(d) for d, _ in published.contents.values() if d}
    # The manifest, then each blob (but the empty one): the 20 MiB one from a presigned URL.
    assert (len(downloads), len(urls)) == (len(distinct), 1)

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        registry.download_model(published.version, tmp_path / "again", use_cache=False)
    parent_id = parent.get_span_context().span_id
    children = [
        s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == parent_id
    ]
    # Blob downloads run in worker threads and still join the caller's trace.
    assert len([s for s in children if s.name.endswith(("/DownloadBlob", "/GetBlobDownloadUrl"))]) == 1 + len(
        distinct
    )


async def test_async_client_spans(spans: InMemorySpanExporter, server_address: str) -> None:
    spans.clear()
    async with AsyncRegistry(server_address) as client:
        with pytest.raises(NotFound):
            await client.get_model(unique("absent"))
        for _ in range(50):  # the span ends once the call's status has been read
            if client_spans(spans, "modelreg.v1.ModelRegistryService/GetModel"):
                break
            await asyncio.sleep(0.01)
    (span,) = client_spans(spans, "modelreg.v1.ModelRegistryService/GetModel")
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 5


def test_the_server_continues_the_clients_trace(
    spans: InMemorySpanExporter, server_env: dict[str, str], tmp_path: Path
) -> None:
    replica = ServerProcess({**server_env, "OTEL_TRACES_EXPORTER": "console"}, tmp_path / "traced.log")
    try:
        with Registry(replica.address) as client:
            spans.clear()
            with pytest.raises(NotFound):
                client.get_model(unique("absent"))
        (span,) = client_spans(spans, "modelreg.v1.ModelRegistryService/GetModel")
        assert replica.proc.stdout is not None
        replica.proc.send_signal(signal.SIGTERM)  # the server flushes its spans to stdout on shutdown
        output = replica.proc.stdout.read().decode()
    finally:
        replica.stop()
    decoder = json.JSONDecoder()
    server_spans: list[dict[str, Any]] = []
    position = output.find("{")
    while position != -1:
        document, end = decoder.raw_decode(output, position)
        server_spans.append(document)
        position = output.find("{", end)
    (served,) = [s for s in server_spans if s["name"] == "modelreg.v1.ModelRegistryService/GetModel"]
    assert served["context"]["trace_id"] == f"0x{span.context.trace_id:032x}"
    assert served["parent_id"] == f"0x{span.context.span_id:016x}"
