"""Stages, aliases, traffic and the serving hot path against real servers and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from modelreg.routing import pick_route
from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceStub, ServingServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from tests.support.packages import publish
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub, ServingServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub

Code = grpc.StatusCode
STAGING, PRODUCTION, ARCHIVED, NONE = (
    model_pb2.STAGE_STAGING,
    model_pb2.STAGE_PRODUCTION,
    model_pb2.STAGE_ARCHIVED,
    model_pb2.STAGE_NONE,
)


class Client:
    """The three services over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.registry: ModelRegistryServiceAsyncStub = ModelRegistryServiceStub(channel)
        self.lifecycle: LifecycleServiceAsyncStub = LifecycleServiceStub(channel)
        self.serving: ServingServiceAsyncStub = ServingServiceStub(channel)
        self.artifacts: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)

    async def model(self, versions: int = 3, policy: int = 0, *, packages: bool = True) -> str:
        model_id = f"lc-{uuid.uuid4().hex[:12]}"
        await self.registry.CreateModel(
            pb.CreateModelRequest(model_id=model_id, model=model_pb2.Model(promotion_policy=policy))  # type: ignore[arg-type]
        )
        for i in range(versions):
            digest = (
                (await publish(self.artifacts, {"model.bin": f"{model_id}-{i}".encode()}))[0]
                if packages
                else ""
            )
            await self.registry.CreateModelVersion(
                pb.CreateModelVersionRequest(
                    parent=f"models/{model_id}", model_version=model_pb2.ModelVersion(artifact_digest=digest)
                )
            )
        return model_id

    async def move(
        self, model_id: str, version: int, stage: model_pb2.Stage.ValueType, archive: bool = False
    ) -> model_pb2.ModelVersion:
        return await self.lifecycle.TransitionModelVersionStage(
            lc.TransitionModelVersionStageRequest(
                name=f"models/{model_id}/versions/{version}",
                stage=stage,
                archive_existing=archive,
                comment="c",
            )
        )

    async def set_alias(self, model_id: str, alias: str, version: int, expected: str = "") -> lc.Alias:
        return await self.lifecycle.SetAlias(
            lc.SetAliasRequest(
                name=f"models/{model_id}/aliases/{alias}",
                model_version=f"models/{model_id}/versions/{version}",
                expected_model_version=expected,
            )
        )

    async def resolve(self, model_id: str, alias: str) -> lc.ResolveAliasResponse:
        return await self.serving.ResolveAlias(
            lc.ResolveAliasRequest(name=f"models/{model_id}/aliases/{alias}")
        )


@pytest.fixture
async def client(server_address: str) -> AsyncIterator[Client]:
    async with open_channel(server_address) as channel:
        yield Client(channel)


async def test_stage_moves_follow_the_documented_graph(client: Client) -> None:
    model_id = await client.model()
    skip = await fails(client.move(model_id, 1, PRODUCTION))
    assert (skip.code, skip.reason) == (Code.FAILED_PRECONDITION, "STAGE_TRANSITION_NOT_ALLOWED")
    assert (await client.move(model_id, 1, STAGING)).stage == STAGING
    assert (await client.move(model_id, 1, PRODUCTION)).stage == PRODUCTION
    await client.move(model_id, 2, STAGING)
    occupied = await fails(client.move(model_id, 2, PRODUCTION))
    assert (occupied.code, occupied.reason) == (Code.FAILED_PRECONDITION, "PRODUCTION_OCCUPIED")
    assert occupied.precondition_violations[0][1] == f"models/{model_id}/versions/1"
    promoted = await client.move(model_id, 2, PRODUCTION, archive=True)
    assert promoted.stage == PRODUCTION
    old = await client.registry.GetModelVersion(
        pb.GetModelVersionRequest(name=f"models/{model_id}/versions/1")
    )
    assert old.stage == ARCHIVED
    assert (await client.move(model_id, 1, NONE)).stage == NONE  # restore from the archive
    history = await client.lifecycle.ListStageTransitions(
        lc.ListStageTransitionsRequest(parent=f"models/{model_id}")
    )
    moves = [(t.model_version.rsplit("/", 1)[1], t.from_stage, t.to_stage) for t in history.stage_transitions]
    assert moves == [
        ("1", ARCHIVED, NONE),
        ("2", STAGING, PRODUCTION),
        ("1", PRODUCTION, ARCHIVED),
        ("2", NONE, STAGING),
        ("1", STAGING, PRODUCTION),
        ("1", NONE, STAGING),
    ]
    assert all(t.actor == "admin" and t.comment == "c" and t.revision > 0 for t in history.stage_transitions)
    assert [t.revision for t in history.stage_transitions] == sorted(
        (t.revision for t in history.stage_transitions), reverse=True
    )


async def test_one_production_version_under_100_concurrent_promotions_on_two_replicas(
    server_address: str, start_replica: Callable[[], ServerProcess], database_url: str
) -> None:
    replica = start_replica()
    async with (
        open_channel(server_address) as first,
        open_channel(replica.address) as second,
    ):
        clients = [Client(first), Client(second)]
        model_id = await clients[0].model(versions=100, packages=False)
        await asyncio.gather(*(clients[v % 2].move(model_id, v, STAGING) for v in range(1, 101)))
        observed: list[int] = []
        done = asyncio.Event()
        conn = await asyncpg.connect(database_url)

        async def observe() -> None:
            while not done.is_set():
                observed.append(
                    await conn.fetchval(
                        "SELECT count(*) FROM model_versions WHERE model_id = $1 AND stage = 3", model_id
                    )
                )

        observer = asyncio.create_task(observe())
        results = await asyncio.gather(
            *(clients[v % 2].move(model_id, v, PRODUCTION, archive=True) for v in range(1, 101)),
            return_exceptions=True,
        )
        done.set()
        await observer
        final = await conn.fetchval(
            "SELECT count(*) FROM model_versions WHERE model_id = $1 AND stage = 3", model_id
        )
        archived = await conn.fetchval(
            "SELECT count(*) FROM model_versions WHERE model_id = $1 AND stage = 4", model_id
        )
        await conn.close()
    # Every promotion either won (archiving its predecessor) or found its version already archived by a later
    # winner; never two PRODUCTION versions at any observed instant.
    assert final == 1
    assert max(observed) <= 1 and len(observed) > 5
    wins = [r for r in results if isinstance(r, model_pb2.ModelVersion)]
    assert len(wins) + sum(1 for r in results if isinstance(r, grpc.aio.AioRpcError)) == 100
    assert archived == len(wins) - 1
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            assert r.code() == Code.FAILED_PRECONDITION, r


async def test_alias_set_resolve_cas_and_history(client: Client) -> None:
    model_id = await client.model()
    alias = await client.set_alias(model_id, "champion", 1, expected="-")
    assert (alias.name, alias.model_version, alias.version) == (
        f"models/{model_id}/aliases/champion",
        f"models/{model_id}/versions/1",
        1,
    )
    resolved = await client.resolve(model_id, "champion")
    first = await client.registry.GetModelVersion(
        pb.GetModelVersionRequest(name=f"models/{model_id}/versions/1")
    )
    assert (resolved.version, resolved.artifact_digest, resolved.stage) == (1, first.artifact_digest, NONE)
    assert resolved.artifact_digest.startswith("sha256:")
    exists = await fails(client.set_alias(model_id, "champion", 2, expected="-"))
    assert (exists.code, exists.reason) == (Code.ABORTED, "ALIAS_MOVED")
    stale = await fails(client.set_alias(model_id, "champion", 2, expected=f"models/{model_id}/versions/3"))
    assert stale.code == Code.ABORTED
    await client.set_alias(model_id, "champion", 2, expected=f"models/{model_id}/versions/1")
    await client.set_alias(model_id, "champion", 3)
    assert (await client.resolve(model_id, "champion")).version == 3
    version = await client.registry.GetModelVersion(
        pb.GetModelVersionRequest(name=f"models/{model_id}@champion")
    )
    assert version.name == f"models/{model_id}/versions/3"
    assert list(version.aliases) == ["champion"]
    rolled = await client.lifecycle.RollbackAlias(
        lc.RollbackAliasRequest(name=f"models/{model_id}/aliases/champion")
    )
    assert rolled.version == 2
    assert (await client.resolve(model_id, "champion")).version == 2
    history = await client.lifecycle.ListAliasHistory(
        lc.ListAliasHistoryRequest(name=f"models/{model_id}/aliases/champion", page_size=2)
    )
    assert [(e.model_version[-1:], e.previous_model_version[-1:]) for e in history.entries] == [
        ("2", "3"),
        ("3", "2"),
    ]
    assert history.next_page_token
    rest = await client.lifecycle.ListAliasHistory(
        lc.ListAliasHistoryRequest(
            name=f"models/{model_id}/aliases/champion", page_token=history.next_page_token
        )
    )
    assert [(e.model_version[-1:], e.previous_model_version) for e in rest.entries] == [
        ("2", f"models/{model_id}/versions/1"),
        ("1", ""),
    ]


async def test_concurrent_compare_and_swap_has_one_winner(client: Client) -> None:
    model_id = await client.model(versions=20)
    await client.set_alias(model_id, "canary", 1)
    expected = f"models/{model_id}/versions/1"
    results = await asyncio.gather(
        *(client.set_alias(model_id, "canary", v, expected=expected) for v in range(2, 21)),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, lc.Alias)]
    assert len(winners) == 1
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == Code.ABORTED for r in results if r not in winners
    )
    assert (await client.resolve(model_id, "canary")).version == winners[0].version


async def test_update_aliases_is_atomic(client: Client) -> None:
    model_id = await client.model()
    await client.set_alias(model_id, "champion", 1)
    await client.set_alias(model_id, "canary", 2)
    parent = f"models/{model_id}"
    promote = lc.UpdateAliasesRequest(
        parent=parent,
        changes=[
            lc.AliasChange(name=f"{parent}/aliases/champion", model_version=f"{parent}@canary"),
            lc.AliasChange(name=f"{parent}/aliases/canary", expected_model_version=f"{parent}/versions/2"),
        ],
        comment="canary looked good",
    )
    result = await client.lifecycle.UpdateAliases(promote)
    assert [(a.name.rsplit("/", 1)[1], a.version) for a in result.aliases] == [("champion", 2)]
    failing = lc.UpdateAliasesRequest(
        parent=parent,
        changes=[
            lc.AliasChange(name=f"{parent}/aliases/champion", model_version=f"{parent}/versions/3"),
            lc.AliasChange(name=f"{parent}/aliases/canary", expected_model_version=f"{parent}/versions/2"),
        ],
    )
    failure = await fails(client.lifecycle.UpdateAliases(failing))
    assert failure.code == Code.ABORTED
    assert (await client.resolve(model_id, "champion")).version == 2  # nothing of the failed batch applied
    missing = await fails(client.resolve(model_id, "canary"))
    assert (missing.code, missing.reason) == (Code.NOT_FOUND, "ALIAS_NOT_FOUND")


async def test_archived_versions_hold_no_alias_or_traffic(client: Client, database_url: str) -> None:
    model_id = await client.model()
    await client.set_alias(model_id, "champion", 1)
    in_use = await fails(client.move(model_id, 1, ARCHIVED))
    assert (in_use.code, in_use.reason) == (Code.FAILED_PRECONDITION, "VERSION_IN_USE")
    await client.move(model_id, 2, ARCHIVED)
    archived = await fails(client.set_alias(model_id, "canary", 2))
    assert (archived.code, archived.reason) == (Code.FAILED_PRECONDITION, "VERSION_ARCHIVED")
    policy = lc.TrafficPolicy(
        name=f"models/{model_id}/trafficPolicy",
        routes=[
            lc.TrafficRoute(alias="champion", weight=50),
            lc.TrafficRoute(model_version=f"models/{model_id}/versions/2", weight=50),
        ],
    )
    failure = await fails(
        client.lifecycle.SetTrafficPolicy(lc.SetTrafficPolicyRequest(traffic_policy=policy))
    )
    assert failure.reason == "VERSION_ARCHIVED"
    # The database refuses too, whoever writes.
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresError, match="archived"):
            await conn.execute(
                "INSERT INTO aliases (model_id, alias, version, revision, updater) "
                "VALUES ($1, 'x', 2, 0, 'sql')",
                model_id,
            )
        with pytest.raises(asyncpg.PostgresError, match="holds aliases"):
            await conn.execute(
                "UPDATE model_versions SET stage = 4 WHERE model_id = $1 AND version = 1", model_id
            )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("policy", "stages_ok", "aliases_ok"),
    [
        (model_pb2.PROMOTION_POLICY_IMMUTABLE, False, False),
        (model_pb2.PROMOTION_POLICY_STAGES, True, False),
        (model_pb2.PROMOTION_POLICY_ALIASES, False, True),
    ],
)
async def test_promotion_policy_is_enforced(
    client: Client, policy: int, stages_ok: bool, aliases_ok: bool
) -> None:
    model_id = await client.model(policy=policy)
    for ok, call in (
        (stages_ok, client.move(model_id, 1, STAGING)),
        (aliases_ok, client.set_alias(model_id, "champion", 1)),
    ):
        if ok:
            await call
        else:
            failure = await fails(call)
            assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "POLICY_FORBIDS_CHANGE")
    if not aliases_ok:
        policy_msg = lc.TrafficPolicy(
            name=f"models/{model_id}/trafficPolicy",
            routes=[lc.TrafficRoute(model_version=f"models/{model_id}/versions/1", weight=100)],
        )
        failure = await fails(
            client.lifecycle.SetTrafficPolicy(lc.SetTrafficPolicyRequest(traffic_policy=policy_msg))
        )
        assert failure.reason == "POLICY_FORBIDS_CHANGE"


async def test_changing_the_policy_is_published(client: Client) -> None:
    model_id = await client.model()
    name = f"models/{model_id}"
    updated = await client.registry.UpdateModel(
        pb.UpdateModelRequest(
            model=model_pb2.Model(name=name, promotion_policy=model_pb2.PROMOTION_POLICY_IMMUTABLE),
            update_mask=field_mask_pb2.FieldMask(paths=["promotion_policy"]),
        )
    )
    assert updated.promotion_policy == model_pb2.PROMOTION_POLICY_IMMUTABLE
    stream = client.serving.WatchAliases(lc.WatchAliasesRequest(models=[name], since_revision=1))
    async for message in stream:
        if any(c.type == lc.CHANGE_TYPE_POLICY_CHANGED for c in message.changes):
            break
    stream.cancel()
    assert (await fails(client.set_alias(model_id, "champion", 1))).reason == "POLICY_FORBIDS_CHANGE"


async def test_traffic_routes_are_sticky_and_match_the_sdk(client: Client) -> None:
    model_id = await client.model()
    await client.set_alias(model_id, "champion", 1)
    await client.set_alias(model_id, "canary", 2)
    policy = lc.TrafficPolicy(
        name=f"models/{model_id}/trafficPolicy",
        routes=[lc.TrafficRoute(alias="champion", weight=90), lc.TrafficRoute(alias="canary", weight=10)],
    )
    stored = await client.lifecycle.SetTrafficPolicy(lc.SetTrafficPolicyRequest(traffic_policy=policy))
    assert [r.weight for r in stored.routes] == [90, 10] and stored.revision > 0
    bad = lc.TrafficPolicy(name=policy.name, routes=[lc.TrafficRoute(alias="champion", weight=80)])
    assert (
        await fails(client.lifecycle.SetTrafficPolicy(lc.SetTrafficPolicyRequest(traffic_policy=bad)))
    ).code == (Code.INVALID_ARGUMENT)
    answers = await asyncio.gather(
        *(
            client.serving.ResolveRoute(
                lc.ResolveRouteRequest(model=f"models/{model_id}", routing_key=f"user-{i}")
            )
            for i in range(300)
        )
    )
    for i, answer in enumerate(answers):
        expected_route = pick_route([90, 10], model_id, f"user-{i}")
        assert answer.resolution.version == (1 if expected_route == 0 else 2)
        assert answer.route.alias == ("champion" if expected_route == 0 else "canary")
    again = await client.serving.ResolveRoute(
        lc.ResolveRouteRequest(model=f"models/{model_id}", routing_key="user-7")
    )
    assert again.resolution.version == answers[7].resolution.version
    in_use = await fails(
        client.lifecycle.DeleteAlias(lc.DeleteAliasRequest(name=f"models/{model_id}/aliases/canary"))
    )
    assert in_use.reason == "ALIAS_IN_USE"
    # Moving the alias moves its share of traffic.
    await client.set_alias(model_id, "canary", 3)
    moved = await client.serving.ResolveRoute(
        lc.ResolveRouteRequest(
            model=f"models/{model_id}",
            routing_key=next(f"user-{i}" for i, a in enumerate(answers) if a.route.alias == "canary"),
        )
    )
    assert moved.resolution.version == 3


async def test_resolve_reads_its_own_writes_and_other_replicas_follow(
    client: Client, start_replica: Callable[[], ServerProcess]
) -> None:
    model_id = await client.model()
    replica = start_replica()
    async with open_channel(replica.address) as channel:
        other = Client(channel)
        await client.set_alias(model_id, "champion", 1)
        assert (await other.resolve(model_id, "champion")).version == 1  # warms the other replica's cache
        for version in (2, 3, 1, 2, 3):
            await client.set_alias(model_id, "champion", version)
            assert (await client.resolve(model_id, "champion")).version == version
            deadline = time.monotonic() + 5
            while (await other.resolve(model_id, "champion")).version != version:
                assert time.monotonic() < deadline, "other replica never saw the change"
        await client.move(model_id, 3, STAGING)
        deadline = time.monotonic() + 5
        while (await other.resolve(model_id, "champion")).stage != STAGING:
            assert time.monotonic() < deadline


async def test_batch_and_point_in_time_resolve(client: Client) -> None:
    model_id = await client.model()
    await client.set_alias(model_id, "champion", 1)
    first = await client.lifecycle.GetAlias(lc.GetAliasRequest(name=f"models/{model_id}/aliases/champion"))
    await client.set_alias(model_id, "champion", 2)
    at = timestamp_pb2.Timestamp()
    at.CopyFrom(first.update_time)
    past = await client.serving.ResolveAlias(
        lc.ResolveAliasRequest(name=f"models/{model_id}/aliases/champion", as_of=at)
    )
    assert past.version == 1
    before = timestamp_pb2.Timestamp(seconds=first.update_time.seconds - 3600)
    never = await fails(
        client.serving.ResolveAlias(
            lc.ResolveAliasRequest(name=f"models/{model_id}/aliases/champion", as_of=before)
        )
    )
    assert never.code == Code.NOT_FOUND
    batch = await client.serving.BatchResolveAliases(
        lc.BatchResolveAliasesRequest(
            names=[f"models/{model_id}/aliases/champion", f"models/{model_id}/aliases/nope", "garbage"]
        )
    )
    assert batch.results[0].resolution.version == 2
    assert [r.error_reason for r in batch.results] == ["", "ALIAS_NOT_FOUND", "INVALID_FIELD"]


async def collect(
    stream: grpc.aio.UnaryStreamCall[lc.WatchAliasesRequest, lc.WatchAliasesResponse],
    until: Callable[[list[lc.Change]], bool],
) -> tuple[list[lc.WatchAliasesResponse], list[lc.Change]]:
    messages: list[lc.WatchAliasesResponse] = []
    changes: list[lc.Change] = []
    while not until(changes):
        message = await stream.read()
        assert isinstance(message, lc.WatchAliasesResponse), message
        messages.append(message)
        changes.extend(message.changes)
    return messages, changes


async def test_watch_snapshot_then_changes_and_resume_misses_nothing(client: Client) -> None:
    model_id = await client.model(versions=5)
    name = f"models/{model_id}"
    await client.set_alias(model_id, "champion", 1)
    stream = client.serving.WatchAliases(lc.WatchAliasesRequest(models=[name]))
    first = await stream.read()
    assert isinstance(first, lc.WatchAliasesResponse)
    assert first.reset and first.snapshot
    assert [(c.alias.rsplit("/", 1)[1], c.resolution.version) for c in first.changes] == [("champion", 1)]
    marker = await stream.read()
    assert isinstance(marker, lc.WatchAliasesResponse) and marker.heartbeat
    for version in (2, 3):
        await client.set_alias(model_id, "champion", version)
    _, changes = await collect(stream, lambda cs: len(cs) >= 2)
    stream.cancel()  # the stream dies here
    assert [c.resolution.version for c in changes] == [2, 3]
    last_seen = changes[-1].revision
    # Changes made while disconnected, including other kinds, arrive after resuming, in order, exactly once.
    await client.set_alias(model_id, "canary", 4)
    await client.move(model_id, 5, STAGING)
    await client.lifecycle.DeleteAlias(lc.DeleteAliasRequest(name=f"{name}/aliases/canary"))
    resumed = client.serving.WatchAliases(lc.WatchAliasesRequest(models=[name], since_revision=last_seen))
    messages, missed = await collect(resumed, lambda cs: len(cs) >= 3)
    await client.set_alias(model_id, "champion", 5)
    _, live = await collect(resumed, lambda cs: len(cs) >= 1)
    resumed.cancel()
    assert not any(m.snapshot for m in messages)
    assert [c.type for c in missed] == [
        lc.CHANGE_TYPE_ALIAS_SET,
        lc.CHANGE_TYPE_STAGE_CHANGED,
        lc.CHANGE_TYPE_ALIAS_DELETED,
    ]
    revisions = [c.revision for c in missed + live]
    assert (
        revisions == sorted(revisions) and len(set(revisions)) == len(revisions) and revisions[0] > last_seen
    )
    assert live[0].resolution.version == 5


async def test_watch_heartbeats_when_idle(client: Client) -> None:
    model_id = await client.model(versions=1)
    stream = client.serving.WatchAliases(lc.WatchAliasesRequest(models=[f"models/{model_id}"]))
    messages: list[lc.WatchAliasesResponse] = []
    beats = 0
    while beats < 3:
        message = await stream.read()
        assert isinstance(message, lc.WatchAliasesResponse)
        beats += message.heartbeat
        messages.append(message)
    stream.cancel()
    assert all(not m.changes for m in messages[2:])


async def test_deleting_a_model_reaches_watchers_and_resolvers(client: Client) -> None:
    model_id = await client.model(versions=1)
    await client.set_alias(model_id, "canary", 1)
    assert (await client.resolve(model_id, "canary")).version == 1
    stream = client.serving.WatchAliases(lc.WatchAliasesRequest(models=[f"models/{model_id}"]))
    await client.registry.DeleteModel(pb.DeleteModelRequest(name=f"models/{model_id}", force=True))
    await collect(stream, lambda cs: any(c.type == lc.CHANGE_TYPE_MODEL_DELETED for c in cs))
    stream.cancel()
    assert (await fails(client.resolve(model_id, "canary"))).code == Code.NOT_FOUND
