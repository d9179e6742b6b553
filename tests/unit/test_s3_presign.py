"""The SigV4 presigner against minio's (the oracle for host-only URLs), and the direct-upload probe against
an object store that enforces nothing."""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import urllib3
from minio.credentials.credentials import Credentials as MinioCredentials
from minio.signer import presign_v4

from modelreg_server.storage.blobstore import DirectSigning
from modelreg_server.storage.s3_presign import Credentials, presign

NOW = datetime(2026, 11, 26, 12, 30, 5, tzinfo=UTC)
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


@pytest.mark.parametrize("key", ["blobs/sha256/ab/abcdef", "odd name/é+%.bin"])
def test_host_only_urls_match_minio(key: str) -> None:
    ours = presign(
        "GET", "http://127.0.0.1:9000", "bucket", key, CREDENTIALS, expires=timedelta(minutes=15), now=NOW
    )
    unsigned = urllib.parse.urlsplit(ours.rpartition("&X-Amz-Signature=")[0].partition("?")[0])
    theirs = presign_v4(
        method="GET",
        url=urllib.parse.urlsplit(f"http://127.0.0.1:9000{unsigned.path}"),
        region="us-east-1",
        credentials=MinioCredentials(CREDENTIALS.access_key, CREDENTIALS.secret_key),
        date=NOW,
        expires=900,
    )
    assert ours.rpartition("X-Amz-Signature=")[2] == theirs.query.rpartition("X-Amz-Signature=")[2]


def test_signed_headers_change_the_signature_and_are_listed() -> None:
    def url(headers: dict[str, str]) -> str:
        return presign(
            "PUT",
            "https://s3.example",
            "b",
            "k",
            CREDENTIALS,
            expires=timedelta(seconds=60),
            headers=headers,
            now=NOW,
        )

    plain, checked = url({}), url({"x-amz-checksum-sha256": "abc=", "If-None-Match": "*"})
    assert "X-Amz-SignedHeaders=host&" in plain
    assert "X-Amz-SignedHeaders=host%3Bif-none-match%3Bx-amz-checksum-sha256&" in checked
    assert plain.rpartition("=")[2] != checked.rpartition("=")[2]
    assert (
        url({"X-Amz-Checksum-Sha256": "abc=", "if-none-match": "*"}) == checked
    )  # names are case-insensitive
    with pytest.raises(ValueError):
        presign("PUT", "http://h", "b", "k", CREDENTIALS, expires=timedelta(days=8))


class _AcceptEverything(http.server.BaseHTTPRequestHandler):
    """An object store that checks nothing: every PUT and DELETE succeeds."""

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_DELETE = do_PUT

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def permissive_store() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AcceptEverything)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_a_store_that_enforces_nothing_gets_no_direct_uploads(permissive_store: str) -> None:
    signing = DirectSigning(CREDENTIALS, permissive_store, permissive_store, urllib3.PoolManager())
    problem = signing.probe("bucket", "staging/probe-1")
    assert problem is not None and problem.startswith(
        "bytes that do not match the signed checksum were stored"
    )
