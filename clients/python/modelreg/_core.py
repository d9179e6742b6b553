"""The part of the SDK that the sync and async clients share: configuration, resource names, request
building and channel setup. Nothing here touches the network, so `Registry` and `AsyncRegistry` differ
only in how they send the requests built here and cannot drift apart.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import Message

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

# Methods that are safe to send twice. CreateModelVersion qualifies only because every request carries a
# request_id, which the server uses to return the version it created the first time.
RETRIED_METHODS = ("GetModel", "ListModels", "GetModelVersion", "ListModelVersions", "CreateModelVersion")
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
    return {
        "methodConfig": [
            {
                "name": [{"service": SERVICE_NAME, "method": method} for method in RETRIED_METHODS],
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


# --- request builders --------------------------------------------------------------------------------

_M = TypeVar("_M", bound=Message)
_ListRequest = TypeVar("_ListRequest", service_pb2.ListModelsRequest, service_pb2.ListModelVersionsRequest)


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
