"""modelreg.v1.AccessService: principals, tokens, role bindings, permission tests and the audit trail."""

from __future__ import annotations

import json
import uuid
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import empty_pb2, struct_pb2

from modelreg.v1 import access_service_pb2 as pb
from modelreg.v1 import access_service_pb2_grpc as pb_grpc
from modelreg_server.api import validation as val
from modelreg_server.api.convert import timestamp
from modelreg_server.api.identity import caller
from modelreg_server.api.status import unary
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.audit import AuditLog
from modelreg_server.domain.names import MODEL_ID_RE, model_of
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.permissions import Permission, Role
from modelreg_server.storage.access_repo import BindingRow, PrincipalRow, TokenRow
from modelreg_server.storage.audit_repo import AuditRow

Context = grpc.aio.ServicerContext[Any, Any]


def _principal_id(name: str, field: str) -> str:
    prefix, _, principal_id = name.partition("/")
    if prefix != "principals" or not MODEL_ID_RE.fullmatch(principal_id):
        raise errors.invalid(field, f"expected 'principals/{{principal}}', got {name[:100]!r}")
    return principal_id


def _principal_proto(row: PrincipalRow) -> pb.Principal:
    return pb.Principal(
        name=f"principals/{row.principal_id}",
        display_name=row.display_name,
        kind=pb.PrincipalKind.ValueType(row.kind),
        create_time=timestamp(row.create_time),
        creator=row.creator,
    )


def _token_proto(row: TokenRow) -> pb.Token:
    return pb.Token(
        name=f"principals/{row.principal_id}/tokens/{row.token_id.hex}",
        description=row.description,
        create_time=timestamp(row.create_time),
        expire_time=timestamp(row.expire_time) if row.expire_time else None,
        revoke_time=timestamp(row.revoke_time) if row.revoke_time else None,
        creator=row.creator,
    )


def _binding_proto(row: BindingRow) -> pb.RoleBinding:
    return pb.RoleBinding(
        name=f"roleBindings/{row.binding_id}",
        principal=f"principals/{row.principal_id}",
        role=pb.Role.ValueType(row.role),
        scope=row.scope,
        create_time=timestamp(row.create_time),
        creator=row.creator,
    )


def _audit_proto(row: AuditRow) -> pb.AuditEvent:
    details = struct_pb2.Struct()
    details.update(json.loads(row.details))
    return pb.AuditEvent(
        name=f"auditEvents/{row.id}",
        event_time=timestamp(row.event_time),
        principal=f"principals/{row.principal}",
        action=row.action,
        resource=row.resource,
        request_id=row.request_id,
        peer=row.peer,
        outcome=row.outcome,
        details=details,
        hash=row.hash.hex(),
        prev_hash=row.prev_hash.hex(),
    )


class AccessServicer(pb_grpc.AccessServiceServicer):
    """Serves access administration and the audit trail."""

    def __init__(self, access: AccessControl, audit_log: AuditLog, tokens: PageTokenCodec) -> None:
        self.access = access
        self._audit = audit_log
        self._tokens = tokens

    async def _admin(self, context: Context, resource: str) -> None:
        await self.access.require(caller(context), Permission.ACCESS_ADMIN, resource)

    @unary
    async def CreatePrincipal(self, request: pb.CreatePrincipalRequest, context: Context) -> pb.Principal:
        principal_id = _principal_id(f"principals/{request.principal_id}", "principal_id")
        await self._admin(context, f"principals/{principal_id}")
        v = val.Violations()
        val.check_strings(request, v)
        val.check_length("principal.display_name", request.principal.display_name, 256, v)
        if request.principal.kind not in (0, 1, 2):
            v.add("principal.kind", "unknown principal kind")
        v.check()
        row = await self.access.create_principal(
            caller(context), principal_id, request.principal.display_name, request.principal.kind or 1
        )
        return _principal_proto(row)

    @unary
    async def GetPrincipal(self, request: pb.GetPrincipalRequest, context: Context) -> pb.Principal:
        principal_id = _principal_id(request.name, "name")
        await self.access.require(caller(context), Permission.READ, request.name)
        return _principal_proto(await self.access.get_principal(principal_id))

    @unary
    async def ListPrincipals(
        self, request: pb.ListPrincipalsRequest, context: Context
    ) -> pb.ListPrincipalsResponse:
        await self.access.require(caller(context), Permission.READ, "principals")
        try:
            limit = resolve_page_size(request.page_size)
            after = (
                str(self._tokens.decode(request.page_token, "principals")[0]) if request.page_token else None
            )
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except PageTokenError as exc:
            raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        rows = await self.access.list_principals(after, limit + 1)
        token = self._tokens.encode([rows[limit - 1].principal_id], "principals") if len(rows) > limit else ""
        return pb.ListPrincipalsResponse(
            principals=[_principal_proto(r) for r in rows[:limit]], next_page_token=token
        )

    @unary
    async def CreateToken(self, request: pb.CreateTokenRequest, context: Context) -> pb.CreateTokenResponse:
        principal_id = _principal_id(request.parent, "parent")
        await self._admin(context, request.parent)
        v = val.Violations()
        val.check_strings(request, v)
        val.check_length("token.description", request.token.description, 1024, v)
        if request.token.HasField("expire_time"):
            val.check_timestamp("token.expire_time", request.token.expire_time, v)
        v.check()
        # ToDatetime() without tzinfo is naive UTC; astimezone() would read it as the server's local time.
        expire = (
            request.token.expire_time.ToDatetime(tzinfo=UTC)
            if request.token.HasField("expire_time")
            else None
        )
        row, secret = await self.access.create_token(
            caller(context), principal_id, request.token.description, expire
        )
        return pb.CreateTokenResponse(token=_token_proto(row), secret=secret)

    @unary
    async def ListTokens(self, request: pb.ListTokensRequest, context: Context) -> pb.ListTokensResponse:
        principal_id = _principal_id(request.parent, "parent")
        await self._admin(context, request.parent)
        return pb.ListTokensResponse(
            tokens=[_token_proto(t) for t in await self.access.list_tokens(principal_id)]
        )

    @unary
    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.Token:
        parts = request.name.split("/")
        if len(parts) != 4 or parts[2] != "tokens":
            raise errors.invalid("name", "expected 'principals/{principal}/tokens/{token}'")
        principal_id = _principal_id("/".join(parts[:2]), "name")
        try:
            token_id = uuid.UUID(hex=parts[3])
        except ValueError:
            raise errors.invalid("name", "malformed token id") from None
        await self._admin(context, request.name)
        return _token_proto(await self.access.revoke_token(caller(context), principal_id, token_id))

    @unary
    async def CreateRoleBinding(
        self, request: pb.CreateRoleBindingRequest, context: Context
    ) -> pb.RoleBinding:
        binding = request.role_binding
        principal_id = _principal_id(binding.principal, "role_binding.principal")
        await self._admin(context, binding.principal)
        if binding.role not in {int(r) for r in Role}:
            raise errors.invalid("role_binding.role", "required: one of ROLE_VIEWER … ROLE_ADMIN")
        row = await self.access.create_binding(
            caller(context), principal_id, Role(binding.role), binding.scope
        )
        return _binding_proto(row)

    @unary
    async def DeleteRoleBinding(
        self, request: pb.DeleteRoleBindingRequest, context: Context
    ) -> empty_pb2.Empty:
        prefix, _, raw = request.name.partition("/")
        try:
            binding_id = uuid.UUID(raw)
        except ValueError:
            binding_id = None
        if prefix != "roleBindings" or binding_id is None:
            raise errors.invalid("name", "expected 'roleBindings/{id}'")
        await self._admin(context, request.name)
        await self.access.delete_binding(caller(context), binding_id)
        return empty_pb2.Empty()

    @unary
    async def ListRoleBindings(
        self, request: pb.ListRoleBindingsRequest, context: Context
    ) -> pb.ListRoleBindingsResponse:
        principal_id = _principal_id(request.principal, "principal") if request.principal else None
        who = caller(context)
        if principal_id != who.principal:
            await self._admin(context, request.principal or "roleBindings")
        rows = await self.access.list_bindings(principal_id)
        return pb.ListRoleBindingsResponse(role_bindings=[_binding_proto(r) for r in rows])

    @unary
    async def TestPermissions(
        self, request: pb.TestPermissionsRequest, context: Context
    ) -> pb.TestPermissionsResponse:
        model_id = model_of(request.resource) if request.resource else None
        known = {p.value: p for p in Permission}
        unknown = [p for p in request.permissions if p not in known]
        if unknown:
            raise errors.invalid("permissions", f"unknown permission(s): {', '.join(unknown[:5])}")
        held = await self.access.test_permissions(
            caller(context), model_id, [known[p] for p in request.permissions]
        )
        return pb.TestPermissionsResponse(permissions=[p.value for p in held])

    @unary
    async def GetCallerIdentity(
        self, request: pb.GetCallerIdentityRequest, context: Context
    ) -> pb.CallerIdentity:
        who = caller(context)
        principal = await self.access.get_principal(who.principal)
        bindings = await self.access.list_bindings(who.principal)
        return pb.CallerIdentity(
            principal=_principal_proto(principal), role_bindings=[_binding_proto(b) for b in bindings]
        )

    @unary
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        await self.access.require(caller(context), Permission.AUDIT_READ, "auditEvents")
        page = await self._audit.list(request.filter, request.page_size, request.page_token)
        return pb.ListAuditEventsResponse(
            audit_events=[_audit_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def VerifyAuditChain(
        self, request: pb.VerifyAuditChainRequest, context: Context
    ) -> pb.VerifyAuditChainResponse:
        await self.access.require(caller(context), Permission.AUDIT_READ, "auditEvents")
        verdict = await self._audit.verify()
        broken = f"auditEvents/{verdict.first_broken_id}" if verdict.first_broken_id else ""
        return pb.VerifyAuditChainResponse(
            ok=verdict.ok, events_checked=verdict.events_checked, first_broken_event=broken
        )
