"""Model package manifests: the canonical JSON encoding and the validation that refuses unsafe ones.

Canonical form (also documented on `modelreg.v1.Manifest`): one UTF-8 JSON object
`{"files":[{"digest":…,"mode":…,"path":…,"size":…},…],"format":…,"schema_version":1,"total_size":…}`
with keys sorted, no whitespace outside strings, files sorted by path, integers in plain decimal and
non-ASCII characters as raw UTF-8. `parse_manifest` accepts exactly the bytes `canonical_bytes` produces,
so one package has one digest.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from modelreg_server.domain import errors

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 100_000
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
DEFAULT_MODE = 0o644

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
FORMAT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_TOP_KEYS = frozenset({"files", "format", "schema_version", "total_size"})
_FILE_KEYS = frozenset({"digest", "mode", "path", "size"})
MAX_INT64 = 2**63 - 1

T = TypeVar("T")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a package."""

    path: str
    digest: str
    size: int
    mode: int = DEFAULT_MODE


@dataclass(frozen=True)
class Manifest:
    """A model package: its format and files (sorted by path once parsed)."""

    format: str
    files: tuple[ManifestFile, ...]
    total_size: int
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of(cls, format: str, files: Sequence[ManifestFile]) -> Manifest:
        """A manifest whose files are sorted and whose total is their sum."""
        ordered = tuple(sorted(files, key=lambda f: f.path))
        return cls(format, ordered, sum(f.size for f in ordered))

    @property
    def file_digests(self) -> list[str]:
        """Distinct digests of the files, in path order."""
        return list(dict.fromkeys(f.digest for f in self.files))


def canonical_bytes(manifest: Manifest) -> bytes:
    """The canonical encoding of a manifest (files sorted by path); its sha256 is the package digest."""
    document = {
        "files": [
            {"digest": f.digest, "mode": f.mode, "path": f.path, "size": f.size}
            for f in sorted(manifest.files, key=lambda f: f.path)
        ],
        "format": manifest.format,
        "schema_version": manifest.schema_version,
        "total_size": manifest.total_size,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_manifest(data: bytes) -> Manifest:
    """Decodes and validates canonical manifest bytes.

    Raises InvalidArgument with reason INVALID_MANIFEST (not canonical JSON, wrong fields or types, size
    totals that do not add up) or UNSAFE_MANIFEST (paths that could escape or collide when unpacked).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise _invalid("manifest", f"larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid("manifest", f"not valid UTF-8 JSON: {exc}") from exc
    manifest = _from_document(document)
    check_manifest(manifest)
    if canonical_bytes(manifest) != data:
        raise _invalid("manifest", "not in canonical form (sorted keys and files, no whitespace, raw UTF-8)")
    return manifest


def check_manifest(manifest: Manifest) -> None:
    """Validates a manifest's values: format, digests, sizes, modes, total and path safety."""
    invalid: list[errors.FieldViolation] = []
    unsafe: list[errors.FieldViolation] = []
    if manifest.schema_version != SCHEMA_VERSION:
        invalid.append(errors.FieldViolation("schema_version", f"must be {SCHEMA_VERSION}"))
    if not FORMAT_RE.fullmatch(manifest.format):
        invalid.append(
            errors.FieldViolation("format", "lowercase letters, digits, '.', '_', '-', at most 64 chars")
        )
    if len(manifest.files) > MAX_FILES:
        invalid.append(errors.FieldViolation("files", f"at most {MAX_FILES} files"))
    for i, f in enumerate(manifest.files):
        if not DIGEST_RE.fullmatch(f.digest):
            invalid.append(
                errors.FieldViolation(f"files[{i}].digest", "must be 'sha256:' + 64 lowercase hex")
            )
        if not 0 <= f.size <= MAX_INT64:
            invalid.append(errors.FieldViolation(f"files[{i}].size", "must be ≥ 0 and fit in 64 bits"))
        if not 0 <= f.mode <= 0o777:
            invalid.append(errors.FieldViolation(f"files[{i}].mode", "permission bits 0 to 0o777 only"))
        problem = path_problem(f.path)
        if problem:
            unsafe.append(errors.FieldViolation(f"files[{i}].path", problem))
    unsafe.extend(_collisions(manifest.files))
    if sum(f.size for f in manifest.files) != manifest.total_size:
        invalid.append(errors.FieldViolation("total_size", "does not equal the sum of the file sizes"))
    if unsafe:
        raise _violations("unsafe manifest", "UNSAFE_MANIFEST", unsafe)
    if invalid:
        raise _violations("invalid manifest", "INVALID_MANIFEST", invalid)


def path_problem(path: str) -> str | None:
    """Why a package path is unsafe to unpack, or None when it is fine."""
    if not path:
        return "empty path"
    if "\x00" in path:
        return "contains NUL"
    if _CONTROL_RE.search(path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    if len(path.encode()) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    if unicodedata.normalize("NFC", path) != path:
        return "not NFC-normalized"
    segments = path.split("/")
    if _DRIVE_RE.match(segments[0]):
        return "starts with a drive letter"
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"has an empty, '.' or '..' segment ({segment!r})"
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def _collisions(files: Sequence[ManifestFile]) -> list[errors.FieldViolation]:
    """Duplicates (also ignoring case, as on macOS and Windows) and files that are another's directory."""
    found: list[errors.FieldViolation] = []
    seen: dict[str, int] = {}
    for i, f in enumerate(files):
        key = f.path.casefold()
        if key in seen:
            found.append(errors.FieldViolation(f"files[{i}].path", f"duplicates files[{seen[key]}].path"))
        else:
            seen[key] = i
    directories = {p.rsplit("/", i)[0] for p in seen for i in range(1, p.count("/") + 1)}
    for i, f in enumerate(files):
        if f.path.casefold() in directories:
            found.append(errors.FieldViolation(f"files[{i}].path", "is also a directory of another file"))
    return found


def _from_document(document: Any) -> Manifest:
    if not isinstance(document, dict) or set(document) != _TOP_KEYS:
        raise _invalid("manifest", f"must be an object with exactly the keys {sorted(_TOP_KEYS)}")
    files = document["files"]
    if not isinstance(files, list):
        raise _invalid("files", "must be an array")
    parsed = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or set(item) != _FILE_KEYS:
            raise _invalid(f"files[{i}]", f"must be an object with exactly the keys {sorted(_FILE_KEYS)}")
        parsed.append(
            ManifestFile(
                path=_typed(item["path"], str, f"files[{i}].path"),
                digest=_typed(item["digest"], str, f"files[{i}].digest"),
                size=_typed(item["size"], int, f"files[{i}].size"),
                mode=_typed(item["mode"], int, f"files[{i}].mode"),
            )
        )
    return Manifest(
        format=_typed(document["format"], str, "format"),
        files=tuple(parsed),
        total_size=_typed(document["total_size"], int, "total_size"),
        schema_version=_typed(document["schema_version"], int, "schema_version"),
    )


def _typed(value: Any, kind: type[T], field: str) -> T:
    # bool is an int subclass in Python but not an integer in a manifest.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _invalid(field, f"must be a JSON {'string' if kind is str else 'integer'}")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _invalid(field: str, description: str) -> errors.InvalidArgument:
    return _violations("invalid manifest", "INVALID_MANIFEST", [errors.FieldViolation(field, description)])


def _violations(prefix: str, reason: str, items: list[errors.FieldViolation]) -> errors.InvalidArgument:
    summary = "; ".join(f"{v.field}: {v.description}" for v in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return errors.InvalidArgument(
        f"{prefix}: {summary}{more}", reason, {"violations": str(len(items))}, items
    )
