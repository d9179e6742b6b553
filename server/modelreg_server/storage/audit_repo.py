"""SQL for the audit trail: chained appends under the head-row lock, listing and chain reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from modelreg_server.domain.ordering import OrderKey
from modelreg_server.storage.db import Connection
from modelreg_server.storage.listing import ListingSpec, fetch_page
from modelreg_server.storage.sql_query import FieldSpec, Params


@dataclass(frozen=True)
class AuditRow:
    """One stored audit event."""

    id: int
    event_time: datetime
    principal: str
    action: str
    resource: str
    request_id: str
    peer: str
    outcome: str
    details: str
    prev_hash: bytes
    hash: bytes


def canonical(value: Any) -> str:
    """The JSON text that is stored and hashed: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _content(row: AuditRow) -> bytes:
    return canonical(
        {
            "principal": row.principal,
            "action": row.action,
            "resource": row.resource,
            "request_id": row.request_id,
            "peer": row.peer,
            "outcome": row.outcome,
            "details": row.details,
        }
    ).encode()


def event_hash(prev_hash: bytes, row: AuditRow) -> bytes:
    """sha256(prev_hash || "<id>|<event time in epoch microseconds>|" || canonical(content)).

    The id and time are assigned by PostgreSQL inside the appending statement, which computes this same
    hash there; Python recomputes it to verify the chain."""
    micros = (row.event_time - _EPOCH) // timedelta(microseconds=1)
    return hashlib.sha256(prev_hash + f"{row.id}|{micros}|".encode() + _content(row)).digest()


def _row(r: asyncpg.Record) -> AuditRow:
    return AuditRow(
        r["id"],
        r["event_time"],
        r["principal"],
        r["action"],
        r["resource"],
        r["request_id"],
        r["peer"],
        r["outcome"],
        r["details"],
        bytes(r["prev_hash"]),
        bytes(r["hash"]),
    )


# One statement, so the head row stays locked for a single round trip of this transaction: take the next id
# and the predecessor's hash, hash the new event, insert it and move the head.
_APPEND = """
WITH head AS (
    SELECT last_id + 1 AS id, last_hash AS prev, clock_timestamp() AS t FROM audit_head FOR UPDATE
), event AS (
    SELECT id, t, prev,
           sha256(prev
                  || convert_to(id::text || '|' || (extract(epoch FROM t) * 1000000)::bigint::text || '|',
                                'UTF8')
                  || $8::bytea) AS hash
    FROM head
), moved AS (
    UPDATE audit_head SET last_id = event.id, last_hash = event.hash FROM event RETURNING audit_head.last_id
)
INSERT INTO audit_events (id, event_time, principal, action, resource, request_id, peer, outcome, details,
                          prev_hash, hash)
SELECT event.id, event.t, $1, $2, $3, $4, $5, $6, $7, event.prev, event.hash FROM event, moved
RETURNING *
"""


async def append(
    conn: Connection,
    *,
    principal: str,
    action: str,
    resource: str,
    request_id: str,
    peer: str,
    outcome: str,
    details: dict[str, Any],
) -> AuditRow:
    """Appends one event to the chain (the head row stays locked until the transaction ends)."""
    draft = AuditRow(
        0, _EPOCH, principal, action, resource, request_id, peer, outcome, canonical(details), b"", b""
    )
    row = await conn.fetchrow(
        _APPEND, principal, action, resource, request_id, peer, outcome, draft.details, _content(draft)
    )
    assert row is not None
    return _row(row)


async def chain(conn: Connection, batch: int = 1000) -> AsyncIterator[AuditRow]:
    """Every event in id order, read in batches."""
    after = 0
    while True:
        rows = await conn.fetch("SELECT * FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2", after, batch)
        if not rows:
            return
        for r in rows:
            yield _row(r)
        after = rows[-1]["id"]


async def head(conn: Connection) -> tuple[int, bytes]:
    """The last id and hash the head row records."""
    row = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head")
    assert row is not None
    return int(row["last_id"]), bytes(row["last_hash"])


LISTING = ListingSpec(
    columns="e.*",
    source="audit_events e",
    filter_fields={
        "principal": FieldSpec("string", "e.principal"),
        "action": FieldSpec("string", "e.action"),
        "resource": FieldSpec("string", "e.resource"),
        "outcome": FieldSpec("string", "e.outcome"),
        "request_id": FieldSpec("string", "e.request_id"),
        "event_time": FieldSpec("timestamp", "e.event_time"),
    },
    sort_fields={"id": ("e.id", False)},
    labels_column="NULL",
    metrics_column=None,
    tiebreak=("e.id",),
)


async def list_page(
    conn: Connection, *, filter_node: Any, after: list[object] | None, limit: int
) -> tuple[list[AuditRow], list[object] | None]:
    """Newest first."""

    def where(_: Params) -> list[str]:
        return []

    page = await fetch_page(
        conn,
        LISTING,
        where=where,
        filter_node=filter_node,
        order=(OrderKey(("id",), True),),
        after=after,
        limit=limit,
    )
    return [_row(r) for r in page.rows], page.cursor
