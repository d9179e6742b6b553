"""SQL for model versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from modelreg_server.domain.filtering import Node
from modelreg_server.domain.ordering import OrderKey
from modelreg_server.domain.records import NewVersion, Stage, VersionRecord
from modelreg_server.storage.db import Connection
from modelreg_server.storage.listing import ListingSpec, fetch_page
from modelreg_server.storage.sql_query import FieldSpec, Params

_COLUMNS = (
    "v.model_id, v.version, v.run_id, v.description, v.labels, v.metrics, v.lineage, v.input_schema, "
    "v.output_schema, v.dependencies, v.artifact_digest, v.stage, v.creator, v.revision, v.create_time, "
    "v.update_time, v.details, "
    "ARRAY(SELECT a.alias FROM aliases a WHERE a.model_id = v.model_id AND a.version = v.version "
    "ORDER BY a.alias) AS aliases"
)

# Listings only feed the API, which reads the nested metadata from `details` when it is there: skip
# decoding the four jsonb copies then (they cost more than the query itself at 50 rows a page).
_LIST_COLUMNS = _COLUMNS
for _column in ("lineage", "input_schema", "output_schema", "dependencies"):
    _LIST_COLUMNS = _LIST_COLUMNS.replace(
        f"v.{_column},", f"CASE WHEN v.details IS NULL THEN v.{_column} ELSE '{{}}'::jsonb END AS {_column},"
    )

STAGE_VALUES = {f"STAGE_{s.name}": int(s) for s in Stage}

LISTING = ListingSpec(
    columns=_LIST_COLUMNS,
    source="model_versions v",
    filter_fields={
        "name": FieldSpec("string", "('models/' || v.model_id || '/versions/' || v.version)"),
        "model_id": FieldSpec("string", "v.model_id"),
        "version": FieldSpec("int", "v.version"),
        "run_id": FieldSpec("string", "v.run_id"),
        "description": FieldSpec("string", "v.description"),
        "creator": FieldSpec("string", "v.creator"),
        "artifact_digest": FieldSpec("string", "v.artifact_digest"),
        "stage": FieldSpec("enum", "v.stage", STAGE_VALUES),
        "create_time": FieldSpec("timestamp", "v.create_time"),
        "update_time": FieldSpec("timestamp", "v.update_time"),
        "labels": FieldSpec("labels", "v.labels"),
        "metrics": FieldSpec("metrics", "v.metrics"),
    },
    sort_fields={
        "name": ("v.model_id", False),
        "version": ("v.version", False),
        "create_time": ("v.create_time", False),
        "update_time": ("v.update_time", False),
        "run_id": ("v.run_id", False),
        "creator": ("v.creator", False),
        "stage": ("v.stage", False),
    },
    labels_column="v.labels",
    metrics_column="v.metrics",
    tiebreak=("v.model_id", "v.version"),
)

MUTABLE_COLUMNS = ("description", "labels")


def _record(row: asyncpg.Record) -> VersionRecord:
    return VersionRecord(
        model_id=row["model_id"],
        version=row["version"],
        run_id=row["run_id"],
        description=row["description"],
        labels=row["labels"],
        metrics=row["metrics"],
        lineage=row["lineage"],
        input_schema=row["input_schema"],
        output_schema=row["output_schema"],
        dependencies=row["dependencies"],
        artifact_digest=row["artifact_digest"],
        stage=Stage(row["stage"]),
        creator=row["creator"],
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        aliases=tuple(row["aliases"]),
        details=row["details"],
    )


async def insert(
    conn: Connection,
    model_id: str,
    version: int,
    new: NewVersion,
    *,
    creator: str,
    request_id: str | None,
    request_hash: bytes | None,
) -> VersionRecord:
    """Inserts a version whose number was allocated in the same transaction."""
    row = await conn.fetchrow(
        "INSERT INTO model_versions AS v (model_id, version, run_id, description, labels, metrics, lineage, "
        "input_schema, output_schema, dependencies, artifact_digest, creator, request_id, request_hash, "
        "details) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
        f"RETURNING {_COLUMNS}",
        model_id,
        version,
        new.run_id,
        new.description,
        new.labels,
        new.metrics,
        new.lineage,
        new.input_schema,
        new.output_schema,
        new.dependencies,
        new.artifact_digest,
        creator,
        request_id,
        request_hash,
        new.details or None,
    )
    assert row is not None
    return _record(row)


async def get(conn: Connection, model_id: str, version: int, *, lock: bool = False) -> VersionRecord | None:
    """The version, optionally locked FOR UPDATE."""
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM model_versions v WHERE v.model_id = $1 AND v.version = $2{suffix}",
        model_id,
        version,
    )
    return _record(row) if row else None


async def find_by_request_id(
    conn: Connection, model_id: str, request_id: str
) -> tuple[VersionRecord, bytes | None] | None:
    """The version an earlier call with this request id created, and that call's request hash."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, v.request_hash FROM model_versions v "
        "WHERE v.model_id = $1 AND v.request_id = $2",
        model_id,
        request_id,
    )
    if row is None:
        return None
    return _record(row), row["request_hash"]


async def update(conn: Connection, model_id: str, version: int, changes: dict[str, Any]) -> VersionRecord:
    """Writes the changed mutable columns and bumps revision and update_time."""
    assignments = []
    values: list[Any] = [model_id, version]
    for column, value in changes.items():
        if column not in MUTABLE_COLUMNS:
            raise ValueError(f"not a mutable version column: {column}")
        values.append(value)
        assignments.append(f"{column} = ${len(values)}")
    assignments += ["revision = v.revision + 1", "update_time = clock_timestamp()"]
    row = await conn.fetchrow(
        f"UPDATE model_versions AS v SET {', '.join(assignments)} WHERE v.model_id = $1 AND v.version = $2 "
        f"RETURNING {_COLUMNS}",
        *values,
    )
    assert row is not None
    return _record(row)


async def list_page(
    conn: Connection,
    *,
    model_id: str | None,
    filter_node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[object] | None,
    limit: int,
) -> tuple[list[VersionRecord], list[object] | None]:
    """One page of versions of one model, or of every model when model_id is None."""

    def where(params: Params) -> list[str]:
        return [] if model_id is None else [f"v.model_id = {params.add(model_id)}"]

    page = await fetch_page(
        conn, LISTING, where=where, filter_node=filter_node, order=order, after=after, limit=limit
    )
    return [_record(r) for r in page.rows], page.cursor
