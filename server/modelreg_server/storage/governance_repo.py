"""SQL for governance: promotion gates, promotion requests and reviews, signatures, retention."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import asyncpg

from modelreg_server.domain.errors import PreconditionViolation
from modelreg_server.domain.filtering import Node
from modelreg_server.domain.gate_rules import Rule, rule_from_json, rule_to_json
from modelreg_server.domain.governance_records import (
    GatesRecord,
    PromotionRequestRecord,
    RequestState,
    Review,
    Target,
)
from modelreg_server.domain.ordering import OrderKey
from modelreg_server.domain.records import Stage
from modelreg_server.storage.db import Connection
from modelreg_server.storage.listing import ListingSpec, fetch_page
from modelreg_server.storage.sql_query import FieldSpec, Params

# --- promotion gates -------------------------------------------------------------------------------------

_GATES_COLUMNS = "model_id, rules, required_approvals, request_ttl, revision, updater, update_time"


def _gates(row: asyncpg.Record) -> GatesRecord:
    return GatesRecord(
        model_id=row["model_id"],
        rules=tuple(rule_from_json(r) for r in row["rules"]),
        required_approvals=row["required_approvals"],
        request_ttl=row["request_ttl"],
        revision=row["revision"],
        updater=row["updater"],
        update_time=row["update_time"],
    )


async def get_gates(conn: Connection, model_id: str) -> GatesRecord:
    """The model's gates; an empty record (revision 0) when never configured."""
    row = await conn.fetchrow(f"SELECT {_GATES_COLUMNS} FROM promotion_gates WHERE model_id = $1", model_id)
    return _gates(row) if row else GatesRecord(model_id)


async def put_gates(
    conn: Connection,
    model_id: str,
    rules: Sequence[Rule],
    required_approvals: int,
    request_ttl: timedelta,
    updater: str,
) -> GatesRecord:
    """Creates or replaces the model's gates, bumping their revision."""
    row = await conn.fetchrow(
        f"""INSERT INTO promotion_gates AS g (model_id, rules, required_approvals, request_ttl, updater)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (model_id) DO UPDATE
               SET rules = EXCLUDED.rules, required_approvals = EXCLUDED.required_approvals,
                   request_ttl = EXCLUDED.request_ttl, updater = EXCLUDED.updater,
                   revision = g.revision + 1, update_time = clock_timestamp()
            RETURNING {_GATES_COLUMNS}""",
        model_id,
        [rule_to_json(r) for r in rules],
        required_approvals,
        request_ttl,
        updater,
    )
    assert row is not None
    return _gates(row)


# --- promotion requests ----------------------------------------------------------------------------------

_REQUEST_COLUMNS = (
    "r.id, r.model_id, r.version, r.target_stage, r.target_alias, r.archive_existing, r.state, "
    "r.requester, r.comment, r.required_approvals, r.state_message, r.failures, r.create_time, "
    "r.update_time, r.expire_time"
)
_STATE_NAMES = {s.name: int(s) for s in RequestState} | {
    f"PROMOTION_REQUEST_STATE_{s.name}": int(s) for s in RequestState
}

LISTING = ListingSpec(
    columns=_REQUEST_COLUMNS,
    source="promotion_requests r",
    filter_fields={
        "state": FieldSpec("enum", "r.state", _STATE_NAMES),
        "requester": FieldSpec("string", "r.requester"),
        "model_version": FieldSpec("string", "('models/' || r.model_id || '/versions/' || r.version)"),
        "create_time": FieldSpec("timestamp", "r.create_time"),
        "expire_time": FieldSpec("timestamp", "r.expire_time"),
    },
    sort_fields={"create_time": ("r.create_time", False)},
    labels_column="'{}'::jsonb",
    metrics_column=None,
    tiebreak=("r.id",),
)
NEWEST_FIRST = (OrderKey(("create_time",), True),)


def _request(row: asyncpg.Record, reviews: Sequence[Review] = ()) -> PromotionRequestRecord:
    target = (
        Target(stage=Stage(row["target_stage"]))
        if row["target_stage"] is not None
        else Target(alias=row["target_alias"])
    )
    return PromotionRequestRecord(
        request_id=row["id"],
        model_id=row["model_id"],
        version=row["version"],
        target=target,
        archive_existing=row["archive_existing"],
        state=RequestState(row["state"]),
        requester=row["requester"],
        comment=row["comment"],
        required_approvals=row["required_approvals"],
        state_message=row["state_message"],
        failures=tuple(
            PreconditionViolation(f["type"], f["subject"], f["description"]) for f in row["failures"]
        ),
        create_time=row["create_time"],
        update_time=row["update_time"],
        expire_time=row["expire_time"],
        reviews=tuple(reviews),
    )


async def _reviews(conn: Connection, request_ids: Sequence[int]) -> dict[int, list[Review]]:
    rows = await conn.fetch(
        """SELECT request_id, principal, approved, comment, create_time FROM promotion_reviews
           WHERE request_id = ANY($1::bigint[]) ORDER BY create_time, principal""",
        list(request_ids),
    )
    found: dict[int, list[Review]] = {}
    for r in rows:
        found.setdefault(r["request_id"], []).append(
            Review(r["principal"], r["approved"], r["comment"], r["create_time"])
        )
    return found


async def insert_request(
    conn: Connection,
    model_id: str,
    version: int,
    target: Target,
    *,
    archive_existing: bool,
    requester: str,
    comment: str,
    required_approvals: int,
    ttl: timedelta,
) -> PromotionRequestRecord:
    """Opens a request (PENDING until now + ttl)."""
    row = await conn.fetchrow(
        f"""INSERT INTO promotion_requests AS r (model_id, version, target_stage, target_alias,
                                                 archive_existing, requester, comment, required_approvals,
                                                 expire_time)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp() + $9::interval)
            RETURNING {_REQUEST_COLUMNS}""",
        model_id,
        version,
        None if target.stage is None else int(target.stage),
        target.alias,
        archive_existing,
        requester,
        comment,
        required_approvals,
        ttl,
    )
    assert row is not None
    return _request(row)


async def get_request(
    conn: Connection, model_id: str, request_id: int, *, lock: bool = False
) -> PromotionRequestRecord | None:
    """The request with its reviews, optionally locked FOR UPDATE."""
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_REQUEST_COLUMNS} FROM promotion_requests r WHERE r.model_id = $1 AND r.id = $2{suffix}",
        model_id,
        request_id,
    )
    if row is None:
        return None
    return _request(row, (await _reviews(conn, [request_id])).get(request_id, ()))


async def find_open_request(conn: Connection, model_id: str, version: int, target: Target) -> int | None:
    """The id of the open (pending or approved) request for this version and target, if any."""
    value = await conn.fetchval(
        """SELECT id FROM promotion_requests
           WHERE model_id = $1 AND version = $2 AND COALESCE(target_alias, '') = $3 AND state IN (1, 2)""",
        model_id,
        version,
        target.alias or "",
    )
    return None if value is None else int(value)


async def set_state(
    conn: Connection,
    request_id: int,
    state: RequestState,
    *,
    expected: RequestState,
    message: str | None = None,
    failures: Sequence[PreconditionViolation] | None = None,
) -> bool:
    """Moves a request from `expected` to `state`; False when it is no longer in `expected`."""
    result = await conn.execute(
        """UPDATE promotion_requests
              SET state = $2, update_time = clock_timestamp(),
                  state_message = COALESCE($4, state_message), failures = COALESCE($5, failures)
            WHERE id = $1 AND state = $3""",
        request_id,
        int(state),
        int(expected),
        message,
        None if failures is None else [asdict(f) for f in failures],
    )
    return result.endswith(" 1")


async def set_required_approvals(conn: Connection, request_id: int, required: int) -> None:
    """Records how many approvals the policy asked for when they were last counted."""
    await conn.execute(
        "UPDATE promotion_requests SET required_approvals = $2 WHERE id = $1", request_id, required
    )


async def expire_due(conn: Connection, model_id: str, request_id: int | None = None) -> list[int]:
    """Marks the model's pending requests (or just one) past expire_time EXPIRED; returns their ids."""
    rows = await conn.fetch(
        """UPDATE promotion_requests
              SET state = 6, update_time = clock_timestamp(), state_message = 'expired while pending'
            WHERE model_id = $1 AND ($2::bigint IS NULL OR id = $2) AND state = 1
              AND expire_time <= clock_timestamp()
           RETURNING id""",
        model_id,
        request_id,
    )
    return [r["id"] for r in rows]


async def add_review(conn: Connection, request_id: int, principal: str, approved: bool, comment: str) -> bool:
    """Records a review; False when the principal reviewed this request already."""
    row = await conn.fetchrow(
        """INSERT INTO promotion_reviews (request_id, principal, approved, comment) VALUES ($1, $2, $3, $4)
           ON CONFLICT (request_id, principal) DO NOTHING RETURNING 1""",
        request_id,
        principal,
        approved,
        comment,
    )
    return row is not None


async def record_rejection(conn: Connection, request_id: int, principal: str, comment: str) -> None:
    """Records a rejection (replacing the principal's earlier approval, if any)."""
    await conn.execute(
        """INSERT INTO promotion_reviews (request_id, principal, approved, comment) VALUES ($1, $2, false, $3)
           ON CONFLICT (request_id, principal)
           DO UPDATE SET approved = false, comment = EXCLUDED.comment, create_time = clock_timestamp()""",
        request_id,
        principal,
        comment,
    )


async def count_approvals(conn: Connection, request_id: int) -> int:
    """Approvals of a request."""
    value = await conn.fetchval(
        "SELECT count(*) FROM promotion_reviews WHERE request_id = $1 AND approved", request_id
    )
    return int(value)


async def list_requests(
    conn: Connection,
    model_id: str,
    *,
    filter_node: Node | None,
    after: Sequence[object] | None,
    limit: int,
) -> tuple[list[PromotionRequestRecord], list[object] | None]:
    """One page of a model's requests, newest first."""

    def where(params: Params) -> list[str]:
        return [f"r.model_id = {params.add(model_id)}"]

    page = await fetch_page(
        conn, LISTING, where=where, filter_node=filter_node, order=NEWEST_FIRST, after=after, limit=limit
    )
    reviews = await _reviews(conn, [r["id"] for r in page.rows])
    return [_request(r, reviews.get(r["id"], ())) for r in page.rows], page.cursor


# --- signatures ------------------------------------------------------------------------------------------


async def verified_key_ids(conn: Connection, model_id: str, version: int) -> frozenset[str]:
    """Key ids with a verified signature of the version."""
    rows = await conn.fetch(
        "SELECT key_id FROM version_signatures WHERE model_id = $1 AND version = $2 AND verified",
        model_id,
        version,
    )
    return frozenset(r["key_id"] for r in rows)


# --- retention -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionBlock:
    """A version that keeps its model from being deleted, and why."""

    version: int
    reason: str  # LEGAL_HOLD or RETENTION
    held_now: bool
    retain_until: datetime | None


async def stamp_retention(conn: Connection, model_id: str, version: int, period: timedelta) -> None:
    """Sets the retention period that applies after the version stops being held."""
    await conn.execute(
        "UPDATE model_versions SET retention_period = $3 WHERE model_id = $1 AND version = $2",
        model_id,
        version,
        period,
    )


async def deletion_blocks(conn: Connection, model_id: str) -> list[DeletionBlock]:
    """Versions under legal hold or within their retention period (see model_deletion_blocks)."""
    rows = await conn.fetch(
        "SELECT version, reason, held_now, retain_until FROM model_deletion_blocks($1)", model_id
    )
    return [DeletionBlock(r["version"], r["reason"], r["held_now"], r["retain_until"]) for r in rows]
