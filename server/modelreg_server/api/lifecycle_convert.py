"""Protobuf forms of lifecycle records."""

from __future__ import annotations

from modelreg.v1 import lifecycle_service_pb2 as pb
from modelreg.v1 import model_pb2
from modelreg_server.api.convert import timestamp
from modelreg_server.domain.names import alias_name, model_name, version_name
from modelreg_server.domain.records import (
    AliasMove,
    AliasRecord,
    Change,
    Resolution,
    Route,
    StageMove,
    TrafficPolicyRecord,
)


def stage(value: int) -> model_pb2.Stage.ValueType:
    """A domain stage number as the proto enum."""
    return model_pb2.Stage.ValueType(int(value))


def alias_to_proto(alias: AliasRecord) -> pb.Alias:
    """The wire form of an alias."""
    return pb.Alias(
        name=alias_name(alias.model_id, alias.alias),
        model_version=version_name(alias.model_id, alias.version),
        version=alias.version,
        create_time=timestamp(alias.create_time),
        update_time=timestamp(alias.update_time),
        revision=alias.revision,
        updater=alias.updater,
    )


def transition_to_proto(move: StageMove) -> pb.StageTransition:
    """The wire form of a stage transition."""
    return pb.StageTransition(
        model_version=version_name(move.model_id, move.version),
        from_stage=stage(move.from_stage),
        to_stage=stage(move.to_stage),
        actor=move.actor,
        create_time=timestamp(move.create_time),
        comment=move.comment,
        revision=move.revision,
    )


def alias_move_to_proto(move: AliasMove) -> pb.AliasHistoryEntry:
    """The wire form of an alias move."""
    return pb.AliasHistoryEntry(
        alias=alias_name(move.model_id, move.alias),
        model_version=version_name(move.model_id, move.version) if move.version is not None else "",
        previous_model_version=(
            version_name(move.model_id, move.previous_version) if move.previous_version is not None else ""
        ),
        actor=move.actor,
        create_time=timestamp(move.create_time),
        comment=move.comment,
        revision=move.revision,
    )


def route_to_proto(model_id: str, route: Route) -> pb.TrafficRoute:
    """The wire form of a traffic route."""
    if route.alias is not None:
        return pb.TrafficRoute(alias=route.alias, weight=route.weight)
    assert route.version is not None
    return pb.TrafficRoute(model_version=version_name(model_id, route.version), weight=route.weight)


def traffic_to_proto(policy: TrafficPolicyRecord) -> pb.TrafficPolicy:
    """The wire form of a traffic policy."""
    return pb.TrafficPolicy(
        name=f"{model_name(policy.model_id)}/trafficPolicy",
        routes=[route_to_proto(policy.model_id, r) for r in policy.routes],
        revision=policy.revision,
        update_time=timestamp(policy.update_time) if policy.update_time else None,
        updater=policy.updater,
    )


def resolution_to_proto(res: Resolution) -> pb.ResolveAliasResponse:
    """The wire form of a resolution."""
    return pb.ResolveAliasResponse(
        model_version=version_name(res.model_id, res.version),
        version=res.version,
        artifact_digest=res.artifact_digest,
        stage=stage(res.stage),
        revision=res.revision,
    )


def change_to_proto(change: Change) -> pb.Change:
    """The wire form of a feed entry."""
    message = pb.Change(
        revision=change.revision,
        type=pb.ChangeType.ValueType(int(change.change_type)),
        model=model_name(change.model_id),
        actor=change.actor,
        create_time=timestamp(change.create_time),
    )
    if change.alias is not None:
        message.alias = alias_name(change.model_id, change.alias)
    if change.resolution is not None:
        message.resolution.CopyFrom(resolution_to_proto(change.resolution))
    if change.previous_stage is not None:
        message.previous_stage = stage(change.previous_stage)
    if change.routes is not None:
        message.traffic_policy.CopyFrom(
            traffic_to_proto(
                TrafficPolicyRecord(change.model_id, change.routes, change.revision, change.actor, None)
            )
        )
    return message
