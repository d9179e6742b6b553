"""Promotion gate rules evaluated without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from modelreg_server.domain.gate_rules import (
    Baselines,
    ChampionComparison,
    MetricThreshold,
    RequiredLineage,
    Rule,
    SchemaCompatibility,
    SignatureRequired,
    ThresholdOperator,
    evaluate,
    rule_from_json,
    rule_to_json,
)
from modelreg_server.domain.records import Stage, VersionRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GE, GT, LE, LT = (
    ThresholdOperator.GREATER_OR_EQUAL,
    ThresholdOperator.GREATER,
    ThresholdOperator.LESS_OR_EQUAL,
    ThresholdOperator.LESS,
)


def version(number: int = 2, **fields: Any) -> VersionRecord:
    values: dict[str, Any] = {
        "model_id": "m",
        "version": number,
        "run_id": "",
        "description": "",
        "labels": {},
        "metrics": {},
        "lineage": {},
        "input_schema": {},
        "output_schema": {},
        "dependencies": {},
        "artifact_digest": "",
        "stage": Stage.STAGING,
        "creator": "t",
        "revision": 1,
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(fields)
    return VersionRecord(**values)


def one(rule: Rule, candidate: VersionRecord, baselines: Baselines | None = None) -> tuple[bool, str]:
    [result] = evaluate([rule], candidate, baselines or Baselines())
    assert result.index == 0 and result.rule == rule and result.kind == rule.KIND
    return result.passed, result.message


@pytest.mark.parametrize(
    ("operator", "value", "passes"),
    [
        (GE, 0.9, True),
        (GE, 0.89, False),
        (GT, 0.9, False),
        (GT, 0.91, True),
        (LE, 0.9, True),
        (LT, 0.9, False),
    ],
)
def test_metric_threshold_compares_exactly(operator: ThresholdOperator, value: float, passes: bool) -> None:
    passed, message = one(MetricThreshold("auc", operator, 0.9), version(metrics={"auc": value}))
    assert passed is passes
    assert f"metrics.auc = {value:.6g}" in message and f"{operator.symbol} 0.9" in message


def test_metric_threshold_fails_when_the_metric_is_missing() -> None:
    passed, message = one(MetricThreshold("auc", GE, 0.9), version(metrics={"loss": 0.1}))
    assert not passed
    assert message == "metrics.auc is not recorded; needs >= 0.9"


def test_champion_comparison_allows_regressions_up_to_epsilon() -> None:
    champion = version(1, metrics={"auc": 0.86})
    rule = ChampionComparison("auc", higher_is_better=True, max_regression=0.01)
    assert one(rule, version(metrics={"auc": 0.85}), Baselines(champion=champion))[
        0
    ]  # exactly ε, despite rounding
    passed, message = one(rule, version(metrics={"auc": 0.84}), Baselines(champion=champion))
    assert not passed
    assert "metrics.auc = 0.84 is 0.02 worse than the champion models/m/versions/1 (0.86" in message
    assert "at most 0.01 allowed" in message


def test_champion_comparison_for_lower_is_better_metrics() -> None:
    champion = version(1, metrics={"loss": 0.20})
    rule = ChampionComparison("loss", higher_is_better=False, max_regression=0.0)
    assert one(rule, version(metrics={"loss": 0.19}), Baselines(champion=champion))[0]
    passed, message = one(rule, version(metrics={"loss": 0.25}), Baselines(champion=champion))
    assert not passed and "0.05 worse" in message and "lower is better" in message


def test_champion_comparison_without_champion_or_metric() -> None:
    rule = ChampionComparison("auc", higher_is_better=True, max_regression=0.0)
    passed, message = one(rule, version(metrics={}))
    assert passed and "no champion" in message
    champion = version(1, metrics={})
    passed, message = one(rule, version(metrics={"auc": 0.5}), Baselines(champion=champion))
    assert passed and "has no metrics.auc" in message
    passed, message = one(rule, version(metrics={}), Baselines(champion=version(1, metrics={"auc": 0.5})))
    assert not passed and "not recorded" in message


def _schema(*fields: tuple[str, str, list[int]]) -> dict[str, Any]:
    return {"fields": [{"name": n, "dtype": d, "shape": [str(x) for x in s]} for n, d, s in fields]}


def test_schema_compatibility_against_production() -> None:
    production = version(
        1, input_schema=_schema(("x", "float32", [-1, 4])), output_schema=_schema(("y", "float32", [-1]))
    )
    same = version(input_schema=production.input_schema, output_schema=production.output_schema)
    assert one(SchemaCompatibility(), same, Baselines(production=production)) == (
        True,
        "schemas compatible with PRODUCTION models/m/versions/1",
    )
    changed = version(
        input_schema=_schema(("x", "int64", [-1, 4])), output_schema=_schema(("z", "float32", [-1]))
    )
    passed, message = one(SchemaCompatibility(), changed, Baselines(production=production))
    assert not passed
    assert "input x: dtype float32 in the baseline, int64 in this version" in message
    assert "output y: output of the baseline is no longer produced" in message
    assert one(SchemaCompatibility(), changed) == (True, "nothing in PRODUCTION to compare schemas with")


def test_required_lineage_lists_everything_missing() -> None:
    rule = RequiredLineage(run_id=True, dataset_digests=True, code_commit=True)
    bare = version(lineage={"datasets": [{"uri": "s3://a"}, {"uri": "s3://b", "digest": "sha256:abcdefgh"}]})
    passed, message = one(rule, bare)
    assert not passed
    assert "run_id is empty" in message
    assert "1 of 2 datasets lack a digest: s3://a" in message
    assert "lineage.code.commit is empty" in message
    assert "no datasets recorded" in one(rule, version(run_id="r"))[1]
    complete = version(
        run_id="r",
        lineage={"datasets": [{"uri": "s3://a", "digest": "sha256:abcdefgh"}], "code": {"commit": "abc"}},
    )
    assert one(rule, complete)[0]


def test_signature_needs_a_verified_trusted_key() -> None:
    rule = SignatureRequired(("k1", "k2"))
    passed, message = one(rule, version(), Baselines(verified_key_ids=frozenset({"other"})))
    assert not passed and "k1, k2" in message and "verified keys: other" in message
    assert one(rule, version(), Baselines(verified_key_ids=frozenset({"k2"})))[0]


def test_every_rule_is_reported_in_order() -> None:
    rules: list[Rule] = [
        MetricThreshold("auc", GE, 0.9),
        RequiredLineage(run_id=True),
        SignatureRequired(("k",)),
    ]
    results = evaluate(rules, version(metrics={"auc": 0.95}), Baselines())
    assert [(r.index, r.kind, r.passed) for r in results] == [
        (0, "METRIC_THRESHOLD", True),
        (1, "LINEAGE", False),
        (2, "SIGNATURE", False),
    ]


@pytest.mark.parametrize(
    "rule",
    [
        MetricThreshold("val/loss", LT, 0.25),
        ChampionComparison("auc", higher_is_better=False, max_regression=0.5),
        SchemaCompatibility(),
        RequiredLineage(run_id=True, code_commit=True),
        SignatureRequired(("a", "b")),
    ],
)
def test_rules_round_trip_through_json(rule: Rule) -> None:
    assert rule_from_json(rule_to_json(rule)) == rule


def test_unknown_rule_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown rule kind"):
        rule_from_json({"kind": "ASTROLOGY"})
