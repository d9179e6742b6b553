"""Comparison of model versions with a baseline: metrics, schema compatibility, dependencies, lineage.

Pure functions over `VersionRecord`s. Schemas, lineage and dependencies are the JSON objects the catalog
stores (protobuf `MessageToDict` with proto field names), so int64 shape dimensions arrive as strings and
unset fields are absent.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelreg_server.domain import errors
from modelreg_server.domain.records import JsonObject, VersionRecord

MIN_VERSIONS = 2
MAX_VERSIONS = 10


class MetricPresence(enum.IntEnum):
    """Which versions carry a metric; numbers match modelreg.v1.MetricPresence."""

    BOTH = 1
    BASELINE_ONLY = 2
    VERSION_ONLY = 3


class SchemaProblemKind(enum.IntEnum):
    """Kinds of schema incompatibility; numbers match modelreg.v1.SchemaProblemKind."""

    MISSING_FIELD = 1
    DTYPE_MISMATCH = 2
    SHAPE_MISMATCH = 3


class DiffKind(enum.IntEnum):
    """Kinds of difference; numbers match modelreg.v1.DiffKind."""

    ADDED = 1
    REMOVED = 2
    CHANGED = 3


@dataclass(frozen=True)
class MetricDelta:
    """One metric of a version next to the baseline's (None where a side lacks it)."""

    name: str
    baseline: float | None
    value: float | None

    @property
    def presence(self) -> MetricPresence:
        """Which side carries the metric."""
        if self.baseline is None:
            return MetricPresence.VERSION_ONLY
        if self.value is None:
            return MetricPresence.BASELINE_ONLY
        return MetricPresence.BOTH

    @property
    def delta(self) -> float | None:
        """value - baseline, when both exist."""
        if self.baseline is None or self.value is None:
            return None
        return self.value - self.baseline

    @property
    def relative(self) -> float | None:
        """delta / |baseline|, when both exist and the baseline is not zero."""
        delta = self.delta
        if delta is None or not self.baseline:
            return None
        return delta / abs(self.baseline)


@dataclass(frozen=True)
class SchemaProblem:
    """One reason two schemas are incompatible."""

    field: str
    kind: SchemaProblemKind
    description: str


@dataclass(frozen=True)
class SchemaCompatibility:
    """The verdict on one schema and every problem behind it."""

    problems: tuple[SchemaProblem, ...]
    declared: bool

    @property
    def compatible(self) -> bool:
        """True when no problem was found."""
        return not self.problems


@dataclass(frozen=True)
class DependencyChange:
    """A package that was added, removed or pinned to another version."""

    name: str
    baseline_version: str
    version: str
    change: DiffKind


@dataclass(frozen=True)
class ParameterChange:
    """A training parameter that was added, removed or changed."""

    name: str
    baseline_value: str
    value: str
    change: DiffKind


@dataclass(frozen=True)
class DatasetRef:
    """A dataset of a version's lineage."""

    uri: str
    digest: str = ""
    role: str = ""


@dataclass(frozen=True)
class LineageDiff:
    """Differences in datasets, code, parameters, parents and run id."""

    datasets_added: tuple[DatasetRef, ...]
    datasets_removed: tuple[DatasetRef, ...]
    code_changed: bool
    parameters_changed: tuple[ParameterChange, ...]
    run_id_changed: bool
    parent_versions_changed: bool


@dataclass(frozen=True)
class VersionComparison:
    """How one version differs from the baseline."""

    model_id: str
    version: int
    metric_deltas: tuple[MetricDelta, ...]
    input_schema: SchemaCompatibility
    output_schema: SchemaCompatibility
    dependency_changes: tuple[DependencyChange, ...]
    baseline_python_version: str
    python_version: str
    lineage: LineageDiff

    @property
    def python_version_changed(self) -> bool:
        """Whether the declared Python versions differ."""
        return self.baseline_python_version != self.python_version


@dataclass(frozen=True)
class Comparison:
    """The baseline and one comparison for each other version, in order."""

    baseline: VersionRecord
    comparisons: tuple[VersionComparison, ...]


def check_count(count: int, field: str = "names") -> None:
    """INVALID_ARGUMENT unless 2-10 versions are named."""
    if not MIN_VERSIONS <= count <= MAX_VERSIONS:
        raise errors.invalid(
            field, f"name {MIN_VERSIONS} to {MAX_VERSIONS} versions (the first is the baseline), got {count}"
        )


def compare(versions: Sequence[VersionRecord]) -> Comparison:
    """Compares every version after the first with the first."""
    check_count(len(versions))
    baseline, *others = versions
    return Comparison(baseline, tuple(compare_pair(baseline, other) for other in others))


def compare_pair(baseline: VersionRecord, other: VersionRecord) -> VersionComparison:
    """How `other` differs from `baseline`."""
    base_deps, other_deps = baseline.dependencies or {}, other.dependencies or {}
    return VersionComparison(
        model_id=other.model_id,
        version=other.version,
        metric_deltas=metric_deltas(baseline.metrics, other.metrics),
        input_schema=input_compatibility(baseline.input_schema, other.input_schema),
        output_schema=output_compatibility(baseline.output_schema, other.output_schema),
        dependency_changes=dependency_changes(base_deps, other_deps),
        baseline_python_version=str(base_deps.get("python_version", "")),
        python_version=str(other_deps.get("python_version", "")),
        lineage=lineage_diff(baseline, other),
    )


# --- metrics -----------------------------------------------------------------------------------------


def metric_deltas(baseline: Mapping[str, float], other: Mapping[str, float]) -> tuple[MetricDelta, ...]:
    """One entry per metric of either side, by name."""
    return tuple(
        MetricDelta(name, baseline.get(name), other.get(name)) for name in sorted({*baseline, *other})
    )


# --- schemas -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    dtype: str
    shape: tuple[int, ...]
    optional: bool


def _fields(schema: JsonObject | None) -> dict[str, _Field]:
    result: dict[str, _Field] = {}
    for raw in (schema or {}).get("fields", []):
        name = str(raw.get("name", ""))
        result[name] = _Field(
            name,
            str(raw.get("dtype", "")),
            tuple(int(d) for d in raw.get("shape", [])),
            bool(raw.get("optional", False)),
        )
    return result


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


def _field_problems(name: str, baseline: _Field, other: _Field) -> list[SchemaProblem]:
    """dtype and shape problems of a field both sides have."""
    problems = []
    if baseline.dtype != other.dtype:
        problems.append(
            SchemaProblem(
                name,
                SchemaProblemKind.DTYPE_MISMATCH,
                f"dtype {baseline.dtype or '(none)'} in the baseline, "
                f"{other.dtype or '(none)'} in this version",
            )
        )
    if not shapes_compatible(baseline.shape, other.shape):
        problems.append(
            SchemaProblem(
                name,
                SchemaProblemKind.SHAPE_MISMATCH,
                f"shape {_shape_text(baseline.shape)} in the baseline, "
                f"{_shape_text(other.shape)} in this version",
            )
        )
    return problems


def shapes_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    """Equal ranks, and each dimension equal or -1 (any size) on either side."""
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def input_compatibility(baseline: JsonObject | None, other: JsonObject | None) -> SchemaCompatibility:
    """Whether `other` accepts the baseline's inputs: each of its required fields exists in the baseline
    with the same dtype and a compatible shape."""
    old, new = _fields(baseline), _fields(other)
    problems: list[SchemaProblem] = []
    for name, field in new.items():
        if field.optional:
            continue
        if name not in old:
            problems.append(
                SchemaProblem(
                    name,
                    SchemaProblemKind.MISSING_FIELD,
                    "required input is missing from the baseline's inputs",
                )
            )
            continue
        problems += _field_problems(name, old[name], field)
    return SchemaCompatibility(_sorted(problems), bool(old) and bool(new))


def output_compatibility(baseline: JsonObject | None, other: JsonObject | None) -> SchemaCompatibility:
    """Whether `other` still produces the baseline's outputs: each baseline field exists in `other` with
    the same dtype and a compatible shape."""
    old, new = _fields(baseline), _fields(other)
    problems: list[SchemaProblem] = []
    for name, field in old.items():
        if name not in new:
            problems.append(
                SchemaProblem(
                    name, SchemaProblemKind.MISSING_FIELD, "output of the baseline is no longer produced"
                )
            )
            continue
        problems += _field_problems(name, field, new[name])
    return SchemaCompatibility(_sorted(problems), bool(old) and bool(new))


def _sorted(problems: Iterable[SchemaProblem]) -> tuple[SchemaProblem, ...]:
    return tuple(sorted(problems, key=lambda p: (p.field, p.kind)))


# --- dependencies ------------------------------------------------------------------------------------

_SEPARATORS = re.compile(r"[-_.]+")


def normalize_package(name: str) -> str:
    """PEP 503 normalisation: `Scikit_Learn` and `scikit-learn` are the same package."""
    return _SEPARATORS.sub("-", name).lower()


def _packages(dependencies: JsonObject) -> dict[str, tuple[str, str]]:
    """normalised name -> (name as written, version)."""
    return {
        normalize_package(str(p.get("name", ""))): (str(p.get("name", "")), str(p.get("version", "")))
        for p in dependencies.get("packages", [])
    }


def dependency_changes(baseline: JsonObject, other: JsonObject) -> tuple[DependencyChange, ...]:
    """Packages added, removed or pinned differently, by normalised name."""
    old, new = _packages(baseline), _packages(other)
    changes = []
    for key in sorted({*old, *new}):
        if key not in old:
            changes.append(DependencyChange(new[key][0], "", new[key][1], DiffKind.ADDED))
        elif key not in new:
            changes.append(DependencyChange(old[key][0], old[key][1], "", DiffKind.REMOVED))
        elif old[key][1] != new[key][1]:
            changes.append(DependencyChange(new[key][0], old[key][1], new[key][1], DiffKind.CHANGED))
    return tuple(changes)


# --- lineage -----------------------------------------------------------------------------------------


def _datasets(lineage: JsonObject) -> list[DatasetRef]:
    return [
        DatasetRef(str(d.get("uri", "")), str(d.get("digest", "")), str(d.get("role", "")))
        for d in lineage.get("datasets", [])
    ]


def _code(lineage: JsonObject) -> tuple[str, str, str]:
    code: Mapping[str, Any] = lineage.get("code") or {}
    return (str(code.get("repository", "")), str(code.get("commit", "")), str(code.get("path", "")))


def parameter_changes(baseline: Mapping[str, str], other: Mapping[str, str]) -> tuple[ParameterChange, ...]:
    """Parameters added, removed or changed, by name."""
    changes = []
    for name in sorted({*baseline, *other}):
        if name not in baseline:
            changes.append(ParameterChange(name, "", other[name], DiffKind.ADDED))
        elif name not in other:
            changes.append(ParameterChange(name, baseline[name], "", DiffKind.REMOVED))
        elif baseline[name] != other[name]:
            changes.append(ParameterChange(name, baseline[name], other[name], DiffKind.CHANGED))
    return tuple(changes)


def lineage_diff(baseline: VersionRecord, other: VersionRecord) -> LineageDiff:
    """Lineage differences; datasets are identified by uri, digest and role together."""
    old, new = baseline.lineage or {}, other.lineage or {}
    old_sets, new_sets = _datasets(old), _datasets(new)
    return LineageDiff(
        datasets_added=tuple(d for d in new_sets if d not in old_sets),
        datasets_removed=tuple(d for d in old_sets if d not in new_sets),
        code_changed=_code(old) != _code(new),
        parameters_changed=parameter_changes(old.get("parameters") or {}, new.get("parameters") or {}),
        run_id_changed=baseline.run_id != other.run_id,
        parent_versions_changed=set(old.get("parent_versions", [])) != set(new.get("parent_versions", [])),
    )
