"""Protobuf form of version comparisons (domain/compare.py)."""

from __future__ import annotations

from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg_server.domain.compare import (
    Comparison,
    DependencyChange,
    LineageDiff,
    MetricDelta,
    ParameterChange,
    SchemaCompatibility,
    VersionComparison,
)
from modelreg_server.domain.names import version_name


def _metric(delta: MetricDelta) -> pb.MetricDelta:
    message = pb.MetricDelta(name=delta.name, presence=pb.MetricPresence.ValueType(int(delta.presence)))
    # Unset optional fields mark the missing side, so only present values are assigned.
    if delta.baseline is not None:
        message.baseline = delta.baseline
    if delta.value is not None:
        message.value = delta.value
    if delta.delta is not None:
        message.delta = delta.delta
    if delta.relative is not None:
        message.relative = delta.relative
    return message


def _schema(verdict: SchemaCompatibility) -> pb.SchemaCompatibility:
    return pb.SchemaCompatibility(
        compatible=verdict.compatible,
        problems=[
            pb.SchemaProblem(
                field=p.field, kind=pb.SchemaProblemKind.ValueType(int(p.kind)), description=p.description
            )
            for p in verdict.problems
        ],
        declared=verdict.declared,
    )


def _dependency(change: DependencyChange) -> pb.DependencyChange:
    return pb.DependencyChange(
        name=change.name,
        baseline_version=change.baseline_version,
        version=change.version,
        change=pb.DiffKind.ValueType(int(change.change)),
    )


def _parameter(change: ParameterChange) -> pb.ParameterChange:
    return pb.ParameterChange(
        name=change.name,
        baseline_value=change.baseline_value,
        value=change.value,
        change=pb.DiffKind.ValueType(int(change.change)),
    )


def _lineage(diff: LineageDiff) -> pb.LineageDiff:
    return pb.LineageDiff(
        datasets_added=[
            model_pb2.DatasetRef(uri=d.uri, digest=d.digest, role=d.role) for d in diff.datasets_added
        ],
        datasets_removed=[
            model_pb2.DatasetRef(uri=d.uri, digest=d.digest, role=d.role) for d in diff.datasets_removed
        ],
        code_changed=diff.code_changed,
        parameters_changed=[_parameter(p) for p in diff.parameters_changed],
        run_id_changed=diff.run_id_changed,
        parent_versions_changed=diff.parent_versions_changed,
    )


def version_comparison_to_proto(comparison: VersionComparison) -> pb.VersionComparison:
    """The wire form of one version's comparison with the baseline."""
    return pb.VersionComparison(
        model_version=version_name(comparison.model_id, comparison.version),
        metric_deltas=[_metric(m) for m in comparison.metric_deltas],
        input_schema=_schema(comparison.input_schema),
        output_schema=_schema(comparison.output_schema),
        dependency_changes=[_dependency(d) for d in comparison.dependency_changes],
        python_version_changed=comparison.python_version_changed,
        baseline_python_version=comparison.baseline_python_version,
        python_version=comparison.python_version,
        lineage=_lineage(comparison.lineage),
    )


def comparison_to_proto(comparison: Comparison) -> pb.CompareModelVersionsResponse:
    """The wire form of a whole comparison."""
    base = comparison.baseline
    return pb.CompareModelVersionsResponse(
        baseline=version_name(base.model_id, base.version),
        comparisons=[version_comparison_to_proto(c) for c in comparison.comparisons],
    )
