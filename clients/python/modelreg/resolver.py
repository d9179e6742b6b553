"""Alias resolution inside serving processes, from memory, kept current by the WatchAliases stream.

```python
from modelreg.resolver import AliasResolver

with AliasResolver("registry-a:50051,registry-b:50051", models=["fraud"]) as resolver:
    version = resolver.resolve("fraud", "champion")          # no RPC
    serving = resolver.route("fraud", routing_key=user_id)   # same answer as ResolveRoute
```

:class:`AliasState` is the pure part: it applies WatchAliasesResponse messages (snapshots, changes,
heartbeats) and answers reads. :class:`AliasResolver` (a background thread, usable from any framework) and
:class:`AsyncAliasResolver` (an asyncio task) differ only in how they read the stream. Both reconnect with
exponential backoff and jitter, moving to the next address on every reconnect, and resume after the last
revision they applied, so no change is missed; the server answers with a snapshot instead when it no longer
holds the changes since then.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from modelreg import _core
from modelreg._core import ClientConfig
from modelreg.aio import AsyncRegistry, AsyncWatchStream
from modelreg.client import Registry, WatchStream
from modelreg.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ModelregError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from modelreg.routing import pick_route
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import model_pb2

__all__ = ["AliasResolver", "AliasState", "AsyncAliasResolver", "ChangeCallback"]

log = logging.getLogger(__name__)

ChangeCallback = Callable[[lifecycle_pb2.Change], object]
"""Called with each change after it is applied. The async resolver awaits the result if it is awaitable."""

INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 5.0
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_START_TIMEOUT = 30.0

# gRPC's own reconnect backoff (1 s growing to 120 s) would hold a recovered replica back long after ours
# (0.1 s to 5 s) asks for it again.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)),
)

# Errors that another attempt will not fix; before the first snapshot they fail start() at once.
_PERMANENT_ERRORS = (InvalidArgument, Unauthenticated, PermissionDenied)

_Resolution = lifecycle_pb2.ResolveAliasResponse
_ALIAS_SET = lifecycle_pb2.CHANGE_TYPE_ALIAS_SET
_ALIAS_DELETED = lifecycle_pb2.CHANGE_TYPE_ALIAS_DELETED
_STAGE_CHANGED = lifecycle_pb2.CHANGE_TYPE_STAGE_CHANGED
_TRAFFIC_CHANGED = lifecycle_pb2.CHANGE_TYPE_TRAFFIC_CHANGED
_MODEL_DELETED = lifecycle_pb2.CHANGE_TYPE_MODEL_DELETED


# --- state ---------------------------------------------------------------------------------------------


@dataclass
class _ModelState:
    """What is known about one model. Stored messages are never mutated, only replaced."""

    aliases: dict[str, _Resolution] = field(default_factory=dict)
    policy: lifecycle_pb2.TrafficPolicy | None = None
    production: _Resolution | None = None
    # Every version seen in an alias target or a stage change: what version routes resolve against.
    versions: dict[int, _Resolution] = field(default_factory=dict)


@dataclass
class _PendingSnapshot:
    models: dict[str, _ModelState] = field(default_factory=dict)
    changes: list[lifecycle_pb2.Change] = field(default_factory=list)
    revision: int = 0


def _model_id(model: str) -> str:
    return model.removeprefix("models/")


def _last_segment(name: str) -> str:
    return name.rpartition("/")[2]


def _same_version(a: _Resolution, b: _Resolution) -> bool:
    return (a.model_version, a.version, a.artifact_digest, a.stage) == (
        b.model_version,
        b.version,
        b.artifact_digest,
        b.stage,
    )


def _resolution(source: _Resolution) -> _Resolution:
    copy = _Resolution()
    copy.CopyFrom(source)
    return copy


def _apply_change(models: dict[str, _ModelState], change: lifecycle_pb2.Change) -> None:
    model_id = _model_id(change.model)
    kind = change.type
    if kind == _MODEL_DELETED:
        models.pop(model_id, None)
        return
    if kind not in (_ALIAS_SET, _ALIAS_DELETED, _STAGE_CHANGED, _TRAFFIC_CHANGED):
        return  # POLICY_CHANGED, and types added after this SDK: nothing to keep
    state = models.setdefault(model_id, _ModelState())
    if kind == _ALIAS_SET:
        target = _resolution(change.resolution)
        state.aliases[_last_segment(change.alias)] = target
        state.versions[target.version] = target
    elif kind == _ALIAS_DELETED:
        state.aliases.pop(_last_segment(change.alias), None)
    elif kind == _STAGE_CHANGED:
        moved = _resolution(change.resolution)
        state.versions[moved.version] = moved
        for alias, target in list(state.aliases.items()):
            if target.version == moved.version:
                state.aliases[alias] = moved
        if moved.stage == model_pb2.STAGE_PRODUCTION:
            state.production = moved
        elif state.production is not None and state.production.version == moved.version:
            state.production = None
    elif change.traffic_policy.routes:  # _TRAFFIC_CHANGED
        policy = lifecycle_pb2.TrafficPolicy()
        policy.CopyFrom(change.traffic_policy)
        state.policy = policy
    else:  # _TRAFFIC_CHANGED without routes: the policy was removed
        state.policy = None


def _snapshot_news(old: dict[str, _ModelState], snapshot: _PendingSnapshot) -> list[lifecycle_pb2.Change]:
    """The changes a snapshot that replaces `old` amounts to: its entries that differ from `old`, plus
    deletions of aliases and traffic policies it no longer has."""
    news: list[lifecycle_pb2.Change] = []
    empty = _ModelState()
    for change in snapshot.changes:
        before = old.get(_model_id(change.model), empty)
        if change.type == _ALIAS_SET:
            previous = before.aliases.get(_last_segment(change.alias))
            changed = previous is None or not _same_version(previous, change.resolution)
        elif change.type == _TRAFFIC_CHANGED:
            changed = before.policy is None or list(before.policy.routes) != list(
                change.traffic_policy.routes
            )
        elif change.type == _STAGE_CHANGED:
            changed = before.production is None or not _same_version(before.production, change.resolution)
        else:
            changed = True
        if changed:
            news.append(change)
    for model_id, before in old.items():
        after = snapshot.models.get(model_id, empty)
        model = f"models/{model_id}"
        news.extend(
            lifecycle_pb2.Change(
                revision=snapshot.revision,
                type=_ALIAS_DELETED,
                model=model,
                alias=f"{model}/aliases/{alias}",
            )
            for alias in before.aliases
            if alias not in after.aliases
        )
        if before.policy is not None and after.policy is None:
            news.append(
                lifecycle_pb2.Change(
                    revision=snapshot.revision,
                    type=_TRAFFIC_CHANGED,
                    model=model,
                    traffic_policy=lifecycle_pb2.TrafficPolicy(name=f"{model}/trafficPolicy"),
                )
            )
    return news


class AliasState:
    """Aliases, traffic policies and PRODUCTION versions of the watched models, built from
    WatchAliasesResponse messages. No I/O; safe to share between threads.

    A snapshot (`reset` on its first message) is collected aside and replaces the state in one step at the
    heartbeat that ends it, so readers never see a half-applied message or a partial snapshot. Changes
    already applied (by revision) are skipped, so a replay that overlaps does no harm.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}
        self._pending: _PendingSnapshot | None = None
        self._revision = 0
        self._last_change = 0
        self._ready = False

    # --- writing ---

    def apply(self, message: lifecycle_pb2.WatchAliasesResponse) -> list[lifecycle_pb2.Change]:
        """Apply one message; return the changes that took effect, in order (empty while a snapshot is
        still arriving; at its end, what the snapshot changed compared with the state it replaced)."""
        with self._lock:
            if message.reset:
                self._pending = _PendingSnapshot()
            if self._pending is not None and message.snapshot:
                for change in message.changes:
                    _apply_change(self._pending.models, change)
                self._pending.changes.extend(message.changes)
                self._pending.revision = max(self._pending.revision, message.revision)
                return []
            applied = self._commit_snapshot() if self._pending is not None else []
            for change in message.changes:
                if change.revision <= self._last_change:
                    continue
                _apply_change(self._models, change)
                self._last_change = change.revision
                applied.append(change)
            self._revision = max(self._revision, message.revision, self._last_change)
            if message.heartbeat:
                self._ready = True
            return applied

    def _commit_snapshot(self) -> list[lifecycle_pb2.Change]:
        assert self._pending is not None
        snapshot, self._pending = self._pending, None
        news = _snapshot_news(self._models, snapshot)
        self._models = snapshot.models
        # A reset replaces everything, the revision included, even if it went down (a restored database).
        self._revision = self._last_change = snapshot.revision
        return news

    def interrupted(self) -> None:
        """The stream broke: forget a snapshot that did not arrive completely (its revision was never
        taken, so resuming asks for it again)."""
        with self._lock:
            self._pending = None

    # --- reading ---

    @property
    def revision(self) -> int:
        """The registry revision everything up to which has been applied (0 before the first snapshot)."""
        return self._revision

    @property
    def ready(self) -> bool:
        """Whether a complete snapshot (or a resumed stream) has been applied and confirmed by a heartbeat."""
        return self._ready

    def resolve(self, model: str, alias: str) -> _Resolution:
        """The version `alias` of `model` points at, with `revision` set to the state's revision.

        Raises:
            NotFound: The alias is not known (it does not exist, or its model is not watched).
        """
        model_id = _model_id(model)
        with self._lock:
            state = self._models.get(model_id)
            target = state.aliases.get(alias) if state is not None else None
            if target is None:
                name = f"models/{model_id}/aliases/{alias}"
                raise NotFound(f"alias {name} not found", reason="ALIAS_NOT_FOUND", metadata={"alias": name})
            return self._answer(target)

    def route(self, model: str, routing_key: str) -> _Resolution:
        """The version serving `routing_key` under the model's traffic policy, chosen with
        :func:`modelreg.routing.pick_route` exactly as the server's ResolveRoute does.

        An alias route resolves through the alias map. For a pinned version the answer carries its digest
        and stage when the version has been seen (as an alias target or in a stage change); otherwise only
        `model_version` and `version`.

        Raises:
            FailedPrecondition: The model has no traffic policy (`NO_TRAFFIC_POLICY`).
            NotFound: The route names an alias that is not known.
        """
        model_id = _model_id(model)
        with self._lock:
            state = self._models.get(model_id)
            policy = state.policy if state is not None else None
            if state is None or policy is None:
                name = f"models/{model_id}"
                raise FailedPrecondition(
                    f"{name} has no traffic policy", reason="NO_TRAFFIC_POLICY", metadata={"model": name}
                )
            route = policy.routes[pick_route([r.weight for r in policy.routes], model_id, routing_key)]
            if route.WhichOneof("target") == "alias":
                target = state.aliases.get(route.alias)
                if target is None:
                    name = f"models/{model_id}/aliases/{route.alias}"
                    raise NotFound(
                        f"alias {name} not found", reason="ALIAS_NOT_FOUND", metadata={"alias": name}
                    )
                return self._answer(target)
            number = int(_last_segment(route.model_version))
            known = state.versions.get(number)
            if known is None:
                return _Resolution(model_version=route.model_version, version=number, revision=self._revision)
            return self._answer(known)

    def traffic_policy(self, model: str) -> lifecycle_pb2.TrafficPolicy | None:
        """The model's traffic policy, or None when it has none."""
        with self._lock:
            state = self._models.get(_model_id(model))
            if state is None or state.policy is None:
                return None
            policy = lifecycle_pb2.TrafficPolicy()
            policy.CopyFrom(state.policy)
            return policy

    def production_version(self, model: str) -> _Resolution | None:
        """The model's PRODUCTION version, or None when it has none."""
        with self._lock:
            state = self._models.get(_model_id(model))
            if state is None or state.production is None:
                return None
            return self._answer(state.production)

    def aliases(self, model: str) -> dict[str, _Resolution]:
        """Every known alias of the model and its target."""
        with self._lock:
            state = self._models.get(_model_id(model))
            if state is None:
                return {}
            return {alias: self._answer(target) for alias, target in sorted(state.aliases.items())}

    def _answer(self, stored: _Resolution) -> _Resolution:
        # A copy, so callers cannot change the state; its revision is the one the whole state reflects.
        answer = _resolution(stored)
        answer.revision = self._revision
        return answer


# --- connection handling shared by both resolvers ------------------------------------------------------


class _Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to the maximum."""

    def __init__(self, initial: float = INITIAL_BACKOFF, maximum: float = MAX_BACKOFF) -> None:
        self._initial = initial
        self._maximum = maximum
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._maximum, self._initial * 2.0**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return ceiling / 2 + random.random() * ceiling / 2


def _split_addresses(address: str | Sequence[str]) -> list[str]:
    parts = [address] if isinstance(address, str) else list(address)
    addresses = [a.strip() for part in parts for a in part.split(",") if a.strip()]
    if not addresses:
        raise ValueError("no registry address given")
    return addresses


class _ResolverBase:
    """Configuration, state and reads shared by the sync and async resolvers."""

    def __init__(
        self,
        address: str | Sequence[str] | None,
        *,
        models: str | Iterable[str] | None,
        token: str | None,
        on_change: ChangeCallback | None,
        idle_timeout: float | None,
        tls: bool,
        root_certificates: bytes | None,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive or None, got {idle_timeout}")
        joined = address if address is None or isinstance(address, str) else ",".join(address)
        base = ClientConfig.resolve(
            joined, token=token, timeout=None, tls=tls, root_certificates=root_certificates
        )
        self._configs = [
            dataclasses.replace(base, address=a, options=(*_CHANNEL_OPTIONS, *base.options))
            for a in _split_addresses(base.address)
        ]
        self._models = list(_core.watch_aliases_request(models).models)
        self._on_change = on_change
        self._idle_timeout = idle_timeout
        self._state = AliasState()
        self._backoff = _Backoff()
        self._next_index = 0
        self._connected: str | None = None
        self._fatal: ModelregError | None = None
        self._last_error: Exception | None = None

    @property
    def addresses(self) -> list[str]:
        """The registry addresses, in failover order."""
        return [config.address for config in self._configs]

    @property
    def connected_address(self) -> str | None:
        """The address of the stream that delivered the last message; None while reconnecting."""
        return self._connected

    @property
    def revision(self) -> int:
        """The registry revision the in-memory state reflects."""
        return self._state.revision

    @property
    def ready(self) -> bool:
        """Whether the first snapshot has been applied completely."""
        return self._state.ready

    @property
    def state(self) -> AliasState:
        """The in-memory state (read-only use)."""
        return self._state

    def resolve(self, model: str, alias: str) -> lifecycle_pb2.ResolveAliasResponse:
        """The version `alias` of `model` points at, from memory (no RPC).

        Raises:
            NotFound: The alias is unknown (or its model is not watched).
        """
        return self._state.resolve(model, alias)

    def route(self, model: str, routing_key: str) -> lifecycle_pb2.ResolveAliasResponse:
        """The version serving `routing_key`, computed locally as the server's ResolveRoute does (see
        :meth:`AliasState.route`).

        Raises:
            FailedPrecondition: The model has no traffic policy.
            NotFound: The chosen route names an unknown alias.
        """
        return self._state.route(model, routing_key)

    def traffic_policy(self, model: str) -> lifecycle_pb2.TrafficPolicy | None:
        """The model's traffic policy from memory, or None."""
        return self._state.traffic_policy(model)

    def production_version(self, model: str) -> lifecycle_pb2.ResolveAliasResponse | None:
        """The model's PRODUCTION version from memory, or None."""
        return self._state.production_version(model)

    def _next_config(self) -> ClientConfig:
        config = self._configs[self._next_index]
        self._next_index = (self._next_index + 1) % len(self._configs)
        return config

    def _stream_failed(self, err: Exception | None, address: str) -> bool:
        """Record why a stream ended; True if the resolver must give up (a permanent error before the
        first snapshot, which start() reports)."""
        self._state.interrupted()
        if err is None:
            log.info("watch stream from %s ended; reconnecting", address)
            return False
        self._last_error = err
        if isinstance(err, _PERMANENT_ERRORS) and not self._state.ready:
            self._fatal = err
            return True
        log.warning("watch stream from %s failed (%s); reconnecting", address, err)
        return False

    def _timeout_error(self, timeout: float) -> DeadlineExceeded:
        last = f"; last error: {self._last_error}" if self._last_error is not None else ""
        return DeadlineExceeded(
            f"no complete snapshot from {', '.join(self.addresses)} within {timeout}s{last}"
        )


# --- the thread-based resolver -------------------------------------------------------------------------


class AliasResolver(_ResolverBase):
    """Keeps the aliases, traffic policies and PRODUCTION versions of `models` in memory, from a background
    thread, so :meth:`resolve` and :meth:`route` answer without an RPC. Usable from any framework.

    ```python
    resolver = AliasResolver("registry-a:50051,registry-b:50051", models=["fraud"], on_change=reload)
    resolver.start()          # returns once the first snapshot is in memory
    resolver.resolve("fraud", "champion").artifact_digest
    resolver.stop()
    ```

    The stream reconnects on any error with exponential backoff and jitter (0.1 s to 5 s), to the next
    address each time, resuming after :attr:`revision`. A stream that delivers nothing (not even the
    server's heartbeats) for `idle_timeout` seconds is treated as broken.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        models: str | Iterable[str] | None = None,
        token: str | None = None,
        on_change: ChangeCallback | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        """Configure the resolver; nothing connects before :meth:`start`.

        Args:
            address: `host:port`, several as `"h1:p1,h2:p2"` or a list; default `$MODELREG_ADDRESS` (which
                may list several) or `127.0.0.1:50051`.
            models: Model ids or names to watch; None watches every model.
            token: Bearer token, as for :class:`modelreg.Registry`.
            on_change: Called on the resolver's thread with each change after it is applied; exceptions
                are logged. At the end of a snapshot it receives what the snapshot changed.
            idle_timeout: Seconds without any message after which the stream is reconnected; None never.
            tls: Use TLS with the system's root certificates.
            root_certificates: PEM root certificates; implies `tls=True`.
        """
        super().__init__(
            address,
            models=models,
            token=token,
            on_change=on_change,
            idle_timeout=idle_timeout,
            tls=tls,
            root_certificates=root_certificates,
        )
        self._stopping = threading.Event()
        self._settled = threading.Event()  # ready, or given up
        self._lock = threading.Lock()  # guards _stream
        self._stream: WatchStream | None = None
        self._last_message = time.monotonic()
        self._threads: list[threading.Thread] = []

    def start(self, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> Self:
        """Start the background thread; with `wait`, return once the first snapshot is complete.

        Raises:
            DeadlineExceeded: No complete snapshot within `timeout` seconds (the resolver is stopped).
            InvalidArgument, Unauthenticated, PermissionDenied: The server refused the watch.
        """
        if self._threads:
            raise RuntimeError("AliasResolver.start() called twice")
        self._threads.append(threading.Thread(target=self._run, name="modelreg-alias-resolver", daemon=True))
        if self._idle_timeout is not None:
            self._threads.append(
                threading.Thread(target=self._watchdog, name="modelreg-alias-watchdog", daemon=True)
            )
        for thread in self._threads:
            thread.start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Block until the first snapshot is complete.

        Raises:
            DeadlineExceeded: Not within `timeout` seconds (the resolver is stopped).
            InvalidArgument, Unauthenticated, PermissionDenied: The server refused the watch.
        """
        self._settled.wait(timeout)
        if self._fatal is not None:
            self.stop()
            raise self._fatal
        if not self._state.ready:
            self.stop()
            raise self._timeout_error(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the stream and the background thread (idempotent)."""
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()
        for thread in self._threads:
            if thread is not threading.current_thread():  # stop() called from on_change
                thread.join(timeout)

    def __enter__(self) -> Self:
        if not self._threads:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AliasResolver(addresses={self.addresses!r}, revision={self.revision})"

    def _run(self) -> None:
        clients: dict[str, Registry] = {}
        try:
            while not self._stopping.is_set():
                config = self._next_config()
                client = clients.get(config.address)
                if client is None:
                    client = clients[config.address] = Registry(config=config)
                if self._follow(client):
                    break
                self._stopping.wait(self._backoff.next_delay())
        finally:
            self._settled.set()
            for client in clients.values():
                client.close()

    def _follow(self, client: Registry) -> bool:
        """Read one stream until it ends; True if the resolver must give up."""
        error: Exception | None = None
        try:
            stream = client.watch_aliases(self._models, since_revision=self._state.revision)
            with self._lock:
                if self._stopping.is_set():
                    stream.cancel()
                    return True
                self._stream = stream
            self._last_message = time.monotonic()
            for message in stream:
                self._last_message = time.monotonic()
                self._connected = client.address
                changes = self._state.apply(message)
                self._backoff.reset()
                if self._state.ready:
                    self._settled.set()
                for change in changes:
                    self._notify(change)
        except ModelregError as err:
            error = err
        except Exception as err:  # a bug must not end the resolver silently; reconnecting resyncs
            log.exception("alias resolver failed while applying the watch stream")
            error = err
        finally:
            self._connected = None
            with self._lock:
                stream_done, self._stream = self._stream, None
            if stream_done is not None:
                stream_done.cancel()
        if self._stopping.is_set():
            return True
        return self._stream_failed(error, client.address)

    def _notify(self, change: lifecycle_pb2.Change) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("on_change callback failed for revision %d", change.revision)

    def _watchdog(self) -> None:
        assert self._idle_timeout is not None
        while not self._stopping.wait(min(1.0, self._idle_timeout / 4)):
            with self._lock:
                stream = self._stream
                idle = time.monotonic() - self._last_message
            if stream is not None and idle > self._idle_timeout:
                log.warning("watch stream idle for %.1fs; reconnecting", idle)
                stream.cancel()


# --- the asyncio resolver ------------------------------------------------------------------------------


class AsyncAliasResolver(_ResolverBase):
    """:class:`AliasResolver` for asyncio: the stream is read by a task of the running loop.

    ```python
    async with AsyncAliasResolver(models=["fraud"]) as resolver:
        resolver.resolve("fraud", "champion")
    ```

    `on_change` may be a coroutine function. Create, start and stop it inside one running event loop.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        models: str | Iterable[str] | None = None,
        token: str | None = None,
        on_change: ChangeCallback | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | None = None,
    ) -> None:
        """Configure the resolver; the arguments are those of :class:`AliasResolver`."""
        super().__init__(
            address,
            models=models,
            token=token,
            on_change=on_change,
            idle_timeout=idle_timeout,
            tls=tls,
            root_certificates=root_certificates,
        )
        self._task: asyncio.Task[None] | None = None
        self._settled_event: asyncio.Event | None = None

    async def start(self, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> Self:  # noqa: ASYNC109
        """Start the task; with `wait`, return once the first snapshot is complete.

        Raises:
            DeadlineExceeded: No complete snapshot within `timeout` seconds (the resolver is stopped).
            InvalidArgument, Unauthenticated, PermissionDenied: The server refused the watch.
        """
        if self._task is not None:
            raise RuntimeError("AsyncAliasResolver.start() called twice")
        self._settled_event = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="modelreg-alias-resolver")
        if wait:
            await self.wait_ready(timeout)
        return self

    async def wait_ready(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait until the first snapshot is complete (errors as in :meth:`start`)."""
        if self._settled_event is None:
            raise RuntimeError("AsyncAliasResolver.wait_ready() before start()")
        try:
            async with asyncio.timeout(timeout):
                await self._settled_event.wait()
        except TimeoutError:
            pass
        if self._fatal is not None:
            await self.stop()
            raise self._fatal
        if not self._state.ready:
            await self.stop()
            raise self._timeout_error(timeout)

    async def stop(self) -> None:
        """Stop the stream and the task (idempotent)."""
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def __aenter__(self) -> Self:
        if self._task is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"AsyncAliasResolver(addresses={self.addresses!r}, revision={self.revision})"

    async def _run(self) -> None:
        assert self._settled_event is not None
        clients: dict[str, AsyncRegistry] = {}
        try:
            while True:
                config = self._next_config()
                client = clients.get(config.address)
                if client is None:
                    client = clients[config.address] = AsyncRegistry(config=config)
                if await self._follow(client):
                    return
                await asyncio.sleep(self._backoff.next_delay())
        finally:
            self._settled_event.set()
            for client in clients.values():
                await client.close()

    async def _follow(self, client: AsyncRegistry) -> bool:
        """Read one stream until it ends; True if the resolver must give up."""
        assert self._settled_event is not None
        error: Exception | None = None
        stream: AsyncWatchStream | None = None
        try:
            stream = client.watch_aliases(self._models, since_revision=self._state.revision)
            while True:
                async with asyncio.timeout(self._idle_timeout):
                    message = await anext(stream, None)
                if message is None:
                    break
                self._connected = client.address
                changes = self._state.apply(message)
                self._backoff.reset()
                if self._state.ready:
                    self._settled_event.set()
                for change in changes:
                    await self._notify(change)
        except ModelregError as err:
            error = err
        except TimeoutError as err:
            log.warning("watch stream idle for %ss; reconnecting", self._idle_timeout)
            error = err
        except Exception as err:  # a bug must not end the resolver silently; reconnecting resyncs
            log.exception("alias resolver failed while applying the watch stream")
            error = err
        finally:
            self._connected = None
            if stream is not None:
                stream.cancel()
        return self._stream_failed(error, client.address)

    async def _notify(self, change: lifecycle_pb2.Change) -> None:
        if self._on_change is None:
            return
        try:
            result = self._on_change(change)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_change callback failed for revision %d", change.revision)
