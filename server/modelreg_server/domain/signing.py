"""Signed packages: trusted signing keys, and signatures of versions that must cover exactly their package.

Bundles are OpenSSF model-signing (v1.x) Sigstore bundles made with an ECDSA key, offline. They are read
with `modelreg.signing`, the SDK's adapter over model-signing, so the registry and its clients agree on
what a bundle signs. The rules here:

- A key is registered once under an id that is never reused; revocation is final and marks the key's
  signatures unverified in the same transaction, so promotion gates (rule SIGNATURE) stop accepting them.
- A signature is attached only when its bundle verifies with the named, unrevoked key AND the files it
  signs are the version's package files, path for path and sha256 for sha256 (a signature over other
  bytes, a subset, or a superset is refused with SIGNATURE_MISMATCH).
- VerifySignatures checks every signature of a version again and records the outcome.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from modelreg import signing as package_signing
from modelreg_server.domain import audit, errors
from modelreg_server.domain.artifacts import Artifacts
from modelreg_server.domain.manifest import Manifest
from modelreg_server.domain.names import version_name
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import Caller, Page, VersionRecord
from modelreg_server.storage import signing_repo as repo
from modelreg_server.storage import version_repo
from modelreg_server.storage.db import Connection, Database
from modelreg_server.storage.signing_repo import SignatureRow, SigningKeyRow

KEY_ID_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
MAX_DESCRIPTION = 1024
MAX_PEM = 16 * 1024
MAX_BUNDLE_BYTES = package_signing.MAX_BUNDLE_BYTES
SIGNATURE_INVALID = "SIGNATURE_INVALID"
SIGNATURE_MISMATCH = "SIGNATURE_MISMATCH"
T = TypeVar("T")


def signing_key_name(key_id: str) -> str:
    """`signingKeys/{key}`."""
    return f"signingKeys/{key_id}"


def signature_name(model_id: str, version: int, key_id: str) -> str:
    """`models/{model}/versions/{version}/signatures/{key}`."""
    return f"{version_name(model_id, version)}/signatures/{key_id}"


def check_key_id(key_id: str, field: str) -> str:
    """Validates a key id: 1-63 lowercase letters, digits and `-`, starting with a letter."""
    if not KEY_ID_RE.fullmatch(key_id):
        raise errors.invalid(
            field, f"invalid key id {key_id[:80]!r}: use [a-z][a-z0-9-]*, at most 63 characters"
        )
    return key_id


def parse_signing_key_name(name: str, field: str = "name") -> str:
    """The key id of `signingKeys/{key}`."""
    prefix, _, key_id = name.partition("/")
    if prefix != "signingKeys" or not key_id:
        raise errors.invalid(field, f"expected 'signingKeys/{{key}}', got {name[:100]!r}")
    return check_key_id(key_id, field)


@dataclass(frozen=True)
class Outcome:
    """Whether a signature verifies now, and why not."""

    verified: bool
    message: str = ""


def _key_not_found(key_id: str) -> errors.NotFound:
    name = signing_key_name(key_id)
    return errors.NotFound(f"{name} not found", "SIGNING_KEY_NOT_FOUND", {"signing_key": name})


def _key_revoked(key: SigningKeyRow) -> errors.FailedPrecondition:
    name = signing_key_name(key.key_id)
    return errors.FailedPrecondition(
        f"{name} was revoked at {key.revoke_time}; its signatures are not trusted",
        "SIGNING_KEY_REVOKED",
        {"signing_key": name},
        [errors.PreconditionViolation("SIGNING_KEY_REVOKED", name, key.revoke_reason or "revoked")],
    )


def _version_not_found(model_id: str, version: int) -> errors.NotFound:
    name = version_name(model_id, version)
    return errors.NotFound(f"model version {name} not found", "VERSION_NOT_FOUND", {"model_version": name})


def _no_artifact(version: VersionRecord) -> errors.FailedPrecondition:
    name = version_name(version.model_id, version.version)
    return errors.FailedPrecondition(
        f"{name} has no artifact to sign", "NO_ARTIFACT", {"model_version": name}
    )


def _summary(key: SigningKeyRow) -> dict[str, Any]:
    """What the audit trail keeps of a key."""
    return {"fingerprint": key.fingerprint, "algorithm": key.algorithm, "description": key.description}


def check_bundle(bundle: bytes, public_key_pem: str, manifest: Manifest, subject: str) -> int:
    """Verifies a bundle with a key and checks it signs exactly the package's files; returns how many.

    Blocking (ECDSA and JSON work, temporary files): call it through a worker thread.

    Raises:
        InvalidArgument: SIGNATURE_INVALID, the bundle does not verify with the key.
        FailedPrecondition: SIGNATURE_MISMATCH, one violation per path where the signed files and the
            package differ.
    """
    try:
        signed = package_signing.verify_bundle(bundle, public_key_pem)
    except package_signing.SignatureInvalid as exc:
        raise errors.InvalidArgument(
            str(exc), SIGNATURE_INVALID, {"signature": subject}, [errors.FieldViolation("bundle", str(exc))]
        ) from exc
    differences = package_signing.compare_files(signed, ((f.path, f.digest) for f in manifest.files))
    if differences:
        raise errors.FailedPrecondition(
            f"the bundle signs other files than the package: {package_signing.summarize(differences)}",
            SIGNATURE_MISMATCH,
            {"signature": subject, "differences": str(len(differences))},
            [errors.PreconditionViolation(SIGNATURE_MISMATCH, d.path, d.description) for d in differences],
        )
    return len(signed)


class Signing:
    """Signing keys and version signatures."""

    def __init__(self, db: Database, tokens: PageTokenCodec, artifacts: Artifacts | None) -> None:
        self._db = db
        self._tokens = tokens
        self._artifacts = artifacts

    # --- keys --------------------------------------------------------------------------------------------

    async def register_key(
        self, caller: Caller, key_id: str, public_key_pem: str, description: str
    ) -> SigningKeyRow:
        """Registers a public key (ALREADY_EXISTS for a taken id or an already registered key)."""
        if len(public_key_pem) > MAX_PEM:
            raise errors.invalid("signing_key.public_key_pem", f"longer than {MAX_PEM} characters")
        try:
            info = package_signing.public_key_info(public_key_pem)
        except ValueError as exc:
            raise errors.invalid("signing_key.public_key_pem", str(exc), "UNSUPPORTED_SIGNING_KEY") from exc

        async def work(conn: Connection) -> SigningKeyRow:
            key = await repo.insert_key(
                conn,
                key_id,
                public_key_pem=public_key_pem,
                fingerprint=info.fingerprint,
                algorithm=info.algorithm,
                description=description,
                creator=caller.principal,
            )
            await audit.record(conn, caller, signing_key_name(key_id), after=_summary(key))
            return key

        return await self._db.transact(work)

    async def get_key(self, key_id: str) -> SigningKeyRow:
        """A key or NOT_FOUND."""
        async with self._db.connection() as conn:
            key = await repo.get_key(conn, key_id)
        if key is None:
            raise _key_not_found(key_id)
        return key

    async def list_keys(self, page_size: int, page_token: str) -> Page[SigningKeyRow]:
        """Keys by id."""
        limit, after = self._page(page_size, page_token, "signingKeys")
        async with self._db.connection() as conn:
            rows = await repo.list_keys(conn, after, limit + 1)
        return self._paged(rows, limit, "signingKeys", lambda r: r.key_id)

    async def revoke_key(self, caller: Caller, key_id: str, reason: str) -> SigningKeyRow:
        """Revokes a key and marks its signatures unverified, in one transaction; idempotent."""

        async def work(conn: Connection) -> SigningKeyRow:
            key = await repo.get_key(conn, key_id, lock="update")
            if key is None:
                raise _key_not_found(key_id)
            if key.revoked:
                return key
            revoked = await repo.revoke_key(conn, key_id, caller.principal, reason)
            count = await repo.unverify_signatures_by(
                conn, key_id, f"{signing_key_name(key_id)} was revoked: {reason or 'no reason given'}"
            )
            await audit.record(
                conn,
                caller,
                signing_key_name(key_id),
                before={"revoked": False},
                after={"revoked": True, "reason": reason},
                signatures_unverified=count,
            )
            return revoked

        return await self._db.transact(work)

    # --- signatures --------------------------------------------------------------------------------------

    async def attach(
        self, caller: Caller, model_id: str, version: int, key_id: str, bundle: bytes
    ) -> SignatureRow:
        """Verifies `bundle` with the key against the version's package and stores it (see the module)."""
        name = signature_name(model_id, version, key_id)
        if not bundle:
            raise errors.invalid("bundle", "must not be empty")
        if len(bundle) > MAX_BUNDLE_BYTES:
            raise errors.invalid("bundle", f"larger than {MAX_BUNDLE_BYTES} bytes", SIGNATURE_INVALID)
        async with self._db.connection() as conn:
            record = await version_repo.get(conn, model_id, version)
            key = await repo.get_key(conn, key_id)
        if record is None:
            raise _version_not_found(model_id, version)
        if key is None:
            raise _key_not_found(key_id)
        if key.revoked:
            raise _key_revoked(key)
        manifest = await self._package(record)
        count = await asyncio.to_thread(check_bundle, bundle, key.public_key_pem, manifest, name)

        async def work(conn: Connection) -> SignatureRow:
            # FOR SHARE: a revocation running now commits either before (refused here) or after this
            # transaction (and then marks this signature unverified).
            current = await repo.get_key(conn, key_id, lock="share")
            if current is None or current.revoked:
                raise _key_revoked(current) if current else _key_not_found(key_id)
            row, replaced = await repo.upsert_signature(
                conn, model_id, version, key_id, bundle, caller.principal
            )
            await audit.record(
                conn,
                caller,
                name,
                after={
                    "key_id": key_id,
                    "fingerprint": key.fingerprint,
                    "artifact_digest": record.artifact_digest,
                    "files": count,
                },
                replaced=replaced,
            )
            return row

        return await self._db.transact(work)

    async def list_signatures(
        self, model_id: str, version: int, page_size: int, page_token: str
    ) -> Page[SignatureRow]:
        """A version's signatures by key id."""
        binding = f"signatures\x00{version_name(model_id, version)}"
        limit, after = self._page(page_size, page_token, binding)
        async with self._db.connection() as conn:
            if await version_repo.get(conn, model_id, version) is None:
                raise _version_not_found(model_id, version)
            rows = await repo.list_signatures(conn, model_id, version, after, limit + 1)
        return self._paged(rows, limit, binding, lambda r: r.key_id)

    async def verify_all(self, caller: Caller, model_id: str, version: int) -> list[SignatureRow]:
        """Verifies every signature of a version again and records each outcome (audited); a signature
        replaced by a concurrent AttachSignature keeps the outcome that call recorded and is not returned."""
        async with self._db.connection() as conn:
            record = await version_repo.get(conn, model_id, version)
            if record is None:
                raise _version_not_found(model_id, version)
            signatures = await repo.list_signatures(conn, model_id, version)
            keys = {s.key_id: await repo.get_key(conn, s.key_id) for s in signatures}
        manifest = await self._package(record) if record.artifact_digest and signatures else None
        outcomes = {s.key_id: await self._outcome(s, keys[s.key_id], manifest, record) for s in signatures}

        async def work(conn: Connection) -> list[SignatureRow]:
            rows = []
            for signature in signatures:
                outcome = outcomes[signature.key_id]
                if outcome.verified:
                    # Recheck under a share lock: a revocation may have committed since the check.
                    current = await repo.get_key(conn, signature.key_id, lock="share")
                    if current is None or current.revoked:
                        outcome = Outcome(False, f"{signing_key_name(signature.key_id)} was revoked")
                row = await repo.set_verification(conn, signature, outcome.verified, outcome.message)
                if row is not None:
                    rows.append(row)
            await audit.record(
                conn,
                caller,
                version_name(model_id, version),
                after={r.key_id: r.verified for r in rows},
            )
            return rows

        return await self._db.transact(work)

    async def _outcome(
        self,
        signature: SignatureRow,
        key: SigningKeyRow | None,
        manifest: Manifest | None,
        record: VersionRecord,
    ) -> Outcome:
        if key is None:
            return Outcome(False, f"{signing_key_name(signature.key_id)} is not registered")
        if key.revoked:
            return Outcome(False, f"{signing_key_name(key.key_id)} was revoked at {key.revoke_time}")
        if manifest is None:
            return Outcome(False, _no_artifact(record).message)
        subject = signature_name(signature.model_id, signature.version, signature.key_id)
        try:
            await asyncio.to_thread(check_bundle, signature.bundle, key.public_key_pem, manifest, subject)
        except (errors.InvalidArgument, errors.FailedPrecondition) as exc:
            return Outcome(False, exc.message)
        return Outcome(True)

    async def _package(self, record: VersionRecord) -> Manifest:
        """The version's package manifest, read from the artifact store and checked."""
        if not record.artifact_digest:
            raise _no_artifact(record)
        if self._artifacts is None:
            raise errors.FailedPrecondition(
                "artifact storage is not configured (set MODELREG_S3_ENDPOINT), so packages cannot be read",
                "STORAGE_NOT_CONFIGURED",
            )
        return await self._artifacts.verify_package(record.artifact_digest)

    # --- pages -------------------------------------------------------------------------------------------

    def _page(self, page_size: int, page_token: str, binding: str) -> tuple[int, str | None]:
        try:
            limit = resolve_page_size(page_size)
            after = str(self._tokens.decode(page_token, binding)[0]) if page_token else None
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except PageTokenError as exc:
            raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        return limit, after

    def _paged(self, rows: Sequence[T], limit: int, binding: str, key: Callable[[T], str]) -> Page[T]:
        token = self._tokens.encode([key(rows[limit - 1])], binding) if len(rows) > limit else ""
        return Page(list(rows[:limit]), token)
