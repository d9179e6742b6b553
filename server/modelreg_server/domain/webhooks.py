"""Webhook subscriptions: create, read, update, delete, the delivery log, redelivery and replay.

Subscriptions are registry-wide (permission `modelreg.webhooks.manage`, never granted by a scoped
binding). A subscription starts with the events committed after its creation; pausing it (`active`
false) stops enqueueing, and resuming catches up from where it stopped as far as the change feed still
retains events. Secrets sign requests, so they are stored (not hashed) and never returned after create.
Replay enqueues again, as new PENDING deliveries with the same idempotency keys, every matching event
after a revision up to what the subscription has already enqueued; it needs those events still retained.
The worker (webhook_worker.py) does the sending.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelreg_server.domain import audit, errors
from modelreg_server.domain.filtering import FilterError, parse_filter
from modelreg_server.domain.pagination import PageSizeError, PageTokenCodec, PageTokenError, resolve_page_size
from modelreg_server.domain.records import Caller, ChangeType, Page
from modelreg_server.domain.ssrf import SsrfGuard, UrlRejected
from modelreg_server.domain.webhook_worker import EventRenderer, deliveries_for, webhook_name
from modelreg_server.storage import lifecycle_repo
from modelreg_server.storage import webhook_repo as repo
from modelreg_server.storage.db import Connection, Database
from modelreg_server.storage.webhook_repo import DeliveryRow, WebhookRow

MIN_SECRET_LENGTH = 24
MAX_SECRET_LENGTH = 256
MAX_MODELS = 100
_SECRET_CHARS = frozenset(string.printable) - frozenset(string.whitespace)
_REPLAY_BATCH = 500


@dataclass(frozen=True)
class WebhookSpec:
    """The client-settable fields of a subscription."""

    url: str
    event_types: tuple[ChangeType, ...] = ()
    models: tuple[str, ...] = ()
    active: bool = True


def webhook_etag(hook: WebhookRow) -> str:
    """Opaque etag of a subscription's current state."""
    digest = hashlib.blake2b(f"{hook.webhook_id}:{hook.generation}".encode(), digest_size=8).hexdigest()
    return f'"{digest}"'


def delivery_name(webhook_id: str, revision: int) -> str:
    """`webhooks/{webhook}/deliveries/{revision}`."""
    return f"{webhook_name(webhook_id)}/deliveries/{revision}"


def _not_found(webhook_id: str) -> errors.NotFound:
    name = webhook_name(webhook_id)
    return errors.NotFound(f"{name} not found", "WEBHOOK_NOT_FOUND", {"webhook": name})


def _check_secret(secret: str, field: str) -> None:
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise errors.invalid(
            field, f"must be {MIN_SECRET_LENGTH}-{MAX_SECRET_LENGTH} characters", "WEBHOOK_SECRET_INVALID"
        )
    if not set(secret) <= _SECRET_CHARS:
        raise errors.invalid(field, "must be printable ASCII without spaces", "WEBHOOK_SECRET_INVALID")


def _summary(hook: WebhookRow) -> dict[str, Any]:
    """What the audit trail keeps of a subscription (never the secret)."""
    return {
        "url": hook.url,
        "event_types": [t.name for t in hook.event_types],
        "models": list(hook.models),
        "active": hook.active,
    }


class Webhooks:
    """Rules and transactions of webhook management."""

    def __init__(
        self,
        db: Database,
        tokens: PageTokenCodec,
        guard: SsrfGuard,
        render: EventRenderer,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._db = db
        self._tokens = tokens
        self._guard = guard
        self._render = render
        self._on_change = on_change

    async def _vet_url(self, url: str, field: str) -> None:
        try:
            await self._guard.vet(url)
        except UrlRejected as exc:
            raise errors.invalid(field, exc.message, "WEBHOOK_URL_REJECTED") from exc

    async def create(
        self, caller: Caller, webhook_id: str, spec: WebhookSpec, secret: str
    ) -> tuple[WebhookRow, str]:
        """Creates a subscription; returns it and its secret (generated when `secret` is empty)."""
        if len(spec.models) > MAX_MODELS:
            raise errors.invalid("webhook.models", f"at most {MAX_MODELS} models")
        if secret:
            _check_secret(secret, "webhook.secret")
        else:
            secret = f"whsec_{secrets.token_urlsafe(32)}"
        await self._vet_url(spec.url, "webhook.url")

        async def work(conn: Connection) -> WebhookRow:
            hook = await repo.insert_webhook(
                conn,
                webhook_id,
                url=spec.url,
                event_types=spec.event_types,
                models=spec.models,
                secret=secret,
                active=spec.active,
                creator=caller.principal,
            )
            await audit.record(conn, caller, webhook_name(webhook_id), after=_summary(hook))
            return hook

        hook = await self._db.transact(work)
        self._on_change()
        return hook, secret

    async def get(self, webhook_id: str) -> WebhookRow:
        """A subscription or NOT_FOUND."""
        async with self._db.connection() as conn:
            hook = await repo.get_webhook(conn, webhook_id)
        if hook is None:
            raise _not_found(webhook_id)
        return hook

    async def list(self, page_size: int, page_token: str) -> Page[WebhookRow]:
        """Subscriptions by id."""
        try:
            limit = resolve_page_size(page_size)
            after = str(self._tokens.decode(page_token, "webhooks")[0]) if page_token else None
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except PageTokenError as exc:
            raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        async with self._db.connection() as conn:
            rows = await repo.list_webhooks(conn, after, limit + 1)
        token = self._tokens.encode([rows[limit - 1].webhook_id], "webhooks") if len(rows) > limit else ""
        return Page(rows[:limit], token)

    async def update(self, caller: Caller, webhook_id: str, changes: dict[str, Any], etag: str) -> WebhookRow:
        """Writes `changes` (url, event_types, models, active, secret); a stale etag is ABORTED."""
        if "url" in changes:
            await self._vet_url(changes["url"], "webhook.url")
        if "secret" in changes:
            _check_secret(changes["secret"], "webhook.secret")
        if len(changes.get("models", ())) > MAX_MODELS:
            raise errors.invalid("webhook.models", f"at most {MAX_MODELS} models")

        async def work(conn: Connection) -> WebhookRow:
            before = await self._locked(conn, webhook_id, etag)
            if not changes:
                return before
            after = await repo.update_webhook(conn, webhook_id, changes)
            summary = _summary(after)
            if "secret" in changes:
                summary["secret"] = "rotated"
            await audit.record(conn, caller, webhook_name(webhook_id), before=_summary(before), after=summary)
            return after

        hook = await self._db.transact(work)
        self._on_change()
        return hook

    async def delete(self, caller: Caller, webhook_id: str, etag: str) -> None:
        """Deletes a subscription with its delivery log; pending deliveries are dropped."""

        async def work(conn: Connection) -> None:
            before = await self._locked(conn, webhook_id, etag)
            await repo.delete_webhook(conn, webhook_id)
            await audit.record(conn, caller, webhook_name(webhook_id), before=_summary(before))

        await self._db.transact(work)

    async def _locked(self, conn: Connection, webhook_id: str, etag: str) -> WebhookRow:
        hook = await repo.get_webhook(conn, webhook_id, lock=True)
        if hook is None:
            raise _not_found(webhook_id)
        current = webhook_etag(hook)
        if etag and etag != current:
            name = webhook_name(webhook_id)
            raise errors.Aborted(
                f"etag mismatch for {name}: it changed since you read it; get it again and retry",
                "ETAG_MISMATCH",
                {"resource": name, "current_etag": current},
            )
        return hook

    async def list_deliveries(
        self, webhook_id: str, filter_text: str, page_size: int, page_token: str
    ) -> Page[DeliveryRow]:
        """A subscription's delivery log, newest event first; filterable by state, event_type, revision,
        create_time."""
        try:
            limit = resolve_page_size(page_size)
            node = parse_filter(filter_text)
        except PageSizeError as exc:
            raise errors.invalid("page_size", str(exc)) from exc
        except FilterError as exc:
            raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        binding = f"{webhook_name(webhook_id)}/deliveries\x00{filter_text}"
        after = None
        if page_token:
            try:
                after = self._tokens.decode(page_token, binding)
            except PageTokenError as exc:
                raise errors.invalid("page_token", str(exc), "INVALID_PAGE_TOKEN") from exc
        await self.get(webhook_id)
        async with self._db.connection() as conn:
            try:
                rows, cursor = await repo.list_deliveries(
                    conn, webhook_id, filter_node=node, after=after, limit=limit
                )
            except FilterError as exc:
                raise errors.invalid("filter", exc.message, "INVALID_FILTER") from exc
        return Page(rows, "" if cursor is None else self._tokens.encode(cursor, binding))

    async def redeliver(self, caller: Caller, webhook_id: str, revision: int) -> DeliveryRow:
        """Makes a delivery PENDING again with a fresh attempt budget, due now."""

        async def work(conn: Connection) -> DeliveryRow:
            row = await repo.redeliver(conn, webhook_id, revision)
            if row is None:
                name = delivery_name(webhook_id, revision)
                raise errors.NotFound(f"{name} not found", "WEBHOOK_DELIVERY_NOT_FOUND", {"delivery": name})
            await audit.record(conn, caller, delivery_name(webhook_id, revision), after={"state": "PENDING"})
            return row

        row = await self._db.transact(work)
        self._on_change()
        return row

    async def replay(self, caller: Caller, webhook_id: str, from_revision: int) -> int:
        """Enqueues again every matching event after `from_revision` that the subscription has already
        enqueued; returns how many deliveries were (re)queued. FAILED_PRECONDITION when the feed no longer
        holds the events right after `from_revision`."""
        if from_revision < 0:
            raise errors.invalid("from_revision", "must not be negative")

        async def work(conn: Connection) -> int:
            hook = await repo.get_webhook(conn, webhook_id, lock=True)
            if hook is None:
                raise _not_found(webhook_id)
            upto = hook.enqueued_revision
            count = 0
            if from_revision < upto:
                oldest = await lifecycle_repo.oldest_retained_revision(conn)
                if oldest is None or oldest > from_revision + 1:
                    retained = "none" if oldest is None else str(oldest)
                    raise errors.FailedPrecondition(
                        f"events after revision {from_revision} are no longer retained "
                        f"(oldest retained: {retained})",
                        "EVENTS_NOT_RETAINED",
                        {"from_revision": str(from_revision), "oldest_retained_revision": retained},
                    )
                count = await self._requeue(conn, hook, from_revision, upto)
            await audit.record(
                conn, caller, webhook_name(webhook_id), from_revision=from_revision, requeued=count
            )
            return count

        count = await self._db.transact(work)
        self._on_change()
        return count

    async def _requeue(self, conn: Connection, hook: WebhookRow, after: int, upto: int) -> int:
        count = 0
        while after < upto:
            changes = [
                c for c in await lifecycle_repo.events_after(conn, after, _REPLAY_BATCH) if c.revision <= upto
            ]
            if not changes:
                break
            deliveries = deliveries_for(hook, changes, self._render)
            count += await repo.insert_deliveries(conn, hook.webhook_id, deliveries, reset=True)
            after = changes[-1].revision
        return count
