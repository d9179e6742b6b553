"""The change feed of one replica: a LISTEN connection wakes a single pump that reads new events in
revision order, invalidates the resolve caches and fans the changes out to watchers.

A notification is only a hint: the pump reads `revision > last` from the events table, so notifications
lost while disconnected cost nothing. While the listener is down the caches are bypassed, because without
it this replica cannot know what other replicas changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from modelreg_server.domain.records import SERVING_CHANGES, Change
from modelreg_server.domain.resolve_cache import ModelScopedCache
from modelreg_server.storage import lifecycle_repo as repo
from modelreg_server.storage.db import Database

log = logging.getLogger(__name__)


class Subscription:
    """A watcher's bounded queue of changes for the models it selected (None: every model)."""

    def __init__(self, models: frozenset[str] | None, max_pending: int) -> None:
        self.models = models
        self.queue: asyncio.Queue[Change] = asyncio.Queue(max_pending)
        self.overflowed = asyncio.Event()

    def offer(self, change: Change) -> None:
        """Queues the change if selected; a full queue marks the watcher too slow instead of blocking."""
        if change.change_type not in SERVING_CHANGES:
            return
        if self.models is not None and change.model_id not in self.models:
            return
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed.set()


class ChangeFeed:
    """One per replica."""

    def __init__(
        self,
        db: Database,
        dsn: str,
        caches: Iterable[ModelScopedCache[Any]],
        *,
        poll_interval: float = 1.0,
        retention: timedelta = timedelta(days=7),
        max_pending: int = 10_000,
    ) -> None:
        self._db = db
        self._dsn = dsn
        self._caches = list(caches)
        self._poll_interval = poll_interval
        self._retention = retention
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        self.last_revision = 0
        self.connected = False

    async def start(self) -> None:
        """Starts from the current revision; older changes are history, not news."""
        async with self._db.connection() as conn:
            self.last_revision = await repo.current_revision(conn)
        self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        """Stops the pump and the listener."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Asks the pump to read new events now (after a local commit or a notification)."""
        self._wake.set()

    def subscribe(self, models: frozenset[str] | None) -> Subscription:
        """A new watcher; changes published from now on reach its queue."""
        sub = Subscription(models, self._max_pending)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forgets a watcher."""
        self._subscriptions.discard(sub)

    @property
    def watchers(self) -> int:
        """Connected watchers."""
        return len(self._subscriptions)

    async def wait_for(self, revision: int, within: float) -> bool:
        """Waits until the pump has published `revision`; False on timeout."""
        self.wake()
        async with self._advanced:
            try:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self.last_revision >= revision), within
                )
            except TimeoutError:
                return False
        return True

    def _set_caches(self, enabled: bool) -> None:
        for cache in self._caches:
            cache.clear(floor=self.last_revision)
            cache.enabled = enabled

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                await conn.add_listener(repo.NOTIFY_CHANNEL, self._notified)
                conn.add_termination_listener(lambda _: self._wake.set())
                self._set_caches(True)
                self.connected = True
                backoff = 0.1
                await self._drain()
                while not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                    self._wake.clear()
                    await self._drain()
                    await self._maybe_prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed interrupted (%s); retrying in %.1fs", exc, backoff)
            finally:
                self.connected = False
                self._set_caches(False)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _drain(self) -> None:
        while True:
            async with self._db.connection() as conn:
                changes = await repo.events_after(conn, self.last_revision, 500)
            if not changes:
                return
            if changes[0].revision > self.last_revision + 1:
                # Events were pruned before this replica read them: start over from what is stored.
                log.warning(
                    "change feed gap %d..%d; resetting caches and watchers",
                    self.last_revision,
                    changes[0].revision,
                )
                for sub in self._subscriptions:
                    sub.overflowed.set()
                for cache in self._caches:
                    cache.clear(floor=changes[-1].revision)
            for change in changes:
                for cache in self._caches:
                    cache.invalidate(change.model_id, change.revision)
                for sub in self._subscriptions:
                    sub.offer(change)
                self.last_revision = change.revision
            async with self._advanced:
                self._advanced.notify_all()

    async def _maybe_prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(hours=1):
            return
        self._last_prune = now
        async with self._db.connection() as conn:
            pruned = await repo.prune_events(conn, now - self._retention)
        if pruned:
            log.info("pruned %d change-feed events older than %s", pruned, self._retention)
