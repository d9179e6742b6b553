"""The webhook worker: one per replica, turning feed events into deliveries and delivering them.

Enqueue. The change feed (registry_events) is the outbox: every registry change writes its event in the
change's own transaction, and revisions become visible in order. For each active subscription the pump
reads the events after its `enqueued_revision`, inserts a delivery per matching event and advances the
cursor, all in ONE transaction that holds the subscription's row lock (other replicas skip it). A crash
before commit loses nothing (the cursor did not move), a crash after it repeats nothing.

Deliver. A delivery is claimed with `SELECT … FOR UPDATE SKIP LOCKED` in a transaction that stays open
for the HTTP attempt and commits its outcome, so replicas share the work and never send the same delivery
at once. The claim is the row lock itself, not a lease column: if the replica dies, PostgreSQL sees the
connection drop, rolls back, and the delivery is due again at once for any replica (a restart included).
A replica that hangs or is cut off without its socket closing is bounded by
`idle_in_transaction_session_timeout`, set on the claiming transaction, after which PostgreSQL ends the
session and releases the row. The cost is one pooled connection per delivery in flight, bounded by the
worker's concurrency.

Guarantees. At least once: a crash between the receiver's answer and the commit re-sends the event, with
the same `X-Modelreg-Event-Id` (`{webhook}:{revision}`) and the same body, so receivers deduplicate by
it. No order between events is promised (retries overtake); the body carries the revision.

Retries. A non-2xx answer, a timeout, a network error or an SSRF refusal is a failed attempt; the next
is due after 1 s, 2 s, 4 s … (capped, plus up to 25 % jitter so receivers coming back are not hit by
every replica at once), and after `max_attempts` the delivery is FAILED until someone redelivers it.

Wake-ups. The pump polls every `poll_interval` and also runs at once after `wake()` (a commit on this
replica); other replicas' commits are seen within one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from modelreg_server.domain.records import Change
from modelreg_server.domain.webhook_sender import Outcome, WebhookSender
from modelreg_server.storage import lifecycle_repo
from modelreg_server.storage import webhook_repo as repo
from modelreg_server.storage.db import Connection, Database
from modelreg_server.storage.webhook_repo import DeliveryState, NewDelivery, WebhookRow

log = logging.getLogger(__name__)

# Renders the request body (JSON text) of one event: (event id, webhook name, change) -> body. Supplied by
# the API layer, which owns the wire format (modelreg.v1.WebhookEvent).
EventRenderer = Callable[[str, str, Change], str]


def webhook_name(webhook_id: str) -> str:
    """`webhooks/{webhook_id}`."""
    return f"webhooks/{webhook_id}"


def event_id(webhook_id: str, revision: int) -> str:
    """The idempotency key of an event's deliveries to a webhook."""
    return f"{webhook_id}:{revision}"


def deliveries_for(hook: WebhookRow, changes: Sequence[Change], render: EventRenderer) -> list[NewDelivery]:
    """The deliveries `changes` make for a subscription (those its filters select)."""
    return [
        NewDelivery(
            c.revision,
            c.change_type,
            c.model_id,
            render(event_id(hook.webhook_id, c.revision), webhook_name(hook.webhook_id), c),
        )
        for c in changes
        if hook.selects(c.change_type, c.model_id)
    ]


def backoff_delay(attempts_made: int, base: float, cap: float) -> float:
    """Seconds before the next attempt: base * 2^(n-1), capped, plus up to 25 % jitter."""
    delay = min(cap, base * 2 ** min(attempts_made - 1, 32))
    return float(delay * (1 + 0.25 * random.random()))


class WebhookWorker:
    """Enqueues and delivers webhook events; `start` once per replica."""

    def __init__(
        self,
        db: Database,
        render: EventRenderer,
        sender: WebhookSender,
        *,
        max_attempts: int = 12,
        concurrency: int = 4,
        poll_interval: float = 0.5,
        request_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 3600.0,
        log_retention: timedelta = timedelta(days=30),
        batch: int = 500,
    ) -> None:
        self._db = db
        self._render = render
        self._sender = sender
        self._max_attempts = max(1, max_attempts)
        self._concurrency = max(1, concurrency)
        self._poll_interval = poll_interval
        # The whole attempt (connect, send, answer), and how long a claim may then sit idle before
        # PostgreSQL takes it back: beyond the attempt's own limit, so a healthy replica never loses it.
        self._attempt_limit = 3 * request_timeout
        self._hold_limit_ms = int((self._attempt_limit + 15) * 1000)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._log_retention = log_retention
        self._batch = batch
        self._wake = asyncio.Event()
        self._due = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._last_prune = datetime.min.replace(tzinfo=UTC)

    async def start(self) -> None:
        """Starts the pump and the delivery tasks."""
        self._tasks = [asyncio.create_task(self._pump(), name="webhook-pump")]
        self._tasks += [
            asyncio.create_task(self._deliver_loop(), name=f"webhook-delivery-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self, grace: float = 5.0) -> None:
        """Lets attempts in flight finish for up to `grace` seconds, then cancels them (they stay due)."""
        self._stopping = True
        self._wake.set()
        self._due.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def wake(self) -> None:
        """Asks the pump to look for new events and due deliveries now."""
        self._wake.set()

    # --- enqueue -----------------------------------------------------------------------------------

    async def _pump(self) -> None:
        backoff = self._poll_interval
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.enqueue_pending()
                async with self._db.connection() as conn:
                    if await repo.has_due(conn):
                        self._due.set()
                await self._maybe_prune()
                backoff = self._poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook pump failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def enqueue_pending(self) -> None:
        """Turns the events every active subscription has not seen yet into deliveries."""
        async with self._db.connection() as conn:
            behind = await repo.webhooks_behind(conn)
        for webhook_id in behind:
            batch = functools.partial(self._enqueue_batch, webhook_id=webhook_id)
            while not self._stopping and await self._db.transact(batch):
                pass

    async def _enqueue_batch(self, conn: Connection, webhook_id: str) -> bool:
        """One batch for one subscription; True when more events may follow."""
        hook = await repo.lock_for_enqueue(conn, webhook_id)
        if hook is None:
            return False  # paused, deleted, or another replica is at it
        changes = await lifecycle_repo.events_after(conn, hook.enqueued_revision, self._batch)
        if not changes:
            return False
        if changes[0].revision > hook.enqueued_revision + 1:
            log.warning(
                "webhooks/%s: events %d..%d were pruned before they could be enqueued",
                webhook_id,
                hook.enqueued_revision + 1,
                changes[0].revision - 1,
            )
        await repo.insert_deliveries(
            conn, webhook_id, deliveries_for(hook, changes, self._render), reset=False
        )
        await repo.set_enqueued_revision(conn, webhook_id, changes[-1].revision)
        return len(changes) == self._batch

    async def _maybe_prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(hours=1):
            return
        self._last_prune = now
        async with self._db.connection() as conn:
            pruned = await repo.prune_deliveries(conn, now - self._log_retention)
        if pruned:
            log.info("pruned %d finished webhook deliveries older than %s", pruned, self._log_retention)

    # --- deliver -----------------------------------------------------------------------------------

    async def _deliver_loop(self) -> None:
        backoff = self._poll_interval
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), 10 * self._poll_interval)
            self._due.clear()
            try:
                while not self._stopping and await self.deliver_one():
                    pass
                backoff = self._poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("webhook delivery failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def deliver_one(self) -> bool:
        """Claims one due delivery, attempts it and records the outcome; False when none was due."""
        return await self._db.transact(self._attempt, attempts=1)

    async def _attempt(self, conn: Connection) -> bool:
        claim = await repo.claim_due(conn, self._hold_limit_ms)
        if claim is None:
            return False
        attempt = claim.attempt_count + 1
        try:
            outcome = await asyncio.wait_for(
                asyncio.to_thread(
                    self._sender.post,
                    claim.url,
                    claim.secret,
                    event_id(claim.webhook_id, claim.revision),
                    webhook_name(claim.webhook_id),
                    claim.body.encode(),
                    attempt,
                ),
                self._attempt_limit,
            )
        except TimeoutError:
            outcome = Outcome(0, f"no answer within {self._attempt_limit:.0f}s")
        if outcome.ok:
            state, retry_in = DeliveryState.DELIVERED, 0.0
        elif attempt >= self._max_attempts:
            state, retry_in = DeliveryState.FAILED, 0.0
        else:
            state, retry_in = (
                DeliveryState.PENDING,
                backoff_delay(attempt, self._backoff_base, self._backoff_cap),
            )
        await repo.record_attempt(
            conn,
            claim.webhook_id,
            claim.revision,
            state=state,
            status_code=outcome.status_code,
            error=outcome.error,
            retry_in_s=retry_in,
        )
        if state is DeliveryState.FAILED:
            log.warning(
                "webhooks/%s: giving up on revision %d after %d attempts: %s",
                claim.webhook_id,
                claim.revision,
                attempt,
                outcome.error,
            )
        return True
