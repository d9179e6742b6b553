"""modelreg.v1.GovernanceService: promotion gates, dry runs, promotion requests and their reviews."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from modelreg.v1 import governance_service_pb2 as pb
from modelreg.v1 import governance_service_pb2_grpc as pb_grpc
from modelreg_server.api import validation as val
from modelreg_server.api.governance_convert import (
    gates_to_proto,
    request_to_proto,
    required_approvals_from_proto,
    rules_from_proto,
    target_from_proto,
    ttl_from_proto,
    verdict_to_proto,
)
from modelreg_server.api.identity import caller
from modelreg_server.api.status import unary
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.approvals import Approvals
from modelreg_server.domain.gates import PromotionGates
from modelreg_server.domain.names import check_model_id, model_name, parse_model_name, parse_version_ref
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import Caller

Context = grpc.aio.ServicerContext[Any, Any]
MAX_COMMENT = 4096
GATES_MUTABLE = ("rules", "required_approvals", "request_ttl")
GATES_OUTPUT_ONLY = ("name", "etag", "update_time", "updater")
_MAX_ID_DIGITS = 18


def _gates_model(name: str, field: str = "name") -> str:
    """The model id of `models/{model}/promotionGates`."""
    base = name.removesuffix("/promotionGates")
    if base == name:
        raise errors.invalid(field, f"expected 'models/{{model}}/promotionGates', got {name[:100]!r}")
    return parse_model_name(base, field)


def _request_name(name: str, field: str = "name") -> tuple[str, int]:
    """(model id, request id) of `models/{model}/promotionRequests/{id}`."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "models"
        or parts[2] != "promotionRequests"
        or not parts[3].isdigit()
        or len(parts[3]) > _MAX_ID_DIGITS
    ):
        raise errors.invalid(
            field, f"expected 'models/{{model}}/promotionRequests/{{id}}', got {name[:100]!r}"
        )
    return check_model_id(parts[1], field), int(parts[3])


def _check_text(request: Message, comment: str) -> None:
    v = val.Violations()
    val.check_strings(request, v)
    val.check_length("comment", comment, MAX_COMMENT, v)
    v.check()


def _mask_paths(mask: FieldMask, gates: pb.PromotionGates, v: val.Violations) -> set[str]:
    """The gate fields to replace (AIP-134): the mask's, or the populated ones when it is empty."""
    if not mask.paths:
        return {fd.name for fd, _ in gates.ListFields()} & set(GATES_MUTABLE)
    paths: set[str] = set()
    for i, path in enumerate(mask.paths):
        if path == "*":
            return set(GATES_MUTABLE)
        if path in GATES_MUTABLE:
            paths.add(path)
        elif path not in GATES_OUTPUT_ONLY:
            v.add(
                f"update_mask.paths[{i}]",
                f"{path[:60]!r} cannot be updated; updatable: {', '.join(GATES_MUTABLE)}",
            )
    return paths


class GovernanceServicer(pb_grpc.GovernanceServiceServicer):
    """Serves promotion gates and promotion requests."""

    def __init__(self, gates: PromotionGates, approvals: Approvals, access: AccessControl) -> None:
        self._gates = gates
        self._approvals = approvals
        self.access = access

    async def _require(
        self, context: Context, permission: Permission, resource: str, model_id: str
    ) -> Caller:
        who = caller(context)
        await self.access.require(who, permission, resource, model_id=model_id)
        return who

    # --- gates -------------------------------------------------------------------------------------

    @unary
    async def GetPromotionGates(
        self, request: pb.GetPromotionGatesRequest, context: Context
    ) -> pb.PromotionGates:
        model_id = _gates_model(request.name)
        await self._require(context, Permission.READ, request.name, model_id)
        return gates_to_proto(await self._gates.get(model_id))

    @unary
    async def UpdatePromotionGates(
        self, request: pb.UpdatePromotionGatesRequest, context: Context
    ) -> pb.PromotionGates:
        gates = request.promotion_gates
        model_id = _gates_model(gates.name, "promotion_gates.name")
        who = await self._require(context, Permission.MODELS_SET_POLICY, gates.name, model_id)
        v = val.Violations()
        val.check_strings(request, v)
        paths = _mask_paths(request.update_mask, gates, v)
        changes: dict[str, Any] = {}
        if "rules" in paths:
            changes["rules"] = rules_from_proto(gates.rules, v)
        if "required_approvals" in paths:
            changes["required_approvals"] = required_approvals_from_proto(gates.required_approvals, v)
        if "request_ttl" in paths:
            changes["request_ttl"] = ttl_from_proto(gates.request_ttl, v)
        v.check()
        return gates_to_proto(await self._gates.update(model_id, changes, gates.etag, who))

    @unary
    async def DryRunPromotion(
        self, request: pb.DryRunPromotionRequest, context: Context
    ) -> pb.DryRunPromotionResponse:
        ref = parse_version_ref(request.name)
        target = target_from_proto(request.target)
        await self._require(context, Permission.READ, request.name, ref.model_id)
        return verdict_to_proto(await self._gates.dry_run(ref, target))

    # --- requests ----------------------------------------------------------------------------------

    @unary
    async def RequestPromotion(
        self, request: pb.RequestPromotionRequest, context: Context
    ) -> pb.PromotionRequest:
        ref = parse_version_ref(request.name)
        target = target_from_proto(request.target)
        _check_text(request, request.comment)
        who = await self._require(context, Permission.PROMOTIONS_REQUEST, request.name, ref.model_id)
        record = await self._approvals.request(
            ref, target, archive_existing=request.archive_existing, comment=request.comment, caller=who
        )
        return request_to_proto(record)

    @unary
    async def GetPromotionRequest(
        self, request: pb.GetPromotionRequestRequest, context: Context
    ) -> pb.PromotionRequest:
        model_id, request_id = _request_name(request.name)
        await self._require(context, Permission.READ, request.name, model_id)
        return request_to_proto(await self._approvals.get(model_id, request_id))

    @unary
    async def ListPromotionRequests(
        self, request: pb.ListPromotionRequestsRequest, context: Context
    ) -> pb.ListPromotionRequestsResponse:
        model_id = parse_model_name(request.parent, "parent")
        await self._require(context, Permission.READ, model_name(model_id), model_id)
        page = await self._approvals.list_requests(
            model_id, request.filter, request.page_size, request.page_token
        )
        return pb.ListPromotionRequestsResponse(
            promotion_requests=[request_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def ApprovePromotion(
        self, request: pb.ApprovePromotionRequest, context: Context
    ) -> pb.PromotionRequest:
        model_id, request_id = _request_name(request.name)
        _check_text(request, request.comment)
        who = await self._require(context, Permission.PROMOTIONS_APPROVE, request.name, model_id)
        return request_to_proto(await self._approvals.approve(model_id, request_id, request.comment, who))

    @unary
    async def RejectPromotion(
        self, request: pb.RejectPromotionRequest, context: Context
    ) -> pb.PromotionRequest:
        model_id, request_id = _request_name(request.name)
        _check_text(request, request.comment)
        who = await self._require(context, Permission.PROMOTIONS_APPROVE, request.name, model_id)
        return request_to_proto(await self._approvals.reject(model_id, request_id, request.comment, who))

    @unary
    async def CancelPromotionRequest(
        self, request: pb.CancelPromotionRequestRequest, context: Context
    ) -> pb.PromotionRequest:
        model_id, request_id = _request_name(request.name)
        _check_text(request, request.comment)
        who = await self._require(context, Permission.READ, request.name, model_id)
        # The requester cancels their own; anyone else needs the admin's cancelAny.
        if (await self._approvals.get(model_id, request_id)).requester != who.principal:
            await self.access.require(who, Permission.PROMOTIONS_CANCEL_ANY, request.name, model_id=model_id)
        return request_to_proto(await self._approvals.cancel(model_id, request_id, request.comment, who))
