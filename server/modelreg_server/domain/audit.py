"""The audit trail: every change and every denied attempt, hash-chained, in the change's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelreg_server.domain import errors
from modelreg_server.domain.filtering import FilterError, parse_filter
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import Caller, Page
from modelreg_server.storage import audit_repo
from modelreg_server.storage.audit_repo import AuditRow
from modelreg_server.storage.db import Connection, Database

OK = "OK"
DENIED = "DENIED"


async def record(
    conn: Connection,
    caller: Caller,
    resource: str,
    *,
    before: Any = None,
    after: Any = None,
    outcome: str = OK,
    **details: Any,
) -> None:
    """Appends an event for `caller.action` on `resource`; call it as the last step of the transaction."""
    payload: dict[str, Any] = dict(details)
    if before is not None:
        payload["before"] = before
    if after is not None:
        payload["after"] = after
    await audit_repo.append(
        conn,
        principal=caller.principal,
        action=caller.action,
        resource=resource,
        request_id=caller.request_id,
        peer=caller.peer,
        outcome=outcome,
        details=payload,
    )


@dataclass(frozen=True)
class ChainVerdict:
    """Result of recomputing the chain."""

    ok: bool
    events_checked: int
    first_broken_id: int | None


class AuditLog:
    """Reading and verifying the trail."""

    def __init__(self, db: Database, tokens: PageTokenCodec) -> None:
        self._db = db
        self._tokens = tokens

    async def record_denied(self, caller: Caller, resource: str, permission: str) -> None:
        """A denied attempt, in a transaction of its own (the call itself changes nothing)."""
        await self.record_alone(caller, resource, outcome=DENIED, missing_permission=permission)

    async def record_alone(self, caller: Caller, resource: str, *, outcome: str = OK, **details: Any) -> None:
        """An event in a transaction of its own, for changes outside PostgreSQL (a blob stored in S3)."""

        async def work(conn: Connection) -> None:
            await record(conn, caller, resource, outcome=outcome, **details)

        await self._db.transact(work)

    async def list(self, filter_text: str, page_size: int, page_token: str) -> Page[AuditRow]:
        """Events, newest first."""
        try:
            limit = resolve_page_size(page_size)
            node = parse_filter(filter_text)
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except FilterError as exc:
            raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        binding = f"audit\x00{filter_text}"
        after = None
        if page_token:
            try:
                after = self._tokens.decode(page_token, binding)
            except PageTokenError as exc:
                raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        async with self._db.connection() as conn:
            try:
                rows, cursor = await audit_repo.list_page(conn, filter_node=node, after=after, limit=limit)
            except FilterError as exc:
                raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        return Page(rows, "" if cursor is None else self._tokens.encode(cursor, binding))

    async def verify(self) -> ChainVerdict:
        """Recomputes every hash and link, in a snapshot, and checks the head matches the last event."""
        checked = 0
        expected_prev = bytes(32)
        async with (
            self._db.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            last_id, last_hash = await audit_repo.head(conn)
            async for row in audit_repo.chain(conn):
                checked += 1
                if (
                    row.id != checked
                    or row.prev_hash != expected_prev
                    or audit_repo.event_hash(row.prev_hash, row) != row.hash
                ):
                    return ChainVerdict(False, checked, row.id)
                expected_prev = row.hash
        if last_id != checked or (checked and last_hash != expected_prev):
            # Events were removed from the end (or the head was rewritten).
            return ChainVerdict(False, checked, checked + 1)
        return ChainVerdict(True, checked, None)
