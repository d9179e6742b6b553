"""Protobuf forms of governance records, and validation of the gates a client sends."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from google.protobuf import duration_pb2

from modelreg.v1 import governance_service_pb2 as pb
from modelreg.v1 import model_pb2
from modelreg_server.api import validation as val
from modelreg_server.api.convert import timestamp
from modelreg_server.domain.errors import PreconditionViolation
from modelreg_server.domain.gate_rules import (
    ChampionComparison,
    MetricThreshold,
    RequiredLineage,
    Rule,
    RuleResult,
    SchemaCompatibility,
    SignatureRequired,
    ThresholdOperator,
)
from modelreg_server.domain.gates import Verdict, gates_etag, gates_name
from modelreg_server.domain.governance_records import (
    DEFAULT_REQUEST_TTL,
    MAX_REQUEST_TTL,
    MAX_REQUIRED_APPROVALS,
    MIN_REQUEST_TTL,
    GatesRecord,
    PromotionRequestRecord,
    Review,
    Target,
)
from modelreg_server.domain.names import ALIAS_RE, version_name
from modelreg_server.domain.records import Stage

MAX_RULES = 32
MAX_KEY_IDS = 32
MAX_KEY_ID_LENGTH = 256


# --- rules -----------------------------------------------------------------------------------------------


def _metric(field: str, name: str, v: val.Violations) -> None:
    if not val.METRIC_KEY_RE.fullmatch(name):
        v.add(field, "required: a metric name such as 'auc' or 'val/loss'")


def _rule_from_proto(rule: pb.PromotionRule, field: str, v: val.Violations) -> Rule | None:
    which = rule.WhichOneof("rule")
    if which == "metric_threshold":
        m = rule.metric_threshold
        _metric(f"{field}.metric_threshold.metric", m.metric, v)
        if m.operator not in {int(o) for o in ThresholdOperator}:
            v.add(f"{field}.metric_threshold.operator", "required: one of the THRESHOLD_OPERATOR_ values")
            return None
        if not math.isfinite(m.value):
            v.add(f"{field}.metric_threshold.value", "must be a finite number")
        return MetricThreshold(m.metric, ThresholdOperator(m.operator), m.value)
    if which == "champion_comparison":
        c = rule.champion_comparison
        _metric(f"{field}.champion_comparison.metric", c.metric, v)
        if not math.isfinite(c.max_regression) or c.max_regression < 0:
            v.add(f"{field}.champion_comparison.max_regression", "must be a finite number ≥ 0")
        return ChampionComparison(c.metric, c.higher_is_better, c.max_regression)
    if which == "schema_compatibility":
        return SchemaCompatibility()
    if which == "lineage":
        lin = rule.lineage
        if not (lin.require_run_id or lin.require_dataset_digests or lin.require_code_commit):
            v.add(f"{field}.lineage", "set at least one require_ flag")
        return RequiredLineage(lin.require_run_id, lin.require_dataset_digests, lin.require_code_commit)
    if which == "signature":
        keys = list(rule.signature.trusted_key_ids)
        if not keys or len(keys) > MAX_KEY_IDS:
            v.add(f"{field}.signature.trusted_key_ids", f"name 1 to {MAX_KEY_IDS} trusted key ids")
        if any(not k or len(k) > MAX_KEY_ID_LENGTH for k in keys) or len(set(keys)) != len(keys):
            v.add(
                f"{field}.signature.trusted_key_ids",
                f"key ids must be distinct, non-empty, at most {MAX_KEY_ID_LENGTH} characters",
            )
        return SignatureRequired(tuple(keys))
    v.add(field, "set exactly one rule")
    return None


def rules_from_proto(rules: Sequence[pb.PromotionRule], v: val.Violations) -> tuple[Rule, ...]:
    """Validated domain rules (violations recorded in `v`)."""
    if len(rules) > MAX_RULES:
        v.add("promotion_gates.rules", f"at most {MAX_RULES} rules")
    parsed = [_rule_from_proto(r, f"promotion_gates.rules[{i}]", v) for i, r in enumerate(rules)]
    return tuple(r for r in parsed if r is not None)


def rule_to_proto(rule: Rule) -> pb.PromotionRule:
    """The wire form of a rule."""
    if isinstance(rule, MetricThreshold):
        return pb.PromotionRule(
            metric_threshold=pb.MetricThresholdRule(
                metric=rule.metric,
                operator=pb.ThresholdOperator.ValueType(int(rule.operator)),
                value=rule.value,
            )
        )
    if isinstance(rule, ChampionComparison):
        return pb.PromotionRule(
            champion_comparison=pb.ChampionComparisonRule(
                metric=rule.metric, higher_is_better=rule.higher_is_better, max_regression=rule.max_regression
            )
        )
    if isinstance(rule, SchemaCompatibility):
        return pb.PromotionRule(schema_compatibility=pb.SchemaCompatibilityRule())
    if isinstance(rule, RequiredLineage):
        return pb.PromotionRule(
            lineage=pb.LineageRule(
                require_run_id=rule.run_id,
                require_dataset_digests=rule.dataset_digests,
                require_code_commit=rule.code_commit,
            )
        )
    return pb.PromotionRule(signature=pb.SignatureRule(trusted_key_ids=rule.trusted_key_ids))


def required_approvals_from_proto(value: int, v: val.Violations) -> int:
    """0-10 approvals."""
    if not 0 <= value <= MAX_REQUIRED_APPROVALS:
        v.add("promotion_gates.required_approvals", f"must be between 0 and {MAX_REQUIRED_APPROVALS}")
    return value


def ttl_from_proto(value: duration_pb2.Duration, v: val.Violations) -> timedelta:
    """A request TTL: 0 means the default; else 1 second to 30 days."""
    if not val.check_duration("promotion_gates.request_ttl", value, v):
        return DEFAULT_REQUEST_TTL
    ttl = value.ToTimedelta()
    if ttl == timedelta(0):
        return DEFAULT_REQUEST_TTL
    if not MIN_REQUEST_TTL <= ttl <= MAX_REQUEST_TTL:
        v.add("promotion_gates.request_ttl", "must be between 1 second and 30 days")
    return ttl


def gates_to_proto(gates: GatesRecord) -> pb.PromotionGates:
    """The wire form of a model's gates."""
    ttl = duration_pb2.Duration()
    ttl.FromTimedelta(gates.request_ttl)
    return pb.PromotionGates(
        name=gates_name(gates.model_id),
        rules=[rule_to_proto(r) for r in gates.rules],
        required_approvals=gates.required_approvals,
        request_ttl=ttl,
        etag=gates_etag(gates),
        update_time=timestamp(gates.update_time) if gates.update_time else None,
        updater=gates.updater,
    )


# --- targets, results, requests ----------------------------------------------------------------------------


def target_from_proto(target: pb.PromotionTarget, field: str = "target") -> Target:
    """A target as given: STAGE_PRODUCTION or an alias id."""
    which = target.WhichOneof("target")
    v = val.Violations()
    if which == "alias":
        if not ALIAS_RE.fullmatch(target.alias):
            v.add(f"{field}.alias", "an alias id: [a-z][a-z0-9-]*, at most 63 chars")
        v.check()
        return Target(alias=target.alias)
    if which != "stage" or target.stage != model_pb2.STAGE_PRODUCTION:
        v.add(field, "set stage to STAGE_PRODUCTION, or alias to a protected alias")
    v.check()
    return Target(stage=Stage.PRODUCTION)


def target_to_proto(target: Target) -> pb.PromotionTarget:
    """The wire form of a target."""
    if target.alias is not None:
        return pb.PromotionTarget(alias=target.alias)
    return pb.PromotionTarget(stage=model_pb2.Stage.ValueType(int(target.stage or Stage.PRODUCTION)))


def result_to_proto(result: RuleResult) -> pb.GateResult:
    """The wire form of a rule's outcome."""
    return pb.GateResult(
        rule_index=result.index,
        rule=rule_to_proto(result.rule),
        kind=result.kind,
        passed=result.passed,
        message=result.message,
    )


def verdict_to_proto(verdict: Verdict) -> pb.DryRunPromotionResponse:
    """The wire form of a dry run."""
    champion, production = verdict.champion, verdict.production
    return pb.DryRunPromotionResponse(
        model_version=version_name(verdict.version.model_id, verdict.version.version),
        target=target_to_proto(verdict.target),
        passed=verdict.passed,
        results=[result_to_proto(r) for r in verdict.results],
        approval_required=verdict.required_approvals > 0,
        required_approvals=verdict.required_approvals,
        champion_version=version_name(champion.model_id, champion.version) if champion else "",
        production_version=version_name(production.model_id, production.version) if production else "",
    )


def _review(review: Review) -> pb.PromotionReview:
    return pb.PromotionReview(
        principal=f"principals/{review.principal}",
        comment=review.comment,
        create_time=timestamp(review.create_time),
    )


def _failure(violation: PreconditionViolation) -> pb.PromotionFailure:
    return pb.PromotionFailure(
        type=violation.type, subject=violation.subject, description=violation.description
    )


def request_to_proto(request: PromotionRequestRecord) -> pb.PromotionRequest:
    """The wire form of a promotion request."""
    rejection = request.rejection
    return pb.PromotionRequest(
        name=request.name,
        model_version=version_name(request.model_id, request.version),
        target=target_to_proto(request.target),
        archive_existing=request.archive_existing,
        state=pb.PromotionRequestState.ValueType(int(request.state)),
        requester=f"principals/{request.requester}",
        comment=request.comment,
        approvals=[_review(r) for r in request.approvals],
        rejection=_review(rejection) if rejection else None,
        required_approvals=request.required_approvals,
        create_time=timestamp(request.create_time),
        update_time=timestamp(request.update_time),
        expire_time=timestamp(request.expire_time),
        state_message=request.state_message,
        failures=[_failure(f) for f in request.failures],
    )
