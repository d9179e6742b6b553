"""PostgreSQL access: the connection pool, transactions with retry, and error translation."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeAlias, TypeVar

import asyncpg
from asyncpg.connection import LoggedQuery
from asyncpg.pool import PoolConnectionProxy
from opentelemetry.trace import Status, StatusCode

from modelreg_server import telemetry
from modelreg_server.domain import errors

log = logging.getLogger(__name__)

T = TypeVar("T")

# What repositories receive: a pooled connection proxy or a plain connection.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

# SQLSTATEs worth retrying inside the server before giving up with ABORTED.
_RETRYABLE = {"40001", "40P01"}
# Custom SQLSTATEs raised by the triggers that enforce registry invariants.
_RULE_REASONS = {
    "MR001": "IMMUTABLE_FIELD",
    "MR002": "POLICY_FORBIDS_CHANGE",
    "MR003": "VERSION_ARCHIVED",
    "MR004": "STAGE_TRANSITION_NOT_ALLOWED",
    "MR006": "RETENTION",
    "MR007": "LEGAL_HOLD",
    "MR008": "SELF_APPROVAL",
    "MR009": "PROMOTION_REQUEST_CLOSED",
}
_CONNECTION_CLASSES = ("08", "57P", "53")  # connection exceptions, admin shutdown, insufficient resources


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _on_acquire(conn: PoolConnectionProxy) -> None:
    # Query loggers are dropped on every release, so they are attached per acquire (when tracing is on).
    if telemetry.tracer_enabled():
        conn.add_query_logger(_trace_query)


async def _on_release(conn: asyncpg.Connection) -> None:
    """Replaces asyncpg's reset query (one more round trip per release): pooled connections never keep
    session state: no SET, LISTEN or session-level advisory lock outlives the code that took it."""


def _trace_query(query: LoggedQuery) -> None:
    """A child span per statement, placed after the fact from the timing asyncpg reports."""
    if not telemetry.tracer_enabled():
        return
    end = time.time_ns()
    span = telemetry.tracer.start_span(
        "postgresql",
        start_time=end - int(query.elapsed * 1e9),
        attributes={"db.system": "postgresql", "db.statement": query.query[:2000]},
    )
    if query.exception is not None:
        span.set_status(Status(StatusCode.ERROR, type(query.exception).__name__))
    span.end(end_time=end)


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 16) -> asyncpg.Pool:
    """Opens a pool; raises errors.Unavailable with one clear line when the database is unreachable."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            # Short OLTP statements only: JIT compiling them (e.g. the audit append, whose estimates on the
            # one-row head table are wild) cost ~0.9 s per call while holding the audit lock.
            server_settings={"jit": "off"},
            setup=_on_acquire,
            reset=_on_release,
            command_timeout=60,
            max_inactive_connection_lifetime=300,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise errors.Unavailable(f"cannot connect to PostgreSQL: {exc}", "DATABASE_UNAVAILABLE") from exc
    assert pool is not None
    return pool


def translate(exc: BaseException) -> errors.RegistryError | None:
    """Maps a database-layer exception to the registry error a client should see, or None."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        detail = str(exc)
        if state == "23505":
            return errors.AlreadyExists(f"already exists: {detail}", "ALREADY_EXISTS")
        if state == "23514":
            return errors.InvalidArgument(f"value violates a constraint: {detail}", "CONSTRAINT_VIOLATION")
        if state == "23503":
            return errors.FailedPrecondition(f"referenced resource is missing: {detail}", "REFERENCE_MISSING")
        if state in _RETRYABLE:
            return errors.Aborted("concurrent modification; retry the call", "CONCURRENT_MODIFICATION")
        if state in _RULE_REASONS:
            return errors.FailedPrecondition(detail, _RULE_REASONS[state])
        if state.startswith("22"):
            return errors.InvalidArgument(f"value rejected by the database: {detail}", "INVALID_VALUE")
        if state == "53300":
            return errors.Unavailable("PostgreSQL has no free connections", "DATABASE_BUSY")
        if state.startswith(_CONNECTION_CLASSES):
            return errors.Unavailable("database unavailable; retry later", "DATABASE_UNAVAILABLE")
        if state == "57014":
            return errors.Unavailable("database statement timed out", "DATABASE_TIMEOUT")
        return None
    if isinstance(exc, (OSError, asyncpg.InterfaceError, asyncio.TimeoutError, ConnectionError)):
        return errors.Unavailable("database unavailable; retry later", "DATABASE_UNAVAILABLE")
    return None


class Database:
    """The pool plus helpers that run units of work in transactions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for reads outside an explicit transaction."""
        try:
            async with self.pool.acquire(timeout=10) as conn:
                yield conn
        except errors.RegistryError:
            raise
        except Exception as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def transact(
        self,
        work: Callable[[Connection], Awaitable[T]],
        *,
        isolation: Isolation = "read_committed",
        attempts: int = 4,
    ) -> T:
        """Runs `work` in a transaction, retrying serialization failures and deadlocks."""
        for attempt in range(attempts):
            try:
                async with self.pool.acquire(timeout=10) as conn, conn.transaction(isolation=isolation):
                    return await work(conn)
            except errors.RegistryError:
                raise
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRYABLE and attempt + 1 < attempts:
                    await asyncio.sleep(0.005 * 2**attempt)
                    continue
                mapped = translate(exc)
                if mapped is None:
                    raise
                raise mapped from exc
            except Exception as exc:
                mapped = translate(exc)
                if mapped is None:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable")

    async def fetch_secret(self, name: str) -> bytes:
        """Reads a server-wide secret created by the migrations (shared by every replica)."""
        async with self.connection() as conn:
            value: Any = await conn.fetchval("SELECT value FROM server_secrets WHERE name = $1", name)
        if value is None:
            raise errors.FailedPrecondition(f"server secret {name!r} missing; run migrations", "NOT_MIGRATED")
        return bytes(value)

    async def close(self) -> None:
        """Closes the pool, waiting for connections in use."""
        await self.pool.close()
