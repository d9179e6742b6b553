"""modelreg.v1.ServingService: the serving fleet's hot path and the watch stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc

from modelreg.v1 import lifecycle_service_pb2 as pb
from modelreg.v1 import lifecycle_service_pb2_grpc as pb_grpc
from modelreg_server.api import validation as val
from modelreg_server.api.identity import caller
from modelreg_server.api.lifecycle_convert import change_to_proto, resolution_to_proto, route_to_proto
from modelreg_server.api.status import streaming, unary
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.feed import Subscription
from modelreg_server.domain.names import parse_alias_name, parse_model_name
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import SERVING_CHANGES, Change, Resolution
from modelreg_server.domain.serving import Serving

Context = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 1000
MAX_WATCHED_MODELS = 10_000


class ServingServicer(pb_grpc.ServingServiceServicer):
    """Resolves aliases and routes, and streams changes."""

    def __init__(self, serving: Serving, access: AccessControl, heartbeat_interval: float = 5.0) -> None:
        self._serving = serving
        self.access = access
        self._heartbeat = heartbeat_interval
        self._messages = _SharedMessages()

    async def _read(self, context: Context, resource: str, model_id: str | None) -> None:
        await self.access.require(caller(context), Permission.READ, resource, model_id=model_id)

    @unary
    async def ResolveAlias(
        self, request: pb.ResolveAliasRequest, context: Context
    ) -> pb.ResolveAliasResponse:
        model_id, alias = _parse_alias(request.name)
        await self._read(context, request.name, model_id)
        if request.HasField("as_of"):
            v = val.Violations()
            val.check_timestamp("as_of", request.as_of, v)
            v.check()
            at = request.as_of.ToDatetime(tzinfo=UTC)
            return resolution_to_proto(await self._serving.resolve_as_of(model_id, alias, at))
        return self._messages.resolution(await self._serving.resolve(model_id, alias))

    @unary
    async def BatchResolveAliases(
        self, request: pb.BatchResolveAliasesRequest, context: Context
    ) -> pb.BatchResolveAliasesResponse:
        if len(request.names) > MAX_BATCH:
            raise errors.invalid("names", f"at most {MAX_BATCH} names")
        results = []
        for name in request.names:
            try:
                model_id, alias = parse_alias_name(name)
                await self._read(context, name, model_id)
                resolution = await self._serving.resolve(model_id, alias)
            except (errors.InvalidArgument, errors.NotFound) as exc:
                results.append(pb.ResolveResult(name=name[:200], error_reason=exc.reason))
                continue
            results.append(pb.ResolveResult(name=name, resolution=resolution_to_proto(resolution)))
        return pb.BatchResolveAliasesResponse(results=results)

    @unary
    async def ResolveRoute(
        self, request: pb.ResolveRouteRequest, context: Context
    ) -> pb.ResolveRouteResponse:
        model_id = parse_model_name(request.model, "model")
        await self._read(context, request.model, model_id)
        if len(request.routing_key) > 1024:
            raise errors.invalid("routing_key", "at most 1024 characters")
        resolution, route = await self._serving.resolve_route(model_id, request.routing_key)
        return pb.ResolveRouteResponse(
            resolution=resolution_to_proto(resolution), route=route_to_proto(model_id, route)
        )

    @streaming
    async def WatchAliases(
        self, request: pb.WatchAliasesRequest, context: Context
    ) -> AsyncIterator[pb.WatchAliasesResponse]:
        if len(request.models) > MAX_WATCHED_MODELS:
            raise errors.invalid("models", f"at most {MAX_WATCHED_MODELS} models")
        if request.since_revision < 0:
            raise errors.invalid("since_revision", "must not be negative")
        models = frozenset(parse_model_name(m, f"models[{i}]") for i, m in enumerate(request.models)) or None
        for model_id in models or (None,):
            await self._read(context, f"models/{model_id}" if model_id else "models", model_id)
        feed = self._serving.feed
        sub = feed.subscribe(models)
        try:
            sent = 0
            async for message, revision in self._catch_up(request.since_revision, models):
                sent = max(sent, revision)
                yield message
            yield pb.WatchAliasesResponse(revision=sent, heartbeat=True)
            async for message in self._live(sub, sent):
                yield message
        finally:
            feed.unsubscribe(sub)

    async def _catch_up(
        self, since: int, models: frozenset[str] | None
    ) -> AsyncIterator[tuple[pb.WatchAliasesResponse, int]]:
        """Replays stored changes after `since`, or sends a snapshot when they are gone or not asked for."""
        oldest = await self._serving.oldest_retained_revision()
        current = await self._serving.current_revision()
        retained = (
            since > 0
            and since <= current
            and (since == current or (oldest is not None and oldest <= since + 1))
        )
        if not retained:
            first = True
            async for revision, changes in self._serving.snapshot(sorted(models) if models else None):
                message = pb.WatchAliasesResponse(
                    changes=[change_to_proto(c) for c in changes],
                    revision=revision,
                    snapshot=True,
                    reset=first,
                )
                first = False
                yield message, revision
            return
        position = since
        while True:
            changes = await self._serving.changes_after(position)
            if not changes:
                return
            position = changes[-1].revision
            selected = [
                c
                for c in changes
                if c.change_type in SERVING_CHANGES and (models is None or c.model_id in models)
            ]
            yield (
                pb.WatchAliasesResponse(changes=[change_to_proto(c) for c in selected], revision=position),
                position,
            )

    async def _live(self, sub: Subscription, sent: int) -> AsyncIterator[pb.WatchAliasesResponse]:
        # One watcher per stream, a thousand streams per replica: the wait for the next change is a plain
        # queue get under a timeout (no task or asyncio.wait per change), and a change's message is built
        # once for every watcher it goes to. An overflow cuts the current wait short.
        queue = sub.queue
        waiting: list[asyncio.Timeout] = []

        def cut_short(_: object) -> None:
            for deadline in waiting:
                if not deadline.expired():
                    deadline.reschedule(-1.0)

        overflow = asyncio.ensure_future(sub.overflowed.wait())
        overflow.add_done_callback(cut_short)
        try:
            while True:
                if queue.empty():
                    try:
                        async with asyncio.timeout(self._heartbeat) as deadline:
                            waiting.append(deadline)
                            try:
                                first = await queue.get()
                            finally:
                                waiting.clear()
                    except TimeoutError:
                        if sub.overflowed.is_set():
                            raise _too_slow() from None
                        # A heartbeat claims the feed's revision only when nothing is queued for this
                        # watcher: everything up to it has then been sent or was not selected.
                        if queue.empty():
                            yield pb.WatchAliasesResponse(
                                revision=max(sent, self._serving.feed.last_revision), heartbeat=True
                            )
                        continue
                else:
                    first = queue.get_nowait()
                if sub.overflowed.is_set():
                    raise _too_slow()
                if queue.empty():
                    if first.revision > sent:
                        sent = first.revision
                        yield self._messages.response(first)
                    continue
                batch = [first]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                fresh = [self._messages.change(c) for c in batch if c.revision > sent]
                if fresh:
                    sent = batch[-1].revision
                    yield pb.WatchAliasesResponse(changes=fresh, revision=sent)
        finally:
            overflow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await overflow


_PARSED_ALIASES: dict[str, tuple[str, str]] = {}
_MAX_PARSED_ALIASES = 10_000


def _parse_alias(name: str) -> tuple[str, str]:
    """parse_alias_name, remembering valid names (serving fleets resolve the same few again and again)."""
    parsed = _PARSED_ALIASES.get(name)
    if parsed is None:
        parsed = parse_alias_name(name)
        if len(_PARSED_ALIASES) >= _MAX_PARSED_ALIASES:
            _PARSED_ALIASES.clear()
        _PARSED_ALIASES[name] = parsed
    return parsed


def _too_slow() -> errors.ResourceExhausted:
    return errors.ResourceExhausted(
        "watcher fell too far behind; reconnect with since_revision to resume", "WATCHER_TOO_SLOW"
    )


class _SharedMessages:
    """Wire forms built once and shared by every call that sends them: the message of each recent live
    change (one per watcher of its model) and of each cached resolution. gRPC only serializes them, and
    nothing here changes a message once built."""

    def __init__(self, recent_changes: int = 1024, resolutions: int = 10_000) -> None:
        self._recent_changes = recent_changes
        self._max_resolutions = resolutions
        self._changes: dict[int, tuple[Change, pb.Change, pb.WatchAliasesResponse]] = {}
        # By the identity of the cached Resolution (the entry keeps it alive, so the id is not reused).
        self._resolutions: dict[int, tuple[Resolution, pb.ResolveAliasResponse]] = {}

    def _change_entry(self, change: Change) -> tuple[Change, pb.Change, pb.WatchAliasesResponse]:
        entry = self._changes.get(change.revision)
        if entry is None or entry[0] is not change:
            message = change_to_proto(change)
            entry = (change, message, pb.WatchAliasesResponse(changes=[message], revision=change.revision))
            if len(self._changes) >= self._recent_changes:
                del self._changes[next(iter(self._changes))]
            self._changes[change.revision] = entry
        return entry

    def change(self, change: Change) -> pb.Change:
        """The wire form of a live change."""
        return self._change_entry(change)[1]

    def response(self, change: Change) -> pb.WatchAliasesResponse:
        """The watch message carrying just this change."""
        return self._change_entry(change)[2]

    def resolution(self, resolution: Resolution) -> pb.ResolveAliasResponse:
        """The wire form of a resolution."""
        entry = self._resolutions.get(id(resolution))
        if entry is None or entry[0] is not resolution:
            if len(self._resolutions) >= self._max_resolutions:
                self._resolutions.clear()
            entry = (resolution, resolution_to_proto(resolution))
            self._resolutions[id(resolution)] = entry
        return entry[1]
