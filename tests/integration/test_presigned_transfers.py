"""Transfers straight to and from object storage: direct uploads (signed checksum, If-None-Match) and
downloads over presigned URLs in parallel byte ranges, with resume and fallback to the registry.

The thresholds are lowered (blobs of 4 MiB and more go direct, 1 MiB ranges) so small packages exercise
the same code as multi-gigabyte ones. SeaweedFS runs with an identity, so it checks signatures, signed
headers and checksums as a production S3 does.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelreg import AsyncRegistry, FailedPrecondition, InvalidArgument, Registry, presigned
from modelreg.v1 import artifact_service_pb2 as artifact_pb2
from tests.integration.test_sdk_packages import assert_same_tree, sha, spy_on, unique, write_tree
from tests.support.server import ServerProcess

MiB = 1024 * 1024
BIG = 5 * MiB + 123_457  # six ranges, the last one short


def make_package(root: Path) -> dict[str, tuple[bytes, int]]:
    """A big file and two small ones, all with fresh random bytes (so no other test holds their blobs)."""
    contents = {
        "weights/big.bin": (os.urandom(BIG), 0o600),
        "conf/small.bin": (os.urandom(2000), 0o644),
        "model.onnx": (os.urandom(100_000), 0o644),
    }
    write_tree(root, contents)
    return contents


class RangeLog:
    """Wraps `presigned._fetch_range` (the real one still runs): records each range, can fail one once."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.fail_at: int | None = None
        self.wait_for_before_failing: set[int] = set()
        self._finished: set[int] = set()
        self._changed = threading.Condition()

    def wrap(self, real: Callable[..., None]) -> Callable[..., None]:
        def fetch_range(url: str, fd: int, low: int, high: int, *args: Any) -> None:
            with self._changed:
                self.ranges.append((low, high))
            if low == self.fail_at:
                self.fail_at = None
                with self._changed:
                    # Fail only once every earlier range has landed: the verified prefix is then exact.
                    self._changed.wait_for(lambda: self.wait_for_before_failing <= self._finished, timeout=30)
                raise ConnectionError("range cut by the test")
            real(url, fd, low, high, *args)
            with self._changed:
                self._finished.add(low)
                self._changed.notify_all()

        return fetch_range


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> RangeLog:
    monkeypatch.setattr(presigned, "PRESIGNED_MIN_SIZE", 4 * MiB)
    monkeypatch.setattr(presigned, "RANGE_SIZE", MiB)
    monkeypatch.setattr(presigned, "RANGE_PARALLELISM", 3)
    log = RangeLog()
    monkeypatch.setattr(presigned, "_fetch_range", log.wrap(presigned._fetch_range))
    return log


@pytest.fixture
def registry(server_address: str) -> Iterator[Registry]:
    with Registry(server_address, timeout=30) as client:
        yield client


def publish(registry: Registry, root: Path) -> tuple[str, dict[str, tuple[bytes, int]]]:
    contents = make_package(root)
    model = unique("direct")
    registry.create_model(model)
    return registry.upload_model(model, root).name, contents


def test_large_blobs_come_from_object_storage_in_parallel_ranges(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    version, contents = publish(registry, tmp_path / "src")
    big = sha(contents["weights/big.bin"][0])
    spy = spy_on(registry)
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, contents)
    # Small blobs still stream through the registry.
    assert big not in {r.digest for r in spy.download_requests}
    assert sorted(ranges.ranges) == [(low, min(low + MiB, BIG)) for low in range(0, BIG, MiB)]
    assert not list(dest.rglob("*.partial"))


def test_a_partial_file_resumes_with_ranges_after_its_verified_bytes(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    version, contents = publish(registry, tmp_path / "src")
    data = contents["weights/big.bin"][0]
    partial = tmp_path / "dest" / "weights" / "big.bin.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[: 2 * MiB + 10])
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, contents)
    assert min(low for low, _ in ranges.ranges) == 2 * MiB + 10


def test_a_broken_range_is_retried_after_every_range_that_arrived(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    version, contents = publish(registry, tmp_path / "src")
    ranges.fail_at = 3 * MiB
    ranges.wait_for_before_failing = {0, MiB, 2 * MiB}
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, contents)
    first_attempt = ranges.ranges.index((3 * MiB, 4 * MiB))
    retry = [low for low, _ in ranges.ranges[first_attempt + 1 :] if low < 3 * MiB]
    # Ranges 4 and 5 may have been running when range 3 broke; nothing before range 3 is fetched again.
    assert retry == []
    assert (3 * MiB, 4 * MiB) in ranges.ranges[first_attempt + 1 :]


def test_a_corrupted_partial_file_is_caught_and_fetched_again(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    version, contents = publish(registry, tmp_path / "src")
    data = bytearray(contents["weights/big.bin"][0][: 3 * MiB])
    data[100] ^= 0xFF
    partial = tmp_path / "dest" / "weights" / "big.bin.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data)
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, contents)
    assert min(low for low, _ in ranges.ranges) == 0  # the bad prefix was thrown away


def test_forced_registry_stream_and_forced_presigned_urls(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    version, contents = publish(registry, tmp_path / "src")
    big = sha(contents["weights/big.bin"][0])
    spy = spy_on(registry)
    assert_same_tree(
        registry.download_model(version, tmp_path / "a", use_cache=False, use_presigned_urls=False), contents
    )
    assert big in {r.digest for r in spy.download_requests} and ranges.ranges == []
    spy.download_requests.clear()
    assert_same_tree(
        registry.download_model(version, tmp_path / "b", use_cache=False, use_presigned_urls=True), contents
    )
    # Every blob, the small ones too, came from object storage: only the manifest came through the registry.
    assert len(spy.download_requests) == 1


async def test_async_client_downloads_in_ranges(
    server_address: str, ranges: RangeLog, tmp_path: Path
) -> None:
    contents = make_package(tmp_path / "src")
    model = unique("direct-aio")
    async with AsyncRegistry(server_address, timeout=30) as client:
        await client.create_model(model)
        version = await client.upload_model(model, tmp_path / "src")
        dest = await client.download_model(version, tmp_path / "dest", use_cache=False)
    assert_same_tree(dest, contents)
    assert sorted(ranges.ranges) == [(low, min(low + MiB, BIG)) for low in range(0, BIG, MiB)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_object_storage_falls_back_to_the_registry_both_ways(
    server_env: dict[str, str],
    tmp_path: Path,
    ranges: RangeLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    public = f"http://127.0.0.1:{_closed_port()}"
    replica = ServerProcess({**server_env, "MODELREG_S3_PUBLIC_ENDPOINT": public}, tmp_path / "replica.log")
    try:
        with Registry(replica.address, timeout=30) as client:
            spy = spy_on(client)
            with caplog.at_level(logging.WARNING, logger="modelreg.presigned"):
                version, contents = publish(client, tmp_path / "src")
            big = sha(contents["weights/big.bin"][0])
            assert spy.uploaded_by_digest[big] == BIG  # sent through the registry after all
            assert "uploading through the registry instead" in caplog.text
            url = client._artifacts.GetBlobDownloadUrl(
                artifact_pb2.GetBlobDownloadUrlRequest(digest=big), metadata=client.config.call_metadata
            ).url
            assert urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(public).netloc
            with caplog.at_level(logging.WARNING, logger="modelreg.presigned"):
                dest = client.download_model(version, tmp_path / "dest", use_cache=False)
            assert_same_tree(dest, contents)
            assert big in {r.digest for r in spy.download_requests}
            assert "streaming through the registry instead" in caplog.text
    finally:
        replica.stop()


def test_route_rules() -> None:
    auto = presigned.Route(None)
    assert not auto.direct(presigned.PRESIGNED_MIN_SIZE - 1) and auto.direct(presigned.PRESIGNED_MIN_SIZE)
    assert not auto.fall_back(ValueError("not a transfer error"))
    assert auto.direct(presigned.PRESIGNED_MIN_SIZE)
    assert auto.fall_back(ConnectionRefusedError())
    assert not auto.direct(presigned.PRESIGNED_MIN_SIZE)  # the rest of the download goes through the registry
    reached = presigned.Route(None)
    reached.reached()
    assert not reached.fall_back(ConnectionResetError())  # object storage works: retried there instead
    forced = presigned.Route(True)
    assert forced.direct(0) and not forced.fall_back(ConnectionRefusedError())
    assert not presigned.Route(False).direct(sys.maxsize)


# --- direct uploads --------------------------------------------------------------------------------------


def test_large_blobs_are_put_straight_to_object_storage(
    registry: Registry, ranges: RangeLog, tmp_path: Path
) -> None:
    spy = spy_on(registry)
    seen: list[tuple[int, int]] = []
    contents = make_package(tmp_path / "src")
    model = unique("direct-up")
    registry.create_model(model)
    version = registry.upload_model(model, tmp_path / "src", progress=lambda d, t: seen.append((d, t)))
    big = sha(contents["weights/big.bin"][0])
    assert big not in spy.uploaded_by_digest  # not a byte of it through UploadBlob
    assert spy.uploaded_by_digest[sha(contents["model.onnx"][0])] == 100_000  # small blobs still are
    total = sum(len(data) for data, _ in contents.values())
    assert seen[-1] == (total, total)
    assert (
        registry._artifacts.StatBlob(
            artifact_pb2.StatBlobRequest(digest=big), metadata=registry.config.call_metadata
        ).size
        == BIG
    )
    # The registry's own stream reads what the direct upload stored.
    dest = registry.download_model(version, tmp_path / "dest", use_cache=False, use_presigned_urls=False)
    assert_same_tree(dest, contents)
    again = registry.upload_model(model, tmp_path / "src")
    assert again.artifact_digest == version.artifact_digest


class Direct:
    """CreateDirectUpload / CommitDirectUpload and raw PUTs, as a client that might misbehave."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def create(self, data: bytes, size: int | None = None) -> artifact_pb2.DirectUpload:
        request = artifact_pb2.CreateDirectUploadRequest(
            digest=sha(data), size=len(data) if size is None else size
        )
        return self.registry._call(self.registry._artifacts.CreateDirectUpload, request)

    def commit(self, data: bytes) -> artifact_pb2.Blob:
        request = artifact_pb2.CommitDirectUploadRequest(digest=sha(data), size=len(data))
        return self.registry._call(self.registry._artifacts.CommitDirectUpload, request)

    @staticmethod
    def put(url: str, body: bytes, headers: dict[str, str]) -> int:
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.netloc, timeout=30)
        try:
            connection.request("PUT", f"{parts.path}?{parts.query}", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


def test_object_storage_enforces_what_a_direct_upload_url_signs(registry: Registry) -> None:
    direct = Direct(registry)
    data = os.urandom(3000)
    ticket = direct.create(data)
    assert not ticket.already_stored and ticket.url.startswith("http")
    headers = dict(ticket.headers)
    assert set(headers) == {"x-amz-checksum-sha256", "If-None-Match"}
    with pytest.raises(FailedPrecondition) as early:
        direct.commit(data)  # nothing PUT yet
    assert early.value.reason == "BLOB_NOT_UPLOADED"
    assert direct.put(ticket.url, os.urandom(3000), headers) == 400  # other bytes: BadDigest
    assert direct.put(ticket.url, data, {}) == 403  # the signed headers left out
    assert direct.put(ticket.url, data, {**headers, "If-None-Match": "other"}) == 403
    assert sha(data) in registry._find_missing([sha(data)])  # nothing of it is visible yet
    assert direct.put(ticket.url, data, headers) == 200
    blob = direct.commit(data)
    assert (blob.digest, blob.size) == (sha(data), 3000)
    assert direct.put(ticket.url, os.urandom(3000), headers) in (400, 412)
    assert direct.put(ticket.url, data, headers) == 412  # never replaced, even with the right bytes
    stream = registry._artifacts.DownloadBlob(
        artifact_pb2.DownloadBlobRequest(digest=sha(data)), metadata=registry.config.call_metadata
    )
    assert b"".join(r.data for r in stream) == data
    assert registry._find_missing([sha(data)]) == set()
    assert direct.create(data).already_stored
    assert direct.commit(data).digest == sha(data)  # committing again is harmless


def test_direct_upload_requests_are_checked(registry: Registry) -> None:
    direct = Direct(registry)
    with pytest.raises(InvalidArgument) as caught:
        direct.create(b"x", size=5 * 1024**3 + 1)
    assert caught.value.reason == "BLOB_TOO_LARGE"
    with pytest.raises(InvalidArgument):
        registry._call(
            registry._artifacts.CreateDirectUpload,
            artifact_pb2.CreateDirectUploadRequest(digest="sha256:nothex", size=1),
        )
    stored = os.urandom(500)
    ticket = direct.create(stored)
    assert direct.put(ticket.url, stored, dict(ticket.headers)) == 200
    direct.commit(stored)
    with pytest.raises(InvalidArgument) as wrong:
        direct.create(stored, size=501)
    assert wrong.value.reason == "SIZE_MISMATCH"
