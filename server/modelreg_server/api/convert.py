"""Conversions between protobuf messages and domain records."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from modelreg.v1 import model_pb2
from modelreg_server.domain.catalog import model_etag, version_etag
from modelreg_server.domain.names import model_name, version_name
from modelreg_server.domain.records import JsonObject, ModelRecord, NewVersion, VersionRecord

M = TypeVar("M", bound=Message)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def to_json(message: Message) -> JsonObject:
    """A message as a JSON object (proto field names) for a jsonb column; {} when unset."""
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def from_json(data: JsonObject, message: M) -> M | None:
    """Parses a jsonb column written by to_json (None when empty); keys unknown to this build are skipped."""
    if not data:
        return None
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return message


def model_to_proto(model: ModelRecord) -> model_pb2.Model:
    """The wire form of a model."""
    return model_pb2.Model(
        name=model_name(model.model_id),
        description=model.description,
        labels=model.labels,
        owner_team=model.owner_team,
        latest_version=model.latest_version,
        create_time=timestamp(model.create_time),
        update_time=timestamp(model.update_time),
        etag=model_etag(model),
        uid=model.uid,
        promotion_policy=model_pb2.PromotionPolicy.ValueType(int(model.promotion_policy)),
        protected_aliases=model.protected_aliases,
    )


def version_to_proto(version: VersionRecord) -> model_pb2.ModelVersion:
    """The wire form of a version."""
    if version.details is not None:
        message = model_pb2.ModelVersion.FromString(version.details)
        message.MergeFrom(_version_scalars(version))
        return message
    return _from_json_columns(version)


def _from_json_columns(version: VersionRecord) -> model_pb2.ModelVersion:
    """Versions registered before the details column: rebuild the nested messages from jsonb."""
    message = _version_scalars(version)
    for field, value in (
        ("lineage", from_json(version.lineage, model_pb2.Lineage())),
        ("input_schema", from_json(version.input_schema, model_pb2.Schema())),
        ("output_schema", from_json(version.output_schema, model_pb2.Schema())),
        ("dependencies", from_json(version.dependencies, model_pb2.Dependencies())),
    ):
        if value is not None:
            getattr(message, field).CopyFrom(value)
    return message


def _version_scalars(version: VersionRecord) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        name=version_name(version.model_id, version.version),
        version=version.version,
        run_id=version.run_id,
        description=version.description,
        labels=version.labels,
        metrics=version.metrics,
        artifact_digest=version.artifact_digest,
        stage=model_pb2.Stage.ValueType(int(version.stage)),
        creator=version.creator,
        create_time=timestamp(version.create_time),
        update_time=timestamp(version.update_time),
        etag=version_etag(version),
        aliases=version.aliases,
    )


def new_version_from_proto(mv: model_pb2.ModelVersion) -> NewVersion:
    """The client-settable part of a version; output-only fields are ignored."""
    return NewVersion(
        run_id=mv.run_id,
        description=mv.description,
        labels=dict(mv.labels),
        metrics=dict(mv.metrics),
        lineage=to_json(mv.lineage),
        input_schema=to_json(mv.input_schema),
        output_schema=to_json(mv.output_schema),
        dependencies=to_json(mv.dependencies),
        artifact_digest=mv.artifact_digest,
        details=_details(mv),
    )


def _details(mv: model_pb2.ModelVersion) -> bytes:
    """The nested metadata as a serialized ModelVersion holding only those fields."""
    holder = model_pb2.ModelVersion()
    for field in ("lineage", "input_schema", "output_schema", "dependencies"):
        if mv.HasField(field):
            getattr(holder, field).CopyFrom(getattr(mv, field))
    return holder.SerializeToString(deterministic=True)
