"""SQL for stages, aliases, traffic policies and the change feed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from modelreg_server.domain.records import (
    AliasMove,
    AliasRecord,
    Change,
    ChangeType,
    PromotionPolicy,
    Resolution,
    Route,
    Stage,
    StageMove,
    TrafficPolicyRecord,
)
from modelreg_server.storage.db import Connection

NOTIFY_CHANNEL = "modelreg_events"

_ALIAS_COLUMNS = (
    "a.model_id, a.alias, a.version, a.revision, a.updater, a.create_time, a.update_time, "
    "v.artifact_digest, v.stage"
)
_ALIAS_FROM = "aliases a JOIN model_versions v ON v.model_id = a.model_id AND v.version = a.version"


def _alias(row: asyncpg.Record) -> AliasRecord:
    return AliasRecord(
        model_id=row["model_id"],
        alias=row["alias"],
        version=row["version"],
        revision=row["revision"],
        updater=row["updater"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        artifact_digest=row["artifact_digest"],
        stage=Stage(row["stage"]),
    )


def routes_to_json(routes: tuple[Route, ...]) -> list[dict[str, Any]]:
    """Routes as stored in jsonb (and in event payloads)."""
    return [{"alias": r.alias, "version": r.version, "weight": r.weight} for r in routes]


def routes_from_json(data: list[dict[str, Any]]) -> tuple[Route, ...]:
    """Inverse of routes_to_json."""
    return tuple(Route(weight=int(r["weight"]), alias=r.get("alias"), version=r.get("version")) for r in data)


# --- revisions and events ----------------------------------------------------------------------------


async def allocate_revisions(conn: Connection, count: int) -> int:
    """Takes `count` revisions and returns the first. Holds the counter's row lock until commit."""
    last = await conn.fetchval("UPDATE registry_revision SET value = value + $1 RETURNING value", count)
    return int(last) - count + 1


async def change_time(conn: Connection) -> datetime:
    """Now, read after allocate_revisions: change times then increase with revisions."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def current_revision(conn: Connection) -> int:
    """The newest committed revision."""
    return int(await conn.fetchval("SELECT value FROM registry_revision"))


async def append_event(
    conn: Connection,
    revision: int,
    model_id: str,
    change_type: ChangeType,
    actor: str,
    *,
    alias: str | None = None,
    version: int | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """Writes one change into the feed and wakes the listeners of every replica at commit."""
    await conn.execute(
        "INSERT INTO registry_events (revision, model_id, change_type, alias, version, payload, actor) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        revision,
        model_id,
        int(change_type),
        alias,
        version,
        payload or {},
        actor,
    )
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(revision))


def _change(row: asyncpg.Record) -> Change:
    payload: dict[str, Any] = row["payload"]
    change_type = ChangeType(row["change_type"])
    resolution = None
    if row["version"] is not None:
        resolution = Resolution(
            row["model_id"],
            row["version"],
            payload.get("digest", ""),
            Stage(payload.get("stage", 1)),
            row["revision"],
        )
    return Change(
        revision=row["revision"],
        change_type=change_type,
        model_id=row["model_id"],
        actor=row["actor"],
        create_time=row["create_time"],
        alias=row["alias"],
        resolution=resolution,
        previous_stage=Stage(payload["previous_stage"]) if "previous_stage" in payload else None,
        routes=routes_from_json(payload["routes"]) if "routes" in payload else None,
        policy=PromotionPolicy(payload["policy"]) if "policy" in payload else None,
    )


async def events_after(conn: Connection, revision: int, limit: int) -> list[Change]:
    """Changes with revision > `revision`, oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM registry_events WHERE revision > $1 ORDER BY revision LIMIT $2", revision, limit
    )
    return [_change(r) for r in rows]


async def oldest_retained_revision(conn: Connection) -> int | None:
    """The smallest revision still in the feed, or None when it is empty."""
    value = await conn.fetchval("SELECT min(revision) FROM registry_events")
    return None if value is None else int(value)


async def prune_events(conn: Connection, before: datetime) -> int:
    """Deletes feed entries older than `before`; returns how many."""
    status = await conn.execute("DELETE FROM registry_events WHERE create_time < $1", before)
    return int(status.split()[-1])


# --- stages ------------------------------------------------------------------------------------------


async def production_version(conn: Connection, model_id: str, *, lock: bool = False) -> int | None:
    """The model's PRODUCTION version, if any."""
    suffix = " FOR UPDATE" if lock else ""
    value = await conn.fetchval(
        f"SELECT version FROM model_versions WHERE model_id = $1 AND stage = 3{suffix}", model_id
    )
    return None if value is None else int(value)


async def set_stage(conn: Connection, model_id: str, version: int, stage: Stage) -> None:
    """Writes a version's stage (the triggers check policy and allowed moves)."""
    await conn.execute(
        "UPDATE model_versions SET stage = $3, revision = revision + 1, update_time = clock_timestamp() "
        "WHERE model_id = $1 AND version = $2",
        model_id,
        version,
        int(stage),
    )


async def record_transition(
    conn: Connection,
    model_id: str,
    version: int,
    from_stage: Stage,
    to_stage: Stage,
    *,
    actor: str,
    comment: str,
    revision: int,
) -> None:
    """Appends to the stage history."""
    await conn.execute(
        "INSERT INTO stage_transitions (model_id, version, from_stage, to_stage, actor, comment, revision) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        model_id,
        version,
        int(from_stage),
        int(to_stage),
        actor,
        comment,
        revision,
    )


async def list_transitions(
    conn: Connection, model_id: str, version: int | None, before_id: int | None, limit: int
) -> tuple[list[StageMove], int | None]:
    """Newest first; returns the page and the id to continue before (None at the end)."""
    rows = await conn.fetch(
        "SELECT * FROM stage_transitions WHERE model_id = $1 AND ($2::bigint IS NULL OR version = $2) "
        "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        model_id,
        version,
        before_id,
        limit + 1,
    )
    moves = [
        StageMove(
            r["model_id"],
            r["version"],
            Stage(r["from_stage"]),
            Stage(r["to_stage"]),
            r["actor"],
            r["comment"],
            r["revision"],
            r["create_time"],
        )
        for r in rows[:limit]
    ]
    return moves, (rows[limit - 1]["id"] if len(rows) > limit else None)


# --- aliases -----------------------------------------------------------------------------------------


async def get_alias(conn: Connection, model_id: str, alias: str, *, lock: bool = False) -> AliasRecord | None:
    """An alias with the state of its version."""
    suffix = " FOR UPDATE OF a" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_ALIAS_COLUMNS} FROM {_ALIAS_FROM} WHERE a.model_id = $1 AND a.alias = $2{suffix}",
        model_id,
        alias,
    )
    return _alias(row) if row else None


async def list_aliases(conn: Connection, model_id: str) -> list[AliasRecord]:
    """Every alias of a model, by name."""
    rows = await conn.fetch(
        f"SELECT {_ALIAS_COLUMNS} FROM {_ALIAS_FROM} WHERE a.model_id = $1 ORDER BY a.alias", model_id
    )
    return [_alias(r) for r in rows]


async def upsert_alias(
    conn: Connection, model_id: str, alias: str, version: int, revision: int, updater: str, at: datetime
) -> None:
    """Creates or moves an alias."""
    await conn.execute(
        "INSERT INTO aliases (model_id, alias, version, revision, updater, create_time, update_time) "
        "VALUES ($1, $2, $3, $4, $5, $6, $6) "
        "ON CONFLICT (model_id, alias) DO UPDATE SET version = EXCLUDED.version, "
        "revision = EXCLUDED.revision, updater = EXCLUDED.updater, update_time = EXCLUDED.update_time",
        model_id,
        alias,
        version,
        revision,
        updater,
        at,
    )


async def delete_alias(conn: Connection, model_id: str, alias: str) -> None:
    """Removes an alias."""
    await conn.execute("DELETE FROM aliases WHERE model_id = $1 AND alias = $2", model_id, alias)


async def record_alias_move(
    conn: Connection,
    model_id: str,
    alias: str,
    version: int | None,
    previous_version: int | None,
    *,
    actor: str,
    comment: str,
    revision: int,
    at: datetime,
) -> None:
    """Appends to an alias's history (version None: deleted; previous None: created)."""
    await conn.execute(
        "INSERT INTO alias_history (model_id, alias, version, previous_version, actor, comment, revision, "
        "create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        model_id,
        alias,
        version,
        previous_version,
        actor,
        comment,
        revision,
        at,
    )


def _move(r: asyncpg.Record) -> AliasMove:
    return AliasMove(
        r["model_id"],
        r["alias"],
        r["version"],
        r["previous_version"],
        r["actor"],
        r["comment"],
        r["revision"],
        r["create_time"],
    )


async def alias_history(
    conn: Connection, model_id: str, alias: str | None, before_id: int | None, limit: int
) -> tuple[list[AliasMove], int | None]:
    """Newest first; returns the page and the id to continue before (None at the end)."""
    rows = await conn.fetch(
        "SELECT * FROM alias_history WHERE model_id = $1 AND ($2::text IS NULL OR alias = $2) "
        "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        model_id,
        alias,
        before_id,
        limit + 1,
    )
    return [_move(r) for r in rows[:limit]], (rows[limit - 1]["id"] if len(rows) > limit else None)


async def last_alias_move(conn: Connection, model_id: str, alias: str) -> AliasMove | None:
    """The newest history entry of an alias."""
    row = await conn.fetchrow(
        "SELECT * FROM alias_history WHERE model_id = $1 AND alias = $2 ORDER BY id DESC LIMIT 1",
        model_id,
        alias,
    )
    return _move(row) if row else None


async def alias_version_at(conn: Connection, model_id: str, alias: str, at: datetime) -> int | None:
    """The version an alias pointed at, at a past instant (None when it did not exist)."""
    row = await conn.fetchrow(
        "SELECT version FROM alias_history WHERE model_id = $1 AND alias = $2 AND create_time <= $3 "
        "ORDER BY id DESC LIMIT 1",
        model_id,
        alias,
        at,
    )
    return None if row is None or row["version"] is None else int(row["version"])


async def resolve_with_revision(
    conn: Connection, model_id: str, alias: str
) -> tuple[AliasRecord | None, int]:
    """An alias and the registry revision, read in one snapshot (one statement)."""
    row = await conn.fetchrow(
        f"SELECT r.value AS registry_revision, {_ALIAS_COLUMNS} FROM registry_revision r "
        f"LEFT JOIN ({_ALIAS_FROM}) ON a.model_id = $1 AND a.alias = $2",
        model_id,
        alias,
    )
    assert row is not None
    return (_alias(row) if row["alias"] is not None else None), int(row["registry_revision"])


# --- traffic -----------------------------------------------------------------------------------------


async def get_traffic(conn: Connection, model_id: str) -> TrafficPolicyRecord | None:
    """The model's traffic policy, if any."""
    row = await conn.fetchrow("SELECT * FROM traffic_policies WHERE model_id = $1", model_id)
    if row is None:
        return None
    return TrafficPolicyRecord(
        row["model_id"], routes_from_json(row["routes"]), row["revision"], row["updater"], row["update_time"]
    )


async def put_traffic(conn: Connection, policy: TrafficPolicyRecord) -> None:
    """Replaces the policy and its pinned versions; an empty policy deletes it."""
    await conn.execute("DELETE FROM traffic_policies WHERE model_id = $1", policy.model_id)
    if not policy.routes:
        return
    await conn.execute(
        "INSERT INTO traffic_policies (model_id, routes, revision, updater) VALUES ($1, $2, $3, $4)",
        policy.model_id,
        routes_to_json(policy.routes),
        policy.revision,
        policy.updater,
    )
    pinned = sorted({r.version for r in policy.routes if r.version is not None})
    if pinned:
        await conn.execute(
            "INSERT INTO traffic_pins (model_id, version) SELECT $1, unnest($2::bigint[])",
            policy.model_id,
            pinned,
        )


async def aliases_used_by_traffic(conn: Connection, model_id: str) -> set[str]:
    """Aliases a model's traffic policy routes to."""
    policy = await get_traffic(conn, model_id)
    return {r.alias for r in policy.routes if r.alias} if policy else set()


# --- snapshots -----------------------------------------------------------------------------------------


async def snapshot(
    conn: Connection, model_ids: list[str] | None
) -> tuple[int, list[AliasRecord], list[TrafficPolicyRecord], list[tuple[str, int, str]]]:
    """Revision, aliases, traffic policies and PRODUCTION versions (model, version, digest); run it in a
    REPEATABLE READ transaction so all parts are one snapshot."""
    revision = await current_revision(conn)
    where = "" if model_ids is None else " WHERE a.model_id = ANY($1::text[])"
    args: list[Any] = [] if model_ids is None else [model_ids]
    alias_rows = await conn.fetch(
        f"SELECT {_ALIAS_COLUMNS} FROM {_ALIAS_FROM}{where} ORDER BY a.model_id, a.alias", *args
    )
    traffic_where = "" if model_ids is None else " WHERE model_id = ANY($1::text[])"
    traffic_rows = await conn.fetch(f"SELECT * FROM traffic_policies{traffic_where} ORDER BY model_id", *args)
    prod_where = "" if model_ids is None else " AND model_id = ANY($1::text[])"
    prod_rows = await conn.fetch(
        "SELECT model_id, version, artifact_digest FROM model_versions "
        f"WHERE stage = 3{prod_where} ORDER BY model_id",
        *args,
    )
    traffic = [
        TrafficPolicyRecord(
            r["model_id"], routes_from_json(r["routes"]), r["revision"], r["updater"], r["update_time"]
        )
        for r in traffic_rows
    ]
    production = [(r["model_id"], int(r["version"]), r["artifact_digest"]) for r in prod_rows]
    return revision, [_alias(r) for r in alias_rows], traffic, production


async def traffic_with_revision(conn: Connection, model_id: str) -> tuple[TrafficPolicyRecord | None, int]:
    """A model's traffic policy and the registry revision, read in one snapshot (one statement)."""
    row = await conn.fetchrow(
        "SELECT r.value AS registry_revision, t.* FROM registry_revision r "
        "LEFT JOIN traffic_policies t ON t.model_id = $1",
        model_id,
    )
    assert row is not None
    revision = int(row["registry_revision"])
    if row["model_id"] is None:
        return None, revision
    routes = routes_from_json(row["routes"])
    return TrafficPolicyRecord(
        row["model_id"], routes, row["revision"], row["updater"], row["update_time"]
    ), revision


async def version_with_revision(
    conn: Connection, model_id: str, version: int
) -> tuple[Resolution | None, int]:
    """A version's resolution and the registry revision, read in one snapshot (one statement)."""
    row = await conn.fetchrow(
        "SELECT r.value AS registry_revision, v.version, v.artifact_digest, v.stage FROM registry_revision r "
        "LEFT JOIN model_versions v ON v.model_id = $1 AND v.version = $2",
        model_id,
        version,
    )
    assert row is not None
    revision = int(row["registry_revision"])
    if row["version"] is None:
        return None, revision
    return Resolution(
        model_id, row["version"], row["artifact_digest"], Stage(row["stage"]), revision
    ), revision
