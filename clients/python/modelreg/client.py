"""The synchronous modelreg client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
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
from modelreg.errors import from_rpc_error
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import lifecycle_service_pb2_grpc as lifecycle_pb2_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc

__all__ = ["Registry", "WatchStream"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class WatchStream(Iterator[lifecycle_pb2.WatchAliasesResponse]):
    """The messages of one WatchAliases stream, as returned by :meth:`Registry.watch_aliases`.

    Iterating blocks until the next message; a broken stream raises a
    :class:`modelreg.errors.ModelregError` subclass (Unavailable, ResourceExhausted for a watcher that
    fell too far behind, Cancelled after :meth:`cancel`). Use it as a context manager, or call
    :meth:`cancel` (from any thread) to end it.
    """

    def __init__(self, call: grpc.CallIterator[lifecycle_pb2.WatchAliasesResponse]) -> None:
        # The call object is also a grpc.Future, whose cancel() the stubs type (RpcContext's they do not).
        self._call = cast("grpc.Future[lifecycle_pb2.WatchAliasesResponse]", call)
        self._messages = iter(call)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> lifecycle_pb2.WatchAliasesResponse:
        try:
            return next(self._messages)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def cancel(self) -> None:
        """End the stream; a thread blocked in `next()` gets Cancelled."""
        self._call.cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Registry:
    """Blocking client of the model registry.

    ```python
    with Registry("registry.internal:50051") as registry:
        model = registry.create_model("fraud", owner_team="risk")
        version = registry.create_model_version(model.name, run_id="run-42", metrics={"auc": 0.93})
    ```

    The address defaults to `$MODELREG_ADDRESS` or `127.0.0.1:50051`; the bearer token to `$MODELREG_TOKEN`
    or the file `.modelreg/admin.token`. Reads, alias resolution and version registration are retried by
    gRPC on UNAVAILABLE. Every failed call raises a :class:`modelreg.errors.ModelregError` subclass. One
    instance may be shared between threads.
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
        self._lifecycle = lifecycle_pb2_grpc.LifecycleServiceStub(self._channel)
        self._serving = lifecycle_pb2_grpc.ServingServiceStub(self._channel)

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

    # --- stages ----------------------------------------------------------------------------------------

    def transition_stage(
        self, version: str, stage: StageLike, *, archive_existing: bool = False, comment: str = ""
    ) -> model_pb2.ModelVersion:
        """Move a version to another stage and return it.

        Args:
            version: `models/fraud/versions/3`, `fraud/3`, or through an alias: `models/fraud@champion`.
            stage: A `modelreg.Stage` value or its name: `"staging"`, `"production"`, `"archived"`, `"none"`.
            archive_existing: When entering PRODUCTION, archive the current PRODUCTION version in the same
                transaction instead of failing.
            comment: Why, kept in the stage history.

        Raises:
            NotFound: No such version.
            FailedPrecondition: The move is not allowed (`STAGE_TRANSITION_NOT_ALLOWED`), another version is
                in PRODUCTION and `archive_existing` is False (`PRODUCTION_OCCUPIED`), the version still
                holds aliases or traffic (`VERSION_IN_USE`), or the model's promotion policy forbids it.
        """
        request = _core.transition_stage_request(
            version, stage, archive_existing=archive_existing, comment=comment
        )
        return self._call(self._lifecycle.TransitionModelVersionStage, request)

    def list_stage_transitions(
        self, model_or_version: str, *, page_size: int = 0
    ) -> Iterator[lifecycle_pb2.StageTransition]:
        """Iterate over the stage transitions of a model (`fraud`) or of one version (`fraud/3`), newest
        first, fetching pages as needed.

        Raises:
            NotFound: No such model or version.
        """
        request = _core.list_stage_transitions_request(model_or_version, page_size=page_size)
        return self._iter_transitions(request)

    def _iter_transitions(
        self, request: lifecycle_pb2.ListStageTransitionsRequest
    ) -> Iterator[lifecycle_pb2.StageTransition]:
        while True:
            response = self._call(self._lifecycle.ListStageTransitions, request)
            yield from response.stage_transitions
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    # --- aliases ---------------------------------------------------------------------------------------

    def get_alias(self, model: str, alias: str) -> lifecycle_pb2.Alias:
        """Return the alias `models/{model}/aliases/{alias}`.

        Raises:
            NotFound: No such alias (or model).
        """
        return self._call(self._lifecycle.GetAlias, _core.get_alias_request(model, alias))

    def list_aliases(self, model: str) -> list[lifecycle_pb2.Alias]:
        """Return every alias of `model`, by name.

        Raises:
            NotFound: No such model.
        """
        return list(self._call(self._lifecycle.ListAliases, _core.list_aliases_request(model)).aliases)

    def set_alias(
        self,
        model: str,
        alias: str,
        version: VersionLike,
        *,
        expected: ExpectedLike = None,
        comment: str = "",
    ) -> lifecycle_pb2.Alias:
        """Create the alias or move it to `version`, and return it.

        Args:
            model: Model id or name.
            alias: Alias id, `[a-z][a-z0-9-]*`.
            version: `3`, `"models/fraud/versions/3"`, `"fraud/3"`, a `ModelVersion`, or another alias of
                the model as `"@canary"`.
            expected: Compare-and-swap: the version the alias must point at now, or `modelreg.ABSENT`
                (`"-"`) if it must not exist yet. None skips the check.
            comment: Why, kept in the alias history.

        Raises:
            Conflict: `expected` does not hold (`ALIAS_MOVED`).
            NotFound: No such model or version.
            FailedPrecondition: The version is archived, or the promotion policy forbids alias changes.
        """
        request = _core.set_alias_request(model, alias, version, expected=expected, comment=comment)
        return self._call(self._lifecycle.SetAlias, request)

    def delete_alias(self, model: str, alias: str, *, expected: ExpectedLike = None) -> None:
        """Delete an alias (the version is untouched); `expected` makes it a compare-and-swap.

        Raises:
            NotFound: No such alias.
            Conflict: `expected` does not hold.
            FailedPrecondition: The traffic policy routes to the alias (`ALIAS_IN_USE`).
        """
        self._call(self._lifecycle.DeleteAlias, _core.delete_alias_request(model, alias, expected=expected))

    def update_aliases(
        self,
        model: str,
        changes: Mapping[str, VersionLike | None],
        *,
        expected: Mapping[str, ExpectedLike] | None = None,
        comment: str = "",
    ) -> list[lifecycle_pb2.Alias]:
        """Set and delete several aliases of `model` atomically; return the model's aliases afterwards.

        ```python
        registry.update_aliases("fraud", {"champion": "@canary", "canary": None}, expected={"canary": 4})
        ```

        Args:
            changes: Alias → new target as in :meth:`set_alias`, or None to delete it; applied in order.
                Targets given as `"@alias"` resolve before any change is applied.
            expected: Alias (of `changes`) → compare-and-swap expectation as in :meth:`set_alias`.
            comment: Why, kept in the alias history.

        Raises:
            Conflict: An expectation does not hold; nothing was changed.
        """
        request = _core.update_aliases_request(model, changes, expected=expected, comment=comment)
        return list(self._call(self._lifecycle.UpdateAliases, request).aliases)

    def list_alias_history(
        self, model: str, alias: str | None = None, *, page_size: int = 0
    ) -> Iterator[lifecycle_pb2.AliasHistoryEntry]:
        """Iterate over every move of `alias` (None: of every alias of `model`), newest first.

        Raises:
            NotFound: No such model.
        """
        request = _core.list_alias_history_request(model, alias, page_size=page_size)
        return self._iter_alias_history(request)

    def _iter_alias_history(
        self, request: lifecycle_pb2.ListAliasHistoryRequest
    ) -> Iterator[lifecycle_pb2.AliasHistoryEntry]:
        while True:
            response = self._call(self._lifecycle.ListAliasHistory, request)
            yield from response.entries
            if not response.next_page_token:
                return
            request = _core.next_page_request(request, response.next_page_token)

    def rollback_alias(self, model: str, alias: str, *, comment: str = "") -> lifecycle_pb2.Alias:
        """Point `alias` back at the version it pointed at before its last move, and return it.

        Raises:
            NotFound: No such alias.
            FailedPrecondition: There is no earlier version to go back to, or it is archived.
        """
        request = _core.rollback_alias_request(model, alias, comment=comment)
        return self._call(self._lifecycle.RollbackAlias, request)

    # --- traffic ---------------------------------------------------------------------------------------

    def get_traffic_policy(self, model: str) -> lifecycle_pb2.TrafficPolicy:
        """Return the traffic policy of `model` (no routes and revision 0 when none is set).

        Raises:
            NotFound: No such model.
        """
        return self._call(self._lifecycle.GetTrafficPolicy, _core.get_traffic_policy_request(model))

    def set_traffic_policy(
        self, model: str, routes: TrafficRoutes, *, comment: str = ""
    ) -> lifecycle_pb2.TrafficPolicy:
        """Replace the traffic policy of `model` and return it; no routes removes the policy.

        Args:
            routes: `{"champion": 90, "canary": 10}` or `[("champion", 90), (4, 10)]`: a target is an alias
                of the model or a version (number or name); weights are percentages summing to 100.
            comment: Why, kept in the change feed.

        Raises:
            InvalidArgument: Weights do not sum to 100, or a target appears twice.
            FailedPrecondition: A target is archived or not an alias of the model, or the promotion
                policy forbids traffic changes.
        """
        request = _core.set_traffic_policy_request(model, routes, comment=comment)
        return self._call(self._lifecycle.SetTrafficPolicy, request)

    # --- serving ---------------------------------------------------------------------------------------

    def resolve_alias(
        self, model: str, alias: str, *, as_of: datetime | timestamp_pb2.Timestamp | None = None
    ) -> lifecycle_pb2.ResolveAliasResponse:
        """Return the version `alias` points at: now, or at `as_of` (a timezone-aware datetime).

        Raises:
            NotFound: No such alias (at `as_of`: it did not exist then).
        """
        request = _core.resolve_alias_request(model, alias, as_of=as_of)
        return self._call(self._serving.ResolveAlias, request)

    def batch_resolve_aliases(self, aliases: Iterable[AliasRef]) -> list[lifecycle_pb2.ResolveResult]:
        """Resolve up to 1000 aliases in one call; one result per alias, in order.

        Each alias is `"models/m/aliases/a"`, `"m@a"` or `("m", "a")`. A result has `resolution` set, or
        `error_reason` (e.g. `ALIAS_NOT_FOUND`) when that alias could not be resolved.
        """
        request = _core.batch_resolve_aliases_request(aliases)
        return list(self._call(self._serving.BatchResolveAliases, request).results)

    def resolve_route(self, model: str, routing_key: str) -> lifecycle_pb2.ResolveRouteResponse:
        """Return the version that serves `routing_key` under the model's traffic policy, and the route.

        Raises:
            FailedPrecondition: The model has no traffic policy (`NO_TRAFFIC_POLICY`).
        """
        request = _core.resolve_route_request(model, routing_key)
        return self._call(self._serving.ResolveRoute, request)

    def watch_aliases(
        self, models: str | Iterable[str] | None = None, since_revision: int = 0
    ) -> WatchStream:
        """Stream the alias, stage and traffic state of `models` (None: every model), then every change.

        With `since_revision=0` the stream starts with a snapshot (`reset` on its first message, `snapshot`
        on all, a `heartbeat` after the last); with the revision of the last message received it resumes
        right after it. The stream has no deadline; see :class:`modelreg.resolver.AliasResolver` for a
        cache that reconnects by itself.
        """
        request = _core.watch_aliases_request(models, since_revision)
        try:
            call = self._serving.WatchAliases(request, metadata=self.config.call_metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        return WatchStream(call)
