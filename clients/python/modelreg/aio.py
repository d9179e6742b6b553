"""The asyncio modelreg client: the same methods as :class:`modelreg.Registry`, as coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from modelreg import _core
from modelreg._core import (
    AliasRef,
    ChannelOption,
    ClientConfig,
    ExpectedLike,
    StageLike,
    TrafficRoutes,
    VersionLike,
)
from modelreg.errors import Cancelled, from_rpc_error
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import lifecycle_service_pb2_grpc as lifecycle_pb2_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc

if TYPE_CHECKING:
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub, ServingServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub

__all__ = ["AsyncRegistry", "AsyncWatchStream"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class AsyncWatchStream(AsyncIterator[lifecycle_pb2.WatchAliasesResponse]):
    """The messages of one WatchAliases stream (`async for`), as returned by
    :meth:`AsyncRegistry.watch_aliases`; errors and :meth:`cancel` behave as in
    :class:`modelreg.client.WatchStream`."""

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[lifecycle_pb2.WatchAliasesRequest, lifecycle_pb2.WatchAliasesResponse],
    ) -> None:
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> lifecycle_pb2.WatchAliasesResponse:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            # grpc.aio reports a locally cancelled call as CancelledError; only a cancellation of the
            # reading task itself must propagate as such.
            task = asyncio.current_task()
            if not self._cancelled or (task is not None and task.cancelling()):
                raise
            raise Cancelled("watch stream cancelled", code=grpc.StatusCode.CANCELLED) from None
        if not isinstance(message, lifecycle_pb2.WatchAliasesResponse):  # grpc.aio.EOF
            raise StopAsyncIteration
        return message

    def cancel(self) -> None:
        """End the stream; a pending read raises Cancelled."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


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
        self._lifecycle: LifecycleServiceAsyncStub = lifecycle_pb2_grpc.LifecycleServiceStub(self._channel)
        self._serving: ServingServiceAsyncStub = lifecycle_pb2_grpc.ServingServiceStub(self._channel)

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

    # --- stages ----------------------------------------------------------------------------------------

    async def transition_stage(
        self, version: str, stage: StageLike, *, archive_existing: bool = False, comment: str = ""
    ) -> model_pb2.ModelVersion:
        """Move a version to another stage (see :meth:`modelreg.Registry.transition_stage`)."""
        request = _core.transition_stage_request(
            version, stage, archive_existing=archive_existing, comment=comment
        )
        return await self._call(self._lifecycle.TransitionModelVersionStage, request)

    def list_stage_transitions(
        self, model_or_version: str, *, page_size: int = 0
    ) -> AsyncIterator[lifecycle_pb2.StageTransition]:
        """Iterate (`async for`) over the stage transitions of a model or one version, newest first."""
        request = _core.list_stage_transitions_request(model_or_version, page_size=page_size)
        return self._iter_transitions(request)

    async def _iter_transitions(
        self, request: lifecycle_pb2.ListStageTransitionsRequest
    ) -> AsyncIterator[lifecycle_pb2.StageTransition]:
        while True:
            response = await self._call(self._lifecycle.ListStageTransitions, request)
            for transition in response.stage_transitions:
                yield transition
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    # --- aliases ---------------------------------------------------------------------------------------

    async def get_alias(self, model: str, alias: str) -> lifecycle_pb2.Alias:
        """Return the alias `models/{model}/aliases/{alias}`; raises NotFound."""
        return await self._call(self._lifecycle.GetAlias, _core.get_alias_request(model, alias))

    async def list_aliases(self, model: str) -> list[lifecycle_pb2.Alias]:
        """Return every alias of `model`, by name."""
        response = await self._call(self._lifecycle.ListAliases, _core.list_aliases_request(model))
        return list(response.aliases)

    async def set_alias(
        self,
        model: str,
        alias: str,
        version: VersionLike,
        *,
        expected: ExpectedLike = None,
        comment: str = "",
    ) -> lifecycle_pb2.Alias:
        """Create or move an alias (see :meth:`modelreg.Registry.set_alias`); a failed `expected` raises
        Conflict."""
        request = _core.set_alias_request(model, alias, version, expected=expected, comment=comment)
        return await self._call(self._lifecycle.SetAlias, request)

    async def delete_alias(self, model: str, alias: str, *, expected: ExpectedLike = None) -> None:
        """Delete an alias; `expected` makes it a compare-and-swap."""
        await self._call(
            self._lifecycle.DeleteAlias, _core.delete_alias_request(model, alias, expected=expected)
        )

    async def update_aliases(
        self,
        model: str,
        changes: Mapping[str, VersionLike | None],
        *,
        expected: Mapping[str, ExpectedLike] | None = None,
        comment: str = "",
    ) -> list[lifecycle_pb2.Alias]:
        """Set and delete several aliases atomically (see :meth:`modelreg.Registry.update_aliases`)."""
        request = _core.update_aliases_request(model, changes, expected=expected, comment=comment)
        return list((await self._call(self._lifecycle.UpdateAliases, request)).aliases)

    def list_alias_history(
        self, model: str, alias: str | None = None, *, page_size: int = 0
    ) -> AsyncIterator[lifecycle_pb2.AliasHistoryEntry]:
        """Iterate (`async for`) over the moves of `alias` (None: every alias of `model`), newest first."""
        request = _core.list_alias_history_request(model, alias, page_size=page_size)
        return self._iter_alias_history(request)

    async def _iter_alias_history(
        self, request: lifecycle_pb2.ListAliasHistoryRequest
    ) -> AsyncIterator[lifecycle_pb2.AliasHistoryEntry]:
        while True:
            response = await self._call(self._lifecycle.ListAliasHistory, request)
            for entry in response.entries:
                yield entry
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    async def rollback_alias(self, model: str, alias: str, *, comment: str = "") -> lifecycle_pb2.Alias:
        """Point `alias` back at the version it pointed at before its last move."""
        request = _core.rollback_alias_request(model, alias, comment=comment)
        return await self._call(self._lifecycle.RollbackAlias, request)

    # --- traffic ---------------------------------------------------------------------------------------

    async def get_traffic_policy(self, model: str) -> lifecycle_pb2.TrafficPolicy:
        """Return the traffic policy of `model` (no routes and revision 0 when none is set)."""
        return await self._call(self._lifecycle.GetTrafficPolicy, _core.get_traffic_policy_request(model))

    async def set_traffic_policy(
        self, model: str, routes: TrafficRoutes, *, comment: str = ""
    ) -> lifecycle_pb2.TrafficPolicy:
        """Replace the traffic policy (see :meth:`modelreg.Registry.set_traffic_policy`)."""
        request = _core.set_traffic_policy_request(model, routes, comment=comment)
        return await self._call(self._lifecycle.SetTrafficPolicy, request)

    # --- serving ---------------------------------------------------------------------------------------

    async def resolve_alias(
        self, model: str, alias: str, *, as_of: datetime | timestamp_pb2.Timestamp | None = None
    ) -> lifecycle_pb2.ResolveAliasResponse:
        """Return the version `alias` points at, now or at `as_of`; raises NotFound."""
        request = _core.resolve_alias_request(model, alias, as_of=as_of)
        return await self._call(self._serving.ResolveAlias, request)

    async def batch_resolve_aliases(self, aliases: Iterable[AliasRef]) -> list[lifecycle_pb2.ResolveResult]:
        """Resolve up to 1000 aliases in one call (see :meth:`modelreg.Registry.batch_resolve_aliases`)."""
        request = _core.batch_resolve_aliases_request(aliases)
        return list((await self._call(self._serving.BatchResolveAliases, request)).results)

    async def resolve_route(self, model: str, routing_key: str) -> lifecycle_pb2.ResolveRouteResponse:
        """Return the version serving `routing_key` under the model's traffic policy, and the route."""
        request = _core.resolve_route_request(model, routing_key)
        return await self._call(self._serving.ResolveRoute, request)

    def watch_aliases(
        self, models: str | Iterable[str] | None = None, since_revision: int = 0
    ) -> AsyncWatchStream:
        """Stream a snapshot, then every change (`async for`); see :meth:`modelreg.Registry.watch_aliases`."""
        request = _core.watch_aliases_request(models, since_revision)
        return AsyncWatchStream(self._serving.WatchAliases(request, metadata=self.config.call_metadata))
