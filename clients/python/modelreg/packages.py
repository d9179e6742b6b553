"""Model packages: what :meth:`Registry.upload_model` / :meth:`Registry.download_model` and their asyncio
twins share.

A package is a directory of files (or a single file) stored as content-addressed blobs, plus a manifest
blob listing them in the canonical JSON encoding of `modelreg.v1.Manifest`; the manifest's digest is the
version's `artifact_digest`. This module holds everything that does not depend on how RPCs are sent:
scanning and hashing local files, the manifest and its canonical encoding, path safety checks, request
building, retry decisions, progress accounting, the local blob cache and the resumable `.partial` files.
The blocking file work here (hashing, reading chunks, writing verified bytes) is called directly by the
sync client and through worker threads by the asyncio one.

Chunk size: uploads send 1 MiB chunks (the protocol's maximum). Measured against the test stack
(SeaweedFS S3, 2 vCPUs) with 128 MiB blobs, 256 KiB, 512 KiB and 1 MiB chunks reached the same upload
throughput within run-to-run noise (S3 bounds it at 20-30 MiB/s), and 1 MiB needed the least server CPU
(0.61-0.63 s vs 0.66-0.72 s per 128 MiB for 256 KiB) as it sends the fewest messages. The server's
4 MiB receive limit leaves room for the header and framing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import re
import shutil
import stat
import threading
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import grpc

from modelreg import _core
from modelreg.errors import Cancelled, DataLoss, FailedPrecondition, ModelregError
from modelreg.v1 import artifact_service_pb2 as artifact_pb2
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2

__all__ = [
    "CACHE_ENV",
    "CHUNK_SIZE",
    "HTTP_ERRORS",
    "RESUMABLE_THRESHOLD",
    "BlobCache",
    "BlobFetch",
    "BlobUpload",
    "BlobWriter",
    "HashedFile",
    "LocalFile",
    "Manifest",
    "ManifestFile",
    "PackageRef",
    "Problem",
    "Progress",
    "ProgressCallback",
    "UploadStream",
    "append_manifest_chunk",
    "blob_digest",
    "build_manifest",
    "check_format",
    "check_parallelism",
    "check_url",
    "default_cache_dir",
    "encode_manifest",
    "fetch_url",
    "find_missing_requests",
    "hash_file",
    "install",
    "manifest_problems",
    "open_cache",
    "parse_manifest",
    "parse_package_ref",
    "path_problem",
    "plan_download",
    "plan_uploads",
    "retry_delay",
    "scan_package",
    "size_mismatch",
    "transfer_retry_delay",
    "version_digest",
]

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
CHUNK_SIZE: Final = MiB
"""Bytes per UploadBlob chunk message (see the module docstring for the measurement)."""
RESUMABLE_THRESHOLD: Final = 64 * MiB
"""Blobs larger than this go through a resumable session (StartUpload) that survives broken streams."""
HASH_BLOCK: Final = 4 * MiB
MAX_MANIFEST_BYTES: Final = 16 * MiB
MAX_FIND_MISSING: Final = 10_000
MAX_FILES: Final = 100_000
MAX_PATH_BYTES: Final = 1024
MAX_SEGMENT_BYTES: Final = 255
MAX_INT64: Final = 2**63 - 1
SCHEMA_VERSION: Final = 1
DEFAULT_FORMAT: Final = "custom"
DEFAULT_MODE: Final = 0o644
CACHE_ENV: Final = "MODELREG_CACHE_DIR"
PARTIAL_SUFFIX: Final = ".partial"
TRANSFER_ATTEMPTS: Final = 6
"""Attempts per blob transfer; the backoff between them (0.5 s doubling to 8 s) spans about 15 s."""
_BACKOFF_INITIAL = 0.5
_BACKOFF_MAX = 8.0
_RETRIED_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# A resumed write at a stale offset, or a session the server has forgotten: query (or restart) and go on.
_RETRIED_REASONS = frozenset({"WRITE_OFFSET_MISMATCH", "UPLOAD_NOT_FOUND"})

DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
FORMAT_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_TOP_KEYS = frozenset({"files", "format", "schema_version", "total_size"})
_FILE_KEYS = frozenset({"digest", "mode", "path", "size"})

ProgressCallback = Callable[[int, int], None]
"""`progress(done_bytes, total_bytes)`: bytes transferred over the network so far, of those to transfer."""


def blob_digest(data: bytes) -> str:
    """`sha256:<hex>` of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- manifest --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    """One file of a package: its relative POSIX path, blob digest, size and permission bits."""

    path: str
    digest: str
    size: int
    mode: int = DEFAULT_MODE


@dataclass(frozen=True)
class Manifest:
    """The files of a package (sorted by path) and its model format; `digest` names it in the registry."""

    format: str
    files: tuple[ManifestFile, ...]
    total_size: int
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of(cls, format: str, files: Iterable[ManifestFile]) -> Manifest:
        """A manifest of `files`, sorted by path, whose total is the sum of their sizes."""
        ordered = tuple(sorted(files, key=lambda f: f.path))
        return cls(format, ordered, sum(f.size for f in ordered))

    def canonical_bytes(self) -> bytes:
        """The canonical JSON encoding (see :func:`encode_manifest`)."""
        return encode_manifest(self)

    @property
    def digest(self) -> str:
        """`sha256:` digest of the canonical encoding: the `artifact_digest` of versions of this package."""
        return blob_digest(self.canonical_bytes())

    @property
    def file_digests(self) -> list[str]:
        """The distinct file digests, in path order."""
        return list(dict.fromkeys(f.digest for f in self.files))


def _json_string(text: str) -> str:
    # Canonical strings escape only `"` and `\`; every other character is raw UTF-8. Control characters
    # would need other escapes, and no valid path or format holds one.
    if _CONTROL_RE.search(text):
        raise ValueError(f"control character in manifest string {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _json_integer(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"manifest integers must be int, got {type(value).__name__}")
    return f"{value:d}"


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical JSON of a manifest, byte for byte what the registry accepts.

    One object with keys in code-point order, no whitespace, files sorted by path, integers in plain
    decimal, and strings with only `"` and `\\` escaped.
    """
    files = ",".join(
        f'{{"digest":{_json_string(f.digest)},"mode":{_json_integer(f.mode)},'
        f'"path":{_json_string(f.path)},"size":{_json_integer(f.size)}}}'
        for f in sorted(manifest.files, key=lambda f: f.path)
    )
    text = (
        f'{{"files":[{files}],"format":{_json_string(manifest.format)},'
        f'"schema_version":{_json_integer(manifest.schema_version)},'
        f'"total_size":{_json_integer(manifest.total_size)}}}'
    )
    return text.encode("utf-8")


@dataclass(frozen=True)
class Problem:
    """Why a manifest is refused: the field, what is wrong, and whether unpacking it would be unsafe."""

    field: str
    description: str
    unsafe: bool = False


def path_problem(path: str) -> str | None:
    """Why `path` is not a safe package path, or None.

    Safe paths are relative, `/`-separated, NFC-normalised UTF-8 of at most 1024 bytes (255 per segment),
    without empty, `.` or `..` segments, backslashes, control characters or a drive letter.
    """
    if not path:
        return "empty path"
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if _CONTROL_RE.search(path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    if len(encoded) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if unicodedata.normalize("NFC", path) != path:
        return "not NFC-normalized"
    segments = path.split("/")
    if _DRIVE_RE.match(segments[0]):
        return "starts with a drive letter"
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"has an empty, '.' or '..' segment ({segment!r})"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _path_collisions(paths: Sequence[str]) -> list[Problem]:
    """Paths equal ignoring case (they collide on macOS and Windows) and files that are another's parent."""
    problems: list[Problem] = []
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        key = path.casefold()
        if key in first:
            problems.append(Problem(f"files[{i}].path", f"duplicates files[{first[key]}].path", True))
        else:
            first[key] = i
    parents: set[str] = set()
    for key in first:
        segments = key.split("/")
        parents.update("/".join(segments[:n]) for n in range(1, len(segments)))
    problems.extend(
        Problem(f"files[{i}].path", "is also a directory of another file", True)
        for i, path in enumerate(paths)
        if path.casefold() in parents
    )
    return problems


def check_format(format: str) -> None:
    """Raise ValueError unless `format` is a valid model format (`onnx`, `pytorch`, `custom`, ...)."""
    if not isinstance(format, str) or not FORMAT_RE.fullmatch(format):
        raise ValueError(
            f"invalid format {format!r}: lowercase letters, digits, '.', '_', '-', at most 64 characters"
        )


def manifest_problems(manifest: Manifest) -> list[Problem]:
    """Everything wrong with a manifest's values (the registry refuses all of these)."""
    problems: list[Problem] = []
    if manifest.schema_version != SCHEMA_VERSION:
        problems.append(Problem("schema_version", f"must be {SCHEMA_VERSION}"))
    if not FORMAT_RE.fullmatch(manifest.format):
        problems.append(Problem("format", "lowercase letters, digits, '.', '_', '-', at most 64 chars"))
    if len(manifest.files) > MAX_FILES:
        problems.append(Problem("files", f"at most {MAX_FILES} files"))
    for i, f in enumerate(manifest.files):
        if not DIGEST_RE.fullmatch(f.digest):
            problems.append(Problem(f"files[{i}].digest", "must be 'sha256:' + 64 lowercase hex digits"))
        if not 0 <= f.size <= MAX_INT64:
            problems.append(Problem(f"files[{i}].size", "must be >= 0 and fit in 64 bits"))
        if not 0 <= f.mode <= 0o777:
            problems.append(Problem(f"files[{i}].mode", "permission bits 0 to 0o777 only"))
        problem = path_problem(f.path)
        if problem:
            problems.append(Problem(f"files[{i}].path", problem, unsafe=True))
    problems.extend(_path_collisions([f.path for f in manifest.files]))
    if sum(f.size for f in manifest.files) != manifest.total_size:
        problems.append(Problem("total_size", "does not equal the sum of the file sizes"))
    return problems


def _summary(problems: Sequence[Problem]) -> str:
    text = "; ".join(f"{p.field}: {p.description}" for p in problems[:5])
    return text + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")


def _integrity_error(reason: str, message: str, **metadata: str) -> DataLoss:
    return DataLoss(message, reason=reason, metadata=metadata)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _typed(value: Any, kind: type, field: str) -> Any:
    # bool is an int in Python but not an integer in a manifest.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{field} must be a JSON {'string' if kind is str else 'integer'}")
    return value


def _manifest_from_document(document: Any) -> Manifest:
    if not isinstance(document, dict) or set(document) != _TOP_KEYS:
        raise ValueError(f"must be an object with exactly the keys {sorted(_TOP_KEYS)}")
    items = document["files"]
    if not isinstance(items, list):
        raise ValueError("files must be an array")
    files: list[ManifestFile] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != _FILE_KEYS:
            raise ValueError(f"files[{i}] must be an object with exactly the keys {sorted(_FILE_KEYS)}")
        files.append(
            ManifestFile(
                path=_typed(item["path"], str, f"files[{i}].path"),
                digest=_typed(item["digest"], str, f"files[{i}].digest"),
                size=_typed(item["size"], int, f"files[{i}].size"),
                mode=_typed(item["mode"], int, f"files[{i}].mode"),
            )
        )
    return Manifest(
        format=_typed(document["format"], str, "format"),
        files=tuple(files),
        total_size=_typed(document["total_size"], int, "total_size"),
        schema_version=_typed(document["schema_version"], int, "schema_version"),
    )


def parse_manifest(data: bytes, digest: str | None = None) -> Manifest:
    """Decode manifest bytes from the registry, trusting nothing.

    Checks the bytes against `digest` (when given), then that they are canonical JSON of a valid manifest
    whose paths are safe to unpack.

    Raises:
        DataLoss: reason `DIGEST_MISMATCH`, `INVALID_MANIFEST` or `UNSAFE_MANIFEST`.
    """
    if digest is not None and blob_digest(data) != digest:
        raise _integrity_error(
            "DIGEST_MISMATCH",
            f"manifest bytes do not hash to {digest}",
            digest=digest,
            actual=blob_digest(data),
        )
    if len(data) > MAX_MANIFEST_BYTES:
        raise _integrity_error("INVALID_MANIFEST", f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = _manifest_from_document(json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _integrity_error("INVALID_MANIFEST", f"invalid manifest: {exc}") from None
    problems = manifest_problems(manifest)
    unsafe = [p for p in problems if p.unsafe]
    if unsafe:
        raise _integrity_error("UNSAFE_MANIFEST", f"unsafe manifest: {_summary(unsafe)}")
    if problems:
        raise _integrity_error("INVALID_MANIFEST", f"invalid manifest: {_summary(problems)}")
    if encode_manifest(manifest) != data:
        raise _integrity_error("INVALID_MANIFEST", "manifest is not in canonical form")
    return manifest


# --- local files -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    """A file to publish: its package path, where it is on disk, and its permission bits."""

    path: str
    source: Path
    mode: int

    def hashed(self, cancelled: threading.Event | None = None) -> HashedFile:
        """This file with its digest and size, read once from disk."""
        digest, size = hash_file(self.source, cancelled)
        return HashedFile(self.path, self.source, self.mode, digest, size)


@dataclass(frozen=True)
class HashedFile:
    """A file to publish, hashed."""

    path: str
    source: Path
    mode: int
    digest: str
    size: int

    def manifest_file(self) -> ManifestFile:
        """Its entry in the manifest."""
        return ManifestFile(self.path, self.digest, self.size, self.mode)


def hash_file(path: Path, cancelled: threading.Event | None = None) -> tuple[str, int]:
    """`(sha256 digest, size)` of a file, read in blocks (hashlib releases the GIL, so threads scale)."""
    hasher = hashlib.sha256()
    size = 0
    buffer = memoryview(bytearray(HASH_BLOCK))
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled(f"hashing {path} cancelled")
            hasher.update(buffer[:n])
            size += n
    return "sha256:" + hasher.hexdigest(), size


def _raise(error: OSError) -> None:
    raise error


def scan_package(path: str | os.PathLike[str]) -> list[LocalFile]:
    """The files of a package at `path`: a regular file, or every file under a directory (recursively).

    Package paths are relative to the directory (for a single file: its name), `/`-separated and
    NFC-normalised. Symbolic links to files are followed; links to directories, special files, and names
    the registry would refuse (or that collide ignoring case) raise ValueError.
    """
    root = Path(path)
    info = root.stat()
    found: list[tuple[str, Path, os.stat_result]] = []
    if stat.S_ISREG(info.st_mode):
        found.append((root.name, root, info))
    elif stat.S_ISDIR(info.st_mode):
        for directory, subdirectories, names in os.walk(root, onerror=_raise):
            for name in sorted(subdirectories):
                if (Path(directory) / name).is_symlink():
                    raise ValueError(f"{Path(directory) / name}: links to directories are not supported")
            for name in sorted(names):
                source = Path(directory) / name
                entry = source.stat()
                if not stat.S_ISREG(entry.st_mode):
                    raise ValueError(f"{source}: not a regular file")
                found.append((source.relative_to(root).as_posix(), source, entry))
    else:
        raise ValueError(f"{root}: not a regular file or a directory")
    if not found:
        raise ValueError(f"{root}: no files to upload")
    files = [
        LocalFile(unicodedata.normalize("NFC", relative), source, stat.S_IMODE(entry.st_mode) & 0o777)
        for relative, source, entry in found
    ]
    problems = [
        Problem(f.path, problem) for f in files if (problem := path_problem(f.path)) is not None
    ] + _path_collisions([f.path for f in files])
    if problems:
        raise ValueError(f"{root}: cannot publish these paths: {_summary(problems)}")
    return files


def build_manifest(files: Iterable[HashedFile], format: str = DEFAULT_FORMAT) -> Manifest:
    """The manifest of hashed files; ValueError when the registry would refuse it."""
    check_format(format)
    manifest = Manifest.of(format, (f.manifest_file() for f in files))
    problems = manifest_problems(manifest)
    if problems:
        raise ValueError(f"invalid package: {_summary(problems)}")
    return manifest


# --- upload ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobUpload:
    """One blob to send: a file on disk, or bytes in memory (the manifest)."""

    digest: str
    size: int
    source: Path | bytes

    @property
    def resumable(self) -> bool:
        """Whether the blob goes through a resumable session."""
        return self.size > RESUMABLE_THRESHOLD

    def open(self) -> IO[bytes]:
        """A binary reader of the blob's bytes."""
        if isinstance(self.source, bytes):
            return io.BytesIO(self.source)
        return self.source.open("rb")


def find_missing_requests(digests: Iterable[str]) -> list[artifact_pb2.FindMissingBlobsRequest]:
    """FindMissingBlobs requests for the distinct `digests`, at most 10,000 per request."""
    unique = list(dict.fromkeys(digests))
    return [
        artifact_pb2.FindMissingBlobsRequest(digests=unique[i : i + MAX_FIND_MISSING])
        for i in range(0, len(unique), MAX_FIND_MISSING)
    ]


def plan_uploads(files: Iterable[HashedFile], missing: Iterable[str]) -> list[BlobUpload]:
    """One upload per distinct digest among `missing`, largest first so parallel streams finish together."""
    wanted = set(missing)
    uploads: dict[str, BlobUpload] = {}
    for f in files:
        if f.digest in wanted and f.digest not in uploads:
            uploads[f.digest] = BlobUpload(f.digest, f.size, f.source)
    return sorted(uploads.values(), key=lambda u: -u.size)


class UploadStream:
    """The messages of one UploadBlob call: the header, then the blob's bytes from `offset` in chunks.

    :meth:`next_message` reads the file (blocking) and returns None at the end, so
    `iter(stream.next_message, None)` is the request iterator of a sync call. A resumable stream (with
    `upload_id`) sets `finish_write` on its last message. When the file turns out shorter than the
    declared size, or `cancelled` is set, the stream ends early (the server then refuses or pauses the
    upload) and :attr:`error` says why. :meth:`close` may run while gRPC still pulls messages.
    """

    def __init__(
        self,
        blob: BlobUpload,
        *,
        upload_id: str = "",
        offset: int = 0,
        chunk_size: int = CHUNK_SIZE,
        on_sent: Callable[[int], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> None:
        if not 0 < chunk_size <= MiB:
            raise ValueError(f"chunk_size must be between 1 and {MiB} bytes")
        self.blob = blob
        self.upload_id = upload_id
        self.position = offset
        self.error: Exception | None = None
        self._chunk_size = chunk_size
        self._on_sent = on_sent
        self._cancelled = cancelled
        self._lock = threading.Lock()
        self._reader: IO[bytes] | None = None
        self._header_sent = False
        self._done = False

    def _header(self) -> artifact_pb2.UploadBlobRequest:
        header = artifact_pb2.UploadHeader(
            digest=self.blob.digest, size=self.blob.size, upload_id=self.upload_id, write_offset=self.position
        )
        message = artifact_pb2.UploadBlobRequest(header=header)
        if self.upload_id and self.position >= self.blob.size:
            message.finish_write = True  # everything is committed already: just finish
            self._done = True
        return message

    def next_message(self) -> artifact_pb2.UploadBlobRequest | None:
        """The next message to send, or None when the stream is over."""
        with self._lock:
            if self._done:
                return None
            if self._cancelled is not None and self._cancelled.is_set():
                self.error = Cancelled("upload cancelled")
                self._finish()
                return None
            if not self._header_sent:
                self._header_sent = True
                return self._header()
            remaining = self.blob.size - self.position
            if remaining <= 0:
                self._finish()
                return None
            if self._reader is None:
                self._reader = self.blob.open()
                self._reader.seek(self.position)
            data = self._reader.read(min(self._chunk_size, remaining))
            if not data:
                self.error = _integrity_error(
                    "SIZE_MISMATCH", f"{self.blob.source!s:.200} shrank while it was being uploaded"
                )
                self._finish()
                return None
            self.position += len(data)
            message = artifact_pb2.UploadBlobRequest(chunk=data)
            if self.upload_id and self.position == self.blob.size:
                message.finish_write = True
                self._finish()
            if self._on_sent is not None:
                self._on_sent(self.position)
            return message

    def _finish(self) -> None:
        self._done = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        """Stop the stream and close the file (waits for a read in progress)."""
        with self._lock:
            self._finish()

    def check(self, response: artifact_pb2.UploadBlobResponse) -> None:
        """Raise unless the stream ended as planned and `response` confirms the blob is stored.

        Raises:
            DataLoss: The server stored something else (or nothing).
        """
        if self.error is not None:
            raise self.error
        if not response.complete or response.digest != self.blob.digest or response.size != self.blob.size:
            raise _integrity_error(
                "UPLOAD_INCOMPLETE",
                f"upload of {self.blob.digest} ended with complete={response.complete},"
                f" digest={response.digest or '-'}, size={response.size}",
                digest=self.blob.digest,
            )


def retry_delay(error: ModelregError, attempt: int) -> float | None:
    """Seconds to wait before retrying a broken transfer after failed attempt number `attempt` (0-based),
    or None when the error is final (digest mismatch, bad request, permission) or attempts are used up."""
    if attempt + 1 >= TRANSFER_ATTEMPTS:
        return None
    if error.code not in _RETRIED_CODES and error.reason not in _RETRIED_REASONS:
        return None
    return float(min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2**attempt))


# Failures of an HTTP fetch from a presigned URL that a new attempt (with a fresh URL) may overcome. Local
# file errors (a full disk) are plain OSErrors and not among them.
HTTP_ERRORS: Final = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


def transfer_retry_delay(error: BaseException, attempt: int) -> float | None:
    """:func:`retry_delay` for registry errors; network failures of presigned-URL fetches are retried too."""
    if isinstance(error, ModelregError):
        return retry_delay(error, attempt)
    if isinstance(error, HTTP_ERRORS) and attempt + 1 < TRANSFER_ATTEMPTS:
        return float(min(_BACKOFF_MAX, _BACKOFF_INITIAL * 2**attempt))
    return None


def check_parallelism(parallelism: int) -> None:
    """Raise ValueError unless `parallelism` is a positive int."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"parallelism must be a positive integer, got {parallelism!r}")


class Progress:
    """Turns per-blob positions into one `progress(done, total)` callback; thread-safe, calls serialised.

    `done` only grows: bytes re-sent after a broken stream are not counted twice.
    """

    def __init__(self, callback: ProgressCallback | None, total: int = 0) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._positions: dict[str, int] = {}
        self.done = 0
        self.total = total

    def add_total(self, amount: int) -> None:
        """More bytes to transfer than planned (a corrupt cache entry, a partial file that was wrong)."""
        if amount:
            with self._lock:
                self.total += amount
                self._report()

    def update(self, key: str, position: int) -> None:
        """Blob `key` has `position` bytes transferred."""
        with self._lock:
            previous = self._positions.get(key, 0)
            if position > previous:
                self._positions[key] = position
                self.done += position - previous
                self._report()

    def report(self) -> None:
        """Call the callback with the current state."""
        with self._lock:
            self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)


# --- download --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageRef:
    """Where a package comes from: a manifest digest, or a version (GetModelVersion name) to ask."""

    digest: str = ""
    version: str = ""

    def get_version_request(self) -> service_pb2.GetModelVersionRequest:
        """GetModelVersion request of a version reference."""
        return service_pb2.GetModelVersionRequest(name=self.version)


def parse_package_ref(ref: str | model_pb2.ModelVersion) -> PackageRef:
    """A package reference from a `sha256:` manifest digest, a version (`models/m/versions/3`, `m/3`), an
    alias (`models/m@champion`, `m@champion`) or a `ModelVersion` (its `artifact_digest`)."""
    if isinstance(ref, model_pb2.ModelVersion):
        return PackageRef(digest=version_digest(ref))
    if ref.startswith("sha256:"):
        if not DIGEST_RE.fullmatch(ref):
            raise ValueError(f"not a digest: {ref!r} (expected sha256: and 64 lowercase hex digits)")
        return PackageRef(digest=ref)
    return PackageRef(version=_core.version_reference(ref))


def version_digest(version: model_pb2.ModelVersion) -> str:
    """The artifact digest of a version; FailedPrecondition (`NO_ARTIFACT`) when it was registered without."""
    if not version.artifact_digest:
        raise FailedPrecondition(
            f"{version.name} has no artifact", reason="NO_ARTIFACT", metadata={"model_version": version.name}
        )
    return version.artifact_digest


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$MODELREG_CACHE_DIR`, else `$XDG_CACHE_HOME/modelreg/blobs`, else `~/.cache/modelreg/blobs`."""
    environ = os.environ if env is None else env
    configured = environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelreg" / "blobs"


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


class BlobCache:
    """A local content-addressed store of blobs: `<root>/sha256/<first 2 hex digits>/<64 hex digits>`.

    Entries appear atomically (written aside, then renamed). One that no longer matches its digest is
    removed when found, and the blob is fetched again. A cache that cannot be written is skipped.

    A freshly downloaded blob enters the cache as a hard link to the file it was installed as
    (:meth:`adopt`), so a large download writes its bytes once. Editing that file in place would change
    the entry too: lookups with `verify` re-hash every entry anyway, and lookups without it re-hash an
    entry that still has another name, so a changed entry is never handed out. Entries are always
    copied *out* of the cache.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def path_for(self, digest: str) -> Path:
        """Where the blob `digest` is (or would be) stored."""
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError(f"not a digest: {digest!r}")
        hex_digits = digest.removeprefix("sha256:")
        return self.root / "sha256" / hex_digits[:2] / hex_digits

    def has(self, digest: str, size: int) -> bool:
        """Whether an entry of the right size exists (its bytes are not checked)."""
        try:
            return self.path_for(digest).stat().st_size == size
        except OSError:
            return False

    def _shared(self, digest: str) -> bool:
        """Whether the entry has other names (an installed file it was adopted from), which may edit it."""
        try:
            return self.path_for(digest).stat().st_nlink > 1
        except OSError:
            return True

    def lookup(self, digest: str, size: int, *, verify: bool = True) -> Path | None:
        """The entry of `digest`, or None; with `verify` (and always for an entry still linked to an
        installed file), an entry whose bytes do not match is evicted."""
        path = self.path_for(digest)
        if not self.has(digest, size):
            return None
        if (verify or self._shared(digest)) and hash_file(path)[0] != digest:
            log.warning("cached blob %s does not match its digest; removing it", path)
            self.evict(digest)
            return None
        return path

    def read(self, digest: str, max_size: int = MAX_MANIFEST_BYTES) -> bytes | None:
        """A small blob's bytes when cached and intact (always verified), else None."""
        path = self.path_for(digest)
        try:
            if path.stat().st_size > max_size:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        if blob_digest(data) != digest:
            log.warning("cached blob %s does not match its digest; removing it", path)
            self.evict(digest)
            return None
        return data

    def store(self, digest: str, source: Path | bytes) -> None:
        """Add a verified blob, copied from a file or given as bytes."""
        target = self.path_for(digest)
        temporary = _temporary_sibling(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                temporary.write_bytes(source)
            else:
                shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except OSError as exc:
            log.warning("cannot add %s to the blob cache %s: %s", digest, self.root, exc)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def adopt(self, digest: str, installed: Path) -> None:
        """Add a verified blob by hard-linking the file it was installed as (a copy where links fail)."""
        target = self.path_for(digest)
        temporary = _temporary_sibling(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(installed, temporary)
        except OSError:
            self.store(digest, installed)
            return
        try:
            os.replace(temporary, target)
        except OSError as exc:
            log.warning("cannot add %s to the blob cache %s: %s", digest, self.root, exc)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)

    def evict(self, digest: str) -> None:
        """Remove the entry of `digest`, if any."""
        self.path_for(digest).unlink(missing_ok=True)


def open_cache(cache_dir: str | os.PathLike[str] | None, use_cache: bool) -> BlobCache | None:
    """The blob cache at `cache_dir` (None: :func:`default_cache_dir`), or None when caching is off."""
    return BlobCache(cache_dir) if use_cache else None


def size_mismatch(fetch: BlobFetch, received: int) -> DataLoss:
    """The error for a blob that ended before the size the manifest gives."""
    return _integrity_error(
        "SIZE_MISMATCH",
        f"{fetch.digest}: the blob ends after {received} bytes, the manifest says {fetch.size}",
        digest=fetch.digest,
    )


@dataclass(frozen=True)
class BlobFetch:
    """One distinct blob of a package and every file it becomes: `(path under dest, mode)`."""

    digest: str
    size: int
    targets: tuple[tuple[Path, int], ...]

    @property
    def partial(self) -> Path:
        """`<first target>.partial`: where the blob's bytes arrive, and where an interrupted pull resumes."""
        first = self.targets[0][0]
        return first.with_name(first.name + PARTIAL_SUFFIX)

    def bytes_to_fetch(self, cache: BlobCache | None) -> int:
        """Bytes expected over the network: 0 when cached, else what the partial file lacks."""
        if cache is not None and cache.has(self.digest, self.size):
            return 0
        try:
            present = self.partial.stat().st_size
        except OSError:
            present = 0
        return self.size - present if present <= self.size else self.size


def plan_download(manifest: Manifest, dest: Path) -> list[BlobFetch]:
    """The blobs to obtain for `manifest` under `dest`, one per distinct digest, largest first."""
    targets: dict[str, list[tuple[Path, int]]] = {}
    sizes: dict[str, int] = {}
    for f in manifest.files:
        targets.setdefault(f.digest, []).append((dest.joinpath(*f.path.split("/")), f.mode))
        sizes[f.digest] = f.size
    fetches = [BlobFetch(digest, sizes[digest], tuple(paths)) for digest, paths in targets.items()]
    return sorted(fetches, key=lambda fetch: -fetch.size)


def _inside(root: Path, target: Path) -> None:
    """Refuse a target whose directory escapes `root` through a symbolic link already in the tree."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise _integrity_error("UNSAFE_MANIFEST", f"{target} would be written outside {root}")


class BlobWriter:
    """Writes one blob to its `.partial` file, hashing as it goes; resumes what an earlier pull left.

    On open, the bytes already in the partial file are re-hashed (with `verify`), so writing continues at
    :attr:`offset` (a partial file longer than the blob starts over). :meth:`finish` checks the size and
    the digest. Blocking: the asyncio client calls it from worker threads.
    """

    def __init__(self, root: Path, fetch: BlobFetch, *, verify: bool = True) -> None:
        self.fetch = fetch
        self.path = fetch.partial
        self._verify = verify
        _inside(root, self.path)
        self._file = self.path.open("a+b")
        self._hasher = hashlib.sha256()
        self._file.seek(0, os.SEEK_END)
        present = self._file.tell()
        if present > fetch.size:
            self._file.truncate(0)
            present = 0
        elif present and verify:
            self._file.seek(0)
            remaining = present
            while remaining:
                block = self._file.read(min(HASH_BLOCK, remaining))
                if not block:
                    break
                self._hasher.update(block)
                remaining -= len(block)
        self.offset = present
        self.resumed_from = present

    def write(self, data: bytes) -> None:
        """Append the next bytes of the blob.

        Raises:
            DataLoss: More bytes than the blob's size (`SIZE_MISMATCH`).
        """
        if self.offset + len(data) > self.fetch.size:
            raise _integrity_error(
                "SIZE_MISMATCH", f"{self.fetch.digest}: received more than {self.fetch.size} bytes"
            )
        if self._verify:
            self._hasher.update(data)
        self._file.write(data)
        self.offset += len(data)

    def absorb(self, end: int) -> None:
        """Take bytes [offset, end) that were written into the partial file out of order (by ranged
        fetches) as the next bytes of the blob: they are read back and hashed, and `offset` moves to end.

        Raises:
            DataLoss: `end` is past the blob's size, or the file holds fewer bytes (`SIZE_MISMATCH`).
        """
        if end > self.fetch.size:
            raise _integrity_error(
                "SIZE_MISMATCH", f"{self.fetch.digest}: received more than {self.fetch.size} bytes"
            )
        if self._verify:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                remaining = end - self.offset
                while remaining:
                    block = f.read(min(HASH_BLOCK, remaining))
                    if not block:
                        raise size_mismatch(self.fetch, end - remaining)
                    self._hasher.update(block)
                    remaining -= len(block)
        self.offset = end

    def flush(self) -> None:
        """Write buffered bytes through to the partial file (before others write into it by offset)."""
        self._file.flush()

    def drop_unabsorbed(self) -> None:
        """Cut the partial file back to `offset`, discarding out-of-order bytes that were never absorbed."""
        self._file.truncate(self.offset)

    def restart(self) -> None:
        """Throw away what was written and start from byte 0."""
        self._file.truncate(0)
        self._file.seek(0)
        self._hasher = hashlib.sha256()
        self.offset = 0
        self.resumed_from = 0

    def finish(self) -> Path:
        """Close the file after checking size and digest; returns the partial file's path.

        Raises:
            DataLoss: `SIZE_MISMATCH` or `DIGEST_MISMATCH` (the partial file is kept; see :meth:`discard`).
        """
        self._file.flush()
        if self.offset != self.fetch.size:
            raise _integrity_error(
                "SIZE_MISMATCH",
                f"{self.fetch.digest}: got {self.offset} bytes, the manifest says {self.fetch.size}",
                digest=self.fetch.digest,
            )
        if self._verify:
            actual = "sha256:" + self._hasher.hexdigest()
            if actual != self.fetch.digest:
                raise _integrity_error(
                    "DIGEST_MISMATCH",
                    f"downloaded bytes hash to {actual}, not {self.fetch.digest}",
                    digest=self.fetch.digest,
                    actual=actual,
                )
        self._file.close()
        return self.path

    def close(self) -> None:
        """Close the file, keeping what was written for a later resume."""
        self._file.close()

    def discard(self) -> None:
        """Close and delete the partial file."""
        self._file.close()
        self.path.unlink(missing_ok=True)


def install(root: Path, fetch: BlobFetch, source: Path, *, move: bool) -> None:
    """Put a verified blob at every target of `fetch` under `root` and set the modes.

    Each copy is written to `<target>.partial`, then renamed into place, so a target is never seen half
    written. With `move`, `source` (the partial file of the first target) is renamed into place last.
    """
    targets = fetch.targets[1:] if move else fetch.targets
    for target, mode in targets:
        _inside(root, target)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        partial.unlink(missing_ok=True)  # may be left read-only by an interrupted install
        shutil.copyfile(source, partial)
        os.chmod(partial, mode)
        os.replace(partial, target)
    if move:
        target, mode = fetch.targets[0]
        os.chmod(source, mode)
        os.replace(source, target)


def check_url(url: str) -> None:
    """Raise ValueError unless `url` is http(s): a download URL never names a local file."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"refusing a download URL that is not http(s): {url[:100]!r}")


def fetch_url(
    url: str,
    writer: BlobWriter,
    *,
    on_progress: Callable[[int], None] | None = None,
    cancelled: threading.Event | None = None,
    timeout: float | None = None,
) -> None:
    """Append the rest of a blob from a presigned HTTP(S) URL (a Range request when resuming). Blocking.

    Raises:
        urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError: The request failed
            (worth retrying with a fresh URL).
        ValueError: The URL is not http(s).
    """
    check_url(url)
    headers = {"Range": f"bytes={writer.offset}-"} if writer.offset else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if writer.offset and response.status != 206:
            writer.restart()  # the server ignored the range and sends the whole blob
        while data := response.read(CHUNK_SIZE):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("download cancelled")
            writer.write(data)
            if on_progress is not None:
                on_progress(writer.offset)


def append_manifest_chunk(buffer: bytearray, data: bytes, digest: str) -> None:
    """Collect manifest bytes from a download, refusing more than 16 MiB.

    Raises:
        DataLoss: `INVALID_MANIFEST` for an oversized manifest.
    """
    if len(buffer) + len(data) > MAX_MANIFEST_BYTES:
        raise _integrity_error(
            "INVALID_MANIFEST", f"manifest {digest} is larger than {MAX_MANIFEST_BYTES} bytes", digest=digest
        )
    buffer += data
