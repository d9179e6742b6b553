"""modelreg.v1.SigningService: trusted signing keys and signatures of model versions."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from modelreg.v1 import signing_service_pb2 as pb
from modelreg.v1 import signing_service_pb2_grpc as pb_grpc
from modelreg_server.api import validation as val
from modelreg_server.api.convert import timestamp
from modelreg_server.api.identity import caller
from modelreg_server.api.status import unary
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.names import parse_version_name
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import Caller
from modelreg_server.domain.signing import (
    MAX_DESCRIPTION,
    Signing,
    check_key_id,
    parse_signing_key_name,
    signature_name,
    signing_key_name,
)
from modelreg_server.storage.signing_repo import SignatureRow, SigningKeyRow

Context = grpc.aio.ServicerContext[Any, Any]


def key_to_proto(key: SigningKeyRow) -> pb.SigningKey:
    """The wire form of a signing key."""
    message = pb.SigningKey(
        name=signing_key_name(key.key_id),
        public_key_pem=key.public_key_pem,
        description=key.description,
        fingerprint=key.fingerprint,
        algorithm=key.algorithm,
        create_time=timestamp(key.create_time),
        creator=f"principals/{key.creator}",
        revoker=f"principals/{key.revoker}" if key.revoker else "",
        revoke_reason=key.revoke_reason,
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    return message


def signature_to_proto(row: SignatureRow) -> pb.Signature:
    """The wire form of a signature, with its bundle."""
    return pb.Signature(
        name=signature_name(row.model_id, row.version, row.key_id),
        key_id=row.key_id,
        bundle=row.bundle,
        verified=row.verified,
        verify_message=row.verify_message,
        verify_time=timestamp(row.verify_time),
        create_time=timestamp(row.create_time),
        creator=f"principals/{row.creator}",
    )


def _check_text(request: Message, field: str, text: str) -> None:
    v = val.Violations()
    val.check_strings(request, v)
    val.check_length(field, text, MAX_DESCRIPTION, v)
    v.check()


class SigningServicer(pb_grpc.SigningServiceServicer):
    """Serves signing keys and signatures."""

    def __init__(self, signing: Signing, access: AccessControl) -> None:
        self._signing = signing
        self.access = access

    async def _require(
        self, context: Context, permission: Permission, resource: str, model_id: str | None = None
    ) -> Caller:
        who = caller(context)
        await self.access.require(who, permission, resource, model_id=model_id)
        return who

    # --- keys --------------------------------------------------------------------------------------------

    @unary
    async def RegisterSigningKey(
        self, request: pb.RegisterSigningKeyRequest, context: Context
    ) -> pb.SigningKey:
        key_id = check_key_id(request.signing_key_id, "signing_key_id")
        _check_text(request, "signing_key.description", request.signing_key.description)
        who = await self._require(context, Permission.SIGNING_KEYS_MANAGE, signing_key_name(key_id))
        key = await self._signing.register_key(
            who, key_id, request.signing_key.public_key_pem, request.signing_key.description
        )
        return key_to_proto(key)

    @unary
    async def GetSigningKey(self, request: pb.GetSigningKeyRequest, context: Context) -> pb.SigningKey:
        key_id = parse_signing_key_name(request.name)
        await self._require(context, Permission.READ, request.name)
        return key_to_proto(await self._signing.get_key(key_id))

    @unary
    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Context
    ) -> pb.ListSigningKeysResponse:
        await self._require(context, Permission.READ, "signingKeys")
        page = await self._signing.list_keys(request.page_size, request.page_token)
        return pb.ListSigningKeysResponse(
            signing_keys=[key_to_proto(k) for k in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def RevokeSigningKey(self, request: pb.RevokeSigningKeyRequest, context: Context) -> pb.SigningKey:
        key_id = parse_signing_key_name(request.name)
        _check_text(request, "reason", request.reason)
        who = await self._require(context, Permission.SIGNING_KEYS_MANAGE, request.name)
        return key_to_proto(await self._signing.revoke_key(who, key_id, request.reason))

    # --- signatures --------------------------------------------------------------------------------------

    @unary
    async def AttachSignature(self, request: pb.AttachSignatureRequest, context: Context) -> pb.Signature:
        model_id, version = parse_version_name(request.parent, "parent")
        key_id = check_key_id(request.key_id, "key_id")
        who = await self._require(
            context, Permission.ARTIFACTS_WRITE, signature_name(model_id, version, key_id), model_id
        )
        row = await self._signing.attach(who, model_id, version, key_id, request.bundle)
        return signature_to_proto(row)

    @unary
    async def ListSignatures(
        self, request: pb.ListSignaturesRequest, context: Context
    ) -> pb.ListSignaturesResponse:
        model_id, version = parse_version_name(request.parent, "parent")
        await self._require(context, Permission.READ, request.parent, model_id)
        page = await self._signing.list_signatures(model_id, version, request.page_size, request.page_token)
        return pb.ListSignaturesResponse(
            signatures=[signature_to_proto(s) for s in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def VerifySignatures(
        self, request: pb.VerifySignaturesRequest, context: Context
    ) -> pb.VerifySignaturesResponse:
        model_id, version = parse_version_name(request.name)
        who = await self._require(context, Permission.ARTIFACTS_WRITE, request.name, model_id)
        rows = await self._signing.verify_all(who, model_id, version)
        return pb.VerifySignaturesResponse(signatures=[signature_to_proto(r) for r in rows])
