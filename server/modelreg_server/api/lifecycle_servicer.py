"""modelreg.v1.LifecycleService: stages, aliases and traffic policies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from modelreg.v1 import lifecycle_service_pb2 as pb
from modelreg.v1 import lifecycle_service_pb2_grpc as pb_grpc
from modelreg.v1 import model_pb2
from modelreg_server.api import validation as val
from modelreg_server.api.convert import version_to_proto
from modelreg_server.api.identity import caller
from modelreg_server.api.lifecycle_convert import (
    alias_move_to_proto,
    alias_to_proto,
    traffic_to_proto,
    transition_to_proto,
)
from modelreg_server.api.status import unary
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.catalog import Catalog
from modelreg_server.domain.lifecycle import ABSENT, AliasChangeSpec, Lifecycle
from modelreg_server.domain.names import (
    VersionRef,
    alias_name,
    check_alias_id,
    parse_alias_name,
    parse_model_name,
    parse_traffic_policy_name,
    parse_version_name,
    parse_version_ref,
    version_name,
)
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import Caller, Route, Stage

Context = grpc.aio.ServicerContext[Any, Any]
MAX_COMMENT = 4096
MAX_ALIAS_CHANGES = 100


def _check_common(request: Message, comment: str) -> None:
    v = val.Violations()
    val.check_strings(request, v)
    val.check_length("comment", comment, MAX_COMMENT, v)
    v.check()


def _target(model_id: str, name: str, field: str) -> VersionRef:
    ref = parse_version_ref(name, field)
    if ref.model_id != model_id:
        raise errors.invalid(field, f"must name a version of models/{model_id}")
    return ref


def _expected(model_id: str, name: str, field: str) -> int | None:
    """Compare-and-swap expectation: '' no check, '-' must not exist, else a version of the model."""
    if not name:
        return None
    if name == "-":
        return ABSENT
    expected_model, version = parse_version_name(name, field)
    if expected_model != model_id:
        raise errors.invalid(field, f"must name a version of models/{model_id}")
    return version


class LifecycleServicer(pb_grpc.LifecycleServiceServicer):
    """Serves promotion changes and their history."""

    def __init__(self, lifecycle: Lifecycle, catalog: Catalog, access: AccessControl) -> None:
        self._lifecycle = lifecycle
        self._catalog = catalog
        self.access = access

    async def _read(self, context: Context, resource: str, model_id: str) -> None:
        await self.access.require(caller(context), Permission.READ, resource, model_id=model_id)

    async def _require_alias_moves(self, context: Context, model_id: str, aliases: Iterable[str]) -> Caller:
        """aliases.setProtected for protected aliases, aliases.set for the others."""
        who = caller(context)
        protected = set((await self._catalog.get_model(model_id)).protected_aliases)
        for alias in aliases:
            permission = Permission.ALIASES_SET_PROTECTED if alias in protected else Permission.ALIASES_SET
            await self.access.require(who, permission, alias_name(model_id, alias), model_id=model_id)
        return who

    @unary
    async def TransitionModelVersionStage(
        self, request: pb.TransitionModelVersionStageRequest, context: Context
    ) -> model_pb2.ModelVersion:
        ref = parse_version_ref(request.name)
        _check_common(request, request.comment)
        if request.stage not in {int(s) for s in Stage}:
            raise errors.invalid(
                "stage", "required: STAGE_NONE, STAGE_STAGING, STAGE_PRODUCTION or STAGE_ARCHIVED"
            )
        target = Stage(request.stage)
        current = await self._catalog.get_version(ref)
        guarded = {Stage.PRODUCTION, Stage.ARCHIVED}
        permission = (
            Permission.STAGES_PRODUCTION if {current.stage, target} & guarded else Permission.STAGES_STAGING
        )
        who = caller(context)
        name = version_name(current.model_id, current.version)
        await self.access.require(who, permission, name, model_id=ref.model_id)
        version = await self._lifecycle.transition_stage(
            ref,
            target,
            archive_existing=request.archive_existing,
            comment=request.comment,
            caller=who,
            expected_stage=current.stage,
        )
        return version_to_proto(version)

    @unary
    async def ListStageTransitions(
        self, request: pb.ListStageTransitionsRequest, context: Context
    ) -> pb.ListStageTransitionsResponse:
        if "/versions/" in request.parent:
            model_id, version = parse_version_name(request.parent, "parent")
        else:
            model_id, version = parse_model_name(request.parent, "parent"), None
        await self._read(context, request.parent, model_id)
        page = await self._lifecycle.list_transitions(
            model_id, version, request.page_size, request.page_token
        )
        return pb.ListStageTransitionsResponse(
            stage_transitions=[transition_to_proto(m) for m in page.items],
            next_page_token=page.next_page_token,
        )

    @unary
    async def GetAlias(self, request: pb.GetAliasRequest, context: Context) -> pb.Alias:
        model_id, alias = parse_alias_name(request.name)
        await self._read(context, request.name, model_id)
        return alias_to_proto(await self._lifecycle.get_alias(model_id, alias))

    @unary
    async def ListAliases(self, request: pb.ListAliasesRequest, context: Context) -> pb.ListAliasesResponse:
        model_id = parse_model_name(request.parent, "parent")
        await self._read(context, request.parent, model_id)
        aliases = await self._lifecycle.list_aliases(model_id)
        return pb.ListAliasesResponse(aliases=[alias_to_proto(a) for a in aliases])

    @unary
    async def SetAlias(self, request: pb.SetAliasRequest, context: Context) -> pb.Alias:
        model_id, alias = parse_alias_name(request.name)
        _check_common(request, request.comment)
        target = _target(model_id, request.model_version, "model_version")
        expected = _expected(model_id, request.expected_model_version, "expected_model_version")
        who = await self._require_alias_moves(context, model_id, [alias])
        record = await self._lifecycle.set_alias(model_id, alias, target, expected, request.comment, who)
        return alias_to_proto(record)

    @unary
    async def DeleteAlias(self, request: pb.DeleteAliasRequest, context: Context) -> empty_pb2.Empty:
        model_id, alias = parse_alias_name(request.name)
        expected = _expected(model_id, request.expected_model_version, "expected_model_version")
        who = await self._require_alias_moves(context, model_id, [alias])
        await self._lifecycle.delete_alias(model_id, alias, expected, who)
        return empty_pb2.Empty()

    @unary
    async def UpdateAliases(
        self, request: pb.UpdateAliasesRequest, context: Context
    ) -> pb.UpdateAliasesResponse:
        model_id = parse_model_name(request.parent, "parent")
        _check_common(request, request.comment)
        if not request.changes:
            raise errors.invalid("changes", "at least one change is required")
        if len(request.changes) > MAX_ALIAS_CHANGES:
            raise errors.invalid("changes", f"at most {MAX_ALIAS_CHANGES} changes")
        specs = []
        seen: set[str] = set()
        for i, change in enumerate(request.changes):
            change_model, alias = parse_alias_name(change.name, f"changes[{i}].name")
            if change_model != model_id:
                raise errors.invalid(f"changes[{i}].name", f"must name an alias of models/{model_id}")
            if alias in seen:
                raise errors.invalid(f"changes[{i}].name", f"alias {alias!r} appears twice")
            seen.add(alias)
            target = None
            if change.model_version:
                target = _target(model_id, change.model_version, f"changes[{i}].model_version")
            expected = _expected(
                model_id, change.expected_model_version, f"changes[{i}].expected_model_version"
            )
            specs.append(AliasChangeSpec(alias, target, expected))
        who = await self._require_alias_moves(context, model_id, [s.alias for s in specs])
        records = await self._lifecycle.update_aliases(model_id, specs, request.comment, who)
        return pb.UpdateAliasesResponse(aliases=[alias_to_proto(a) for a in records])

    @unary
    async def ListAliasHistory(
        self, request: pb.ListAliasHistoryRequest, context: Context
    ) -> pb.ListAliasHistoryResponse:
        alias: str | None = None
        if "/aliases/" in request.name:
            model_id, alias = parse_alias_name(request.name)
        else:
            model_id = parse_model_name(request.name)
        await self._read(context, request.name, model_id)
        page = await self._lifecycle.alias_history(model_id, alias, request.page_size, request.page_token)
        return pb.ListAliasHistoryResponse(
            entries=[alias_move_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def RollbackAlias(self, request: pb.RollbackAliasRequest, context: Context) -> pb.Alias:
        model_id, alias = parse_alias_name(request.name)
        _check_common(request, request.comment)
        who = await self._require_alias_moves(context, model_id, [alias])
        return alias_to_proto(await self._lifecycle.rollback_alias(model_id, alias, request.comment, who))

    @unary
    async def GetTrafficPolicy(
        self, request: pb.GetTrafficPolicyRequest, context: Context
    ) -> pb.TrafficPolicy:
        model_id = parse_traffic_policy_name(request.name)
        await self._read(context, request.name, model_id)
        return traffic_to_proto(await self._lifecycle.get_traffic(model_id))

    @unary
    async def SetTrafficPolicy(
        self, request: pb.SetTrafficPolicyRequest, context: Context
    ) -> pb.TrafficPolicy:
        policy = request.traffic_policy
        model_id = parse_traffic_policy_name(policy.name, "traffic_policy.name")
        who = caller(context)
        await self.access.require(
            who, Permission.TRAFFIC_SET, f"models/{model_id}/trafficPolicy", model_id=model_id
        )
        _check_common(request, request.comment)
        routes = [_route(model_id, i, r) for i, r in enumerate(policy.routes)]
        if routes and sum(r.weight for r in routes) != 100:
            raise errors.invalid("traffic_policy.routes", "weights must sum to 100")
        if len(routes) > 32:
            raise errors.invalid("traffic_policy.routes", "at most 32 routes")
        targets = [(r.alias, r.version) for r in routes]
        if len(set(targets)) != len(targets):
            raise errors.invalid("traffic_policy.routes", "each alias or version may appear once")
        record = await self._lifecycle.set_traffic(model_id, routes, request.comment, who)
        return traffic_to_proto(record)


def _route(model_id: str, index: int, route: pb.TrafficRoute) -> Route:
    field = f"traffic_policy.routes[{index}]"
    if not 0 <= route.weight <= 100:
        raise errors.invalid(f"{field}.weight", "must be between 0 and 100")
    which = route.WhichOneof("target")
    if which == "alias":
        return Route(route.weight, alias=check_alias_id(route.alias, f"{field}.alias"))
    if which == "model_version":
        route_model, version = parse_version_name(route.model_version, f"{field}.model_version")
        if route_model != model_id:
            raise errors.invalid(f"{field}.model_version", f"must name a version of models/{model_id}")
        return Route(route.weight, version=version)
    raise errors.invalid(field, "set alias or model_version")
