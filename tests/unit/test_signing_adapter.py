"""modelreg.signing: model-signing bundles made and checked offline, tampering, and the download check."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from modelreg import signing
from modelreg.errors import DataLoss, FailedPrecondition
from modelreg.packages import hash_file
from modelreg.v1 import signing_service_pb2 as signing_pb2

FILES = {
    "model.onnx": os.urandom(3000),
    "conf/labels.txt": "cat\ndog\nmodèle\n".encode(),
    "conf/deep/empty": b"",
    ".gitignore": b"*.pyc\n",  # model-signing skips git files by default; packages do not
}


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    spki = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return spki.decode()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "package"
    for relative, data in FILES.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def expected_files(root: Path) -> list[tuple[str, str]]:
    return [(relative, hash_file(root / relative)[0]) for relative in FILES]


def edit_payload(bundle: bytes, change: object) -> bytes:
    """The bundle with its signed statement changed by `change(statement)` (signature left as it was)."""
    document = json.loads(bundle)
    envelope = document["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    change(statement)  # type: ignore[operator]
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(document).encode()


def flip_signature_byte(bundle: bytes) -> bytes:
    document = json.loads(bundle)
    signature = document["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(signature["sig"]))
    raw[len(raw) // 2] ^= 0x01
    signature["sig"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(document).encode()


def test_a_signed_package_verifies_and_lists_every_file_with_its_sha256(
    key: ec.EllipticCurvePrivateKey, package: Path
) -> None:
    bundle = signing.sign_package(package, private_pem(key))
    signed = signing.verify_bundle(bundle, public_pem(key))
    assert [(f.path, f.digest) for f in signed] == sorted(expected_files(package))
    assert signing.compare_files(signed, expected_files(package)) == []
    signing.verify_files(package, bundle, public_pem(key))
    document = json.loads(bundle)
    assert (
        document["verificationMaterial"]["publicKey"]["hint"]
        == signing.public_key_info(public_pem(key)).fingerprint
    )


def test_keys_as_files_and_encrypted_keys_sign_too(tmp_path: Path, package: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "release.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    bundle = signing.sign_package(package, path, password="s3cret")
    assert len(signing.verify_bundle(bundle, public_pem(key))) == len(FILES)
    assert signing.public_key_info(public_pem(key)).algorithm == "ECDSA_P384_SHA384"
    with pytest.raises(ValueError):
        signing.sign_package(package, path, password="wrong")


def test_a_single_file_is_signed_under_its_own_name(key: ec.EllipticCurvePrivateKey, package: Path) -> None:
    bundle = signing.sign_package(package / "model.onnx", private_pem(key))
    [signed] = signing.verify_bundle(bundle, public_pem(key))
    assert (signed.path, signed.digest) == ("model.onnx", hash_file(package / "model.onnx")[0])


def test_signature_tampering_is_detected(key: ec.EllipticCurvePrivateKey, package: Path) -> None:
    bundle = signing.sign_package(package, private_pem(key))

    def forge_digest(statement: dict[str, object]) -> None:
        resources = statement["predicate"]["resources"]  # type: ignore[index]
        resources[0]["digest"] = "0" * 64

    def drop_a_file(statement: dict[str, object]) -> None:
        statement["predicate"]["resources"].pop()  # type: ignore[index]

    for forged in (
        flip_signature_byte(bundle),
        edit_payload(bundle, forge_digest),
        edit_payload(bundle, drop_a_file),
        bundle.replace(b'"payloadType"', b'"payloadTypo"'),
        b"{}",
        b"not json",
    ):
        with pytest.raises(signing.SignatureInvalid):
            signing.verify_bundle(forged, public_pem(key))


def test_a_bundle_by_another_key_does_not_verify(key: ec.EllipticCurvePrivateKey, package: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    bundle = signing.sign_package(package, private_pem(other))
    with pytest.raises(signing.SignatureInvalid, match="made by the key with fingerprint"):
        signing.verify_bundle(bundle, public_pem(key))
    # Claiming the trusted key's fingerprint does not help: the signature itself does not verify.
    document = json.loads(bundle)
    document["verificationMaterial"]["publicKey"]["hint"] = signing.public_key_info(
        public_pem(key)
    ).fingerprint
    with pytest.raises(signing.SignatureInvalid, match="InvalidSignature"):
        signing.verify_bundle(json.dumps(document).encode(), public_pem(key))


def test_unsupported_and_private_keys_are_refused(key: ec.EllipticCurvePrivateKey) -> None:
    for unsupported in (
        public_pem(ed25519.Ed25519PrivateKey.generate()),
        public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        public_pem(ec.generate_private_key(ec.SECP256K1())),
    ):
        with pytest.raises(ValueError, match="unsupported key"):
            signing.public_key_info(unsupported)
    with pytest.raises(ValueError, match="private key"):
        signing.public_key_info(private_pem(key))
    with pytest.raises(ValueError, match="not a PEM public key"):
        signing.public_key_info("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_oversized_bundles_are_refused_before_parsing(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(signing.SignatureInvalid, match="larger than"):
        signing.verify_bundle(b" " * (signing.MAX_BUNDLE_BYTES + 1), public_pem(key))


def test_compare_files_names_every_difference() -> None:
    signed = [signing.SignedFile("a", "sha256:1"), signing.SignedFile("b", "sha256:2")]
    differences = signing.compare_files(signed, [("a", "sha256:9"), ("c", "sha256:3")])
    assert [(d.path, d.description) for d in differences] == [
        ("a", "signed as sha256:1, the package has sha256:9"),
        ("b", "signed but not in the package"),
        ("c", "in the package but not signed"),
    ]


def test_local_files_that_changed_or_vanished_do_not_match(
    key: ec.EllipticCurvePrivateKey, package: Path
) -> None:
    bundle = signing.sign_package(package, private_pem(key))
    (package / "extra.txt").write_text("files that were not signed are ignored")
    signing.verify_files(package, bundle, public_pem(key))
    (package / "conf/labels.txt").write_bytes(b"tampered")
    with pytest.raises(signing.SignatureMismatch, match=r"conf/labels\.txt: is sha256:"):
        signing.verify_files(package, bundle, public_pem(key))
    (package / "conf/labels.txt").unlink()
    with pytest.raises(signing.SignatureMismatch, match=r"conf/labels\.txt: cannot be read"):
        signing.verify_files(package, bundle, public_pem(key))


def signature(bundle: bytes, key_id: str) -> signing_pb2.Signature:
    return signing_pb2.Signature(
        name=f"models/m/versions/1/signatures/{key_id}", key_id=key_id, bundle=bundle
    )


def test_check_download_by_key_id_and_by_pem(key: ec.EllipticCurvePrivateKey, package: Path) -> None:
    bundle = signing.sign_package(package, private_pem(key))
    files = expected_files(package)
    good = [signature(bundle, "release")]
    signing.check_download(package, "models/m/versions/1", files, good, public_pem(key), "release")
    signing.check_download(package, "models/m/versions/1", files, good, public_pem(key), None)

    with pytest.raises(FailedPrecondition) as missing:
        signing.check_download(package, "models/m/versions/1", files, good, public_pem(key), "other")
    assert missing.value.reason == "SIGNATURE_MISSING"
    stranger = public_pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(FailedPrecondition):
        signing.check_download(package, "models/m/versions/1", files, good, stranger, None)

    forged = [signature(flip_signature_byte(bundle), "release")]
    with pytest.raises(DataLoss) as invalid:
        signing.check_download(package, "models/m/versions/1", files, forged, public_pem(key), "release")
    assert invalid.value.reason == "SIGNATURE_INVALID"

    other_package = [(path, "sha256:" + "0" * 64) for path, _ in files]
    with pytest.raises(DataLoss) as mismatch:
        signing.check_download(package, "models/m/versions/1", other_package, good, public_pem(key), None)
    assert mismatch.value.reason == "SIGNATURE_MISMATCH"

    (package / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(DataLoss) as local:
        signing.check_download(package, "models/m/versions/1", files, good, public_pem(key), "release")
    assert local.value.reason == "SIGNATURE_MISMATCH" and "model.onnx" in local.value.message


def test_revoked_keys_are_not_trusted_and_digests_name_no_version() -> None:
    revoked = signing_pb2.SigningKey(name="signingKeys/old", public_key_pem="pem")
    revoked.revoke_time.GetCurrentTime()
    with pytest.raises(FailedPrecondition) as error:
        signing.trusted_public_key(revoked)
    assert error.value.reason == "SIGNING_KEY_REVOKED"
    with pytest.raises(ValueError, match="digest"):
        signing.signed_version_reference("sha256:" + "a" * 64)
    assert signing.signed_version_reference("fraud/3") == "models/fraud/versions/3"
