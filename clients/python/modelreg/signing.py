"""Signed model packages with OpenSSF model-signing: signing a package directory, verifying bundles.

A signature is what `model_signing` (v1.x) produces with a private key, offline: a Sigstore bundle (JSON)
holding a DSSE envelope over an in-toto statement that lists every file of the package directory with its
sha256, signed with ECDSA on P-256, P-384 or P-521. The registry keeps such bundles per version and key
(`modelreg.v1.SigningService`); the server and this SDK read them with the same functions from this module,
which is the only one that touches `model_signing` (install it with `pip install 'modelreg[signing]'`).

```python
from modelreg.signing import sign_package

bundle = sign_package("./model", private_key=Path("release.key").read_bytes())
```

Every file of the directory is signed, git files included (model-signing skips `.git*` by default; a
package has no such exceptions), and symbolic links to files are followed, as `upload_model` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelreg import _core, packages
from modelreg.errors import DataLoss, FailedPrecondition
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import signing_service_pb2 as signing_pb2

if TYPE_CHECKING:
    from model_signing import hashing

__all__ = [
    "MAX_BUNDLE_BYTES",
    "FileDifference",
    "PublicKeyInfo",
    "SignatureInvalid",
    "SignatureMismatch",
    "SignedFile",
    "attach_signature_request",
    "check_download",
    "compare_files",
    "is_public_key_pem",
    "list_signatures_request",
    "public_key_info",
    "sign_package",
    "signed_version_reference",
    "signing_key_request",
    "summarize",
    "trusted_public_key",
    "verify_bundle",
    "verify_files",
    "version_request",
]

MAX_BUNDLE_BYTES: Final = 3 * 1024 * 1024
"""Largest bundle the registry accepts (about 18,000 files: each costs ~170 bytes of base64 JSON)."""
_CURVES: Final = {
    "secp256r1": "ECDSA_P256_SHA256",
    "secp384r1": "ECDSA_P384_SHA384",
    "secp521r1": "ECDSA_P521_SHA512",
}
_INSTALL_HINT: Final = "signing needs the model-signing package: pip install 'modelreg[signing]'"
_PRIVATE_PEM_MARKER: Final = b"PRIVATE KEY-----"


class SignatureInvalid(ValueError):
    """A bundle that is malformed, does not verify with the key, or signs something other than files."""


class SignatureMismatch(ValueError):
    """Files on disk that differ from what a valid bundle signed."""


@dataclass(frozen=True)
class PublicKeyInfo:
    """A supported public key: its fingerprint (the bundle's key hint) and signature algorithm."""

    fingerprint: str
    algorithm: str


@dataclass(frozen=True)
class SignedFile:
    """One file a bundle signs: its path in the package and `sha256:<hex>` digest."""

    path: str
    digest: str


@dataclass(frozen=True)
class FileDifference:
    """How the signed files and a package's files differ at one path."""

    path: str
    description: str


def _require_library() -> None:
    """ImportError with the install hint unless model-signing can be imported."""
    try:
        import model_signing  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc


def _hashing_config() -> hashing.Config:
    """Files, sha256, nothing ignored, links to files followed: exactly the files a package holds."""
    from model_signing import hashing

    return (
        hashing.Config()  # type: ignore[no-untyped-call]  # untyped __init__
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=[], ignore_git_paths=False)
        .set_allow_symlinks(True)
    )


def _pem_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii", "replace") if isinstance(pem, str) else pem


def _load_public_key(pem: str | bytes) -> ec.EllipticCurvePublicKey:
    data = _pem_bytes(pem)
    if _PRIVATE_PEM_MARKER in data:
        raise ValueError("this is a private key: register and verify with the public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key (-----BEGIN PUBLIC KEY-----): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _CURVES:
        raise ValueError(
            "unsupported key: model-signing signs with ECDSA keys on P-256, P-384 or P-521, got "
            + (key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__)
        )
    return key


def public_key_info(pem: str | bytes) -> PublicKeyInfo:
    """The fingerprint and algorithm of a PEM public key; ValueError when it is not a supported one.

    The fingerprint is the lowercase hex sha256 of the key's PEM SubjectPublicKeyInfo encoding, which is
    what model-signing writes into a bundle as `verificationMaterial.publicKey.hint`.
    """
    key = _load_public_key(pem)
    spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PublicKeyInfo(hashlib.sha256(spki).hexdigest(), _CURVES[key.curve.name])


def is_public_key_pem(text: str) -> bool:
    """Whether `text` is PEM (as opposed to a key id)."""
    return text.lstrip().startswith("-----BEGIN")


@contextmanager
def _scratch() -> Iterator[Path]:
    """A private temporary directory (mode 0700) for the files model-signing reads and writes."""
    with tempfile.TemporaryDirectory(prefix="modelreg-signing-") as directory:
        yield Path(directory)


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)


def sign_package(
    path: str | os.PathLike[str],
    private_key: bytes | str | os.PathLike[str],
    *,
    password: str | bytes | None = None,
) -> bytes:
    """Sign every file of a package directory (or a single-file package) and return the bundle.

    Args:
        path: The directory that was (or will be) uploaded with `upload_model`, or that `download_model`
            wrote; every file under it is signed, so it must hold the package's files and nothing else.
            A single file is signed as a package of that one file.
        private_key: The ECDSA private key as PEM (bytes, or a str starting with `-----BEGIN`), or the
            path of a PEM file. PEM given in memory is written to a private temporary file (mode 0600)
            for model-signing to read, and removed at once.
        password: The key's password, when it is encrypted.

    Returns:
        The Sigstore bundle (JSON bytes) to attach with `Registry.sign_model` or `AttachSignature`.

    Raises:
        ImportError: model-signing is not installed.
        ValueError: The key is not a supported ECDSA private key, is encrypted and the password is
            missing or wrong, or is not encrypted and a password was given.
        OSError: The package could not be read.
    """
    _require_library()
    from model_signing import signing

    source = Path(path)
    with _scratch() as scratch:
        if isinstance(private_key, bytes) or (
            isinstance(private_key, str) and is_public_key_pem(private_key)
        ):
            key_path = scratch / "signing.key"
            _write_private(key_path, _pem_bytes(private_key))
        else:
            key_path = Path(private_key)
        model = source
        if source.is_file():
            # model-signing names a lone file "."; a package names it by its file name.
            model = scratch / "package"
            model.mkdir()
            (model / source.name).symlink_to(source.resolve())
        bundle_path = scratch / "package.sig"
        config = signing.Config()  # type: ignore[no-untyped-call]  # untyped __init__
        secret = password.encode() if isinstance(password, str) else password
        try:
            # model-signing annotates the password as str but hands it to cryptography, which needs bytes.
            config.use_elliptic_key_signer(private_key=key_path, password=secret)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot load the private key: {_describe(exc)}") from None
        config.set_hashing_config(_hashing_config()).sign(model, bundle_path)
        return bundle_path.read_bytes()


def verify_bundle(bundle: bytes, public_key_pem: str | bytes) -> tuple[SignedFile, ...]:
    """Verify a bundle with a public key and return the files it signs, sorted by path.

    Raises:
        ValueError: The key is not a supported public key.
        SignatureInvalid: The bundle is malformed, was not made by this key, its signature does not
            verify (a flipped byte, an edited payload), or it signs shards or non-sha256 digests.
        ImportError: model-signing is not installed.
    """
    fingerprint = public_key_info(public_key_pem).fingerprint
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise SignatureInvalid(f"bundle larger than {MAX_BUNDLE_BYTES} bytes")
    # model-signing 1.x names the signing key in every key-signed bundle; checking it first gives a clear
    # error for another key's bundle (and keeps the library from printing a warning for hint-less ones).
    hint = _key_hint(bundle)
    if hint is None:
        raise SignatureInvalid(
            "the bundle names no public key (verificationMaterial.publicKey.hint): sign with a private key "
            "and model-signing 1.x"
        )
    if hint != fingerprint:
        raise SignatureInvalid(
            f"the bundle was made by the key with fingerprint {hint[:64]}, not {fingerprint}"
        )
    _require_library()
    # The public API verifies a directory only; the registry holds no files, so a bundle is verified on
    # its own with the classes that API is built on (pinned by the `<2` requirement).
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    with _scratch() as scratch:
        key_path, bundle_path = scratch / "key.pub", scratch / "bundle.sig"
        key_path.write_bytes(_pem_bytes(public_key_pem))
        bundle_path.write_bytes(bundle)
        try:
            signature = sign_sigstore_pb.Signature.read(bundle_path)
            manifest = sign_ec_key.Verifier(key_path).verify(signature)
        except Exception as exc:
            # model-signing reports a bad bundle with whatever its parsers raise (ValueError, KeyError,
            # InvalidSignature, binascii.Error, pydantic's ValidationError, ...): all mean "invalid".
            raise SignatureInvalid(f"the bundle does not verify: {_describe(exc)}") from exc
    method = manifest.serialization_type.get("method")
    if method != "files":
        raise SignatureInvalid(f"the bundle signs {method!r}; sign whole files (serialization 'files')")
    files = []
    for descriptor in manifest.resource_descriptors():
        if descriptor.digest.algorithm != "sha256":
            raise SignatureInvalid(
                f"{descriptor.identifier} is signed with {descriptor.digest.algorithm}; packages use sha256"
            )
        files.append(SignedFile(str(descriptor.identifier), "sha256:" + descriptor.digest.digest_hex))
    return tuple(sorted(files, key=lambda f: f.path))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def compare_files(signed: Iterable[SignedFile], expected: Iterable[tuple[str, str]]) -> list[FileDifference]:
    """Every path where the signed files and the package's `(path, digest)` pairs differ, sorted."""
    signed_digests = {f.path: f.digest for f in signed}
    package_digests = dict(expected)
    differences = []
    for path in sorted(signed_digests.keys() | package_digests.keys()):
        signed_digest, package_digest = signed_digests.get(path), package_digests.get(path)
        if signed_digest is None:
            differences.append(FileDifference(path, "in the package but not signed"))
        elif package_digest is None:
            differences.append(FileDifference(path, "signed but not in the package"))
        elif signed_digest != package_digest:
            differences.append(
                FileDifference(path, f"signed as {signed_digest}, the package has {package_digest}")
            )
    return differences


def summarize(differences: Sequence[FileDifference], limit: int = 5) -> str:
    """`path: description; ...` of the first few differences."""
    text = "; ".join(f"{d.path}: {d.description}" for d in differences[:limit])
    return text + (f" (and {len(differences) - limit} more)" if len(differences) > limit else "")


def verify_files(root: str | os.PathLike[str], bundle: bytes, public_key_pem: str | bytes) -> None:
    """Hash the signed files under `root` again and check them against the bundle (other files are
    ignored: a download directory may hold more than the package).

    Raises:
        SignatureMismatch: A signed file is missing or its bytes differ.
        SignatureInvalid: The bundle does not verify with the key.
        ImportError: model-signing is not installed.
    """
    signed = verify_bundle(bundle, public_key_pem)
    from model_signing import verifying

    with _scratch() as scratch:
        key_path, bundle_path = scratch / "key.pub", scratch / "bundle.sig"
        key_path.write_bytes(_pem_bytes(public_key_pem))
        bundle_path.write_bytes(bundle)
        config = verifying.Config()  # type: ignore[no-untyped-call]  # untyped __init__
        config = (
            config.use_elliptic_key_verifier(public_key=key_path)
            .set_hashing_config(_hashing_config())
            .set_ignore_unsigned_files(True)
        )
        try:
            config.verify(Path(root), bundle_path)
        except (ValueError, OSError) as exc:
            # model-signing's message prints raw digest bytes; name the files instead.
            differences = _local_differences(Path(root), signed)
            detail = summarize(differences) if differences else _describe(exc)
            raise SignatureMismatch(f"files under {root} do not match the signature: {detail}") from exc


def _local_differences(root: Path, signed: Sequence[SignedFile]) -> list[FileDifference]:
    differences = []
    for f in signed:
        try:
            digest, _ = packages.hash_file(root.joinpath(*f.path.split("/")))
        except OSError as exc:
            differences.append(FileDifference(f.path, f"cannot be read: {exc.strerror or exc}"))
            continue
        if digest != f.digest:
            differences.append(FileDifference(f.path, f"is {digest}, signed as {f.digest}"))
    return differences


def _key_hint(bundle: bytes) -> str | None:
    """The key fingerprint a bundle names (unverified), or None when it names none."""
    try:
        hint = json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"]
    except (ValueError, KeyError, TypeError):
        return None
    return hint if isinstance(hint, str) else None


# --- the SDK's download check (shared by Registry and AsyncRegistry) --------------------------------------


def signed_version_reference(ref: str | model_pb2.ModelVersion) -> str:
    """The version a download verified against a signature names: signatures belong to versions, so a
    bare manifest digest is refused (ValueError)."""
    if isinstance(ref, model_pb2.ModelVersion):
        if not ref.name:
            raise ValueError("verify_signature needs a ModelVersion with its name")
        return ref.name
    package = packages.parse_package_ref(ref)
    if package.digest:
        raise ValueError("verify_signature needs a version or an alias: a digest names no version to sign")
    return package.version


def version_request(ref: str) -> service_pb2.GetModelVersionRequest:
    """GetModelVersion of a version or alias reference (`models/m/versions/3`, `m/3`, `m@champion`)."""
    return service_pb2.GetModelVersionRequest(name=_core.version_reference(ref))


def list_signatures_request(version: str, page_token: str = "") -> signing_pb2.ListSignaturesRequest:
    """One page of a version's signatures."""
    return signing_pb2.ListSignaturesRequest(parent=version, page_size=1000, page_token=page_token)


def signing_key_request(key_id: str) -> signing_pb2.GetSigningKeyRequest:
    """GetSigningKey of `signingKeys/{key_id}`."""
    return signing_pb2.GetSigningKeyRequest(name=f"signingKeys/{key_id}")


def attach_signature_request(version: str, key_id: str, bundle: bytes) -> signing_pb2.AttachSignatureRequest:
    """AttachSignature of a bundle to `models/{m}/versions/{v}`."""
    return signing_pb2.AttachSignatureRequest(parent=version, key_id=key_id, bundle=bundle)


def trusted_public_key(key: signing_pb2.SigningKey) -> str:
    """The PEM of a registered key; FailedPrecondition (`SIGNING_KEY_REVOKED`) once it is revoked."""
    if key.HasField("revoke_time"):
        raise FailedPrecondition(
            f"{key.name} was revoked: {key.revoke_reason or 'no reason given'}",
            reason="SIGNING_KEY_REVOKED",
            metadata={"signing_key": key.name},
        )
    return key.public_key_pem


def check_download(
    root: Path,
    version: str,
    package_files: Iterable[tuple[str, str]],
    signatures: Sequence[signing_pb2.Signature],
    public_key_pem: str,
    key_id: str | None,
) -> None:
    """After a download: a signature of `version` by the key (`key_id`, or any signature whose bundle names
    the key's fingerprint when only a PEM was given) must verify, sign exactly the package's files, and
    match the files under `root`. Blocking (hashes every package file).

    Raises:
        FailedPrecondition: The version has no signature by that key (`SIGNATURE_MISSING`).
        DataLoss: `SIGNATURE_INVALID` (the bundle does not verify), `SIGNATURE_MISMATCH` (it signs other
            files than the registry's package, or the files under `root` differ from what it signs).
    """
    expected = list(package_files)
    if key_id is not None:
        candidates = [s for s in signatures if s.key_id == key_id]
    else:
        fingerprint = public_key_info(public_key_pem).fingerprint
        candidates = [s for s in signatures if _key_hint(s.bundle) == fingerprint]
    who = f"key {key_id}" if key_id is not None else "the given public key"
    if not candidates:
        raise FailedPrecondition(
            f"{version} has no signature by {who}",
            reason="SIGNATURE_MISSING",
            metadata={"model_version": version, "key_id": key_id or ""},
        )
    problems: list[str] = []
    for signature in candidates:
        try:
            signed = verify_bundle(signature.bundle, public_key_pem)
        except SignatureInvalid as exc:
            problems.append(f"{signature.name}: {exc}")
            continue
        differences = compare_files(signed, expected)
        if differences:
            raise DataLoss(
                f"{signature.name} signs other files than the package of {version}: {summarize(differences)}",
                reason="SIGNATURE_MISMATCH",
                metadata={"signature": signature.name},
            )
        try:
            verify_files(root, signature.bundle, public_key_pem)
        except SignatureMismatch as exc:
            raise DataLoss(
                str(exc), reason="SIGNATURE_MISMATCH", metadata={"signature": signature.name}
            ) from exc
        return
    raise DataLoss(
        f"no signature of {version} by {who} verifies: {'; '.join(problems)}",
        reason="SIGNATURE_INVALID",
        metadata={"model_version": version},
    )
