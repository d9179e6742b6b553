"""SQL for the audit trail: chained appends under the head-row lock, listing and chain reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
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


def event_hash(prev_hash: bytes, row: AuditRow) -> bytes:
    """sha256(prev_hash || canonical(content)) for an event's fields."""
    content = canonical(
        {
            "id": row.id,
            "event_time": row.event_time.astimezone(UTC).isoformat(timespec="microseconds"),
            "principal": row.principal,
            "action": row.action,
            "resource": row.resource,
            "request_id": row.request_id,
            "peer": row.peer,
            "outcome": row.outcome,
            "details": row.details,
        }
    )
    return hashlib.sha256(prev_hash + content.encode()).digest()


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
    """Appends one event to the chain; call it last in the transaction (it holds the head lock)."""
    head = await conn.fetchrow(
        "SELECT last_id, last_hash, clock_timestamp() AS now FROM audit_head FOR UPDATE"
    )
    assert head is not None
    draft = AuditRow(
        head["last_id"] + 1,
        head["now"],
        principal,
        action,
        resource,
        request_id,
        peer,
        outcome,
        canonical(details),
        bytes(head["last_hash"]),
        b"",
    )
    digest = event_hash(draft.prev_hash, draft)
    await conn.execute(
        "INSERT INTO audit_events (id, event_time, principal, action, resource, request_id, peer, outcome, "
        "details, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        draft.id,
        draft.event_time,
        principal,
        action,
        resource,
        request_id,
        peer,
        outcome,
        draft.details,
        draft.prev_hash,
        digest,
    )
    await conn.execute("UPDATE audit_head SET last_id = $1, last_hash = $2", draft.id, digest)
    return AuditRow(**{**draft.__dict__, "hash": digest})


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
