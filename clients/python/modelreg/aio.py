"""The asyncio modelreg client: the same methods as :class:`modelreg.Registry`, as coroutines."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
import grpc.aio
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

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub, ServingServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub
    from modelreg.v1.signing_service_pb2_grpc import SigningServiceAsyncStub

__all__ = ["AsyncRegistry", "AsyncWatchStream"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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
        interceptors = _tracing.aio_interceptors(self.config.address)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(
                self.config.address, options=channel_options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.secure_channel(
                self.config.address, credentials, options=channel_options, interceptors=interceptors
            )
        self._stub: ModelRegistryServiceAsyncStub = service_pb2_grpc.ModelRegistryServiceStub(self._channel)
        self._lifecycle: LifecycleServiceAsyncStub = lifecycle_pb2_grpc.LifecycleServiceStub(self._channel)
        self._serving: ServingServiceAsyncStub = lifecycle_pb2_grpc.ServingServiceStub(self._channel)
        self._artifacts: ArtifactServiceAsyncStub = artifact_pb2_grpc.ArtifactServiceStub(self._channel)
        self._signing: SigningServiceAsyncStub = signing_pb2_grpc.SigningServiceStub(self._channel)

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

    # --- model packages --------------------------------------------------------------------------------

    async def upload_model(
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
        """Publish the file or directory at `path` as the next version of `model` (see
        :meth:`modelreg.Registry.upload_model`). File reads and hashing run in worker threads; `progress`
        is called on the event loop."""
        name = _core.model_name(model)
        packages.check_parallelism(parallelism)
        packages.check_format(format)
        files = await asyncio.to_thread(packages.scan_package, path)
        await self.get_model(name)  # fail before reading gigabytes when the model does not exist
        cancelled = threading.Event()
        hashed = await self._in_parallel(
            lambda f: asyncio.to_thread(f.hashed, cancelled), files, parallelism, cancelled
        )
        manifest = packages.build_manifest(hashed, format)
        data = manifest.canonical_bytes()
        digest = packages.blob_digest(data)
        missing = await self._find_missing([*(f.digest for f in hashed), digest])
        uploads = packages.plan_uploads(hashed, missing)
        tracker = packages.Progress(progress, sum(u.size for u in uploads))
        route = presigned.UploadRoute(use_presigned_urls)
        tracker.report()
        await self._in_parallel(
            lambda u: self._upload_blob(u, tracker, cancelled, route), uploads, parallelism, cancelled
        )
        if digest in missing:
            await self._upload_blob(BlobUpload(digest, len(data), data), packages.Progress(None), cancelled)
        return await self.create_model_version(
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

    async def get_manifest(
        self,
        ref: str | model_pb2.ModelVersion,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
    ) -> Manifest:
        """Return the manifest of a package (see :meth:`modelreg.Registry.get_manifest`)."""
        cache = packages.open_cache(cache_dir, use_cache)
        return await self._fetch_manifest(await self._package_digest(packages.parse_package_ref(ref)), cache)

    async def download_model(
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
        """Download the package of a version into the directory `dest` and return `dest` (see
        :meth:`modelreg.Registry.download_model`, also for `verify_signature`). File work runs in worker
        threads; `progress` is called on the event loop."""
        packages.check_parallelism(parallelism)
        cache = packages.open_cache(cache_dir, use_cache)
        signed: model_pb2.ModelVersion | None = None
        if verify_signature is not None:
            signed = await self._signed_version(ref)
            ref = signed
        manifest = await self._fetch_manifest(
            await self._package_digest(packages.parse_package_ref(ref)), cache
        )
        root = Path(dest)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        fetches = packages.plan_download(manifest, root)
        planned = await asyncio.to_thread(lambda: sum(f.bytes_to_fetch(cache) for f in fetches))
        tracker = packages.Progress(progress, planned)
        tracker.report()
        cancelled = threading.Event()

        route = presigned.Route(use_presigned_urls)

        def obtain(fetch: BlobFetch) -> Awaitable[None]:
            return self._obtain(root, fetch, cache, tracker, cancelled, verify=verify, route=route)

        await self._in_parallel(obtain, fetches, parallelism, cancelled)
        if signed is not None and verify_signature is not None:
            await self._check_signature(signed.name, root, manifest, verify_signature)
        return root

    async def sign_model(
        self,
        version: str | model_pb2.ModelVersion,
        private_key: bytes | str | os.PathLike[str],
        key_id: str,
        *,
        path: str | os.PathLike[str] | None = None,
        password: str | bytes | None = None,
    ) -> signing_pb2.Signature:
        """Sign a version's package and attach the signature (see :meth:`modelreg.Registry.sign_model`).
        Hashing and signing run in a worker thread."""
        from modelreg import signing

        if not isinstance(version, model_pb2.ModelVersion):
            version = await self._call(self._stub.GetModelVersion, signing.version_request(version))
        packages.version_digest(version)
        if path is None:
            scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="modelreg-sign-")
            try:
                await self.download_model(version, scratch)
                bundle = await asyncio.to_thread(
                    signing.sign_package, scratch, private_key, password=password
                )
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
        else:
            bundle = await asyncio.to_thread(signing.sign_package, path, private_key, password=password)
        request = signing.attach_signature_request(version.name, key_id, bundle)
        return await self._call(self._signing.AttachSignature, request)

    async def _signed_version(self, ref: str | model_pb2.ModelVersion) -> model_pb2.ModelVersion:
        """The version a signature-checked download names (ValueError for a bare digest)."""
        from modelreg import signing

        name = signing.signed_version_reference(ref)
        if isinstance(ref, model_pb2.ModelVersion):
            return ref
        return await self._call(self._stub.GetModelVersion, signing.version_request(name))

    async def _check_signature(self, version: str, root: Path, manifest: Manifest, key: str) -> None:
        from modelreg import signing

        key_id = None if signing.is_public_key_pem(key) else key
        public_key = key
        if key_id is not None:
            found = await self._call(self._signing.GetSigningKey, signing.signing_key_request(key_id))
            public_key = signing.trusted_public_key(found)
        signatures: list[signing_pb2.Signature] = []
        token = ""
        while True:
            request = signing.list_signatures_request(version, token)
            page = await self._call(self._signing.ListSignatures, request)
            signatures.extend(page.signatures)
            token = page.next_page_token
            if not token:
                break
        files = [(f.path, f.digest) for f in manifest.files]
        await asyncio.to_thread(signing.check_download, root, version, files, signatures, public_key, key_id)

    async def _in_parallel(
        self,
        work: Callable[[_Item], Awaitable[_Result]],
        items: Sequence[_Item],
        parallelism: int,
        cancelled: threading.Event,
    ) -> list[_Result]:
        """`work` on every item, at most `parallelism` at a time; the first error cancels the rest."""
        results: dict[int, _Result] = {}
        pending = iter(enumerate(items))

        async def worker() -> None:
            for index, item in pending:  # one iterator shared by the workers
                results[index] = await work(item)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(parallelism, len(items))):
                    group.create_task(worker())
        except BaseExceptionGroup as failures:
            cancelled.set()  # stops worker threads still hashing
            raise failures.exceptions[0] from None
        except BaseException:
            cancelled.set()
            raise
        return [results[index] for index in range(len(items))]

    async def _find_missing(self, digests: Iterable[str]) -> set[str]:
        missing: set[str] = set()
        for request in packages.find_missing_requests(digests):
            missing.update((await self._call(self._artifacts.FindMissingBlobs, request)).missing_digests)
        return missing

    async def _upload_status(self, blob: BlobUpload, upload_id: str) -> artifact_pb2.UploadStatus:
        if upload_id:
            query = artifact_pb2.QueryUploadStatusRequest(upload_id=upload_id)
            return await self._artifacts.QueryUploadStatus(
                query, timeout=self.config.timeout, metadata=self.config.call_metadata
            )
        start = artifact_pb2.StartUploadRequest(digest=blob.digest, size=blob.size)
        return await self._artifacts.StartUpload(
            start, timeout=self.config.timeout, metadata=self.config.call_metadata
        )

    async def _upload_direct(
        self, blob: BlobUpload, tracker: packages.Progress, cancelled: threading.Event
    ) -> None:
        """CreateDirectUpload, one PUT to object storage (in a worker thread), CommitDirectUpload."""
        request = artifact_pb2.CreateDirectUploadRequest(digest=blob.digest, size=blob.size)
        ticket = await self._call(self._artifacts.CreateDirectUpload, request)
        if not ticket.already_stored:
            loop = asyncio.get_running_loop()

            def on_sent(sent: int) -> None:
                loop.call_soon_threadsafe(tracker.update, blob.digest, sent)

            await asyncio.to_thread(
                presigned.put_blob,
                ticket.url,
                dict(ticket.headers),
                blob,
                on_sent=on_sent,
                cancelled=cancelled,
                timeout=self.config.timeout,
            )
            commit = artifact_pb2.CommitDirectUploadRequest(digest=blob.digest, size=blob.size)
            await self._call(self._artifacts.CommitDirectUpload, commit)
        tracker.update(blob.digest, blob.size)

    async def _upload_blob(
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
                await self._upload_direct(blob, tracker, cancelled)
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
                    status = await self._upload_status(blob, upload_id)
                    upload_id, offset = status.upload_id, status.committed_size
                stream = packages.UploadStream(
                    blob,
                    upload_id=upload_id,
                    offset=offset,
                    on_sent=lambda position: tracker.update(blob.digest, position),
                )
                try:
                    # Transfers have no deadline: their length depends on the size, not on the server.
                    response = await self._artifacts.UploadBlob(
                        _messages(stream), metadata=self.config.call_metadata
                    )
                finally:
                    await asyncio.to_thread(stream.close)
                stream.check(response)
                tracker.update(blob.digest, blob.size)
                return
            except grpc.aio.AioRpcError as err:
                if stream is not None and stream.error is not None:
                    raise stream.error from err
                error = from_rpc_error(err)
                if error.reason == "UPLOAD_NOT_FOUND":
                    upload_id = ""  # the session expired: start a new one
                delay = None if cancelled.is_set() else packages.retry_delay(error, attempt)
                if delay is None:
                    raise error from err
                attempt += 1
                await asyncio.sleep(delay)

    async def _package_digest(self, ref: packages.PackageRef) -> str:
        if ref.digest:
            return ref.digest
        version = await self._call(self._stub.GetModelVersion, ref.get_version_request())
        return packages.version_digest(version)

    async def _fetch_manifest(self, digest: str, cache: BlobCache | None) -> Manifest:
        data = await asyncio.to_thread(cache.read, digest) if cache is not None else None
        if data is None:
            buffer = bytearray()
            request = artifact_pb2.DownloadBlobRequest(digest=digest)
            call = self._artifacts.DownloadBlob(
                request, timeout=self.config.timeout, metadata=self.config.call_metadata
            )
            try:
                async for response in call:
                    packages.append_manifest_chunk(buffer, response.data, digest)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from err
            finally:
                call.cancel()
            data = bytes(buffer)
            manifest = packages.parse_manifest(data, digest)
            if cache is not None:
                await asyncio.to_thread(cache.store, digest, data)
            return manifest
        return packages.parse_manifest(data, digest)

    async def _obtain(
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
            was_cached = await asyncio.to_thread(cache.has, fetch.digest, fetch.size)
            source = await asyncio.to_thread(cache.lookup, fetch.digest, fetch.size, verify=verify)
            if source is not None:
                await asyncio.to_thread(packages.install, root, fetch, source, move=False)
                return
            if was_cached:  # the entry was corrupt and is gone: its bytes come over the network after all
                tracker.add_total(await asyncio.to_thread(fetch.bytes_to_fetch, None))
        writer = await asyncio.to_thread(packages.BlobWriter, root, fetch, verify=verify)
        try:
            while True:
                await self._receive(writer, tracker, cancelled, route=route)
                try:
                    path = await asyncio.to_thread(writer.finish)
                    break
                except DataLoss:
                    if writer.resumed_from == 0:
                        await asyncio.to_thread(writer.discard)
                        raise
                    # What an earlier attempt left in the partial file was wrong: start over, once.
                    tracker.add_total(writer.resumed_from)
                    await asyncio.to_thread(writer.restart)
        finally:
            writer.close()
        await asyncio.to_thread(packages.install, root, fetch, path, move=True)
        if cache is not None:
            await asyncio.to_thread(cache.adopt, fetch.digest, fetch.targets[0][0])

    async def _receive(
        self,
        writer: packages.BlobWriter,
        tracker: packages.Progress,
        cancelled: threading.Event,
        *,
        route: presigned.Route,
    ) -> None:
        """Fill the partial file up to the blob's size, resuming after broken streams."""
        fetch = writer.fetch
        loop = asyncio.get_running_loop()

        def on_progress(position: int) -> None:
            tracker.update(fetch.digest, position - writer.resumed_from)

        def on_progress_threadsafe(position: int) -> None:
            loop.call_soon_threadsafe(on_progress, position)

        attempt = 0
        direct = route.direct(fetch.size)
        while writer.offset < fetch.size:
            before = writer.offset
            try:
                if direct:
                    request = artifact_pb2.GetBlobDownloadUrlRequest(digest=fetch.digest)
                    url = (await self._call(self._artifacts.GetBlobDownloadUrl, request)).url
                    await asyncio.to_thread(
                        presigned.fetch_ranges,
                        url,
                        writer,
                        on_progress=on_progress_threadsafe,
                        cancelled=cancelled,
                        timeout=self.config.timeout,
                    )
                else:
                    await self._download_into(writer, on_progress)
            except Exception as exc:  # transfer_retry_delay tells the transient ones apart
                if direct and writer.offset > before:
                    route.reached()
                if direct and route.fall_back(exc):
                    direct = False
                    continue
                delay = packages.transfer_retry_delay(exc, attempt)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if writer.offset == before:
                raise packages.size_mismatch(fetch, writer.offset)
            if direct:
                route.reached()

    async def _download_into(self, writer: packages.BlobWriter, on_progress: Callable[[int], None]) -> None:
        request = artifact_pb2.DownloadBlobRequest(digest=writer.fetch.digest, read_offset=writer.offset)
        call = self._artifacts.DownloadBlob(request, metadata=self.config.call_metadata)
        try:
            async for response in call:
                await asyncio.to_thread(writer.write, response.data)
                on_progress(writer.offset)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        finally:
            call.cancel()


async def _messages(stream: packages.UploadStream) -> AsyncIterator[artifact_pb2.UploadBlobRequest]:
    """The request iterator of an aio UploadBlob call; chunks are read from disk in a worker thread."""
    while (message := await asyncio.to_thread(stream.next_message)) is not None:
        yield message
