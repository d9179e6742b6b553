"""Manifest encoding and validation: canonical bytes, and refusal of unsafe or inconsistent packages."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelreg_server.domain import errors
from modelreg_server.domain.manifest import (
    MAX_PATH_BYTES,
    Manifest,
    ManifestFile,
    canonical_bytes,
    parse_manifest,
)


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def files(*paths: str) -> list[ManifestFile]:
    return [ManifestFile(p, digest(p), 10 + i) for i, p in enumerate(paths)]


def encode(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_canonical_bytes_are_exact_and_sorted() -> None:
    m = Manifest.of(
        "onnx", [ManifestFile("b.bin", digest("b"), 2, 0o755), ManifestFile("a.txt", digest("a"), 1)]
    )
    expected = (
        '{"files":[{"digest":"' + digest("a") + '","mode":420,"path":"a.txt","size":1},'
        '{"digest":"' + digest("b") + '","mode":493,"path":"b.bin","size":2}],'
        '"format":"onnx","schema_version":1,"total_size":3}'
    )
    assert canonical_bytes(m) == expected.encode()
    assert parse_manifest(canonical_bytes(m)) == m


def test_file_order_does_not_change_the_encoding() -> None:
    forward = Manifest("sklearn", tuple(files("x", "y", "z")), 33)
    backward = Manifest("sklearn", tuple(reversed(forward.files)), 33)
    assert canonical_bytes(forward) == canonical_bytes(backward)


def test_non_ascii_paths_are_raw_utf8() -> None:
    m = Manifest.of("custom", files("modèle/poids.bin", 'quote"d'))
    data = canonical_bytes(m)
    assert "modèle".encode() in data
    assert parse_manifest(data).files[0].path == "modèle/poids.bin"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"files":[],"format":"onnx","schema_version":1}',
        b'{"files":[],"format":"onnx","schema_version":1,"total_size":0,"extra":1}',
        b'{"files":[],"format":"onnx","format":"onnx","schema_version":1,"total_size":0}',
        b'{"files":[],"format":"onnx","schema_version":1,"total_size":0}\n',
        b'{"format":"onnx","files":[],"schema_version":1,"total_size":0}',
        b'{ "files":[],"format":"onnx","schema_version":1,"total_size":0}',
        b'{"files":[],"format":"onnx","schema_version":2,"total_size":0}',
        b'{"files":[],"format":"ONNX","schema_version":1,"total_size":0}',
        b'{"files":[],"format":"onnx","schema_version":1,"total_size":true}',
        b'{"files":[],"format":"onnx","schema_version":1,"total_size":0.0}',
        b'{"files":{},"format":"onnx","schema_version":1,"total_size":0}',
    ],
)
def test_malformed_or_non_canonical_is_invalid(data: bytes) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_manifest(data)
    assert caught.value.reason == "INVALID_MANIFEST"


def test_escaped_non_ascii_is_not_canonical() -> None:
    m = Manifest.of("onnx", files("é"))
    ascii_escaped = json.dumps(
        json.loads(canonical_bytes(m)), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode()
    with pytest.raises(errors.InvalidArgument, match="canonical"):
        parse_manifest(ascii_escaped)


def test_unsorted_files_are_not_canonical() -> None:
    m = Manifest.of("onnx", files("a", "b"))
    document = json.loads(canonical_bytes(m))
    document["files"].reverse()
    with pytest.raises(errors.InvalidArgument, match="canonical"):
        parse_manifest(encode(document))


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../escape", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("dir/", "empty"),
        ("", "empty path"),
        ("a\\b", "backslash"),
        ("..\\windows", "backslash"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("C:/x", "drive letter"),
        ("x" * (MAX_PATH_BYTES + 1), "longer than"),
        ("a/" + "y" * 256, "segment longer"),
        ("cafe\u0301", "NFC"),
    ],
)
def test_unsafe_paths_are_refused(path: str, why: str) -> None:
    m = Manifest.of("onnx", [ManifestFile(path, digest("x"), 1)])
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_manifest(canonical_bytes(m))
    assert caught.value.reason == "UNSAFE_MANIFEST"
    assert why in caught.value.violations[0].description
    assert caught.value.violations[0].field == "files[0].path"


@pytest.mark.parametrize(
    "paths",
    [("model.bin", "model.bin"), ("Model.bin", "model.bin"), ("weights", "weights/part0")],
)
def test_colliding_paths_are_refused(paths: tuple[str, str]) -> None:
    m = Manifest.of("onnx", files(*paths))
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_manifest(canonical_bytes(m))
    assert caught.value.reason == "UNSAFE_MANIFEST"


def test_total_size_must_equal_the_sum() -> None:
    m = Manifest("onnx", tuple(files("a", "b")), 999)
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_manifest(canonical_bytes(m))
    assert caught.value.reason == "INVALID_MANIFEST"
    assert caught.value.violations[0].field == "total_size"


@pytest.mark.parametrize(
    "file",
    [
        ManifestFile("a", "sha256:" + "A" * 64, 1),
        ManifestFile("a", "md5:" + "0" * 32, 1),
        ManifestFile("a", digest("a"), -1),
        ManifestFile("a", digest("a"), 1, 0o4755),
    ],
)
def test_bad_file_fields_are_invalid(file: ManifestFile) -> None:
    m = Manifest("onnx", (file,), file.size)
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_manifest(canonical_bytes(m))
    assert caught.value.reason == "INVALID_MANIFEST"


def test_empty_package_is_valid() -> None:
    m = Manifest.of("custom", [])
    assert parse_manifest(canonical_bytes(m)).files == ()


def test_file_digests_are_distinct() -> None:
    shared = digest("same")
    m = Manifest.of("onnx", [ManifestFile("a", shared, 1), ManifestFile("b", shared, 1)])
    assert m.file_digests == [shared]
