"""A call the client cancels leaves nothing behind: its transaction rolls back and its connection is reused.

The call is made to wait on a row lock that the test holds in its own transaction, so it is cancelled at
a known point: inside the server's transaction, after it took the registry-wide locks it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest

from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_registry_service_pb2 as reg_pb
from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from tests.support.rpc import channel

if TYPE_CHECKING:
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def stubs(
    server_address: str,
) -> AsyncIterator[tuple[ModelRegistryServiceAsyncStub, LifecycleServiceAsyncStub]]:
    async with channel(server_address) as ch:
        yield ModelRegistryServiceStub(ch), LifecycleServiceStub(ch)


async def waiting_on_a_lock(conn: asyncpg.Connection, table: str) -> bool:
    """Whether a backend of this database waits for a row lock while running a statement on `table`."""
    count = await conn.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE '%' || $1 || '%'
             AND pid <> pg_backend_pid()""",
        table,
    )
    return bool(count)


async def cancel_while_the_model_is_locked(
    database_url: str, model: str, start: Callable[[], grpc.aio.UnaryUnaryCall[Any, Any]]
) -> None:
    """Holds the model's row lock, starts the call, cancels it once it waits on that lock, and checks
    that its statement went away with it before the lock is released."""
    holder = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM models WHERE model_id = $1 FOR UPDATE", model)
        call = start()
        await eventually(lambda: waiting_on_a_lock(watcher, "models"))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The server's statement is cancelled with the call: nobody waits on the lock any more.
        await eventually(lambda: _not(waiting_on_a_lock(watcher, "models")))
        await lock.rollback()
    finally:
        await holder.close()
        await watcher.close()


async def test_a_cancelled_registration_rolls_back_and_takes_no_version_number(
    stubs: tuple[ModelRegistryServiceAsyncStub, LifecycleServiceAsyncStub], database_url: str
) -> None:
    registry, _ = stubs
    model = f"cancel-{uuid.uuid4().hex[:8]}"
    await registry.CreateModel(reg_pb.CreateModelRequest(model_id=model))
    parent = f"models/{model}"
    await cancel_while_the_model_is_locked(
        database_url,
        model,
        lambda: registry.CreateModelVersion(reg_pb.CreateModelVersionRequest(parent=parent)),
    )
    async with _connect(database_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM model_versions WHERE model_id = $1", model) == 0
    created = await registry.CreateModelVersion(reg_pb.CreateModelVersionRequest(parent=parent))
    assert created.name == f"{parent}/versions/1"  # gap-free: the cancelled call used no number


async def test_a_cancelled_alias_move_changes_nothing(
    stubs: tuple[ModelRegistryServiceAsyncStub, LifecycleServiceAsyncStub], database_url: str
) -> None:
    registry, lifecycle = stubs
    model = f"cancel-alias-{uuid.uuid4().hex[:8]}"
    await registry.CreateModel(reg_pb.CreateModelRequest(model_id=model))
    parent = f"models/{model}"
    for _ in range(2):
        await registry.CreateModelVersion(reg_pb.CreateModelVersionRequest(parent=parent))
    alias = f"{parent}/aliases/champion"
    await lifecycle.SetAlias(lc.SetAliasRequest(name=alias, model_version=f"{parent}/versions/1"))
    history_before = await lifecycle.ListAliasHistory(lc.ListAliasHistoryRequest(name=alias))
    await cancel_while_the_model_is_locked(
        database_url,
        model,
        lambda: lifecycle.SetAlias(lc.SetAliasRequest(name=alias, model_version=f"{parent}/versions/2")),
    )
    resolved = await lifecycle.GetAlias(lc.GetAliasRequest(name=alias))
    assert resolved.model_version == f"{parent}/versions/1"
    history_after = await lifecycle.ListAliasHistory(lc.ListAliasHistoryRequest(name=alias))
    assert list(history_after.entries) == list(history_before.entries)


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


@contextlib.asynccontextmanager
async def _connect(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()
