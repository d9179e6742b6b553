"""The synchronous modelreg client."""

from __future__ import annotations

import contextvars
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
from google.protobuf import timestamp_pb2

from modelreg import _core, _tracing, packages, presigned
from modelreg._core import (
    AliasRef,
    ChannelOption,
    ClientConfig,
    ExpectedLike,
    StageLike,
    TrafficRoutes,
    VersionLike,
)
from modelreg.errors import Cancelled, DataLoss, from_rpc_error
from modelreg.packages import BlobCache, BlobFetch, BlobUpload, Manifest, ProgressCallback
from modelreg.v1 import artifact_service_pb2 as artifact_pb2
from modelreg.v1 import artifact_service_pb2_grpc as artifact_pb2_grpc
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import lifecycle_service_pb2_grpc as lifecycle_pb2_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc
from modelreg.v1 import signing_service_pb2 as signing_pb2
from modelreg.v1 import signing_service_pb2_grpc as signing_pb2_grpc

__all__ = ["Registry", "WatchStream"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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
            channel = grpc.insecure_channel(self.config.address, options=channel_options)
        else:
            channel = grpc.secure_channel(self.config.address, credentials, options=channel_options)
        self._channel = _tracing.intercept_channel(channel, self.config.address)
        self._stub = service_pb2_grpc.ModelRegistryServiceStub(self._channel)
        self._lifecycle = lifecycle_pb2_grpc.LifecycleServiceStub(self._channel)
        self._serving = lifecycle_pb2_grpc.ServingServiceStub(self._channel)
        self._artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        self._signing = signing_pb2_grpc.SigningServiceStub(self._channel)

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

    # --- model packages --------------------------------------------------------------------------------

    def upload_model(
        self,
        model: str,
        path: str | os.PathLike[str],
        *,
        format: str = packages.DEFAULT_FORMAT,
        progress: ProgressCallback | None = None,
        parallelism: int = 4,
        use_presigned_urls: bool | None = None,
        run_id: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        metrics: Mapping[str, float] | None = None,
        lineage: model_pb2.Lineage | Mapping[str, Any] | None = None,
        input_schema: model_pb2.Schema | Mapping[str, Any] | None = None,
        output_schema: model_pb2.Schema | Mapping[str, Any] | None = None,
        dependencies: model_pb2.Dependencies | Mapping[str, Any] | None = None,
        request_id: str | None = None,
    ) -> model_pb2.ModelVersion:
        """Publish the file or directory at `path` as the next version of `model`, and return the version.

        ```python
        version = registry.upload_model("fraud", "out/model", format="onnx", metrics={"auc": 0.93})
        ```

        The files are hashed (sha256) in `parallelism` threads and listed in a manifest (relative POSIX
        paths, digests, sizes, permission bits). Only the blobs the registry does not hold yet are sent,
        up to `parallelism` at a time in 1 MiB chunks; blobs over 64 MiB go through resumable sessions
        that continue where a broken stream stopped. Then the manifest is uploaded and the version
        registered with its digest as `artifact_digest`. Re-publishing unchanged files sends no file bytes.
        Files are streamed from disk, never read whole.

        Args:
            model: Model id or name; the model must exist.
            path: A file (the package holds just it) or a directory (every file below it).
            format: Model format: `onnx`, `pytorch`, `sklearn`, `custom`, ...
            progress: Called as `progress(sent_bytes, total_bytes)` while blobs are sent, from worker
                threads (never two calls at once); `total_bytes` counts only what must be sent.
            parallelism: Files hashed and blobs sent at the same time.
            use_presigned_urls: None (default): blobs from 16 MiB to 5 GiB are PUT straight to object
                storage over a URL the registry signs (CreateDirectUpload), which binds the blob's sha256;
                others, and all of them when the registry or object storage does not allow it, stream
                through the registry. True: direct only. False: through the registry only.
            run_id, description, labels, metrics, lineage, input_schema, output_schema, dependencies,
                request_id: Fields of the new version, as in :meth:`create_model_version`.

        Raises:
            ValueError: `path` holds no files, or names the registry would refuse.
            OSError: A file could not be read.
            NotFound: No such model.
            DataLoss: A file changed while it was being uploaded.
        """
        name = _core.model_name(model)
        packages.check_parallelism(parallelism)
        packages.check_format(format)
        files = packages.scan_package(path)
        self.get_model(name)  # fail before reading gigabytes when the model does not exist
        cancelled = threading.Event()
        hashed = self._in_parallel(lambda f: f.hashed(cancelled), files, parallelism, cancelled)
        manifest = packages.build_manifest(hashed, format)
        data = manifest.canonical_bytes()
        digest = packages.blob_digest(data)
        missing = self._find_missing([*(f.digest for f in hashed), digest])
        uploads = packages.plan_uploads(hashed, missing)
        tracker = packages.Progress(progress, sum(u.size for u in uploads))
        route = presigned.UploadRoute(use_presigned_urls)
        tracker.report()
        self._in_parallel(
            lambda u: self._upload_blob(u, tracker, cancelled, route), uploads, parallelism, cancelled
        )
        if digest in missing:
            self._upload_blob(BlobUpload(digest, len(data), data), packages.Progress(None), cancelled)
        return self.create_model_version(
            name,
            run_id=run_id,
            description=description,
            labels=labels,
            metrics=metrics,
            lineage=lineage,
            input_schema=input_schema,
            output_schema=output_schema,
            dependencies=dependencies,
            artifact_digest=digest,
            request_id=request_id,
        )

    def get_manifest(
        self,
        ref: str | model_pb2.ModelVersion,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
    ) -> Manifest:
        """Return the manifest of a package: its files, their digests, sizes and modes.

        Args:
            ref: As in :meth:`download_model`.
            cache_dir, use_cache: As in :meth:`download_model`.

        Raises:
            NotFound: No such version or blob.
            FailedPrecondition: The version has no artifact (`NO_ARTIFACT`).
            DataLoss: The manifest does not match its digest, or is invalid or unsafe.
        """
        cache = packages.open_cache(cache_dir, use_cache)
        return self._fetch_manifest(self._package_digest(packages.parse_package_ref(ref)), cache)

    def download_model(
        self,
        ref: str | model_pb2.ModelVersion,
        dest: str | os.PathLike[str],
        *,
        verify: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        progress: ProgressCallback | None = None,
        parallelism: int = 4,
        use_presigned_urls: bool | None = None,
        verify_signature: str | None = None,
    ) -> Path:
        """Download the package of a version into the directory `dest` and return `dest`.

        ```python
        registry.download_model("models/fraud@champion", "/srv/model")
        ```

        The manifest is checked against its digest and its paths are refused if they could escape `dest`
        or collide (even coming from the registry). Each file arrives in `<file>.partial`, is checked
        against its sha256 while streaming, then renamed into place with the manifest's permission bits.
        An interrupted download resumes: the bytes of a `.partial` file are re-hashed and only the rest
        is fetched. Blobs are kept in a local content-addressed cache, so pulling the same files again
        downloads nothing: a fresh download enters the cache as a hard link to the installed file (its
        bytes are written once), cached blobs are always copied out, and an entry whose file was edited
        since is re-hashed and dropped rather than used. Other files in `dest` are left alone.

        Args:
            ref: A version (`models/m/versions/3`, `m/3`), an alias (`models/m@champion`, `m@champion`),
                a manifest digest (`sha256:...`) or a `ModelVersion`.
            dest: Directory to write into; created if missing.
            verify: Check every file's sha256 (and the cache entries used). The manifest is always checked.
            cache_dir: Blob cache directory; default `$MODELREG_CACHE_DIR`, else `~/.cache/modelreg/blobs`.
            use_cache: False to neither read nor fill the cache.
            progress: Called as `progress(received_bytes, total_bytes)` from worker threads (never two
                calls at once); `total_bytes` counts only what comes over the network.
            parallelism: Blobs fetched at the same time.
            use_presigned_urls: None (default): blobs of 16 MiB and more come straight from object storage
                over presigned URLs (GetBlobDownloadUrl) in parallel 64 MiB ranges, smaller ones through
                the registry; if object storage cannot be reached from here, everything streams through
                the registry. True: presigned URLs only. False: through the registry only.
            verify_signature: A signing key id (`release-2025`, looked up in the registry and refused once
                revoked) or a PEM public key. After the download, a signature of the version by that key
                must verify, sign exactly the package's files, and match the files written under `dest`
                (which are hashed again). Needs `pip install 'modelreg[signing]'`; `ref` must name a
                version or an alias, not a bare digest.

        Raises:
            NotFound: No such version, alias, blob or signing key.
            FailedPrecondition: The version has no artifact (`NO_ARTIFACT`), no signature by the key
                (`SIGNATURE_MISSING`), or the key is revoked (`SIGNING_KEY_REVOKED`).
            DataLoss: Bytes that do not match their digest or size, an invalid or unsafe manifest, or a
                signature that does not verify (`SIGNATURE_INVALID`) or match (`SIGNATURE_MISMATCH`).
            OSError: `dest` or the files in it could not be written.
        """
        packages.check_parallelism(parallelism)
        cache = packages.open_cache(cache_dir, use_cache)
        signed: model_pb2.ModelVersion | None = None
        if verify_signature is not None:
            signed = self._signed_version(ref)
            ref = signed
        manifest = self._fetch_manifest(self._package_digest(packages.parse_package_ref(ref)), cache)
        root = Path(dest)
        root.mkdir(parents=True, exist_ok=True)
        fetches = packages.plan_download(manifest, root)
        tracker = packages.Progress(progress, sum(f.bytes_to_fetch(cache) for f in fetches))
        tracker.report()
        cancelled = threading.Event()

        route = presigned.Route(use_presigned_urls)

        def obtain(fetch: BlobFetch) -> None:
            self._obtain(root, fetch, cache, tracker, cancelled, verify=verify, route=route)

        self._in_parallel(obtain, fetches, parallelism, cancelled)
        if signed is not None and verify_signature is not None:
            self._check_signature(signed.name, root, manifest, verify_signature)
        return root

    def sign_model(
        self,
        version: str | model_pb2.ModelVersion,
        private_key: bytes | str | os.PathLike[str],
        key_id: str,
        *,
        path: str | os.PathLike[str] | None = None,
        password: str | bytes | None = None,
    ) -> signing_pb2.Signature:
        """Sign a version's package with an ECDSA private key and attach the signature as `key_id`.

        ```python
        registry.sign_model("fraud/3", Path("release.key").read_bytes(), "release-2025", path="./model")
        ```

        Args:
            version: `models/m/versions/3`, `m/3`, an alias (`m@champion`) or a `ModelVersion`.
            private_key: PEM bytes (or a str starting with `-----BEGIN`), or the path of a PEM file; see
                :func:`modelreg.signing.sign_package`.
            key_id: The registered signing key (`signingKeys/{key_id}`) the private key belongs to.
            path: The package directory that was uploaded; without it the package is downloaded (checked
                against its digests) into a temporary directory and signed there.
            password: The private key's password, when it is encrypted.

        Raises:
            NotFound: No such version or signing key.
            FailedPrecondition: The version has no artifact, the key is revoked, or the signed files are
                not the package's (`SIGNATURE_MISMATCH`: `path` holds other files).
            InvalidArgument: The signature does not verify with the registered key (`SIGNATURE_INVALID`:
                the private key is not the registered key's).
            ImportError: model-signing is not installed (`pip install 'modelreg[signing]'`).
        """
        from modelreg import signing

        if not isinstance(version, model_pb2.ModelVersion):
            version = self._call(self._stub.GetModelVersion, signing.version_request(version))
        packages.version_digest(version)
        if path is None:
            with tempfile.TemporaryDirectory(prefix="modelreg-sign-") as scratch:
                self.download_model(version, scratch)
                bundle = signing.sign_package(scratch, private_key, password=password)
        else:
            bundle = signing.sign_package(path, private_key, password=password)
        request = signing.attach_signature_request(version.name, key_id, bundle)
        return self._call(self._signing.AttachSignature, request)

    def _signed_version(self, ref: str | model_pb2.ModelVersion) -> model_pb2.ModelVersion:
        """The version a signature-checked download names (ValueError for a bare digest)."""
        from modelreg import signing

        name = signing.signed_version_reference(ref)
        if isinstance(ref, model_pb2.ModelVersion):
            return ref
        return self._call(self._stub.GetModelVersion, signing.version_request(name))

    def _check_signature(self, version: str, root: Path, manifest: Manifest, key: str) -> None:
        from modelreg import signing

        key_id = None if signing.is_public_key_pem(key) else key
        public_key = key
        if key_id is not None:
            found = self._call(self._signing.GetSigningKey, signing.signing_key_request(key_id))
            public_key = signing.trusted_public_key(found)
        signatures: list[signing_pb2.Signature] = []
        token = ""
        while True:
            page = self._call(self._signing.ListSignatures, signing.list_signatures_request(version, token))
            signatures.extend(page.signatures)
            token = page.next_page_token
            if not token:
                break
        files = [(f.path, f.digest) for f in manifest.files]
        signing.check_download(root, version, files, signatures, public_key, key_id)

    def _in_parallel(
        self,
        work: Callable[[_Item], _Result],
        items: Sequence[_Item],
        parallelism: int,
        cancelled: threading.Event,
    ) -> list[_Result]:
        """`work` on every item in up to `parallelism` threads; the first error stops the rest."""
        if len(items) <= 1 or parallelism == 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(parallelism, len(items)), thread_name_prefix="modelreg") as pool:
            # Each task runs in a copy of the caller's context, so its RPC spans join the caller's trace.
            futures: list[Future[_Result]] = [
                pool.submit(contextvars.copy_context().run, work, item) for item in items
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future.done() and future.exception() is not None:
                        future.result()
            except BaseException:
                cancelled.set()
                for future in futures:
                    future.cancel()
                raise
        return [future.result() for future in futures]

    def _find_missing(self, digests: Iterable[str]) -> set[str]:
        missing: set[str] = set()
        for request in packages.find_missing_requests(digests):
            missing.update(self._call(self._artifacts.FindMissingBlobs, request).missing_digests)
        return missing

    def _upload_status(self, blob: BlobUpload, upload_id: str) -> artifact_pb2.UploadStatus:
        if upload_id:
            query = artifact_pb2.QueryUploadStatusRequest(upload_id=upload_id)
            return self._artifacts.QueryUploadStatus(
                query, timeout=self.config.timeout, metadata=self.config.call_metadata
            )
        start = artifact_pb2.StartUploadRequest(digest=blob.digest, size=blob.size)
        return self._artifacts.StartUpload(
            start, timeout=self.config.timeout, metadata=self.config.call_metadata
        )

    def _upload_direct(
        self, blob: BlobUpload, tracker: packages.Progress, cancelled: threading.Event
    ) -> None:
        """CreateDirectUpload, one PUT to object storage, CommitDirectUpload."""
        request = artifact_pb2.CreateDirectUploadRequest(digest=blob.digest, size=blob.size)
        ticket = self._call(self._artifacts.CreateDirectUpload, request)
        if not ticket.already_stored:
            presigned.put_blob(
                ticket.url,
                dict(ticket.headers),
                blob,
                on_sent=lambda sent: tracker.update(blob.digest, sent),
                cancelled=cancelled,
                timeout=self.config.timeout,
            )
            commit = artifact_pb2.CommitDirectUploadRequest(digest=blob.digest, size=blob.size)
            self._call(self._artifacts.CommitDirectUpload, commit)
        tracker.update(blob.digest, blob.size)

    def _upload_blob(
        self,
        blob: BlobUpload,
        tracker: packages.Progress,
        cancelled: threading.Event,
        route: presigned.UploadRoute | None = None,
    ) -> None:
        """Send one blob: straight to object storage when `route` says so, else in one stream or through a
        resumable session, retrying broken streams."""
        if route is not None and route.direct(blob.size):
            try:
                self._upload_direct(blob, tracker, cancelled)
                route.reached()
                return
            except Exception as exc:
                if cancelled.is_set() or not route.fall_back(exc):
                    raise
        upload_id, offset, attempt = "", 0, 0
        while True:
            stream: packages.UploadStream | None = None
            try:
                if blob.resumable:
                    status = self._upload_status(blob, upload_id)
                    upload_id, offset = status.upload_id, status.committed_size
                stream = packages.UploadStream(
                    blob,
                    upload_id=upload_id,
                    offset=offset,
                    on_sent=lambda position: tracker.update(blob.digest, position),
                    cancelled=cancelled,
                )
                try:
                    # Transfers have no deadline: their length depends on the size, not on the server.
                    response = self._artifacts.UploadBlob(
                        iter(stream.next_message, None), metadata=self.config.call_metadata
                    )
                finally:
                    stream.close()
                stream.check(response)
                tracker.update(blob.digest, blob.size)
                return
            except grpc.RpcError as err:
                if stream is not None and stream.error is not None:
                    raise stream.error from err
                error = from_rpc_error(err)
                if error.reason == "UPLOAD_NOT_FOUND":
                    upload_id = ""  # the session expired: start a new one
                delay = None if cancelled.is_set() else packages.retry_delay(error, attempt)
                if delay is None:
                    raise error from err
                attempt += 1
                if cancelled.wait(delay):
                    raise Cancelled("upload cancelled") from err

    def _package_digest(self, ref: packages.PackageRef) -> str:
        if ref.digest:
            return ref.digest
        return packages.version_digest(self._call(self._stub.GetModelVersion, ref.get_version_request()))

    def _fetch_manifest(self, digest: str, cache: BlobCache | None) -> Manifest:
        data = cache.read(digest) if cache is not None else None
        if data is None:
            buffer = bytearray()
            request = artifact_pb2.DownloadBlobRequest(digest=digest)
            call = self._artifacts.DownloadBlob(
                request, timeout=self.config.timeout, metadata=self.config.call_metadata
            )
            try:
                for response in call:
                    packages.append_manifest_chunk(buffer, response.data, digest)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            finally:
                cast("grpc.Future[artifact_pb2.DownloadBlobResponse]", call).cancel()
            data = bytes(buffer)
            manifest = packages.parse_manifest(data, digest)
            if cache is not None:
                cache.store(digest, data)
            return manifest
        return packages.parse_manifest(data, digest)

    def _obtain(
        self,
        root: Path,
        fetch: BlobFetch,
        cache: BlobCache | None,
        tracker: packages.Progress,
        cancelled: threading.Event,
        *,
        verify: bool,
        route: presigned.Route,
    ) -> None:
        """Put one blob at its targets: from the cache, else from the network through its partial file."""
        if cache is not None:
            was_cached = cache.has(fetch.digest, fetch.size)
            source = cache.lookup(fetch.digest, fetch.size, verify=verify)
            if source is not None:
                packages.install(root, fetch, source, move=False)
                return
            if was_cached:  # the entry was corrupt and is gone: its bytes come over the network after all
                tracker.add_total(fetch.bytes_to_fetch(None))
        writer = packages.BlobWriter(root, fetch, verify=verify)
        try:
            while True:
                self._receive(writer, tracker, cancelled, route=route)
                try:
                    path = writer.finish()
                    break
                except DataLoss:
                    if writer.resumed_from == 0:
                        writer.discard()
                        raise
                    # What an earlier attempt left in the partial file was wrong: start over, once.
                    tracker.add_total(writer.resumed_from)
                    writer.restart()
        finally:
            writer.close()
        packages.install(root, fetch, path, move=True)
        if cache is not None:
            cache.adopt(fetch.digest, fetch.targets[0][0])

    def _receive(
        self,
        writer: packages.BlobWriter,
        tracker: packages.Progress,
        cancelled: threading.Event,
        *,
        route: presigned.Route,
    ) -> None:
        """Fill the partial file up to the blob's size, resuming after broken streams."""
        fetch = writer.fetch

        def on_progress(position: int) -> None:
            tracker.update(fetch.digest, position - writer.resumed_from)

        attempt = 0
        direct = route.direct(fetch.size)
        while writer.offset < fetch.size:
            before = writer.offset
            try:
                if direct:
                    url = self._call(
                        self._artifacts.GetBlobDownloadUrl,
                        artifact_pb2.GetBlobDownloadUrlRequest(digest=fetch.digest),
                    ).url
                    presigned.fetch_ranges(
                        url, writer, on_progress=on_progress, cancelled=cancelled, timeout=self.config.timeout
                    )
                else:
                    self._download_into(writer, on_progress, cancelled)
            except Exception as exc:  # transfer_retry_delay tells the transient ones apart
                if direct and writer.offset > before:
                    route.reached()
                if direct and not cancelled.is_set() and route.fall_back(exc):
                    direct = False
                    continue
                delay = None if cancelled.is_set() else packages.transfer_retry_delay(exc, attempt)
                if delay is None:
                    raise
                attempt += 1
                if cancelled.wait(delay):
                    raise Cancelled("download cancelled") from exc
                continue
            if writer.offset == before:
                raise packages.size_mismatch(fetch, writer.offset)
            if direct:
                route.reached()

    def _download_into(
        self, writer: packages.BlobWriter, on_progress: Callable[[int], None], cancelled: threading.Event
    ) -> None:
        request = artifact_pb2.DownloadBlobRequest(digest=writer.fetch.digest, read_offset=writer.offset)
        call = self._artifacts.DownloadBlob(request, metadata=self.config.call_metadata)
        try:
            for response in call:
                if cancelled.is_set():
                    raise Cancelled("download cancelled")
                writer.write(response.data)
                on_progress(writer.offset)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            cast("grpc.Future[artifact_pb2.DownloadBlobResponse]", call).cancel()
