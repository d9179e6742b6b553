"""SQL for models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from modelreg_server.domain import errors
from modelreg_server.domain.filtering import Node
from modelreg_server.domain.ordering import OrderKey
from modelreg_server.domain.records import ModelFields, ModelRecord, PromotionPolicy
from modelreg_server.storage.db import Connection
from modelreg_server.storage.listing import ListingSpec, PageRows, fetch_page
from modelreg_server.storage.sql_query import FieldSpec, Params

_COLUMNS = (
    "m.model_id, m.uid::text AS uid, m.description, m.labels, m.owner_team, m.latest_version, "
    "m.revision, m.create_time, m.update_time, m.promotion_policy, m.protected_aliases"
)

LISTING = ListingSpec(
    columns=_COLUMNS,
    source="models m",
    filter_fields={
        "name": FieldSpec("string", "('models/' || m.model_id)"),
        "model_id": FieldSpec("string", "m.model_id"),
        "description": FieldSpec("string", "m.description"),
        "owner_team": FieldSpec("string", "m.owner_team"),
        "promotion_policy": FieldSpec(
            "enum", "m.promotion_policy", {f"PROMOTION_POLICY_{p.name}": int(p) for p in PromotionPolicy}
        ),
        "labels": FieldSpec("labels", "m.labels"),
        "latest_version": FieldSpec("int", "m.latest_version"),
        "create_time": FieldSpec("timestamp", "m.create_time"),
        "update_time": FieldSpec("timestamp", "m.update_time"),
    },
    sort_fields={
        "name": ("m.model_id", False),
        "create_time": ("m.create_time", False),
        "update_time": ("m.update_time", False),
        "latest_version": ("m.latest_version", False),
        "owner_team": ("m.owner_team", False),
    },
    labels_column="m.labels",
    metrics_column=None,
    tiebreak=("m.model_id",),
)

MUTABLE_COLUMNS = ("description", "labels", "owner_team", "promotion_policy", "protected_aliases")


def _record(row: asyncpg.Record) -> ModelRecord:
    return ModelRecord(
        model_id=row["model_id"],
        uid=row["uid"],
        description=row["description"],
        labels=row["labels"],
        owner_team=row["owner_team"],
        latest_version=row["latest_version"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        promotion_policy=PromotionPolicy(row["promotion_policy"]),
        protected_aliases=tuple(row["protected_aliases"]),
    )


async def insert(conn: Connection, model_id: str, fields: ModelFields) -> ModelRecord:
    """Inserts a model; ALREADY_EXISTS when the id is taken."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO models AS m (model_id, description, labels, owner_team, promotion_policy, "
            f"protected_aliases) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
            model_id,
            fields.description,
            fields.labels,
            fields.owner_team,
            int(fields.promotion_policy),
            list(fields.protected_aliases),
        )
    except asyncpg.UniqueViolationError as exc:
        raise errors.AlreadyExists(
            f"model 'models/{model_id}' already exists",
            "MODEL_ALREADY_EXISTS",
            {"model": f"models/{model_id}"},
        ) from exc
    assert row is not None
    return _record(row)


async def get(conn: Connection, model_id: str, *, lock: bool = False) -> ModelRecord | None:
    """The model, optionally locked FOR UPDATE for the rest of the transaction."""
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM models m WHERE m.model_id = $1{suffix}", model_id)
    return _record(row) if row else None


async def update(conn: Connection, model_id: str, changes: dict[str, Any]) -> ModelRecord:
    """Writes the changed mutable columns and bumps revision and update_time."""
    assignments = []
    values: list[Any] = [model_id]
    for column, value in changes.items():
        if column not in MUTABLE_COLUMNS:
            raise ValueError(f"not a mutable model column: {column}")
        values.append(value)
        assignments.append(f"{column} = ${len(values)}")
    assignments += ["revision = m.revision + 1", "update_time = clock_timestamp()"]
    row = await conn.fetchrow(
        f"UPDATE models AS m SET {', '.join(assignments)} WHERE m.model_id = $1 RETURNING {_COLUMNS}", *values
    )
    assert row is not None
    return _record(row)


async def delete(conn: Connection, model_id: str) -> None:
    """Deletes the model and, by cascade, its versions."""
    await conn.execute("DELETE FROM models WHERE model_id = $1", model_id)


async def has_versions(conn: Connection, model_id: str) -> bool:
    """Whether any version of the model exists."""
    return bool(
        await conn.fetchval("SELECT EXISTS (SELECT 1 FROM model_versions WHERE model_id = $1)", model_id)
    )


async def allocate_version(conn: Connection, model_id: str) -> int:
    """Takes the next version number; the row lock serialises concurrent registrations of one model."""
    value = await conn.fetchval(
        "UPDATE models SET latest_version = latest_version + 1 WHERE model_id = $1 RETURNING latest_version",
        model_id,
    )
    return int(value)


async def list_page(
    conn: Connection,
    *,
    filter_node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[object] | None,
    limit: int,
) -> tuple[list[ModelRecord], list[object] | None]:
    """One page of models."""

    def where(_: Params) -> list[str]:
        return []

    page: PageRows = await fetch_page(
        conn, LISTING, where=where, filter_node=filter_node, order=order, after=after, limit=limit
    )
    return [_record(r) for r in page.rows], page.cursor
