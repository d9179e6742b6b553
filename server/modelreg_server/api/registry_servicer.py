"""modelreg.v1.ModelRegistryService: validation and protobuf in/out around the Catalog."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from modelreg.v1 import (
    model_pb2,
)
from modelreg.v1 import (
    model_registry_service_pb2 as pb,
)
from modelreg.v1 import (
    model_registry_service_pb2_grpc as pb_grpc,
)
from modelreg_server.api import validation as val
from modelreg_server.api.compare_convert import comparison_to_proto
from modelreg_server.api.convert import model_to_proto, new_version_from_proto, version_to_proto
from modelreg_server.api.identity import caller
from modelreg_server.api.status import unary
from modelreg_server.domain import compare, errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.catalog import Catalog, ListQuery
from modelreg_server.domain.names import (
    ALIAS_RE,
    check_alias_id,
    check_model_id,
    model_name,
    parse_model_name,
    parse_parent,
    parse_version_name,
    parse_version_ref,
)
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import Caller, ModelFields, PromotionPolicy

Context = grpc.aio.ServicerContext[Any, Any]

MODEL_MUTABLE = ("description", "labels", "owner_team", "promotion_policy", "protected_aliases")
DEFAULT_PROTECTED = ("champion",)
MODEL_OUTPUT_ONLY = ("name", "latest_version", "create_time", "update_time", "etag", "uid")
VERSION_MUTABLE = ("description", "labels")
VERSION_OUTPUT_ONLY = ("name", "version", "stage", "creator", "create_time", "update_time", "etag")


def _list_query(request: pb.ListModelsRequest | pb.ListModelVersionsRequest) -> ListQuery:
    return ListQuery(request.page_size, request.page_token, request.filter, request.order_by)


def _protected(aliases: Iterable[str], default: tuple[str, ...] = DEFAULT_PROTECTED) -> tuple[str, ...]:
    """Protected aliases as given (sorted, deduplicated), or the default when none are given."""
    given = tuple(sorted(set(aliases)))
    for alias in given:
        check_alias_id(alias, "model.protected_aliases")
    return given or default


def _policy(value: int) -> PromotionPolicy:
    if value == model_pb2.PROMOTION_POLICY_UNSPECIFIED:
        return PromotionPolicy.STAGES_AND_ALIASES
    try:
        return PromotionPolicy(value)
    except ValueError:
        raise errors.invalid("model.promotion_policy", f"unknown promotion policy {value}") from None


def _check_model_fields(model: model_pb2.Model, v: val.Violations) -> None:
    val.check_strings(model, v, "model.")
    val.check_length("model.description", model.description, val.MAX_DESCRIPTION, v)
    val.check_length("model.owner_team", model.owner_team, 128, v)
    val.check_labels("model.labels", model.labels, v)


def _check_version_fields(mv: model_pb2.ModelVersion, v: val.Violations) -> None:
    val.check_strings(mv, v, "model_version.")
    val.check_length("model_version.description", mv.description, val.MAX_DESCRIPTION, v)
    val.check_length("model_version.run_id", mv.run_id, 256, v)
    val.check_labels("model_version.labels", mv.labels, v)
    val.check_metrics("model_version.metrics", mv.metrics, v)
    val.check_digest("model_version.artifact_digest", mv.artifact_digest, v)
    lineage = mv.lineage
    for i, ds in enumerate(lineage.datasets):
        val.require(f"model_version.lineage.datasets[{i}].uri", ds.uri, v)
        if ds.digest and not val.DATA_DIGEST_RE.fullmatch(ds.digest):
            v.add(f"model_version.lineage.datasets[{i}].digest", "must look like 'sha256:<hex>'")
    for i, parent in enumerate(lineage.parent_versions):
        try:
            parse_version_name(parent, f"model_version.lineage.parent_versions[{i}]")
        except errors.InvalidArgument as exc:
            v.items.extend(exc.violations)
    for which, schema in (("input_schema", mv.input_schema), ("output_schema", mv.output_schema)):
        seen: set[str] = set()
        for i, f in enumerate(schema.fields):
            path = f"model_version.{which}.fields[{i}]"
            val.require(f"{path}.name", f.name, v)
            if f.name in seen:
                v.add(f"{path}.name", f"duplicate field name {f.name[:40]!r}")
            seen.add(f.name)
            if not val.DTYPE_RE.fullmatch(f.dtype):
                v.add(f"{path}.dtype", "required: a type name such as 'float32', 'int64' or 'string'")
            if any(d < -1 for d in f.shape):
                v.add(f"{path}.shape", "dimensions must be ≥ 0, or -1 for a variable size")
    for i, pkg in enumerate(mv.dependencies.packages):
        val.require(f"model_version.dependencies.packages[{i}].name", pkg.name, v)
        val.require(f"model_version.dependencies.packages[{i}].version", pkg.version, v)


def _mask_paths(
    mask: FieldMask,
    resource: Message,
    mutable: Iterable[str],
    output_only: Iterable[str],
    v: val.Violations,
    *,
    refusal: str,
) -> list[str]:
    """Resolves an update mask into the mutable fields to write (AIP-134/161)."""
    mutable = tuple(mutable)
    if not mask.paths:
        populated = {fd.name for fd, _ in resource.ListFields()}
        return [f for f in mutable if f in populated]
    paths: list[str] = []
    for i, path in enumerate(mask.paths):
        if path == "*":
            return list(mutable)
        if path in mutable:
            paths.append(path)
        elif path in output_only:
            continue
        else:
            v.add(f"update_mask.paths[{i}]", f"{path[:60]!r} {refusal}; updatable: {', '.join(mutable)}")
    return paths


def _changes(resource: Message, paths: list[str]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for path in paths:
        value = getattr(resource, path)
        changes[path] = dict(value) if path == "labels" else value
    return changes


class RegistryServicer(pb_grpc.ModelRegistryServiceServicer):
    """Serves the catalog."""

    def __init__(self, catalog: Catalog, access: AccessControl) -> None:
        self._catalog = catalog
        self.access = access

    async def _require(
        self, context: Context, permission: Permission, resource: str, model_id: str | None = None
    ) -> Caller:
        who = caller(context)
        await self.access.require(who, permission, resource, model_id=model_id)
        return who

    @unary
    async def CreateModel(self, request: pb.CreateModelRequest, context: Context) -> model_pb2.Model:
        model_id = check_model_id(request.model_id, "model_id")
        who = caller(context)
        labels = dict(request.model.labels)
        await self.access.require(
            who, Permission.MODELS_CREATE, model_name(model_id), model_id=model_id, labels=labels
        )
        protected = _protected(request.model.protected_aliases)
        if not set(DEFAULT_PROTECTED) <= set(protected):
            # Weakening the default protection is a policy decision.
            await self.access.require(
                who, Permission.MODELS_SET_POLICY, model_name(model_id), model_id=model_id, labels=labels
            )
        v = val.Violations()
        _check_model_fields(request.model, v)
        v.check()
        fields = ModelFields(
            request.model.description,
            labels,
            request.model.owner_team,
            _policy(request.model.promotion_policy),
            protected,
        )
        return model_to_proto(await self._catalog.create_model(model_id, fields, who))

    @unary
    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> model_pb2.Model:
        model_id = parse_model_name(request.name)
        await self._require(context, Permission.READ, request.name, model_id)
        return model_to_proto(await self._catalog.get_model(model_id))

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        await self._require(context, Permission.READ, "models")
        page = await self._catalog.list_models(_list_query(request))
        return pb.ListModelsResponse(
            models=[model_to_proto(m) for m in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def UpdateModel(self, request: pb.UpdateModelRequest, context: Context) -> model_pb2.Model:
        model_id = parse_model_name(request.model.name, "model.name")
        v = val.Violations()
        _check_model_fields(request.model, v)
        for i, alias in enumerate(request.model.protected_aliases):
            if not ALIAS_RE.fullmatch(alias):
                v.add(f"model.protected_aliases[{i}]", "not a valid alias id")
        paths = _mask_paths(
            request.update_mask,
            request.model,
            MODEL_MUTABLE,
            MODEL_OUTPUT_ONLY,
            v,
            refusal="cannot be updated",
        )
        v.check()
        changes = _changes(request.model, paths)
        name = model_name(model_id)
        policy_paths = {"promotion_policy", "protected_aliases"} & set(changes)
        who = await self._require(
            context,
            Permission.MODELS_SET_POLICY if policy_paths else Permission.MODELS_UPDATE,
            name,
            model_id,
        )
        if set(changes) - policy_paths:
            await self.access.require(who, Permission.MODELS_UPDATE, name, model_id=model_id)
        if "labels" in changes:
            # Relabelling may move the model into another label scope: the caller must hold it there too.
            await self.access.require(
                who, Permission.MODELS_UPDATE, name, model_id=model_id, labels=changes["labels"]
            )
        if "promotion_policy" in changes:
            changes["promotion_policy"] = int(_policy(changes["promotion_policy"]))
        if "protected_aliases" in changes:
            changes["protected_aliases"] = list(_protected(changes["protected_aliases"], default=()))
        updated = await self._catalog.update_model(model_id, changes, request.model.etag, who)
        return model_to_proto(updated)

    @unary
    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Context) -> empty_pb2.Empty:
        model_id = parse_model_name(request.name)
        who = await self._require(context, Permission.MODELS_DELETE, request.name, model_id)
        await self._catalog.delete_model(model_id, request.etag, request.force, who)
        return empty_pb2.Empty()

    @unary
    async def CreateModelVersion(
        self, request: pb.CreateModelVersionRequest, context: Context
    ) -> model_pb2.ModelVersion:
        model_id = parse_model_name(request.parent, "parent")
        who = await self._require(context, Permission.VERSIONS_CREATE, request.parent, model_id)
        v = val.Violations()
        _check_version_fields(request.model_version, v)
        val.check_length("request_id", request.request_id, val.MAX_REQUEST_ID, v)
        if "\x00" in request.request_id:
            v.add("request_id", "must not contain NUL characters")
        v.check()
        created = await self._catalog.create_version(
            model_id,
            new_version_from_proto(request.model_version),
            caller=who,
            request_id=request.request_id or None,
        )
        return version_to_proto(created)

    @unary
    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Context
    ) -> model_pb2.ModelVersion:
        ref = parse_version_ref(request.name)
        await self._require(context, Permission.READ, request.name, ref.model_id)
        return version_to_proto(await self._catalog.get_version(ref))

    @unary
    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Context
    ) -> pb.ListModelVersionsResponse:
        model_id = parse_parent(request.parent, allow_wildcard=True)
        await self._require(context, Permission.READ, request.parent, model_id)
        page = await self._catalog.list_versions(model_id, _list_query(request))
        return pb.ListModelVersionsResponse(
            model_versions=[version_to_proto(mv) for mv in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: Context
    ) -> model_pb2.ModelVersion:
        mv = request.model_version
        model_id, version = parse_version_name(mv.name, "model_version.name")
        who = await self._require(context, Permission.VERSIONS_UPDATE, mv.name, model_id)
        v = val.Violations()
        val.check_strings(mv, v, "model_version.")
        val.check_length("model_version.description", mv.description, val.MAX_DESCRIPTION, v)
        val.check_labels("model_version.labels", mv.labels, v)
        paths = _mask_paths(
            request.update_mask,
            mv,
            VERSION_MUTABLE,
            VERSION_OUTPUT_ONLY,
            v,
            refusal="is immutable once registered",
        )
        v.check()
        updated = await self._catalog.update_version(model_id, version, _changes(mv, paths), mv.etag, who)
        return version_to_proto(updated)

    @unary
    async def CompareModelVersions(
        self, request: pb.CompareModelVersionsRequest, context: Context
    ) -> pb.CompareModelVersionsResponse:
        compare.check_count(len(request.names))
        refs = [parse_version_ref(name, f"names[{i}]") for i, name in enumerate(request.names)]
        # Every permission first: a caller learns nothing about versions of models it cannot read.
        for name, ref in zip(request.names, refs, strict=True):
            await self._require(context, Permission.READ, name, ref.model_id)
        versions = [await self._catalog.get_version(ref) for ref in refs]
        return comparison_to_proto(compare.compare(versions))
