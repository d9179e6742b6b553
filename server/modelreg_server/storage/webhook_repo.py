"""SQL for webhook subscriptions and their delivery log."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from modelreg_server.domain import errors
from modelreg_server.domain.filtering import Node
from modelreg_server.domain.ordering import OrderKey
from modelreg_server.domain.records import ChangeType
from modelreg_server.storage.db import Connection
from modelreg_server.storage.listing import ListingSpec, fetch_page
from modelreg_server.storage.sql_query import FieldSpec, Params


class DeliveryState(enum.IntEnum):
    """Numbers match modelreg.v1.WebhookDeliveryState."""

    PENDING = 1
    DELIVERED = 2
    FAILED = 3


@dataclass(frozen=True)
class WebhookRow:
    """A stored subscription, without its secret (only the delivery worker reads that)."""

    webhook_id: str
    url: str
    event_types: tuple[ChangeType, ...]
    models: tuple[str, ...]
    active: bool
    enqueued_revision: int
    generation: int
    creator: str
    create_time: datetime
    update_time: datetime

    def selects(self, change_type: ChangeType, model_id: str) -> bool:
        """Whether an event of this type on this model is for this subscription."""
        return (not self.event_types or change_type in self.event_types) and (
            not self.models or model_id in self.models
        )


@dataclass(frozen=True)
class DeliveryRow:
    """One entry of the delivery log."""

    webhook_id: str
    revision: int
    change_type: ChangeType
    model_id: str
    state: DeliveryState
    attempt_count: int
    next_attempt_time: datetime
    last_attempt_time: datetime | None
    last_status_code: int
    last_error: str
    create_time: datetime
    delivered_time: datetime | None


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to enqueue."""

    revision: int
    change_type: ChangeType
    model_id: str
    body: str


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery with what sending it needs."""

    webhook_id: str
    revision: int
    url: str
    secret: str
    body: str
    attempt_count: int


def _webhook(r: asyncpg.Record) -> WebhookRow:
    return WebhookRow(
        webhook_id=r["webhook_id"],
        url=r["url"],
        event_types=tuple(ChangeType(t) for t in r["event_types"]),
        models=tuple(r["models"]),
        active=r["active"],
        enqueued_revision=r["enqueued_revision"],
        generation=r["generation"],
        creator=r["creator"],
        create_time=r["create_time"],
        update_time=r["update_time"],
    )


def _delivery(r: asyncpg.Record) -> DeliveryRow:
    return DeliveryRow(
        webhook_id=r["webhook_id"],
        revision=r["revision"],
        change_type=ChangeType(r["change_type"]),
        model_id=r["model_id"],
        state=DeliveryState(r["state"]),
        attempt_count=r["attempt_count"],
        next_attempt_time=r["next_attempt_time"],
        last_attempt_time=r["last_attempt_time"],
        last_status_code=r["last_status_code"],
        last_error=r["last_error"],
        create_time=r["create_time"],
        delivered_time=r["delivered_time"],
    )


_WEBHOOK_COLUMNS = (
    "webhook_id, url, event_types, models, active, enqueued_revision, generation, creator, "
    "create_time, update_time"
)
_DELIVERY_COLUMNS = (
    "d.webhook_id, d.revision, d.change_type, d.model_id, d.state, d.attempt_count, d.next_attempt_time, "
    "d.last_attempt_time, d.last_status_code, d.last_error, d.create_time, d.delivered_time"
)

# --- subscriptions -----------------------------------------------------------------------------------


async def insert_webhook(
    conn: Connection,
    webhook_id: str,
    *,
    url: str,
    event_types: Sequence[ChangeType],
    models: Sequence[str],
    secret: str,
    active: bool,
    creator: str,
) -> WebhookRow:
    """Creates a subscription that starts after the newest committed revision; ALREADY_EXISTS if taken."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO webhook_subscriptions "
            "(webhook_id, url, event_types, models, secret, active, creator, enqueued_revision) "
            "SELECT $1, $2, $3, $4, $5, $6, $7, value FROM registry_revision "
            f"RETURNING {_WEBHOOK_COLUMNS}",
            webhook_id,
            url,
            [int(t) for t in event_types],
            list(models),
            secret,
            active,
            creator,
        )
    except asyncpg.UniqueViolationError as exc:
        name = f"webhooks/{webhook_id}"
        raise errors.AlreadyExists(
            f"{name} already exists", "WEBHOOK_ALREADY_EXISTS", {"webhook": name}
        ) from exc
    assert row is not None
    return _webhook(row)


async def get_webhook(conn: Connection, webhook_id: str, *, lock: bool = False) -> WebhookRow | None:
    """A subscription by id."""
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_subscriptions WHERE webhook_id = $1{suffix}", webhook_id
    )
    return _webhook(row) if row else None


async def list_webhooks(conn: Connection, after: str | None, limit: int) -> list[WebhookRow]:
    """Subscriptions by id, after `after`."""
    rows = await conn.fetch(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_subscriptions "
        "WHERE ($1::text IS NULL OR webhook_id > $1) ORDER BY webhook_id LIMIT $2",
        after,
        limit,
    )
    return [_webhook(r) for r in rows]


# Columns UpdateWebhook may write, with the SQL type of their parameter.
_UPDATABLE = {
    "url": "text",
    "event_types": "smallint[]",
    "models": "text[]",
    "active": "boolean",
    "secret": "text",
}


async def update_webhook(conn: Connection, webhook_id: str, changes: dict[str, Any]) -> WebhookRow:
    """Writes the given columns (keys of _UPDATABLE) and bumps the generation."""
    params = Params(1)
    sets = []
    for column, value in changes.items():
        if column == "event_types":
            stored: Any = [int(t) for t in value]
        elif column == "models":
            stored = list(value)
        else:
            stored = value
        sets.append(f"{column} = {params.add(stored)}::{_UPDATABLE[column]}")
    sets += ["generation = generation + 1", "update_time = clock_timestamp()"]
    row = await conn.fetchrow(
        f"UPDATE webhook_subscriptions SET {', '.join(sets)} WHERE webhook_id = $1 "
        f"RETURNING {_WEBHOOK_COLUMNS}",
        webhook_id,
        *params.values,
    )
    assert row is not None, "update_webhook needs the row locked by get_webhook(lock=True)"
    return _webhook(row)


async def delete_webhook(conn: Connection, webhook_id: str) -> bool:
    """Deletes a subscription and its delivery log; False when it does not exist."""
    status = await conn.execute("DELETE FROM webhook_subscriptions WHERE webhook_id = $1", webhook_id)
    return status.split()[-1] != "0"


async def webhooks_behind(conn: Connection) -> list[str]:
    """Ids of active subscriptions that have not enqueued up to the newest committed revision."""
    rows = await conn.fetch(
        "SELECT webhook_id FROM webhook_subscriptions "
        "WHERE active AND enqueued_revision < (SELECT value FROM registry_revision) ORDER BY webhook_id"
    )
    return [r["webhook_id"] for r in rows]


async def lock_for_enqueue(conn: Connection, webhook_id: str) -> WebhookRow | None:
    """Locks an active subscription for enqueueing, or None when inactive, gone or locked elsewhere."""
    row = await conn.fetchrow(
        f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_subscriptions WHERE webhook_id = $1 AND active "
        "FOR UPDATE SKIP LOCKED",
        webhook_id,
    )
    return _webhook(row) if row else None


async def set_enqueued_revision(conn: Connection, webhook_id: str, revision: int) -> None:
    """Moves the enqueue cursor (call in the transaction that inserted the deliveries)."""
    await conn.execute(
        "UPDATE webhook_subscriptions SET enqueued_revision = $2 WHERE webhook_id = $1", webhook_id, revision
    )


# --- deliveries --------------------------------------------------------------------------------------


async def insert_deliveries(
    conn: Connection, webhook_id: str, deliveries: Sequence[NewDelivery], *, reset: bool
) -> int:
    """Enqueues deliveries; returns how many rows were written.

    Without `reset` an existing delivery of the same event is left alone (enqueueing is idempotent); with
    it, the delivery starts over as PENDING with no attempts (replay).
    """
    if not deliveries:
        return 0
    conflict = (
        "DO UPDATE SET state = 1, attempt_count = 0, next_attempt_time = clock_timestamp(), "
        "body = EXCLUDED.body, delivered_time = NULL"
        if reset
        else "DO NOTHING"
    )
    status = await conn.execute(
        "INSERT INTO webhook_deliveries (webhook_id, revision, change_type, model_id, body) "
        "SELECT $1, * FROM unnest($2::bigint[], $3::smallint[], $4::text[], $5::text[]) "
        f"ON CONFLICT (webhook_id, revision) {conflict}",
        webhook_id,
        [d.revision for d in deliveries],
        [int(d.change_type) for d in deliveries],
        [d.model_id for d in deliveries],
        [d.body for d in deliveries],
    )
    return int(status.split()[-1])


async def has_due(conn: Connection) -> bool:
    """Whether a pending delivery of an active subscription is due (by the database's clock)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM webhook_deliveries d "
            "JOIN webhook_subscriptions s USING (webhook_id) "
            "WHERE d.state = 1 AND d.next_attempt_time <= clock_timestamp() AND s.active)"
        )
    )


async def claim_due(conn: Connection, hold_limit_ms: int) -> DueDelivery | None:
    """Locks one due delivery until the end of the transaction, skipping those other workers hold.

    If this session then sits idle in the transaction longer than `hold_limit_ms` (a hung or partitioned
    replica), PostgreSQL ends it, which releases the delivery to the others.
    """
    await conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', $1, true)", str(hold_limit_ms)
    )
    row = await conn.fetchrow(
        "SELECT d.webhook_id, d.revision, d.body, d.attempt_count, s.url, s.secret "
        "FROM webhook_deliveries d JOIN webhook_subscriptions s USING (webhook_id) "
        "WHERE d.state = 1 AND d.next_attempt_time <= clock_timestamp() AND s.active "
        "ORDER BY d.next_attempt_time LIMIT 1 FOR UPDATE OF d SKIP LOCKED"
    )
    if row is None:
        return None
    return DueDelivery(
        row["webhook_id"], row["revision"], row["url"], row["secret"], row["body"], row["attempt_count"]
    )


async def record_attempt(
    conn: Connection,
    webhook_id: str,
    revision: int,
    *,
    state: DeliveryState,
    status_code: int,
    error: str,
    retry_in_s: float,
) -> None:
    """Stores the outcome of one attempt; a PENDING delivery is due again after `retry_in_s`."""
    await conn.execute(
        "UPDATE webhook_deliveries SET state = $3::smallint, attempt_count = attempt_count + 1, "
        "last_attempt_time = clock_timestamp(), last_status_code = $4, last_error = $5, "
        "next_attempt_time = clock_timestamp() + make_interval(secs => $6), "
        "delivered_time = CASE WHEN $3::smallint = 2 THEN clock_timestamp() END "
        "WHERE webhook_id = $1 AND revision = $2",
        webhook_id,
        revision,
        int(state),
        status_code,
        error,
        retry_in_s,
    )


async def get_delivery(conn: Connection, webhook_id: str, revision: int) -> DeliveryRow | None:
    """One delivery."""
    row = await conn.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook_id = $1 AND d.revision = $2",
        webhook_id,
        revision,
    )
    return _delivery(row) if row else None


async def redeliver(conn: Connection, webhook_id: str, revision: int) -> DeliveryRow | None:
    """Makes a delivery PENDING and due now with a fresh attempt budget; None when it does not exist."""
    row = await conn.fetchrow(
        "UPDATE webhook_deliveries d SET state = 1, attempt_count = 0, "
        "next_attempt_time = clock_timestamp(), delivered_time = NULL "
        "WHERE d.webhook_id = $1 AND d.revision = $2 "
        f"RETURNING {_DELIVERY_COLUMNS}",
        webhook_id,
        revision,
    )
    return _delivery(row) if row else None


async def prune_deliveries(conn: Connection, before: datetime) -> int:
    """Deletes finished deliveries (delivered or failed) created before `before`; returns how many."""
    status = await conn.execute(
        "DELETE FROM webhook_deliveries WHERE state <> 1 AND create_time < $1", before
    )
    return int(status.split()[-1])


DELIVERY_LISTING = ListingSpec(
    columns=_DELIVERY_COLUMNS,
    source="webhook_deliveries d",
    filter_fields={
        "state": FieldSpec(
            "enum", "d.state", {f"WEBHOOK_DELIVERY_STATE_{s.name}": int(s) for s in DeliveryState}
        ),
        "event_type": FieldSpec(
            "enum", "d.change_type", {f"CHANGE_TYPE_{c.name}": int(c) for c in ChangeType}
        ),
        "revision": FieldSpec("int", "d.revision"),
        "create_time": FieldSpec("timestamp", "d.create_time"),
    },
    sort_fields={"revision": ("d.revision", False)},
    labels_column="NULL",
    metrics_column=None,
    tiebreak=("d.revision",),
)


async def list_deliveries(
    conn: Connection, webhook_id: str, *, filter_node: Node | None, after: list[object] | None, limit: int
) -> tuple[list[DeliveryRow], list[object] | None]:
    """A subscription's deliveries, newest event first; returns the page and the cursor of the next."""

    def where(params: Params) -> list[str]:
        return [f"d.webhook_id = {params.add(webhook_id)}"]

    page = await fetch_page(
        conn,
        DELIVERY_LISTING,
        where=where,
        filter_node=filter_node,
        order=(OrderKey(("revision",), True),),
        after=after,
        limit=limit,
    )
    return [_delivery(r) for r in page.rows], page.cursor
