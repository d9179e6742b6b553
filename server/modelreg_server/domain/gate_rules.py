"""Promotion gate rules: what each rule checks, its JSON form, and pure evaluation against a version.

Evaluation needs no database: the caller gathers the baselines (champion, PRODUCTION version, verified
signature keys) and every rule reports passed/failed with a message that carries the numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from modelreg_server.domain import compare
from modelreg_server.domain.names import version_name
from modelreg_server.domain.records import JsonObject, VersionRecord

CHAMPION_ALIAS = "champion"
# Float rounding must not fail a rule: 0.86 - 0.85 is 0.010000000000000009.
_TOLERANCE = 1e-9


class ThresholdOperator(enum.IntEnum):
    """Numbers match modelreg.v1.ThresholdOperator."""

    GREATER_OR_EQUAL = 1
    GREATER = 2
    LESS_OR_EQUAL = 3
    LESS = 4

    @property
    def symbol(self) -> str:
        """The operator as written in messages."""
        return {1: ">=", 2: ">", 3: "<=", 4: "<"}[self.value]

    def holds(self, value: float, threshold: float) -> bool:
        """Whether `value <op> threshold`."""
        if self is ThresholdOperator.GREATER_OR_EQUAL:
            return value >= threshold
        if self is ThresholdOperator.GREATER:
            return value > threshold
        if self is ThresholdOperator.LESS_OR_EQUAL:
            return value <= threshold
        return value < threshold


@dataclass(frozen=True)
class MetricThreshold:
    """`metrics.<metric> <operator> <value>`; a missing metric fails."""

    KIND: ClassVar[str] = "METRIC_THRESHOLD"
    metric: str
    operator: ThresholdOperator
    value: float


@dataclass(frozen=True)
class ChampionComparison:
    """No worse than the champion on `metric` by more than `max_regression`."""

    KIND: ClassVar[str] = "CHAMPION_COMPARISON"
    metric: str
    higher_is_better: bool
    max_regression: float


@dataclass(frozen=True)
class SchemaCompatibility:
    """Input and output schemas compatible with the current PRODUCTION version."""

    KIND: ClassVar[str] = "SCHEMA_COMPATIBILITY"


@dataclass(frozen=True)
class RequiredLineage:
    """Lineage that must be recorded."""

    KIND: ClassVar[str] = "LINEAGE"
    run_id: bool = False
    dataset_digests: bool = False
    code_commit: bool = False


@dataclass(frozen=True)
class SignatureRequired:
    """A verified signature by one of the trusted keys."""

    KIND: ClassVar[str] = "SIGNATURE"
    trusted_key_ids: tuple[str, ...]


Rule = MetricThreshold | ChampionComparison | SchemaCompatibility | RequiredLineage | SignatureRequired


@dataclass(frozen=True)
class Baselines:
    """What the rules compare a candidate with."""

    champion: VersionRecord | None = None
    production: VersionRecord | None = None
    verified_key_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RuleResult:
    """The outcome of one rule."""

    index: int
    rule: Rule
    passed: bool
    message: str

    @property
    def kind(self) -> str:
        """The rule kind (PreconditionFailure.type)."""
        return self.rule.KIND


def needs_champion(rules: Iterable[Rule]) -> bool:
    """Whether evaluating these rules needs the champion."""
    return any(isinstance(r, ChampionComparison) for r in rules)


def needs_production(rules: Iterable[Rule]) -> bool:
    """Whether evaluating these rules needs the PRODUCTION version."""
    return any(isinstance(r, SchemaCompatibility) for r in rules)


def needs_signatures(rules: Iterable[Rule]) -> bool:
    """Whether evaluating these rules needs the candidate's verified signature keys."""
    return any(isinstance(r, SignatureRequired) for r in rules)


def evaluate(rules: Sequence[Rule], candidate: VersionRecord, baselines: Baselines) -> list[RuleResult]:
    """Every rule's outcome for the candidate, in rule order."""
    results = []
    for index, rule in enumerate(rules):
        passed, message = _check(rule, candidate, baselines)
        results.append(RuleResult(index, rule, passed, message))
    return results


def _check(rule: Rule, candidate: VersionRecord, baselines: Baselines) -> tuple[bool, str]:
    if isinstance(rule, MetricThreshold):
        return _threshold(rule, candidate)
    if isinstance(rule, ChampionComparison):
        return _champion(rule, candidate, baselines.champion)
    if isinstance(rule, SchemaCompatibility):
        return _schemas(candidate, baselines.production)
    if isinstance(rule, RequiredLineage):
        return _lineage(rule, candidate)
    return _signature(rule, baselines.verified_key_ids)


def _num(value: float) -> str:
    return f"{value:.6g}"


def _threshold(rule: MetricThreshold, candidate: VersionRecord) -> tuple[bool, str]:
    wanted = f"{rule.operator.symbol} {_num(rule.value)}"
    value = candidate.metrics.get(rule.metric)
    if value is None:
        return False, f"metrics.{rule.metric} is not recorded; needs {wanted}"
    if rule.operator.holds(value, rule.value):
        return True, f"metrics.{rule.metric} = {_num(value)}, {wanted}"
    return False, f"metrics.{rule.metric} = {_num(value)}, needs {wanted}"


def _champion(
    rule: ChampionComparison, candidate: VersionRecord, champion: VersionRecord | None
) -> tuple[bool, str]:
    metric = f"metrics.{rule.metric}"
    if champion is None:
        return (
            True,
            f"no champion to compare {metric} with (no '{CHAMPION_ALIAS}' alias, nothing in PRODUCTION)",
        )
    name = version_name(champion.model_id, champion.version)
    base = champion.metrics.get(rule.metric)
    value = candidate.metrics.get(rule.metric)
    if value is None:
        return (
            False,
            f"{metric} is not recorded; the champion {name} has {_num(base) if base is not None else 'none'}",
        )
    if base is None:
        return True, f"{metric} = {_num(value)}; the champion {name} has no {metric} to compare with"
    regression = base - value if rule.higher_is_better else value - base
    allowed = f"at most {_num(rule.max_regression)} allowed"
    direction = "higher" if rule.higher_is_better else "lower"
    if regression > rule.max_regression + _TOLERANCE * max(1.0, abs(base)):
        return False, (
            f"{metric} = {_num(value)} is {_num(regression)} worse than the champion {name} ({_num(base)}; "
            f"{direction} is better); {allowed}"
        )
    return True, f"{metric} = {_num(value)} against the champion {name} ({_num(base)}; {direction} is better)"


def _schemas(candidate: VersionRecord, production: VersionRecord | None) -> tuple[bool, str]:
    if production is None:
        return True, "nothing in PRODUCTION to compare schemas with"
    name = version_name(production.model_id, production.version)
    inputs = compare.input_compatibility(production.input_schema, candidate.input_schema)
    outputs = compare.output_compatibility(production.output_schema, candidate.output_schema)
    problems = [f"input {p.field}: {p.description}" for p in inputs.problems]
    problems += [f"output {p.field}: {p.description}" for p in outputs.problems]
    if problems:
        return False, f"schemas incompatible with PRODUCTION {name} (the baseline): " + "; ".join(problems)
    return True, f"schemas compatible with PRODUCTION {name}"


def _lineage(rule: RequiredLineage, candidate: VersionRecord) -> tuple[bool, str]:
    lineage: JsonObject = candidate.lineage or {}
    missing = []
    if rule.run_id and not candidate.run_id:
        missing.append("run_id is empty")
    if rule.dataset_digests:
        datasets = lineage.get("datasets") or []
        if not datasets:
            missing.append("no datasets recorded")
        undigested = [str(d.get("uri", "")) for d in datasets if not d.get("digest")]
        if undigested:
            missing.append(
                f"{len(undigested)} of {len(datasets)} datasets lack a digest: {', '.join(undigested)}"
            )
    if rule.code_commit and not (lineage.get("code") or {}).get("commit"):
        missing.append("lineage.code.commit is empty")
    if missing:
        return False, "required lineage missing: " + "; ".join(missing)
    required = [n for n, on in (("run_id", rule.run_id), ("dataset digests", rule.dataset_digests),
                                ("code commit", rule.code_commit)) if on]  # fmt: skip
    return True, "lineage recorded: " + ", ".join(required)


def _signature(rule: SignatureRequired, verified: frozenset[str]) -> tuple[bool, str]:
    trusted = sorted(set(rule.trusted_key_ids) & verified)
    if trusted:
        return True, f"verified signature by trusted key {', '.join(trusted)}"
    others = f"; verified keys: {', '.join(sorted(verified))}" if verified else ""
    return False, f"no verified signature by a trusted key ({', '.join(rule.trusted_key_ids)}){others}"


# --- JSON form (the promotion_gates.rules column) ---------------------------------------------------------


def rule_to_json(rule: Rule) -> JsonObject:
    """The stored form of a rule."""
    if isinstance(rule, MetricThreshold):
        return {"kind": rule.KIND, "metric": rule.metric, "operator": rule.operator.name, "value": rule.value}
    if isinstance(rule, ChampionComparison):
        return {
            "kind": rule.KIND,
            "metric": rule.metric,
            "higher_is_better": rule.higher_is_better,
            "max_regression": rule.max_regression,
        }
    if isinstance(rule, SchemaCompatibility):
        return {"kind": rule.KIND}
    if isinstance(rule, RequiredLineage):
        return {
            "kind": rule.KIND,
            "run_id": rule.run_id,
            "dataset_digests": rule.dataset_digests,
            "code_commit": rule.code_commit,
        }
    return {"kind": rule.KIND, "trusted_key_ids": list(rule.trusted_key_ids)}


def rule_from_json(data: dict[str, Any]) -> Rule:
    """Inverse of rule_to_json."""
    kind = data["kind"]
    if kind == MetricThreshold.KIND:
        return MetricThreshold(str(data["metric"]), ThresholdOperator[data["operator"]], float(data["value"]))
    if kind == ChampionComparison.KIND:
        return ChampionComparison(
            str(data["metric"]), bool(data["higher_is_better"]), float(data["max_regression"])
        )
    if kind == SchemaCompatibility.KIND:
        return SchemaCompatibility()
    if kind == RequiredLineage.KIND:
        return RequiredLineage(bool(data["run_id"]), bool(data["dataset_digests"]), bool(data["code_commit"]))
    if kind == SignatureRequired.KIND:
        return SignatureRequired(tuple(str(k) for k in data["trusted_key_ids"]))
    raise ValueError(f"unknown rule kind {kind!r}")
