"""The serving hot path: resolve aliases and routes from the replica's cache, falling back to PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from modelreg.routing import pick_route
from modelreg_server.domain import errors
from modelreg_server.domain.feed import ChangeFeed
from modelreg_server.domain.names import alias_name, version_name
from modelreg_server.domain.records import (
    AliasRecord,
    Change,
    ChangeType,
    Resolution,
    Route,
    Stage,
    TrafficPolicyRecord,
)
from modelreg_server.domain.resolve_cache import ModelScopedCache
from modelreg_server.storage import lifecycle_repo as repo
from modelreg_server.storage.db import Database

SNAPSHOT_CHUNK = 500
_VERSION_KEY = "#v"  # cache keys of pinned versions; aliases never start with '#'
_TRAFFIC_KEY = "#traffic"


class Serving:
    """ResolveAlias, ResolveRoute and watch snapshots."""

    def __init__(self, db: Database, feed: ChangeFeed, cache: ModelScopedCache[object]) -> None:
        self._db = db
        self.feed = feed
        self.cache = cache

    async def resolve(self, model_id: str, alias: str) -> Resolution:
        """The version an alias points at now."""
        hit, value = self.cache.get(model_id, alias)
        if not hit:
            async with self._db.connection() as conn:
                record, revision = await repo.resolve_with_revision(conn, model_id, alias)
            value = dataclasses.replace(record.resolution(), revision=revision) if record else None
            self.cache.store(model_id, alias, value, revision)
        if value is None:
            name = alias_name(model_id, alias)
            raise errors.NotFound(f"alias {name} not found", "ALIAS_NOT_FOUND", {"alias": name})
        assert isinstance(value, Resolution)
        return value

    async def resolve_as_of(self, model_id: str, alias: str, at: datetime) -> Resolution:
        """The version an alias pointed at, at a past instant (from its history)."""
        async with self._db.connection() as conn:
            version = await repo.alias_version_at(conn, model_id, alias, at)
            if version is None:
                name = alias_name(model_id, alias)
                raise errors.NotFound(
                    f"alias {name} did not exist at {at.isoformat()}", "ALIAS_NOT_FOUND", {"alias": name}
                )
            resolution, _ = await repo.version_with_revision(conn, model_id, version)
        if resolution is None:
            raise errors.NotFound(
                f"{version_name(model_id, version)} no longer exists",
                "VERSION_NOT_FOUND",
                {"model_version": version_name(model_id, version)},
            )
        return resolution

    async def _resolve_version(self, model_id: str, version: int) -> Resolution:
        key = f"{_VERSION_KEY}{version}"
        hit, value = self.cache.get(model_id, key)
        if not hit:
            async with self._db.connection() as conn:
                value, revision = await repo.version_with_revision(conn, model_id, version)
            self.cache.store(model_id, key, value, revision)
        if value is None:
            name = version_name(model_id, version)
            raise errors.NotFound(
                f"model version {name} not found", "VERSION_NOT_FOUND", {"model_version": name}
            )
        assert isinstance(value, Resolution)
        return value

    async def traffic(self, model_id: str) -> TrafficPolicyRecord | None:
        """The model's traffic policy, cached."""
        hit, value = self.cache.get(model_id, _TRAFFIC_KEY)
        if not hit:
            async with self._db.connection() as conn:
                value, revision = await repo.traffic_with_revision(conn, model_id)
            self.cache.store(model_id, _TRAFFIC_KEY, value, revision)
        assert value is None or isinstance(value, TrafficPolicyRecord)
        return value

    async def resolve_route(self, model_id: str, routing_key: str) -> tuple[Resolution, Route]:
        """The version serving `routing_key` under the model's traffic policy."""
        policy = await self.traffic(model_id)
        if policy is None or not policy.routes:
            name = f"models/{model_id}"
            raise errors.FailedPrecondition(
                f"{name} has no traffic policy",
                "NO_TRAFFIC_POLICY",
                {"model": name},
                [errors.PreconditionViolation("NO_TRAFFIC_POLICY", name, "set one with SetTrafficPolicy")],
            )
        route = policy.routes[pick_route([r.weight for r in policy.routes], model_id, routing_key)]
        if route.alias is not None:
            return await self.resolve(model_id, route.alias), route
        assert route.version is not None
        return await self._resolve_version(model_id, route.version), route

    async def snapshot(self, model_ids: Sequence[str] | None) -> AsyncIterator[tuple[int, list[Change]]]:
        """The current state as changes, in chunks, all at one revision (REPEATABLE READ)."""
        async with (
            self._db.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            revision, aliases, traffic, production = await repo.snapshot(
                conn, None if model_ids is None else list(model_ids)
            )
        changes = [_alias_change(a, revision) for a in aliases]
        changes += [
            Change(
                revision,
                ChangeType.TRAFFIC_CHANGED,
                t.model_id,
                t.updater,
                t.update_time or _epoch(),
                routes=t.routes,
            )
            for t in traffic
        ]
        changes += [
            Change(
                revision,
                ChangeType.STAGE_CHANGED,
                model_id,
                "",
                _epoch(),
                resolution=Resolution(model_id, version, digest, Stage.PRODUCTION, revision),
            )
            for model_id, version, digest in production
        ]
        if not changes:
            yield revision, []
        for start in range(0, len(changes), SNAPSHOT_CHUNK):
            yield revision, changes[start : start + SNAPSHOT_CHUNK]

    async def current_revision(self) -> int:
        """The newest committed revision."""
        async with self._db.connection() as conn:
            return await repo.current_revision(conn)

    async def oldest_retained_revision(self) -> int | None:
        """Smallest revision still in the feed."""
        async with self._db.connection() as conn:
            return await repo.oldest_retained_revision(conn)

    async def changes_after(self, revision: int, limit: int = 500) -> list[Change]:
        """Stored changes after `revision`."""
        async with self._db.connection() as conn:
            return await repo.events_after(conn, revision, limit)


def _epoch() -> datetime:
    return datetime.fromtimestamp(0).astimezone()


def _alias_change(alias: AliasRecord, revision: int) -> Change:
    return Change(
        revision,
        ChangeType.ALIAS_SET,
        alias.model_id,
        alias.updater,
        alias.update_time,
        alias=alias.alias,
        resolution=dataclasses.replace(alias.resolution(), revision=revision),
    )
