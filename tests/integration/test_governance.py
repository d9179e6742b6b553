"""Promotion gates, approvals and retention against real servers, PostgreSQL and S3."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from modelreg.v1 import access_service_pb2 as ac
from modelreg.v1 import governance_service_pb2 as gv
from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as rg
from modelreg.v1.access_service_pb2_grpc import AccessServiceStub
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.governance_service_pb2_grpc import GovernanceServiceStub
from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg_server.devstack import SeaweedS3
from modelreg_server.domain.gc import collect
from modelreg_server.storage.blobstore import BlobStore, blob_key
from modelreg_server.storage.db import Database, create_pool
from tests.integration.conftest import TEST_BUCKET
from tests.support.packages import publish
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails, failure_of
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from modelreg.v1.access_service_pb2_grpc import AccessServiceAsyncStub
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub
    from modelreg.v1.governance_service_pb2_grpc import GovernanceServiceAsyncStub
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub

Code = grpc.StatusCode
STAGING, PRODUCTION, ARCHIVED = model_pb2.STAGE_STAGING, model_pb2.STAGE_PRODUCTION, model_pb2.STAGE_ARCHIVED
PENDING, APPROVED, EXECUTED, REJECTED, CANCELLED, EXPIRED, FAILED = (
    gv.PROMOTION_REQUEST_STATE_PENDING,
    gv.PROMOTION_REQUEST_STATE_APPROVED,
    gv.PROMOTION_REQUEST_STATE_EXECUTED,
    gv.PROMOTION_REQUEST_STATE_REJECTED,
    gv.PROMOTION_REQUEST_STATE_CANCELLED,
    gv.PROMOTION_REQUEST_STATE_EXPIRED,
    gv.PROMOTION_REQUEST_STATE_FAILED,
)
TO_PRODUCTION = gv.PromotionTarget(stage=PRODUCTION)
RETENTION_DAYS = 30


class Client:
    """The services these tests use, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.registry: ModelRegistryServiceAsyncStub = ModelRegistryServiceStub(channel)
        self.lifecycle: LifecycleServiceAsyncStub = LifecycleServiceStub(channel)
        self.governance: GovernanceServiceAsyncStub = GovernanceServiceStub(channel)
        self.artifacts: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)
        self.access: AccessServiceAsyncStub = AccessServiceStub(channel)

    async def model(self, *versions: dict[str, Any], labels: dict[str, str] | None = None) -> str:
        """A new model with one version per field dict, all in STAGING."""
        model_id = f"gov-{uuid.uuid4().hex[:12]}"
        await self.registry.CreateModel(
            rg.CreateModelRequest(model_id=model_id, model=model_pb2.Model(labels=labels or {}))
        )
        for fields in versions:
            created = await self.registry.CreateModelVersion(
                rg.CreateModelVersionRequest(
                    parent=f"models/{model_id}", model_version=model_pb2.ModelVersion(**fields)
                )
            )
            await self.move(created.name, STAGING)
        return model_id

    async def move(
        self, name: str, stage: model_pb2.Stage.ValueType, archive: bool = True
    ) -> model_pb2.ModelVersion:
        return await self.lifecycle.TransitionModelVersionStage(
            lc.TransitionModelVersionStageRequest(name=name, stage=stage, archive_existing=archive)
        )

    async def set_alias(self, model_id: str, alias: str, version: int) -> lc.Alias:
        return await self.lifecycle.SetAlias(
            lc.SetAliasRequest(
                name=f"models/{model_id}/aliases/{alias}",
                model_version=f"models/{model_id}/versions/{version}",
            )
        )

    async def stage(self, model_id: str, version: int) -> int:
        got = await self.registry.GetModelVersion(
            rg.GetModelVersionRequest(name=f"models/{model_id}/versions/{version}")
        )
        return got.stage

    async def gates(
        self,
        model_id: str,
        *rules: gv.PromotionRule,
        approvals: int = 0,
        ttl: timedelta | None = None,
        etag: str = "",
    ) -> gv.PromotionGates:
        gates = gv.PromotionGates(
            name=f"models/{model_id}/promotionGates", rules=rules, required_approvals=approvals, etag=etag
        )
        paths = ["rules", "required_approvals"]
        if ttl is not None:
            gates.request_ttl.FromTimedelta(ttl)
            paths.append("request_ttl")
        return await self.governance.UpdatePromotionGates(
            gv.UpdatePromotionGatesRequest(
                promotion_gates=gates, update_mask=field_mask_pb2.FieldMask(paths=paths)
            )
        )

    async def request(self, model_id: str, version: int, comment: str = "ship it") -> gv.PromotionRequest:
        return await self.governance.RequestPromotion(
            gv.RequestPromotionRequest(
                name=f"models/{model_id}/versions/{version}",
                target=TO_PRODUCTION,
                archive_existing=True,
                comment=comment,
            )
        )

    async def approve(self, name: str, comment: str = "lgtm") -> gv.PromotionRequest:
        return await self.governance.ApprovePromotion(gv.ApprovePromotionRequest(name=name, comment=comment))

    async def get_request(self, name: str) -> gv.PromotionRequest:
        return await self.governance.GetPromotionRequest(gv.GetPromotionRequestRequest(name=name))


@pytest.fixture
async def admin(server_address: str) -> AsyncIterator[Client]:
    async with open_channel(server_address) as channel:
        yield Client(channel)


@contextlib.asynccontextmanager
async def as_principal(address: str, token: str) -> AsyncIterator[Client]:
    async with open_channel(address, token) as channel:
        yield Client(channel)


async def principal(admin: Client, role: ac.Role.ValueType) -> str:
    """A new principal holding `role` globally; returns its bearer token (its id is `whoami`)."""
    principal_id = f"gov-{uuid.uuid4().hex[:10]}"
    name = f"principals/{principal_id}"
    await admin.access.CreatePrincipal(
        ac.CreatePrincipalRequest(
            principal_id=principal_id, principal=ac.Principal(display_name=principal_id)
        )
    )
    await admin.access.CreateRoleBinding(
        ac.CreateRoleBindingRequest(role_binding=ac.RoleBinding(principal=name, role=role))
    )
    return (await admin.access.CreateToken(ac.CreateTokenRequest(parent=name))).secret


async def whoami(client: Client) -> str:
    """`principals/{id}` of the client's caller."""
    return (await client.access.GetCallerIdentity(ac.GetCallerIdentityRequest())).principal.name


def threshold(metric: str, value: float) -> gv.PromotionRule:
    return gv.PromotionRule(
        metric_threshold=gv.MetricThresholdRule(
            metric=metric, operator=gv.THRESHOLD_OPERATOR_GREATER_OR_EQUAL, value=value
        )
    )


def schema(dtype: str) -> model_pb2.Schema:
    return model_pb2.Schema(fields=[model_pb2.SchemaField(name="x", dtype=dtype, shape=[-1, 3])])


async def refused(call: Any, reason: str = "PROMOTION_GATES_FAILED") -> list[tuple[str, str, str]]:
    """Awaits a move that must be refused by the gates; returns its precondition violations."""
    failure = await fails(call)
    assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, reason), failure
    return failure.precondition_violations


# --- gates, rule by rule -----------------------------------------------------------------------------------


async def test_metric_threshold_blocks_below_and_allows_at_the_threshold(admin: Client) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.85}}, {"metrics": {"auc": 0.9}})
    await admin.gates(model_id, threshold("auc", 0.9))
    v1 = f"models/{model_id}/versions/1"
    [violation] = await refused(admin.move(v1, PRODUCTION))
    assert violation == ("METRIC_THRESHOLD", v1, "metrics.auc = 0.85, needs >= 0.9")
    assert await admin.stage(model_id, 1) == STAGING
    assert (await admin.move(f"models/{model_id}/versions/2", PRODUCTION)).stage == PRODUCTION


async def test_champion_comparison_uses_production_then_the_champion_alias(admin: Client) -> None:
    model_id = await admin.model(
        {"metrics": {"auc": 0.90}},
        {"metrics": {"auc": 0.85}},
        {"metrics": {"auc": 0.895}},
        {"metrics": {"auc": 0.99}},
    )
    await admin.move(f"models/{model_id}/versions/1", PRODUCTION)
    rule = gv.PromotionRule(
        champion_comparison=gv.ChampionComparisonRule(
            metric="auc", higher_is_better=True, max_regression=0.01
        )
    )
    await admin.gates(model_id, rule)
    [violation] = await refused(admin.move(f"models/{model_id}/versions/2", PRODUCTION))
    assert violation[0] == "CHAMPION_COMPARISON"
    assert f"0.05 worse than the champion models/{model_id}/versions/1 (0.9" in violation[2]
    # The champion alias, once set (itself gated: 0.99 beats production's 0.90), is the new yardstick.
    await admin.set_alias(model_id, "champion", 4)
    [violation] = await refused(admin.move(f"models/{model_id}/versions/3", PRODUCTION))
    assert f"the champion models/{model_id}/versions/4 (0.99" in violation[2]
    await admin.gates(
        model_id,
        gv.PromotionRule(
            champion_comparison=gv.ChampionComparisonRule(
                metric="auc", higher_is_better=True, max_regression=0.1
            )
        ),
    )
    assert (await admin.move(f"models/{model_id}/versions/3", PRODUCTION)).stage == PRODUCTION


async def test_schema_compatibility_with_production(admin: Client) -> None:
    model_id = await admin.model(
        {"input_schema": schema("float32")},
        {"input_schema": schema("int64")},
        {"input_schema": schema("float32")},
    )
    await admin.gates(model_id, gv.PromotionRule(schema_compatibility=gv.SchemaCompatibilityRule()))
    await admin.move(f"models/{model_id}/versions/1", PRODUCTION)  # nothing in production yet: passes
    [violation] = await refused(admin.move(f"models/{model_id}/versions/2", PRODUCTION))
    assert violation[0] == "SCHEMA_COMPATIBILITY"
    assert "input x: dtype float32 in the baseline, int64 in this version" in violation[2]
    assert (await admin.move(f"models/{model_id}/versions/3", PRODUCTION)).stage == PRODUCTION


async def test_required_lineage(admin: Client) -> None:
    full = model_pb2.Lineage(
        datasets=[model_pb2.DatasetRef(uri="s3://d/train", digest="sha256:0123456789abcdef")],
        code=model_pb2.CodeRef(repository="git@x", commit="abc123"),
    )
    partial = model_pb2.Lineage(datasets=[model_pb2.DatasetRef(uri="s3://d/train")])
    model_id = await admin.model({"lineage": partial}, {"run_id": "run-7", "lineage": full})
    await admin.gates(
        model_id,
        gv.PromotionRule(
            lineage=gv.LineageRule(
                require_run_id=True, require_dataset_digests=True, require_code_commit=True
            )
        ),
    )
    [violation] = await refused(admin.move(f"models/{model_id}/versions/1", PRODUCTION))
    assert violation[0] == "LINEAGE"
    for missing in ("run_id is empty", "1 of 1 datasets lack a digest: s3://d/train", "code.commit is empty"):
        assert missing in violation[2]
    assert (await admin.move(f"models/{model_id}/versions/2", PRODUCTION)).stage == PRODUCTION


async def test_signature_needs_a_verified_signature_by_a_trusted_key(
    admin: Client, database_url: str
) -> None:
    model_id = await admin.model({}, {})
    await admin.gates(model_id, gv.PromotionRule(signature=gv.SignatureRule(trusted_key_ids=["release-key"])))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO version_signatures (model_id, version, key_id, bundle, verified, creator)"
            " VALUES ($1, $2, $3, '\\x00', $4, 'signer')",
            [
                (model_id, 1, "release-key", False),
                (model_id, 1, "other-key", True),
                (model_id, 2, "release-key", True),
            ],
        )
    finally:
        await conn.close()
    [violation] = await refused(admin.move(f"models/{model_id}/versions/1", PRODUCTION))
    assert violation[0] == "SIGNATURE" and "(release-key)" in violation[2]
    assert (await admin.move(f"models/{model_id}/versions/2", PRODUCTION)).stage == PRODUCTION


async def test_every_failed_rule_is_listed_and_dry_run_moves_nothing(admin: Client) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.7, "latency_ms": 12}})
    await admin.gates(
        model_id,
        threshold("auc", 0.8),
        gv.PromotionRule(
            metric_threshold=gv.MetricThresholdRule(
                metric="latency_ms", operator=gv.THRESHOLD_OPERATOR_LESS, value=20
            )
        ),
        gv.PromotionRule(lineage=gv.LineageRule(require_run_id=True)),
        gv.PromotionRule(signature=gv.SignatureRule(trusted_key_ids=["k"])),
        gv.PromotionRule(schema_compatibility=gv.SchemaCompatibilityRule()),
    )
    name = f"models/{model_id}/versions/1"
    violations = await refused(admin.move(name, PRODUCTION))
    assert [(t, s) for t, s, _ in violations] == [
        ("METRIC_THRESHOLD", name),
        ("LINEAGE", name),
        ("SIGNATURE", name),
    ]
    assert violations[0][2] == "metrics.auc = 0.7, needs >= 0.8"

    verdict = await admin.governance.DryRunPromotion(
        gv.DryRunPromotionRequest(name=name, target=TO_PRODUCTION)
    )
    assert not verdict.passed and verdict.model_version == name
    assert [(r.rule_index, r.kind, r.passed) for r in verdict.results] == [
        (0, "METRIC_THRESHOLD", False),
        (1, "METRIC_THRESHOLD", True),
        (2, "LINEAGE", False),
        (3, "SIGNATURE", False),
        (4, "SCHEMA_COMPATIBILITY", True),
    ]
    assert verdict.results[1].message == "metrics.latency_ms = 12, < 20"
    assert verdict.results[0].rule.metric_threshold.value == 0.8
    assert (verdict.approval_required, verdict.champion_version, verdict.production_version) == (
        False,
        "",
        "",
    )
    champion = await admin.governance.DryRunPromotion(
        gv.DryRunPromotionRequest(name=name, target=gv.PromotionTarget(alias="champion"))
    )
    assert [r.passed for r in champion.results] == [r.passed for r in verdict.results]
    assert await admin.stage(model_id, 1) == STAGING
    unguarded = await fails(
        admin.governance.DryRunPromotion(
            gv.DryRunPromotionRequest(name=name, target=gv.PromotionTarget(alias="canary"))
        )
    )
    assert (unguarded.code, unguarded.reason) == (Code.FAILED_PRECONDITION, "ALIAS_NOT_PROTECTED")


async def test_protected_aliases_are_gated_and_others_are_not(admin: Client) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.5}}, {"metrics": {"auc": 0.95}})
    await admin.gates(model_id, threshold("auc", 0.9))
    [violation] = await refused(admin.set_alias(model_id, "champion", 1))
    assert violation[1] == f"models/{model_id}/versions/1"
    await admin.set_alias(model_id, "canary", 1)
    assert (await admin.set_alias(model_id, "champion", 2)).version == 2


async def test_gate_updates_need_the_lead_role_an_etag_and_are_audited(
    admin: Client, server_address: str
) -> None:
    model_id = await admin.model()
    gates_name = f"models/{model_id}/promotionGates"
    empty = await admin.governance.GetPromotionGates(gv.GetPromotionGatesRequest(name=gates_name))
    assert (list(empty.rules), empty.required_approvals, empty.request_ttl.ToTimedelta()) == (
        [],
        0,
        timedelta(days=7),
    )
    engineer = await principal(admin, ac.ROLE_ML_ENGINEER)
    async with as_principal(server_address, engineer) as client:
        denied = await fails(client.gates(model_id, threshold("auc", 0.9)))
        assert (denied.code, denied.metadata["permission"]) == (
            Code.PERMISSION_DENIED,
            "modelreg.models.setPolicy",
        )
    first = await admin.gates(model_id, threshold("auc", 0.9), approvals=2, etag=empty.etag)
    assert first.etag != empty.etag and first.updater == "admin" and first.required_approvals == 2
    stale = await fails(admin.gates(model_id, threshold("auc", 0.8), etag=empty.etag))
    assert (stale.code, stale.reason) == (Code.ABORTED, "ETAG_MISMATCH")
    bad = await fails(
        admin.gates(
            model_id,
            gv.PromotionRule(),
            gv.PromotionRule(lineage=gv.LineageRule()),
            gv.PromotionRule(metric_threshold=gv.MetricThresholdRule(metric="auc")),
            approvals=11,
        )
    )
    assert bad.code == Code.INVALID_ARGUMENT
    assert [f for f, _ in bad.field_violations] == [
        "promotion_gates.rules[0]",
        "promotion_gates.rules[1].lineage",
        "promotion_gates.rules[2].metric_threshold.operator",
        "promotion_gates.required_approvals",
    ]
    events = await admin.access.ListAuditEvents(
        ac.ListAuditEventsRequest(filter=f'resource = "{gates_name}"', page_size=100)
    )
    outcomes = [(e.action, e.outcome) for e in events.audit_events]
    assert outcomes.count(("UpdatePromotionGates", "OK")) == 1
    assert ("UpdatePromotionGates", "DENIED") in outcomes
    updated = next(e for e in events.audit_events if e.outcome == "OK")
    assert json_format.MessageToDict(updated.details)["after"]["required_approvals"] == 2


# --- approvals ----------------------------------------------------------------------------------------------


async def test_direct_promotion_is_refused_when_approvals_are_required(admin: Client) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.5}})
    await admin.gates(model_id, threshold("auc", 0.9), approvals=1)
    name = f"models/{model_id}/versions/1"
    violations = await refused(admin.move(name, PRODUCTION), "APPROVAL_REQUIRED")
    assert [t for t, _, _ in violations] == ["APPROVAL_REQUIRED", "METRIC_THRESHOLD"]
    assert "RequestPromotion" in violations[0][2]
    await refused(admin.set_alias(model_id, "champion", 1), "APPROVAL_REQUIRED")
    await admin.set_alias(model_id, "canary", 1)
    dry = await admin.governance.DryRunPromotion(gv.DryRunPromotionRequest(name=name, target=TO_PRODUCTION))
    assert (dry.approval_required, dry.required_approvals) == (True, 1)


async def test_requesters_cannot_approve_their_own_request(admin: Client, server_address: str) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.95}})
    await admin.gates(model_id, threshold("auc", 0.9), approvals=1)
    lead_a, lead_b = [await principal(admin, ac.ROLE_LEAD) for _ in range(2)]
    async with as_principal(server_address, lead_a) as a, as_principal(server_address, lead_b) as b:
        request = await a.request(model_id, 1)
        assert (request.state, request.required_approvals) == (PENDING, 1)
        for own in (
            a.approve(request.name),
            a.governance.RejectPromotion(gv.RejectPromotionRequest(name=request.name)),
        ):
            failure = await fails(own)
            assert (failure.code, failure.reason) == (Code.PERMISSION_DENIED, "SELF_APPROVAL")
        assert (await a.get_request(request.name)).state == PENDING
        executed = await b.approve(request.name, "looks good")
        assert executed.state == EXECUTED
        assert [(r.principal, r.comment) for r in executed.approvals] == [(await whoami(b), "looks good")]
        assert (await b.approve(request.name)).state == EXECUTED  # idempotent
    assert await admin.stage(model_id, 1) == PRODUCTION
    history = await admin.lifecycle.ListStageTransitions(
        lc.ListStageTransitionsRequest(parent=f"models/{model_id}/versions/1")
    )
    last = history.stage_transitions[0]
    assert (last.to_stage, last.comment) == (PRODUCTION, f"{request.name}: ship it")
    assert f"principals/{last.actor}" not in (request.requester, await whoami(admin))


async def test_n_approvals_execute_exactly_once_under_concurrent_approvers(
    admin: Client, server_address: str
) -> None:
    model_id = await admin.model(*({"metrics": {"auc": 0.95}} for _ in range(3)))
    await admin.gates(model_id, threshold("auc", 0.9), approvals=2)
    engineer = await principal(admin, ac.ROLE_ML_ENGINEER)
    leads = [await principal(admin, ac.ROLE_LEAD) for _ in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        requester = await stack.enter_async_context(as_principal(server_address, engineer))
        approvers = [await stack.enter_async_context(as_principal(server_address, t)) for t in leads]
        for version in (1, 2, 3):
            request = await requester.request(model_id, version)
            outcomes = await asyncio.gather(
                *(c.approve(request.name) for c in approvers), return_exceptions=True
            )
            for outcome in outcomes:
                # A late approver finds the request closed; one counted early may read it APPROVED while
                # another approver's call is executing it.
                if isinstance(outcome, grpc.aio.AioRpcError):
                    assert failure_of(outcome).reason == "PROMOTION_REQUEST_CLOSED", outcome
                else:
                    assert isinstance(outcome, gv.PromotionRequest), outcome
                    assert outcome.state in (PENDING, APPROVED, EXECUTED), outcome
            final = await admin.get_request(request.name)
            assert final.state == EXECUTED and len(final.approvals) >= 2
            assert await admin.stage(model_id, version) == PRODUCTION
    history = await admin.lifecycle.ListStageTransitions(
        lc.ListStageTransitionsRequest(parent=f"models/{model_id}")
    )
    into_production = [t.model_version for t in history.stage_transitions if t.to_stage == PRODUCTION]
    assert sorted(into_production) == [f"models/{model_id}/versions/{v}" for v in (1, 2, 3)]


async def test_rejection_is_final_and_listed(admin: Client, server_address: str) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.95}})
    await admin.gates(model_id, approvals=1)
    lead = await principal(admin, ac.ROLE_LEAD)
    request = await admin.request(model_id, 1)
    async with as_principal(server_address, lead) as b:
        rejected = await b.governance.RejectPromotion(
            gv.RejectPromotionRequest(name=request.name, comment="no")
        )
        assert rejected.state == REJECTED and rejected.rejection.comment == "no" and not rejected.approvals
        late = await fails(b.approve(request.name))
        assert (late.code, late.reason) == (Code.FAILED_PRECONDITION, "PROMOTION_REQUEST_CLOSED")
    again = await admin.request(model_id, 1, "second try")
    listed = await admin.governance.ListPromotionRequests(
        gv.ListPromotionRequestsRequest(parent=f"models/{model_id}", filter="state = REJECTED")
    )
    assert [r.name for r in listed.promotion_requests] == [request.name]
    everything = await admin.governance.ListPromotionRequests(
        gv.ListPromotionRequestsRequest(parent=f"models/{model_id}", page_size=1)
    )
    assert [r.name for r in everything.promotion_requests] == [again.name] and everything.next_page_token
    bad = await fails(
        admin.governance.ListPromotionRequests(
            gv.ListPromotionRequestsRequest(parent=f"models/{model_id}", filter="colour = 1")
        )
    )
    assert (bad.code, bad.reason) == (Code.INVALID_ARGUMENT, "INVALID_FILTER")
    duplicate = await fails(admin.request(model_id, 1))
    assert (duplicate.code, duplicate.reason) == (Code.ALREADY_EXISTS, "PROMOTION_REQUEST_EXISTS")


async def test_expired_requests_cannot_be_approved(admin: Client, server_address: str) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.95}}, {"metrics": {"auc": 0.95}})
    await admin.gates(model_id, approvals=1, ttl=timedelta(seconds=1))
    lead = await principal(admin, ac.ROLE_LEAD)
    read_later, approve_later = await admin.request(model_id, 1), await admin.request(model_id, 2)
    await asyncio.sleep(1.5)
    assert (await admin.get_request(read_later.name)).state == EXPIRED
    async with as_principal(server_address, lead) as b:
        for name in (approve_later.name, read_later.name):
            failure = await fails(b.approve(name))
            assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "PROMOTION_REQUEST_EXPIRED")
    assert (await admin.get_request(approve_later.name)).state == EXPIRED
    assert await admin.stage(model_id, 2) == STAGING


async def test_cancellation_by_the_requester_or_an_admin_only(admin: Client, server_address: str) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.95}}, {"metrics": {"auc": 0.95}})
    await admin.gates(model_id, approvals=1)
    engineer, lead = await principal(admin, ac.ROLE_ML_ENGINEER), await principal(admin, ac.ROLE_LEAD)
    async with as_principal(server_address, engineer) as e, as_principal(server_address, lead) as b:
        first, second = await e.request(model_id, 1), await e.request(model_id, 2)
        denied = await fails(
            b.governance.CancelPromotionRequest(gv.CancelPromotionRequestRequest(name=first.name))
        )
        assert (denied.code, denied.metadata["permission"]) == (
            Code.PERMISSION_DENIED,
            "modelreg.promotions.cancelAny",
        )
        cancelled = await e.governance.CancelPromotionRequest(
            gv.CancelPromotionRequestRequest(name=first.name, comment="wrong version")
        )
        assert cancelled.state == CANCELLED and "wrong version" in cancelled.state_message
        closed = await fails(b.approve(first.name))
        assert closed.reason == "PROMOTION_REQUEST_CLOSED"
    by_admin = await admin.governance.CancelPromotionRequest(
        gv.CancelPromotionRequestRequest(name=second.name)
    )
    assert by_admin.state == CANCELLED and by_admin.state_message == "cancelled by admin"


async def test_gates_are_rechecked_when_the_request_executes(admin: Client, server_address: str) -> None:
    model_id = await admin.model({"metrics": {"auc": 0.95}})
    await admin.gates(model_id, threshold("auc", 0.9), approvals=1)
    request = await admin.request(model_id, 1)
    await admin.gates(model_id, threshold("auc", 0.99), approvals=1)
    lead = await principal(admin, ac.ROLE_LEAD)
    async with as_principal(server_address, lead) as b:
        failed = await b.approve(request.name)
    assert failed.state == FAILED
    assert [(f.type, f.subject) for f in failed.failures] == [
        ("METRIC_THRESHOLD", f"models/{model_id}/versions/1")
    ]
    assert "needs >= 0.99" in failed.failures[0].description and "0.99" in failed.state_message
    assert await admin.stage(model_id, 1) == STAGING


# --- retention ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retention_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A replica whose promotions are retained for RETENTION_DAYS (whatever the session server's setting)."""
    proc = ServerProcess(
        {**server_env, "MODELREG_RETENTION_DAYS": str(RETENTION_DAYS)},
        tmp_path_factory.mktemp("retention") / "server.log",
    )
    yield proc
    proc.stop()


@pytest.fixture
async def keeper(retention_server: ServerProcess) -> AsyncIterator[Client]:
    async with open_channel(retention_server.address) as channel:
        yield Client(channel)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(await create_pool(database_url, min_size=1, max_size=4))
    yield database
    await database.close()


async def execute(db: Database, sql: str, *args: Any) -> None:
    async with db.connection() as conn:
        await conn.execute(sql, *args)


async def delete_model(client: Client, model_id: str) -> None:
    await client.registry.DeleteModel(rg.DeleteModelRequest(name=f"models/{model_id}", force=True))


async def test_delete_model_is_refused_within_the_retention_period(keeper: Client, db: Database) -> None:
    model_id = await keeper.model({}, {}, {})
    await keeper.move(f"models/{model_id}/versions/1", PRODUCTION)
    await keeper.set_alias(model_id, "champion", 2)
    refusal = await fails(delete_model(keeper, model_id))
    assert (refusal.code, refusal.reason) == (Code.FAILED_PRECONDITION, "RETENTION")
    assert (
        f"models/{model_id}/versions/1" in refusal.message
        and f"models/{model_id}/versions/2" in refusal.message
    )
    assert f"models/{model_id}/versions/3" not in refusal.message
    # Leaving PRODUCTION and the alias starts the retention period; it does not end it.
    await keeper.move(f"models/{model_id}/versions/1", ARCHIVED)
    await keeper.lifecycle.DeleteAlias(lc.DeleteAliasRequest(name=f"models/{model_id}/aliases/champion"))
    assert (await fails(delete_model(keeper, model_id))).reason == "RETENTION"
    await execute(
        db,
        "UPDATE model_versions SET last_held_time = last_held_time - $2::interval WHERE model_id = $1",
        model_id,
        timedelta(days=RETENTION_DAYS, minutes=1),
    )
    await delete_model(keeper, model_id)


async def test_legal_hold_blocks_deletion_outright(admin: Client) -> None:
    model_id = await admin.model({}, {}, labels={"legal-hold": "true"})
    held = await fails(delete_model(admin, model_id))
    assert (held.code, held.reason) == (Code.FAILED_PRECONDITION, "LEGAL_HOLD")
    await admin.registry.UpdateModel(
        rg.UpdateModelRequest(
            model=model_pb2.Model(name=f"models/{model_id}", labels={}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
    )
    await admin.registry.UpdateModelVersion(
        rg.UpdateModelVersionRequest(
            model_version=model_pb2.ModelVersion(
                name=f"models/{model_id}/versions/2", labels={"legal-hold": "TRUE"}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
    )
    held = await fails(delete_model(admin, model_id))
    assert held.reason == "LEGAL_HOLD" and f"models/{model_id}/versions/2" in held.message
    await admin.registry.UpdateModelVersion(
        rg.UpdateModelVersionRequest(
            model_version=model_pb2.ModelVersion(name=f"models/{model_id}/versions/2", labels={}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
    )
    await delete_model(admin, model_id)


@pytest.fixture
async def store(s3: SeaweedS3) -> AsyncIterator[BlobStore]:
    blob_store = BlobStore.connect(s3.endpoint, s3.access_key, s3.secret_key, TEST_BUCKET)
    await blob_store.ready()
    yield blob_store
    blob_store.close()


async def retained(db: Database, digests: Sequence[str]) -> dict[str, timedelta]:
    async with db.connection() as conn:
        rows = await conn.fetch(
            "SELECT digest, retain_until - clock_timestamp() AS left FROM retained_blobs"
            " WHERE digest = ANY($1::text[])",
            list(digests),
        )
    return {r["digest"]: r["left"] for r in rows}


async def test_gc_skips_blobs_of_retained_versions_after_the_versions_are_gone(
    keeper: Client, db: Database, store: BlobStore
) -> None:
    # Unique contents: a blob another test's live version also references is never collectable.
    digest, manifest = await publish(
        keeper.artifacts,
        {"weights.bin": uuid.uuid4().bytes * 64, "conf": f'{{"run": "{uuid.uuid4()}"}}'.encode()},
    )
    package = [digest, *manifest.file_digests]
    model_id = await keeper.model({"artifact_digest": digest})
    await keeper.move(f"models/{model_id}/versions/1", PRODUCTION)
    left = await retained(db, package)
    assert set(left) == set(package)
    assert all(
        timedelta(days=RETENTION_DAYS - 1) < t <= timedelta(days=RETENTION_DAYS) for t in left.values()
    )
    # Rows gone while the blobs' retention runs: as if an operator shortened it after the promotion.
    await keeper.move(f"models/{model_id}/versions/1", ARCHIVED)
    await execute(db, "UPDATE model_versions SET retention_period = '0' WHERE model_id = $1", model_id)
    await delete_model(keeper, model_id)

    report = await collect(db, store, grace=timedelta(0), dry_run=False)
    assert set(package) <= set(report.skipped_retained)
    assert not set(package) & set(report.deleted_blobs)
    for kept in package:
        assert await store.stat(blob_key(kept)) is not None

    await execute(
        db,
        "UPDATE retained_blobs SET retain_until = clock_timestamp() WHERE digest = ANY($1::text[])",
        package,
    )
    report = await collect(db, store, grace=timedelta(0), dry_run=False)
    assert set(package) <= set(report.deleted_blobs)


async def test_ttl_outside_bounds_is_invalid(admin: Client) -> None:
    model_id = await admin.model()
    gates = gv.PromotionGates(
        name=f"models/{model_id}/promotionGates", request_ttl=duration_pb2.Duration(seconds=31 * 86400)
    )
    bad = await fails(
        admin.governance.UpdatePromotionGates(gv.UpdatePromotionGatesRequest(promotion_gates=gates))
    )
    assert bad.field_violations == [("promotion_gates.request_ttl", "must be between 1 second and 30 days")]
