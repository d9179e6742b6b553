"""Signed packages against a real server, PostgreSQL and S3: trusted keys, attaching and tampering,
revocation, the SIGNATURE promotion gate, and the SDK's `sign_model` / `download_model(verify_signature=)`."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import field_mask_pb2

from modelreg import AsyncRegistry, DataLoss, FailedPrecondition, NotFound, Registry
from modelreg.packages import BlobCache
from modelreg.signing import sign_package
from modelreg.v1 import access_service_pb2 as ac
from modelreg.v1 import governance_service_pb2 as gv
from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as rg
from modelreg.v1 import signing_service_pb2 as sg
from modelreg.v1.access_service_pb2_grpc import AccessServiceStub
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.governance_service_pb2_grpc import GovernanceServiceStub
from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg.v1.signing_service_pb2_grpc import SigningServiceStub
from tests.support.packages import publish
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails

if TYPE_CHECKING:
    from modelreg.v1.access_service_pb2_grpc import AccessServiceAsyncStub
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub
    from modelreg.v1.governance_service_pb2_grpc import GovernanceServiceAsyncStub
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub
    from modelreg.v1.signing_service_pb2_grpc import SigningServiceAsyncStub

Code = grpc.StatusCode
PRODUCTION, STAGING = model_pb2.STAGE_PRODUCTION, model_pb2.STAGE_STAGING


class Key:
    """An ECDSA key pair and the id it is (or would be) registered under."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self.key_id = f"k-{uuid.uuid4().hex[:12]}"
        self._key = ec.generate_private_key(curve or ec.SECP256R1())
        self.private_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.public_pem = (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )


class Client:
    """The services these tests use, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.registry: ModelRegistryServiceAsyncStub = ModelRegistryServiceStub(channel)
        self.lifecycle: LifecycleServiceAsyncStub = LifecycleServiceStub(channel)
        self.governance: GovernanceServiceAsyncStub = GovernanceServiceStub(channel)
        self.artifacts: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)
        self.access: AccessServiceAsyncStub = AccessServiceStub(channel)
        self.signing: SigningServiceAsyncStub = SigningServiceStub(channel)

    async def register(self, key: Key, description: str = "release key") -> sg.SigningKey:
        return await self.signing.RegisterSigningKey(
            sg.RegisterSigningKeyRequest(
                signing_key_id=key.key_id,
                signing_key=sg.SigningKey(public_key_pem=key.public_pem, description=description),
            )
        )

    async def version(self, files: dict[str, bytes]) -> str:
        """A new model with one version (in STAGING) whose package holds `files`; returns the version."""
        model_id = f"sig-{uuid.uuid4().hex[:12]}"
        await self.registry.CreateModel(rg.CreateModelRequest(model_id=model_id))
        digest, _ = await publish(self.artifacts, files)
        created = await self.registry.CreateModelVersion(
            rg.CreateModelVersionRequest(
                parent=f"models/{model_id}", model_version=model_pb2.ModelVersion(artifact_digest=digest)
            )
        )
        await self.lifecycle.TransitionModelVersionStage(
            lc.TransitionModelVersionStageRequest(name=created.name, stage=STAGING)
        )
        return created.name

    async def attach(self, version: str, key_id: str, bundle: bytes) -> sg.Signature:
        return await self.signing.AttachSignature(
            sg.AttachSignatureRequest(parent=version, key_id=key_id, bundle=bundle)
        )

    async def signatures(self, version: str) -> dict[str, sg.Signature]:
        page = await self.signing.ListSignatures(sg.ListSignaturesRequest(parent=version))
        return {s.key_id: s for s in page.signatures}

    async def promote(self, version: str) -> model_pb2.ModelVersion:
        return await self.lifecycle.TransitionModelVersionStage(
            lc.TransitionModelVersionStageRequest(name=version, stage=PRODUCTION, archive_existing=True)
        )

    async def audit(self, resource: str) -> list[ac.AuditEvent]:
        page = await self.access.ListAuditEvents(
            ac.ListAuditEventsRequest(filter=f'resource = "{resource}"', page_size=100)
        )
        return list(page.audit_events)


@pytest.fixture
async def admin(server_address: str) -> AsyncIterator[Client]:
    async with open_channel(server_address) as channel:
        yield Client(channel)


@contextlib.asynccontextmanager
async def as_role(admin: Client, address: str, role: ac.Role.ValueType) -> AsyncIterator[Client]:
    """A client of a new principal holding `role` registry-wide."""
    principal_id = f"sig-{uuid.uuid4().hex[:10]}"
    name = f"principals/{principal_id}"
    await admin.access.CreatePrincipal(ac.CreatePrincipalRequest(principal_id=principal_id))
    await admin.access.CreateRoleBinding(
        ac.CreateRoleBindingRequest(role_binding=ac.RoleBinding(principal=name, role=role))
    )
    token = (await admin.access.CreateToken(ac.CreateTokenRequest(parent=name))).secret
    async with open_channel(address, token) as channel:
        yield Client(channel)


def package(root: Path, files: dict[str, bytes]) -> Path:
    """`files` written under `root`, as a package directory to sign."""
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def files_of_a_model() -> dict[str, bytes]:
    return {"model.onnx": os.urandom(4096), "conf/labels.txt": b"cat\ndog\n", "conf/empty": b""}


def signature_bytes_flipped(bundle: bytes) -> bytes:
    document = json.loads(bundle)
    entry = document["dsseEnvelope"]["signatures"][0]
    raw = bytearray(base64.b64decode(entry["sig"]))
    raw[5] ^= 0x80
    entry["sig"] = base64.b64encode(bytes(raw)).decode()
    return json.dumps(document).encode()


def payload_digest_changed(bundle: bytes, path: str, digest_hex: str) -> bytes:
    """The bundle with the signed digest of `path` replaced (the signature itself untouched)."""
    document = json.loads(bundle)
    envelope = document["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == path:
            resource["digest"] = digest_hex
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return json.dumps(document).encode()


# --- keys ------------------------------------------------------------------------------------------------


async def test_keys_are_registered_once_listed_and_checked(admin: Client, server_address: str) -> None:
    key = Key(ec.SECP384R1())
    registered = await admin.register(key)
    assert registered.name == f"signingKeys/{key.key_id}"
    assert registered.algorithm == "ECDSA_P384_SHA384" and len(registered.fingerprint) == 64
    assert registered.public_key_pem == key.public_pem and registered.creator.startswith("principals/")
    assert not registered.HasField("revoke_time")
    got = await admin.signing.GetSigningKey(sg.GetSigningKeyRequest(name=registered.name))
    assert got == registered

    again = await fails(admin.register(key))
    assert (again.code, again.reason) == (Code.ALREADY_EXISTS, "SIGNING_KEY_ALREADY_EXISTS")
    twin = Key()
    twin.public_pem = key.public_pem
    duplicate = await fails(admin.register(twin))
    assert duplicate.code == Code.ALREADY_EXISTS and registered.name in duplicate.metadata["signing_key"]

    ed = Key()
    ed.public_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    unsupported = await fails(admin.register(ed))
    assert (unsupported.code, unsupported.reason) == (Code.INVALID_ARGUMENT, "UNSUPPORTED_SIGNING_KEY")
    leaked = Key()
    leaked.public_pem = leaked.private_pem.decode()
    refused = await fails(admin.register(leaked))
    assert refused.code == Code.INVALID_ARGUMENT and "private key" in refused.message
    bad_id = await fails(
        admin.signing.RegisterSigningKey(
            sg.RegisterSigningKeyRequest(
                signing_key_id="Not_An_Id", signing_key=sg.SigningKey(public_key_pem=Key().public_pem)
            )
        )
    )
    assert bad_id.code == Code.INVALID_ARGUMENT

    async with as_role(admin, server_address, ac.ROLE_ML_ENGINEER) as engineer:
        denied = await fails(engineer.register(Key()))
        assert denied.code == Code.PERMISSION_DENIED
        assert denied.metadata["permission"] == "modelreg.signingKeys.manage"
        listed: list[str] = []
        token = ""
        while True:
            page = await engineer.signing.ListSigningKeys(
                sg.ListSigningKeysRequest(page_size=2, page_token=token)
            )
            listed += [k.name for k in page.signing_keys]
            token = page.next_page_token
            if not token:
                break
        assert registered.name in listed and listed == sorted(listed)
    [event] = await admin.audit(registered.name)
    assert event.action == "RegisterSigningKey"


# --- attaching -------------------------------------------------------------------------------------------


async def test_a_signature_by_a_registered_key_is_verified_and_listed(
    admin: Client, server_address: str, tmp_path: Path
) -> None:
    key = Key()
    await admin.register(key)
    files = files_of_a_model()
    version = await admin.version(files)
    bundle = sign_package(package(tmp_path, files), key.private_pem)
    async with as_role(admin, server_address, ac.ROLE_DATA_SCIENTIST) as scientist:
        attached = await scientist.attach(version, key.key_id, bundle)
        assert attached.name == f"{version}/signatures/{key.key_id}"
        assert attached.verified and attached.verify_message == "" and attached.bundle == bundle
        listed = await scientist.signatures(version)
        assert listed[key.key_id] == attached
        denied = await fails(scientist.signing.VerifySignatures(sg.VerifySignaturesRequest(name="bad")))
        assert denied.code == Code.INVALID_ARGUMENT
    async with as_role(admin, server_address, ac.ROLE_VIEWER) as viewer:
        refused = await fails(viewer.attach(version, key.key_id, bundle))
        assert refused.code == Code.PERMISSION_DENIED
        assert refused.metadata["permission"] == "modelreg.artifacts.write"
    events = await admin.audit(attached.name)
    assert [(e.action, e.outcome) for e in events] == [
        ("AttachSignature", "DENIED"),
        ("AttachSignature", "OK"),
    ]

    again = await admin.attach(version, key.key_id, sign_package(tmp_path, key.private_pem))
    assert again.verified and len(await admin.signatures(version)) == 1  # replaced, not added


async def test_signatures_by_unknown_or_other_keys_are_refused(admin: Client, tmp_path: Path) -> None:
    registered, stranger = Key(), Key()
    await admin.register(registered)
    files = files_of_a_model()
    version = await admin.version(files)
    by_stranger = sign_package(package(tmp_path, files), stranger.private_pem)

    claimed = await fails(admin.attach(version, registered.key_id, by_stranger))
    assert (claimed.code, claimed.reason) == (Code.INVALID_ARGUMENT, "SIGNATURE_INVALID")
    assert "made by the key with fingerprint" in claimed.message
    unknown = await fails(admin.attach(version, stranger.key_id, by_stranger))
    assert (unknown.code, unknown.reason) == (Code.NOT_FOUND, "SIGNING_KEY_NOT_FOUND")
    assert await admin.signatures(version) == {}

    no_version = await fails(admin.attach(f"{version}0", registered.key_id, by_stranger))
    assert (no_version.code, no_version.reason) == (Code.NOT_FOUND, "VERSION_NOT_FOUND")
    alias = await fails(admin.attach(version.split("/versions/")[0] + "@champion", registered.key_id, b"{}"))
    assert alias.code == Code.INVALID_ARGUMENT


async def test_signature_tampering_detected(admin: Client, tmp_path: Path) -> None:
    key = Key()
    await admin.register(key)
    files = files_of_a_model()
    version = await admin.version(files)
    bundle = sign_package(package(tmp_path / "package", files), key.private_pem)

    for forged in (
        signature_bytes_flipped(bundle),
        payload_digest_changed(bundle, "model.onnx", "0" * 64),
        bundle[: len(bundle) // 2],
    ):
        failure = await fails(admin.attach(version, key.key_id, forged))
        assert (failure.code, failure.reason) == (Code.INVALID_ARGUMENT, "SIGNATURE_INVALID"), failure

    # Valid signatures, but over other bytes than the version's package.
    other = dict(files, **{"model.onnx": b"other weights"})
    over_other_bytes = sign_package(package(tmp_path / "other", other), key.private_pem)
    mismatch = await fails(admin.attach(version, key.key_id, over_other_bytes))
    assert (mismatch.code, mismatch.reason) == (Code.FAILED_PRECONDITION, "SIGNATURE_MISMATCH")
    [(kind, subject, description)] = mismatch.precondition_violations
    assert (kind, subject) == ("SIGNATURE_MISMATCH", "model.onnx") and "signed as sha256:" in description

    subset = {k: v for k, v in files.items() if k != "conf/empty"}
    over_a_subset = sign_package(package(tmp_path / "subset", subset), key.private_pem)
    partial = await fails(admin.attach(version, key.key_id, over_a_subset))
    assert partial.reason == "SIGNATURE_MISMATCH"
    assert partial.precondition_violations == [
        ("SIGNATURE_MISMATCH", "conf/empty", "in the package but not signed")
    ]
    assert await admin.signatures(version) == {}
    assert (await admin.attach(version, key.key_id, bundle)).verified


async def test_revocation_unverifies_signatures_and_refuses_new_ones(admin: Client, tmp_path: Path) -> None:
    key = Key()
    await admin.register(key)
    files = files_of_a_model()
    version = await admin.version(files)
    bundle = sign_package(package(tmp_path, files), key.private_pem)
    await admin.attach(version, key.key_id, bundle)
    checked = await admin.signing.VerifySignatures(sg.VerifySignaturesRequest(name=version))
    assert [(s.key_id, s.verified) for s in checked.signatures] == [(key.key_id, True)]

    name = f"signingKeys/{key.key_id}"
    revoked = await admin.signing.RevokeSigningKey(sg.RevokeSigningKeyRequest(name=name, reason="leaked"))
    assert revoked.HasField("revoke_time") and revoked.revoke_reason == "leaked"
    again = await admin.signing.RevokeSigningKey(sg.RevokeSigningKeyRequest(name=name, reason="twice"))
    assert again == revoked  # final, and idempotent
    signature = (await admin.signatures(version))[key.key_id]
    assert not signature.verified and "leaked" in signature.verify_message

    checked = await admin.signing.VerifySignatures(sg.VerifySignaturesRequest(name=version))
    [result] = checked.signatures
    assert not result.verified and "revoked" in result.verify_message
    refused = await fails(admin.attach(version, key.key_id, bundle))
    assert (refused.code, refused.reason) == (Code.FAILED_PRECONDITION, "SIGNING_KEY_REVOKED")
    assert [e.action for e in await admin.audit(name)] == ["RevokeSigningKey", "RegisterSigningKey"]


# --- the SIGNATURE gate ----------------------------------------------------------------------------------


async def test_signature_gate_blocks_promotion_until_a_trusted_signature_is_attached(
    admin: Client, tmp_path: Path
) -> None:
    trusted, untrusted = Key(), Key()
    await admin.register(trusted)
    await admin.register(untrusted)
    files = files_of_a_model()
    version = await admin.version(files)
    model = version.split("/versions/")[0]
    await admin.governance.UpdatePromotionGates(
        gv.UpdatePromotionGatesRequest(
            promotion_gates=gv.PromotionGates(
                name=f"{model}/promotionGates",
                rules=[gv.PromotionRule(signature=gv.SignatureRule(trusted_key_ids=[trusted.key_id]))],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["rules"]),
        )
    )
    root = package(tmp_path, files)

    blocked = await fails(admin.promote(version))
    assert (blocked.code, blocked.reason) == (Code.FAILED_PRECONDITION, "PROMOTION_GATES_FAILED")
    assert [(kind, subject) for kind, subject, _ in blocked.precondition_violations] == [
        ("SIGNATURE", version)
    ]

    await admin.attach(version, untrusted.key_id, sign_package(root, untrusted.private_pem))
    still = await fails(admin.promote(version))
    assert (
        still.reason == "PROMOTION_GATES_FAILED" and untrusted.key_id in still.precondition_violations[0][2]
    )

    await admin.attach(version, trusted.key_id, sign_package(root, trusted.private_pem))
    dry = await admin.governance.DryRunPromotion(
        gv.DryRunPromotionRequest(name=version, target=gv.PromotionTarget(stage=PRODUCTION))
    )
    assert dry.passed and trusted.key_id in dry.results[0].message
    assert (await admin.promote(version)).stage == PRODUCTION


async def test_a_revoked_key_no_longer_satisfies_the_gate(admin: Client, tmp_path: Path) -> None:
    key = Key()
    await admin.register(key)
    files = files_of_a_model()
    version = await admin.version(files)
    model = version.split("/versions/")[0]
    await admin.governance.UpdatePromotionGates(
        gv.UpdatePromotionGatesRequest(
            promotion_gates=gv.PromotionGates(
                name=f"{model}/promotionGates",
                rules=[gv.PromotionRule(signature=gv.SignatureRule(trusted_key_ids=[key.key_id]))],
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["rules"]),
        )
    )
    await admin.attach(version, key.key_id, sign_package(package(tmp_path, files), key.private_pem))
    await admin.signing.RevokeSigningKey(sg.RevokeSigningKeyRequest(name=f"signingKeys/{key.key_id}"))
    blocked = await fails(admin.promote(version))
    assert blocked.reason == "PROMOTION_GATES_FAILED"


# --- the SDK ---------------------------------------------------------------------------------------------


async def test_sdk_signs_and_download_verifies_the_signature(
    admin: Client, server_address: str, tmp_path: Path
) -> None:
    key = Key()
    await admin.register(key)
    model_id = f"sig-{uuid.uuid4().hex[:12]}"
    files = files_of_a_model()
    source = package(tmp_path / "source", files)
    cache = tmp_path / "cache"
    async with AsyncRegistry(server_address, timeout=60) as registry:
        await registry.create_model(model_id)
        version = await registry.upload_model(model_id, source)
        signature = await registry.sign_model(version.name, key.private_pem, key.key_id, path=source)
        assert signature.verified

        by_id = await registry.download_model(
            f"{model_id}/1", tmp_path / "by-id", cache_dir=cache, verify_signature=key.key_id
        )
        assert (by_id / "model.onnx").read_bytes() == files["model.onnx"]
        await registry.download_model(
            version, tmp_path / "by-pem", cache_dir=cache, verify_signature=key.public_pem
        )

        with pytest.raises(FailedPrecondition) as missing:
            await registry.download_model(
                version, tmp_path / "stranger", cache_dir=cache, verify_signature=Key().public_pem
            )
        assert missing.value.reason == "SIGNATURE_MISSING"
        with pytest.raises(NotFound):
            await registry.download_model(version, tmp_path / "x", verify_signature="no-such-key")
        with pytest.raises(ValueError, match="digest"):
            await registry.download_model(
                version.artifact_digest, tmp_path / "x", verify_signature=key.key_id
            )

        # A poisoned local cache, used without digest checks: the signature check still catches it.
        blob_cache = BlobCache(cache)
        digest = "sha256:" + hashlib.sha256(files["model.onnx"]).hexdigest()
        entry = blob_cache.path_for(digest)
        entry.unlink()  # replaced, not edited: a new file that no installed copy shares
        entry.write_bytes(b"x" * len(files["model.onnx"]))
        with pytest.raises(DataLoss) as tampered:
            await registry.download_model(
                version, tmp_path / "tampered", cache_dir=cache, verify=False, verify_signature=key.key_id
            )
        assert tampered.value.reason == "SIGNATURE_MISMATCH" and "model.onnx" in tampered.value.message


def test_sync_sdk_signs_a_downloaded_package_and_refuses_revoked_keys(
    server_address: str, tmp_path: Path
) -> None:
    key = Key()
    files = files_of_a_model()
    model_id = f"sig-{uuid.uuid4().hex[:12]}"
    with Registry(server_address, timeout=60) as registry, _sync_signing(server_address) as stub:
        stub.RegisterSigningKey(
            sg.RegisterSigningKeyRequest(
                signing_key_id=key.key_id, signing_key=sg.SigningKey(public_key_pem=key.public_pem)
            ),
            metadata=registry.config.call_metadata,
        )
        registry.create_model(model_id)
        registry.upload_model(model_id, package(tmp_path / "source", files))
        key_file = tmp_path / "release.key"
        key_file.write_bytes(key.private_pem)
        signature = registry.sign_model(f"{model_id}/1", key_file, key.key_id)  # downloads, then signs
        assert signature.verified
        dest = registry.download_model(f"{model_id}/1", tmp_path / "dest", verify_signature=key.key_id)
        assert (dest / "conf/labels.txt").read_bytes() == files["conf/labels.txt"]
        stub.RevokeSigningKey(
            sg.RevokeSigningKeyRequest(name=f"signingKeys/{key.key_id}"),
            metadata=registry.config.call_metadata,
        )
        with pytest.raises(FailedPrecondition) as revoked:
            registry.download_model(f"{model_id}/1", tmp_path / "again", verify_signature=key.key_id)
        assert revoked.value.reason == "SIGNING_KEY_REVOKED"


@contextlib.contextmanager
def _sync_signing(address: str) -> Iterator[SigningServiceStub]:
    with grpc.insecure_channel(address) as channel:
        yield SigningServiceStub(channel)
