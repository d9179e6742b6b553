"""The part of the SDK that the sync and async clients share: configuration, resource names, request
building and channel setup. Nothing here touches the network, so `Registry` and `AsyncRegistry` differ
only in how they send the requests built here and cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import grpc
from google.protobuf import field_mask_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2

try:
    SDK_VERSION = _metadata.version("modelreg")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    SDK_VERSION = "0.0.0+unknown"

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
ADDRESS_ENV = "MODELREG_ADDRESS"
TOKEN_ENV = "MODELREG_TOKEN"
TOKEN_FILE = Path(".modelreg") / "admin.token"
MAX_PAGE_SIZE = 1000
SERVICE_NAME: str = service_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name
LIFECYCLE_SERVICE_NAME: str = lifecycle_pb2.DESCRIPTOR.services_by_name["LifecycleService"].full_name
SERVING_SERVICE_NAME: str = lifecycle_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name

# Methods that are safe to send twice. CreateModelVersion qualifies only because every request carries a
# request_id, which the server uses to return the version it created the first time.
RETRIED_METHODS = ("GetModel", "ListModels", "GetModelVersion", "ListModelVersions", "CreateModelVersion")
# Read-only lifecycle and serving methods. Writes are not retried: a SetAlias whose response was lost would
# move the alias twice in the history, and a retried compare-and-swap would report its own success as ABORTED.
RETRIED_LIFECYCLE_METHODS = (
    "GetAlias",
    "ListAliases",
    "ListAliasHistory",
    "ListStageTransitions",
    "GetTrafficPolicy",
)
RETRIED_SERVING_METHODS = ("ResolveAlias", "BatchResolveAliases", "ResolveRoute")
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

Metadata = tuple[tuple[str, str], ...]
ChannelOption = tuple[str, Any]


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to connect; build it with :meth:`resolve` to apply env and defaults."""

    address: str = DEFAULT_ADDRESS
    token: str | None = field(default=None, repr=False)
    timeout: float | None = DEFAULT_TIMEOUT
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    options: tuple[ChannelOption, ...] = ()

    @classmethod
    def resolve(
        cls,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | None = None,
        options: tuple[ChannelOption, ...] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ClientConfig:
        """Fill in what the caller left out.

        The address comes from the argument, else `$MODELREG_ADDRESS`, else `127.0.0.1:50051`. The token
        comes from the argument, else `$MODELREG_TOKEN`, else `.modelreg/admin.token` in `cwd` (default:
        the current directory); pass `token=""` to send none. Passing `root_certificates` turns TLS on.
        """
        environ = os.environ if env is None else env
        resolved_address = address or environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        if token is None:
            token = environ.get(TOKEN_ENV) or _read_token_file((cwd or Path.cwd()) / TOKEN_FILE)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        return cls(
            address=resolved_address,
            token=token or None,
            timeout=timeout,
            tls=tls or root_certificates is not None,
            root_certificates=root_certificates,
            options=tuple(options),
        )

    @property
    def call_metadata(self) -> Metadata:
        """Metadata sent with every call: the bearer token, when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a secure channel, or None for plaintext."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def channel_options(self) -> list[ChannelOption]:
        """Channel arguments: retries via the service config, user agent, then the caller's options."""
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(service_config())),
            # Keep a DNS TXT record from replacing the retry policy above.
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.primary_user_agent", f"modelreg-python/{SDK_VERSION}"),
            *self.options,
        ]


def _read_token_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").strip() or None


def service_config() -> dict[str, Any]:
    """gRPC service config enabling the built-in retry policy for the idempotent methods."""
    retried = [
        *((SERVICE_NAME, method) for method in RETRIED_METHODS),
        *((LIFECYCLE_SERVICE_NAME, method) for method in RETRIED_LIFECYCLE_METHODS),
        *((SERVING_SERVICE_NAME, method) for method in RETRIED_SERVING_METHODS),
    ]
    return {
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, method in retried],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }


# --- resource names ----------------------------------------------------------------------------------

_MODELS = "models/"
_VERSIONS = "/versions/"


def model_name(model: str) -> str:
    """`models/{model}` from a model id (`"fraud"`) or a model name (`"models/fraud"`)."""
    model_id = model.removeprefix(_MODELS)
    if not model_id or "/" in model_id:
        raise ValueError(f"not a model id or model name: {model!r}")
    return _MODELS + model_id


def model_id(model: str) -> str:
    """The id part of a model name: `"models/fraud"` and `"fraud"` both give `"fraud"`."""
    return model_name(model).removeprefix(_MODELS)


def version_name(model: str, version: int | str) -> str:
    """`models/{model}/versions/{version}`, e.g. `version_name("fraud", 3)`."""
    number = int(version) if isinstance(version, int) or version.isdigit() else 0
    if number < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    return f"{model_name(model)}{_VERSIONS}{number}"


def parse_version_name(name: str) -> tuple[str, int]:
    """Split a version reference into `(model name, version)`.

    Accepts the full name `models/fraud/versions/3` and the shorthand `fraud/3`.
    """
    if name.startswith(_MODELS) and _VERSIONS in name:
        model, _, version = name.rpartition(_VERSIONS)
    else:
        model, _, version = name.rpartition("/")
    if not model or not version:
        raise ValueError(f"not a model version name: {name!r} (expected models/MODEL/versions/N or MODEL/N)")
    version_name(model, version)  # validates both parts
    return model_name(model), int(version)


def model_version_name(name: str) -> str:
    """Normalise a version reference (`models/fraud/versions/3` or `fraud/3`) to its full name."""
    model, version = parse_version_name(name)
    return version_name(model, version)


ABSENT: Final = "-"
"""Compare-and-swap expectation meaning "the alias must not exist yet" (`expected=modelreg.ABSENT`)."""

_ALIASES = "/aliases/"
_ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_STAGE_PREFIX = "STAGE_"

VersionLike: TypeAlias = int | str | model_pb2.ModelVersion
"""A version of a known model: `3`, `"3"`, `"models/m/versions/3"`, `"m/3"`, a `ModelVersion`, or an alias
of the same model as `"@champion"` / `"models/m@champion"` where the server accepts one."""
ExpectedLike: TypeAlias = int | str | model_pb2.ModelVersion | None
"""Compare-and-swap expectation: None (no check), :data:`ABSENT` / `"-"`, or a version as in VersionLike."""
StageLike: TypeAlias = "model_pb2.Stage.ValueType | str"
"""A stage: `modelreg.Stage` value (`STAGE_PRODUCTION`) or its name, with or without the prefix, any case."""
RouteTarget: TypeAlias = int | str
"""What serves a traffic share: an alias (`"champion"`) or a version (`3`, `"3"`, `"models/m/versions/3"`)."""
TrafficRoutes: TypeAlias = (
    Mapping[str, int]
    | Mapping[int, int]
    | Mapping[RouteTarget, int]
    | Iterable[tuple[RouteTarget, int] | lifecycle_pb2.TrafficRoute]
)
"""Routes of a traffic policy in order: `{"champion": 90, "canary": 10}` or `[("champion", 90), (4, 10)]`."""
AliasRef: TypeAlias = str | tuple[str, str]
"""An alias: `"models/m/aliases/a"`, `"m@a"`, or a `(model, alias)` pair."""


def _check_alias(alias: str) -> str:
    if not _ALIAS_RE.fullmatch(alias):
        raise ValueError(f"invalid alias {alias!r}: use [a-z][a-z0-9-]*, at most 63 characters")
    return alias


def alias_name(model: str, alias: str) -> str:
    """`models/{model}/aliases/{alias}`; `alias` may also be that full name already (of the same model)."""
    parent = model_name(model)
    if alias.startswith(_MODELS):
        owner, sep, alias = alias.partition(_ALIASES)
        if not sep or model_name(owner) != parent:
            raise ValueError(f"not an alias of {parent}: {owner + sep + alias!r}")
    return f"{parent}{_ALIASES}{_check_alias(alias)}"


def parse_alias_name(name: str) -> tuple[str, str]:
    """Split `models/m/aliases/a` (or the shorthand `m@a` / `models/m@a`) into `(model name, alias)`."""
    if _ALIASES in name:
        model, _, alias = name.partition(_ALIASES)
    else:
        model, sep, alias = name.rpartition("@")
        if not sep:
            raise ValueError(f"not an alias name: {name!r} (expected models/M/aliases/ALIAS or M@ALIAS)")
    return model_name(model), _check_alias(alias)


def version_reference(name: str) -> str:
    """A version by number or through an alias, as TransitionModelVersionStage takes it.

    Accepts `models/m/versions/3`, `m/3`, `models/m@champion` and `m@champion`.
    """
    if "@" in name:
        model, _, alias = name.rpartition("@")
        return f"{model_name(model)}@{_check_alias(alias)}"
    return model_version_name(name)


def target_version_name(model: str, version: VersionLike) -> str:
    """Normalise a version of `model` (see :data:`VersionLike`); other models' versions are refused."""
    parent = model_name(model)
    if isinstance(version, model_pb2.ModelVersion):
        version = version.name
    if isinstance(version, bool):
        raise TypeError("a version must be an int or a str, not a bool")
    if isinstance(version, int) or version.isdigit():
        return version_name(parent, version)
    if version.startswith("@"):
        return f"{parent}@{_check_alias(version[1:])}"
    name = version_reference(version)
    owner = name.partition("@")[0] if "@" in name else parse_version_name(name)[0]
    if owner != parent:
        raise ValueError(f"{version!r} is not a version of {parent}")
    return name


def expected_version_name(model: str, expected: ExpectedLike) -> str:
    """The `expected_model_version` field: `""` for no check, `"-"` for must-not-exist, else a version."""
    if expected is None:
        return ""
    if isinstance(expected, str) and expected == ABSENT:
        return ABSENT
    name = target_version_name(model, expected)
    if "@" in name:
        raise ValueError(f"expected must name a version number, not an alias: {expected!r}")
    return name


def stage_value(stage: StageLike) -> model_pb2.Stage.ValueType:
    """A Stage from `Stage.STAGE_PRODUCTION`, `"production"`, `"PRODUCTION"` or `"STAGE_PRODUCTION"`."""
    if isinstance(stage, str):
        key = stage.strip().upper().replace("-", "_")
        if not key.startswith(_STAGE_PREFIX):
            key = _STAGE_PREFIX + key
        try:
            value = model_pb2.Stage.Value(key)
        except ValueError:
            value = model_pb2.STAGE_UNSPECIFIED
    else:
        value = stage if stage in model_pb2.Stage.values() else model_pb2.STAGE_UNSPECIFIED
    if value == model_pb2.STAGE_UNSPECIFIED:
        raise ValueError(f"unknown stage {stage!r}: use none, staging, production or archived")
    return value


def traffic_policy_name(model: str) -> str:
    """`models/{model}/trafficPolicy`."""
    return f"{model_name(model)}/trafficPolicy"


def traffic_route(model: str, target: RouteTarget, weight: int) -> lifecycle_pb2.TrafficRoute:
    """One route of `model`: a version when `target` is a number or a version name, otherwise an alias."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"route weight must be an int, got {weight!r}")
    if isinstance(target, str) and "@" in target:  # `@champion`, `m@champion` or `models/m@champion`
        owner, _, alias = target.rpartition("@")
        if owner and model_name(owner) != model_name(model):
            raise ValueError(f"{target!r} is not an alias of {model_name(model)}")
        return lifecycle_pb2.TrafficRoute(alias=_check_alias(alias), weight=weight)
    if isinstance(target, int) or target.isdigit() or "/" in target:
        return lifecycle_pb2.TrafficRoute(model_version=target_version_name(model, target), weight=weight)
    return lifecycle_pb2.TrafficRoute(alias=_check_alias(target), weight=weight)


def to_timestamp(value: datetime | timestamp_pb2.Timestamp) -> timestamp_pb2.Timestamp:
    """A Timestamp from a timezone-aware datetime (naive ones are refused as ambiguous) or a Timestamp."""
    if isinstance(value, timestamp_pb2.Timestamp):
        copy = timestamp_pb2.Timestamp()
        copy.CopyFrom(value)
        return copy
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("as_of must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


# --- request builders --------------------------------------------------------------------------------

_M = TypeVar("_M", bound=Message)
_ListRequest = TypeVar(
    "_ListRequest",
    service_pb2.ListModelsRequest,
    service_pb2.ListModelVersionsRequest,
    lifecycle_pb2.ListStageTransitionsRequest,
    lifecycle_pb2.ListAliasHistoryRequest,
)


def new_request_id() -> str:
    """A fresh idempotency key for CreateModelVersion."""
    return uuid.uuid4().hex


def to_message(value: _M | Mapping[str, Any], message_type: type[_M], what: str) -> _M:
    """Accept either the protobuf message or a plain dict in its JSON form (snake_case or camelCase keys)."""
    if isinstance(value, message_type):
        copy = message_type()
        copy.CopyFrom(value)
        return copy
    if isinstance(value, Mapping):
        try:
            return json_format.ParseDict(dict(value), message_type())
        except json_format.ParseError as exc:
            raise ValueError(f"{what}: {exc}") from exc
    expected = message_type.DESCRIPTOR.full_name
    raise TypeError(f"{what}: expected {expected} or a dict, got {type(value).__name__}")


def create_model_request(
    model_id: str,
    *,
    description: str = "",
    labels: Mapping[str, str] | None = None,
    owner_team: str = "",
) -> service_pb2.CreateModelRequest:
    """CreateModelRequest; `model_id` may also be given as `models/{id}`."""
    model = model_pb2.Model(description=description, labels=dict(labels or {}), owner_team=owner_team)
    return service_pb2.CreateModelRequest(model_id=model_id.removeprefix(_MODELS), model=model)


def get_model_request(name: str) -> service_pb2.GetModelRequest:
    """GetModelRequest for a model id or name."""
    return service_pb2.GetModelRequest(name=model_name(name))


def list_models_request(
    *, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
) -> service_pb2.ListModelsRequest:
    """ListModelsRequest for the first page (or the page of `page_token`)."""
    return service_pb2.ListModelsRequest(
        filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
    )


def update_model_request(
    name: str,
    *,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    owner_team: str | None = None,
    etag: str = "",
) -> service_pb2.UpdateModelRequest:
    """UpdateModelRequest whose update_mask lists exactly the fields that are not None.

    `labels={}` therefore clears the labels, while `labels=None` leaves them alone.
    """
    model = model_pb2.Model(name=model_name(name), etag=etag)
    paths: list[str] = []
    if description is not None:
        model.description = description
        paths.append("description")
    if labels is not None:
        model.labels.update(labels)
        paths.append("labels")
    if owner_team is not None:
        model.owner_team = owner_team
        paths.append("owner_team")
    if not paths:
        raise ValueError("update_model: pass at least one of description, labels, owner_team")
    return service_pb2.UpdateModelRequest(model=model, update_mask=field_mask_pb2.FieldMask(paths=paths))


def delete_model_request(name: str, *, force: bool = False, etag: str = "") -> service_pb2.DeleteModelRequest:
    """DeleteModelRequest; `force` also deletes the versions, `etag` makes the delete conditional."""
    return service_pb2.DeleteModelRequest(name=model_name(name), force=force, etag=etag)


def create_model_version_request(
    model: str,
    *,
    run_id: str = "",
    description: str = "",
    labels: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    lineage: model_pb2.Lineage | Mapping[str, Any] | None = None,
    input_schema: model_pb2.Schema | Mapping[str, Any] | None = None,
    output_schema: model_pb2.Schema | Mapping[str, Any] | None = None,
    dependencies: model_pb2.Dependencies | Mapping[str, Any] | None = None,
    artifact_digest: str = "",
    request_id: str | None = None,
) -> service_pb2.CreateModelVersionRequest:
    """CreateModelVersionRequest, always with a request_id (a fresh one unless given) so it can be retried."""
    version = model_pb2.ModelVersion(
        run_id=run_id,
        description=description,
        labels=dict(labels or {}),
        metrics={key: float(value) for key, value in (metrics or {}).items()},
        artifact_digest=artifact_digest,
    )
    if lineage is not None:
        version.lineage.CopyFrom(to_message(lineage, model_pb2.Lineage, "lineage"))
    if input_schema is not None:
        version.input_schema.CopyFrom(to_message(input_schema, model_pb2.Schema, "input_schema"))
    if output_schema is not None:
        version.output_schema.CopyFrom(to_message(output_schema, model_pb2.Schema, "output_schema"))
    if dependencies is not None:
        version.dependencies.CopyFrom(to_message(dependencies, model_pb2.Dependencies, "dependencies"))
    return service_pb2.CreateModelVersionRequest(
        parent=model_name(model),
        model_version=version,
        request_id=new_request_id() if request_id is None else request_id,
    )


def get_model_version_request(name: str) -> service_pb2.GetModelVersionRequest:
    """GetModelVersionRequest for `models/{m}/versions/{n}` or the shorthand `{m}/{n}`."""
    return service_pb2.GetModelVersionRequest(name=model_version_name(name))


def list_model_versions_request(
    model: str = "-", *, filter: str = "", order_by: str = "", page_size: int = 0, page_token: str = ""
) -> service_pb2.ListModelVersionsRequest:
    """ListModelVersionsRequest; `model="-"` lists the versions of every model."""
    return service_pb2.ListModelVersionsRequest(
        parent=model_name(model), filter=filter, order_by=order_by, page_size=page_size, page_token=page_token
    )


def update_model_version_request(
    name: str,
    *,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    etag: str = "",
) -> service_pb2.UpdateModelVersionRequest:
    """UpdateModelVersionRequest whose update_mask lists exactly the fields that are not None."""
    version = model_pb2.ModelVersion(name=model_version_name(name), etag=etag)
    paths: list[str] = []
    if description is not None:
        version.description = description
        paths.append("description")
    if labels is not None:
        version.labels.update(labels)
        paths.append("labels")
    if not paths:
        raise ValueError("update_model_version: pass at least one of description, labels")
    return service_pb2.UpdateModelVersionRequest(
        model_version=version, update_mask=field_mask_pb2.FieldMask(paths=paths)
    )


def next_page_request(request: _ListRequest, page_token: str) -> _ListRequest:
    """A copy of a list request asking for the page after the one that returned `page_token`."""
    following = type(request)()
    following.CopyFrom(request)
    following.page_token = page_token
    return following


# --- lifecycle and serving requests ------------------------------------------------------------------


def transition_stage_request(
    version: str, stage: StageLike, *, archive_existing: bool = False, comment: str = ""
) -> lifecycle_pb2.TransitionModelVersionStageRequest:
    """TransitionModelVersionStageRequest for a version reference (see :func:`version_reference`)."""
    return lifecycle_pb2.TransitionModelVersionStageRequest(
        name=version_reference(version),
        stage=stage_value(stage),
        archive_existing=archive_existing,
        comment=comment,
    )


def list_stage_transitions_request(
    model_or_version: str, *, page_size: int = 0, page_token: str = ""
) -> lifecycle_pb2.ListStageTransitionsRequest:
    """ListStageTransitionsRequest for a model (`fraud`) or one version (`fraud/3`)."""
    try:
        parent = model_name(model_or_version)
    except ValueError:
        parent = model_version_name(model_or_version)
    return lifecycle_pb2.ListStageTransitionsRequest(
        parent=parent, page_size=page_size, page_token=page_token
    )


def get_alias_request(model: str, alias: str) -> lifecycle_pb2.GetAliasRequest:
    """GetAliasRequest."""
    return lifecycle_pb2.GetAliasRequest(name=alias_name(model, alias))


def list_aliases_request(model: str) -> lifecycle_pb2.ListAliasesRequest:
    """ListAliasesRequest."""
    return lifecycle_pb2.ListAliasesRequest(parent=model_name(model))


def set_alias_request(
    model: str, alias: str, version: VersionLike, *, expected: ExpectedLike = None, comment: str = ""
) -> lifecycle_pb2.SetAliasRequest:
    """SetAliasRequest; `expected` makes it a compare-and-swap (see :data:`ExpectedLike`)."""
    return lifecycle_pb2.SetAliasRequest(
        name=alias_name(model, alias),
        model_version=target_version_name(model, version),
        expected_model_version=expected_version_name(model, expected),
        comment=comment,
    )


def delete_alias_request(
    model: str, alias: str, *, expected: ExpectedLike = None
) -> lifecycle_pb2.DeleteAliasRequest:
    """DeleteAliasRequest; `expected` makes it a compare-and-swap."""
    return lifecycle_pb2.DeleteAliasRequest(
        name=alias_name(model, alias), expected_model_version=expected_version_name(model, expected)
    )


def update_aliases_request(
    model: str,
    changes: Mapping[str, VersionLike | None],
    *,
    expected: Mapping[str, ExpectedLike] | None = None,
    comment: str = "",
) -> lifecycle_pb2.UpdateAliasesRequest:
    """UpdateAliasesRequest: `changes` maps alias → new target (None deletes it), applied in order.

    `expected` maps aliases of `changes` to their compare-and-swap expectation.
    """
    expected = expected or {}
    unknown = sorted(set(expected) - set(changes))
    if unknown:
        raise ValueError(f"expected names aliases that are not changed: {', '.join(unknown)}")
    if not changes:
        raise ValueError("update_aliases: pass at least one change")
    return lifecycle_pb2.UpdateAliasesRequest(
        parent=model_name(model),
        changes=[
            lifecycle_pb2.AliasChange(
                name=alias_name(model, alias),
                model_version="" if target is None else target_version_name(model, target),
                expected_model_version=expected_version_name(model, expected.get(alias)),
            )
            for alias, target in changes.items()
        ],
        comment=comment,
    )


def list_alias_history_request(
    model: str, alias: str | None = None, *, page_size: int = 0, page_token: str = ""
) -> lifecycle_pb2.ListAliasHistoryRequest:
    """ListAliasHistoryRequest for one alias, or for every alias of the model when `alias` is None."""
    name = model_name(model) if alias is None else alias_name(model, alias)
    return lifecycle_pb2.ListAliasHistoryRequest(name=name, page_size=page_size, page_token=page_token)


def rollback_alias_request(
    model: str, alias: str, *, comment: str = ""
) -> lifecycle_pb2.RollbackAliasRequest:
    """RollbackAliasRequest."""
    return lifecycle_pb2.RollbackAliasRequest(name=alias_name(model, alias), comment=comment)


def get_traffic_policy_request(model: str) -> lifecycle_pb2.GetTrafficPolicyRequest:
    """GetTrafficPolicyRequest."""
    return lifecycle_pb2.GetTrafficPolicyRequest(name=traffic_policy_name(model))


def set_traffic_policy_request(
    model: str, routes: TrafficRoutes, *, comment: str = ""
) -> lifecycle_pb2.SetTrafficPolicyRequest:
    """SetTrafficPolicyRequest; no routes removes the policy."""
    built: list[lifecycle_pb2.TrafficRoute] = []
    if isinstance(routes, Mapping):
        built = [traffic_route(model, target, weight) for target, weight in routes.items()]
    else:
        for route in routes:
            if isinstance(route, lifecycle_pb2.TrafficRoute):
                copy = lifecycle_pb2.TrafficRoute()
                copy.CopyFrom(route)
                built.append(copy)
            else:
                target, weight = route
                built.append(traffic_route(model, target, weight))
    policy = lifecycle_pb2.TrafficPolicy(name=traffic_policy_name(model), routes=built)
    return lifecycle_pb2.SetTrafficPolicyRequest(traffic_policy=policy, comment=comment)


def resolve_alias_request(
    model: str, alias: str, *, as_of: datetime | timestamp_pb2.Timestamp | None = None
) -> lifecycle_pb2.ResolveAliasRequest:
    """ResolveAliasRequest, for now or (with `as_of`) for a past instant."""
    request = lifecycle_pb2.ResolveAliasRequest(name=alias_name(model, alias))
    if as_of is not None:
        request.as_of.CopyFrom(to_timestamp(as_of))
    return request


def batch_resolve_aliases_request(aliases: Iterable[AliasRef]) -> lifecycle_pb2.BatchResolveAliasesRequest:
    """BatchResolveAliasesRequest. `(model, alias)` pairs and `m@a` shorthands are normalised (a malformed
    one raises ValueError); full names are sent as given, so the server reports bad ones per item."""
    names: list[str] = []
    for ref in aliases:
        if isinstance(ref, tuple):
            names.append(alias_name(*ref))
        elif _ALIASES not in ref and "@" in ref:
            model, alias = parse_alias_name(ref)
            names.append(alias_name(model, alias))
        else:
            names.append(ref)
    return lifecycle_pb2.BatchResolveAliasesRequest(names=names)


def resolve_route_request(model: str, routing_key: str) -> lifecycle_pb2.ResolveRouteRequest:
    """ResolveRouteRequest."""
    return lifecycle_pb2.ResolveRouteRequest(model=model_name(model), routing_key=routing_key)


def watch_aliases_request(
    models: str | Iterable[str] | None = None, since_revision: int = 0
) -> lifecycle_pb2.WatchAliasesRequest:
    """WatchAliasesRequest for some models (None or empty: every model), resuming after `since_revision`."""
    if since_revision < 0:
        raise ValueError(f"since_revision must not be negative, got {since_revision}")
    selected = [models] if isinstance(models, str) else list(models or ())
    return lifecycle_pb2.WatchAliasesRequest(
        models=[model_name(m) for m in selected], since_revision=since_revision
    )
