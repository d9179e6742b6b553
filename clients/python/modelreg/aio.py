"""The asyncio modelreg client: the same methods as :class:`modelreg.Registry`, as coroutines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
import grpc.aio

from modelreg import _core
from modelreg._core import ChannelOption, ClientConfig
from modelreg.errors import from_rpc_error
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc

if TYPE_CHECKING:
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub

__all__ = ["AsyncRegistry"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AsyncRegistry:
    """Asyncio client of the model registry, built on `grpc.aio`.

    ```python
    async with AsyncRegistry() as registry:
        version = await registry.create_model_version("fraud", run_id="run-42")
        async for v in registry.list_model_versions("fraud"):
            ...
    ```

    Configuration, retries and errors are exactly those of :class:`modelreg.Registry`. Create and use an
    instance inside one running event loop.
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
        """Open a channel (connection is lazy); the arguments are those of :class:`modelreg.Registry`."""
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
            self._channel = grpc.aio.insecure_channel(self.config.address, options=channel_options)
        else:
            self._channel = grpc.aio.secure_channel(self.config.address, credentials, options=channel_options)
        self._stub: ModelRegistryServiceAsyncStub = service_pb2_grpc.ModelRegistryServiceStub(self._channel)

    @property
    def address(self) -> str:
        """The `host:port` this client talks to."""
        return self.config.address

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncRegistry(address={self.config.address!r})"

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        try:
            return await method(request, timeout=self.config.timeout, metadata=self.config.call_metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err

    # --- models ----------------------------------------------------------------------------------------

    async def create_model(
        self,
        model_id: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        owner_team: str = "",
    ) -> model_pb2.Model:
        """Create the model `models/{model_id}` and return it (see :meth:`modelreg.Registry.create_model`)."""
        request = _core.create_model_request(
            model_id, description=description, labels=labels, owner_team=owner_team
        )
        return await self._call(self._stub.CreateModel, request)

    async def get_model(self, name: str) -> model_pb2.Model:
        """Return the model with this id or name; raises NotFound."""
        return await self._call(self._stub.GetModel, _core.get_model_request(name))

    def list_models(
        self, *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> AsyncIterator[model_pb2.Model]:
        """Iterate (`async for`) over the models matching `filter`, fetching pages as needed."""
        request = _core.list_models_request(filter=filter, order_by=order_by, page_size=page_size)
        return self._iter_models(request)

    async def _iter_models(self, request: service_pb2.ListModelsRequest) -> AsyncIterator[model_pb2.Model]:
        while True:
            response = await self._call(self._stub.ListModels, request)
            for model in response.models:
                yield model
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    async def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        owner_team: str | None = None,
        etag: str = "",
    ) -> model_pb2.Model:
        """Update the fields that are not None; a stale `etag` raises Conflict."""
        request = _core.update_model_request(
            name, description=description, labels=labels, owner_team=owner_team, etag=etag
        )
        return await self._call(self._stub.UpdateModel, request)

    async def delete_model(self, name: str, *, force: bool = False, etag: str = "") -> None:
        """Delete a model; raises FailedPrecondition while it has versions unless `force` is set."""
        await self._call(self._stub.DeleteModel, _core.delete_model_request(name, force=force, etag=etag))

    # --- versions --------------------------------------------------------------------------------------

    async def create_model_version(
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
        """Register the next version of `model` (see :meth:`modelreg.Registry.create_model_version`)."""
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
        return await self._call(self._stub.CreateModelVersion, request)

    async def get_model_version(self, name: str) -> model_pb2.ModelVersion:
        """Return a version by name (`models/fraud/versions/3` or `fraud/3`); raises NotFound."""
        return await self._call(self._stub.GetModelVersion, _core.get_model_version_request(name))

    def list_model_versions(
        self, model: str = "-", *, filter: str = "", order_by: str = "", page_size: int = 0
    ) -> AsyncIterator[model_pb2.ModelVersion]:
        """Iterate (`async for`) over the versions of `model` (`"-"`: every model), page by page."""
        request = _core.list_model_versions_request(
            model, filter=filter, order_by=order_by, page_size=page_size
        )
        return self._iter_versions(request)

    async def _iter_versions(
        self, request: service_pb2.ListModelVersionsRequest
    ) -> AsyncIterator[model_pb2.ModelVersion]:
        while True:
            response = await self._call(self._stub.ListModelVersions, request)
            for version in response.model_versions:
                yield version
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    async def update_model_version(
        self,
        name: str,
        *,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        etag: str = "",
    ) -> model_pb2.ModelVersion:
        """Update the description and/or labels of a version; a stale `etag` raises Conflict."""
        request = _core.update_model_version_request(name, description=description, labels=labels, etag=etag)
        return await self._call(self._stub.UpdateModelVersion, request)
