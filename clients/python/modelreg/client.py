"""The synchronous modelreg client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from modelreg import _core
from modelreg._core import ChannelOption, ClientConfig
from modelreg.errors import from_rpc_error
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc

__all__ = ["Registry"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class Registry:
    """Blocking client of the model registry.

    ```python
    with Registry("registry.internal:50051") as registry:
        model = registry.create_model("fraud", owner_team="risk")
        version = registry.create_model_version(model.name, run_id="run-42", metrics={"auc": 0.93})
    ```

    The address defaults to `$MODELREG_ADDRESS` or `127.0.0.1:50051`; the bearer token to `$MODELREG_TOKEN`
    or the file `.modelreg/admin.token`. Reads and version registration are retried by gRPC on
    UNAVAILABLE. Every failed call raises a :class:`modelreg.errors.ModelregError` subclass. One instance
    may be shared between threads.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        timeout: float | None = _core.DEFAULT_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | None = None,
        options: tuple[ChannelOption, ...] = (),
        config: ClientConfig | None = None,
    ) -> None:
        """Open a channel (connection is lazy). `config`, when given, replaces all other arguments.

        Args:
            address: `host:port` of the registry.
            token: Bearer token; `""` sends none even if the environment or token file has one.
            timeout: Deadline of each call in seconds (retries included); None for no deadline.
            tls: Use TLS with the system's root certificates.
            root_certificates: PEM root certificates; implies `tls=True`.
            options: Extra gRPC channel arguments.
            config: A fully resolved configuration.
        """
        self.config = config or ClientConfig.resolve(
            address,
            token=token,
            timeout=timeout,
            tls=tls,
            root_certificates=root_certificates,
            options=options,
        )
        credentials = self.config.channel_credentials()
        channel_options = self.config.channel_options()
        if credentials is None:
            self._channel = grpc.insecure_channel(self.config.address, options=channel_options)
        else:
            self._channel = grpc.secure_channel(self.config.address, credentials, options=channel_options)
        self._stub = service_pb2_grpc.ModelRegistryServiceStub(self._channel)

    @property
    def address(self) -> str:
        """The `host:port` this client talks to."""
        return self.config.address

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry(address={self.config.address!r})"

    def _call(self, method: grpc.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        try:
            return method(request, timeout=self.config.timeout, metadata=self.config.call_metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    # --- models ----------------------------------------------------------------------------------------

    def create_model(
        self,
        model_id: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        owner_team: str = "",
    ) -> model_pb2.Model:
        """Create the model `models/{model_id}` and return it.

        Raises:
            AlreadyExists: A model with that id exists.
            InvalidArgument: The id, labels or description are invalid (see `field_violations`).
        """
        request = _core.create_model_request(
            model_id, description=description, labels=labels, owner_team=owner_team
        )
        return self._call(self._stub.CreateModel, request)

    def get_model(self, name: str) -> model_pb2.Model:
        """Return the model with this id (`fraud`) or name (`models/fraud`).

        Raises:
            NotFound: No such model.
        """
        return self._call(self._stub.GetModel, _core.get_model_request(name))

    def list_models(
        self, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[model_pb2.Model]:
        """Iterate over the models matching `filter` (AIP-160), fetching pages as needed.

        Args:
            filter: e.g. `labels.team = "fraud" AND latest_version > 0`.
            order_by: e.g. `create_time desc`; default `name`.
            page_size: Models per request; 0 lets the server choose (50).
        """
        request = _core.list_models_request(filter=filter, order_by=order_by, page_size=page_size)
        return self._iter_models(request)

    def _iter_models(self, request: service_pb2.ListModelsRequest) -> Iterator[model_pb2.Model]:
        while True:
            response = self._call(self._stub.ListModels, request)
            yield from response.models
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner_team: str | None = None,
        etag: str = "",
    ) -> model_pb2.Model:
        """Update the given fields of a model (None leaves a field alone; `labels={}` clears the labels).

        Pass the `etag` of the model you read to make the update conditional.

        Raises:
            NotFound: No such model.
            Conflict: The model changed since `etag` was read.
        """
        request = _core.update_model_request(
            name, description=description, labels=labels, owner_team=owner_team, etag=etag
        )
        return self._call(self._stub.UpdateModel, request)

    def delete_model(self, name: str, *, force: bool = False, etag: str = "") -> None:
        """Delete a model. Refused while it has versions unless `force` is set.

        Raises:
            NotFound: No such model.
            FailedPrecondition: The model still has versions and `force` is False.
            Conflict: The model changed since `etag` was read.
        """
        self._call(self._stub.DeleteModel, _core.delete_model_request(name, force=force, etag=etag))

    # --- versions --------------------------------------------------------------------------------------

    def create_model_version(
        self,
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
    ) -> model_pb2.ModelVersion:
        """Register the next version of `model` and return it with its server-assigned number.

        `lineage`, `input_schema`, `output_schema` and `dependencies` take the message or a dict in its
        JSON form, e.g. `{"python_version": "3.11", "packages": [{"name": "numpy", "version": "2.1"}]}`.
        A `request_id` is generated when not given, so a retry after a lost response returns the
        version created the first time rather than a second one.

        Raises:
            NotFound: No such model.
            InvalidArgument: A field is invalid (see `field_violations`).
        """
        request = _core.create_model_version_request(
            model,
            run_id=run_id,
            description=description,
            labels=labels,
            metrics=metrics,
            lineage=lineage,
            input_schema=input_schema,
            output_schema=output_schema,
            dependencies=dependencies,
            artifact_digest=artifact_digest,
            request_id=request_id,
        )
        return self._call(self._stub.CreateModelVersion, request)

    def get_model_version(self, name: str) -> model_pb2.ModelVersion:
        """Return a version by name (`models/fraud/versions/3`, or the shorthand `fraud/3`).

        Raises:
            NotFound: No such version.
        """
        return self._call(self._stub.GetModelVersion, _core.get_model_version_request(name))

    def list_model_versions(
        self, model: str = "-", *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> Iterator[model_pb2.ModelVersion]:
        """Iterate over the versions of `model` (`"-"`: every model), fetching pages as needed.

        Args:
            model: Model id or name, or `"-"` for all models.
            filter: e.g. `metrics.auc >= 0.9 AND stage = STAGE_STAGING`.
            order_by: e.g. `version`; default `create_time desc`.
            page_size: Versions per request; 0 lets the server choose (50).
        """
        request = _core.list_model_versions_request(
            model, filter=filter, order_by=order_by, page_size=page_size
        )
        return self._iter_versions(request)

    def _iter_versions(
        self, request: service_pb2.ListModelVersionsRequest
    ) -> Iterator[model_pb2.ModelVersion]:
        while True:
            response = self._call(self._stub.ListModelVersions, request)
            yield from response.model_versions
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    def update_model_version(
        self,
        name: str,
        *,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        etag: str = "",
    ) -> model_pb2.ModelVersion:
        """Update the description and/or labels of a version (its only mutable fields).

        Raises:
            NotFound: No such version.
            Conflict: The version changed since `etag` was read.
        """
        request = _core.update_model_version_request(name, description=description, labels=labels, etag=etag)
        return self._call(self._stub.UpdateModelVersion, request)
