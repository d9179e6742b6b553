"""Version comparison (domain/compare.py): metrics, schema compatibility, dependencies, lineage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg_server.api.compare_convert import comparison_to_proto
from modelreg_server.api.convert import to_json
from modelreg_server.domain import errors
from modelreg_server.domain.compare import (
    DatasetRef,
    DependencyChange,
    DiffKind,
    MetricPresence,
    ParameterChange,
    SchemaProblemKind,
    compare,
    compare_pair,
    input_compatibility,
    metric_deltas,
    normalize_package,
    output_compatibility,
    shapes_compatible,
)
from modelreg_server.domain.records import Stage, VersionRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)
F = model_pb2.SchemaField


def schema(*fields: model_pb2.SchemaField) -> dict[str, Any]:
    """A schema as the catalog stores it (MessageToDict: int64 dimensions become strings)."""
    return to_json(model_pb2.Schema(fields=fields))


def version(
    number: int = 1,
    *,
    model_id: str = "m",
    run_id: str = "run",
    metrics: dict[str, float] | None = None,
    inputs: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    dependencies: model_pb2.Dependencies | None = None,
    lineage: model_pb2.Lineage | None = None,
) -> VersionRecord:
    return VersionRecord(
        model_id=model_id,
        version=number,
        run_id=run_id,
        description="",
        labels={},
        metrics=metrics or {},
        lineage=to_json(lineage or model_pb2.Lineage()),
        input_schema=inputs or {},
        output_schema=outputs or {},
        dependencies=to_json(dependencies or model_pb2.Dependencies()),
        artifact_digest="",
        stage=Stage.NONE,
        creator="admin",
        revision=1,
        create_time=NOW,
        update_time=NOW,
    )


def kinds(verdict: Any) -> list[tuple[str, SchemaProblemKind]]:
    return [(p.field, p.kind) for p in verdict.problems]


# --- metrics -----------------------------------------------------------------------------------------


def test_metric_deltas_cover_both_sides_sorted_by_name() -> None:
    deltas = metric_deltas({"auc": 0.9, "loss": 0.5, "zero": 0.0}, {"auc": 0.93, "f1": 0.7, "zero": 0.2})
    assert [d.name for d in deltas] == ["auc", "f1", "loss", "zero"]
    auc, f1, loss, zero = deltas
    assert auc.presence is MetricPresence.BOTH
    assert auc.delta == pytest.approx(0.03)
    assert auc.relative == pytest.approx(0.03 / 0.9)
    assert (f1.presence, f1.baseline, f1.value, f1.delta, f1.relative) == (
        MetricPresence.VERSION_ONLY,
        None,
        0.7,
        None,
        None,
    )
    assert (loss.presence, loss.baseline, loss.value, loss.delta) == (
        MetricPresence.BASELINE_ONLY,
        0.5,
        None,
        None,
    )
    assert zero.delta == pytest.approx(0.2)
    assert zero.relative is None  # no relative change from zero


def test_relative_change_uses_the_magnitude_of_a_negative_baseline() -> None:
    (delta,) = metric_deltas({"log_lik": -2.0}, {"log_lik": -1.0})
    assert delta.delta == 1.0
    assert delta.relative == 0.5


# --- schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "compatible"),
    [
        ((), (), True),
        ((3,), (3,), True),
        ((-1, 3), (8, 3), True),
        ((8, 3), (-1, 3), True),
        ((-1, -1), (4, 5), True),
        ((3,), (4,), False),
        ((3,), (3, 1), False),
        ((-1,), (), False),
        ((-1, 3), (-1, 4), False),
    ],
)
def test_shapes_match_dimension_by_dimension_with_minus_one_as_any(
    a: tuple[int, ...], b: tuple[int, ...], compatible: bool
) -> None:
    assert shapes_compatible(a, b) is compatible
    assert shapes_compatible(b, a) is compatible


def test_identical_inputs_are_compatible() -> None:
    inputs = schema(F(name="x", dtype="float32", shape=[-1, 3]), F(name="id", dtype="string"))
    verdict = input_compatibility(inputs, inputs)
    assert verdict.compatible and verdict.declared and verdict.problems == ()


def test_new_version_accepts_old_inputs_with_extra_old_fields_and_new_optional_ones() -> None:
    old = schema(F(name="x", dtype="float32", shape=[8, 3]), F(name="unused", dtype="int64"))
    new = schema(
        F(name="x", dtype="float32", shape=[-1, 3]),
        F(name="hint", dtype="string", optional=True),
    )
    assert input_compatibility(old, new).compatible


def test_every_input_problem_is_listed() -> None:
    old = schema(
        F(name="x", dtype="float32", shape=[-1, 3]),
        F(name="y", dtype="int64", shape=[2]),
        F(name="z", dtype="float32", shape=[4]),
    )
    new = schema(
        F(name="x", dtype="float64", shape=[-1, 4]),  # dtype and shape
        F(name="y", dtype="int64", shape=[2, 1]),  # rank
        F(name="z", dtype="float32", shape=[4]),  # fine
        F(name="w", dtype="float32"),  # required but the old inputs lack it
        F(name="v", dtype="float32", optional=True),  # optional: fine
    )
    verdict = input_compatibility(old, new)
    assert not verdict.compatible
    assert kinds(verdict) == [
        ("w", SchemaProblemKind.MISSING_FIELD),
        ("x", SchemaProblemKind.DTYPE_MISMATCH),
        ("x", SchemaProblemKind.SHAPE_MISMATCH),
        ("y", SchemaProblemKind.SHAPE_MISMATCH),
    ]
    x_dtype = verdict.problems[1]
    assert "float32" in x_dtype.description and "float64" in x_dtype.description
    assert "[?, 3]" in verdict.problems[2].description


def test_output_compatibility_needs_every_old_output() -> None:
    old = schema(F(name="score", dtype="float32", shape=[-1]), F(name="label", dtype="string"))
    assert output_compatibility(old, schema(*_with_extra(old))).compatible
    verdict = output_compatibility(old, schema(F(name="score", dtype="float16", shape=[-1, 1])))
    assert kinds(verdict) == [
        ("label", SchemaProblemKind.MISSING_FIELD),
        ("score", SchemaProblemKind.DTYPE_MISMATCH),
        ("score", SchemaProblemKind.SHAPE_MISMATCH),
    ]


def _with_extra(old: dict[str, Any]) -> list[model_pb2.SchemaField]:
    fields = [
        F(name=f["name"], dtype=f["dtype"], shape=[int(d) for d in f.get("shape", [])]) for f in old["fields"]
    ]
    return [*fields, F(name="explanation", dtype="string")]


def test_undeclared_schemas_compare_as_empty_and_say_so() -> None:
    declared = schema(F(name="x", dtype="float32"))
    both_empty = input_compatibility({}, {})
    assert both_empty.compatible and not both_empty.declared
    # A version that starts declaring required inputs cannot be shown to accept undeclared old ones.
    assert kinds(input_compatibility({}, declared)) == [("x", SchemaProblemKind.MISSING_FIELD)]
    assert input_compatibility(declared, {}).compatible  # requires nothing
    assert not output_compatibility(declared, {}).compatible
    assert not output_compatibility(declared, {}).declared


# --- dependencies ------------------------------------------------------------------------------------


def test_dependency_changes_match_normalised_names() -> None:
    old = model_pb2.Dependencies(
        python_version="3.11",
        packages=[
            model_pb2.PackageRequirement(name="scikit_learn", version="1.5.2"),
            model_pb2.PackageRequirement(name="numpy", version="2.0.0"),
            model_pb2.PackageRequirement(name="pandas", version="2.2.0"),
        ],
    )
    new = model_pb2.Dependencies(
        python_version="3.12",
        packages=[
            model_pb2.PackageRequirement(name="Scikit-Learn", version="1.5.2"),
            model_pb2.PackageRequirement(name="numpy", version="2.1.0"),
            model_pb2.PackageRequirement(name="torch", version="2.4.0"),
        ],
    )
    result = compare_pair(version(1, dependencies=old), version(2, dependencies=new))
    assert result.dependency_changes == (
        DependencyChange("numpy", "2.0.0", "2.1.0", DiffKind.CHANGED),
        DependencyChange("pandas", "2.2.0", "", DiffKind.REMOVED),
        DependencyChange("torch", "", "2.4.0", DiffKind.ADDED),
    )
    assert result.python_version_changed
    assert (result.baseline_python_version, result.python_version) == ("3.11", "3.12")
    assert normalize_package("Zope.Interface__x") == "zope-interface-x"


# --- lineage -----------------------------------------------------------------------------------------


def test_lineage_diff() -> None:
    train = model_pb2.DatasetRef(uri="s3://d/train", digest="sha256:aa", role="train")
    evaluation = model_pb2.DatasetRef(uri="s3://d/eval", role="eval")
    old = model_pb2.Lineage(
        datasets=[train, evaluation],
        code=model_pb2.CodeRef(repository="git@x:r", commit="abc"),
        parameters={"lr": "0.1", "depth": "6", "seed": "1"},
        parent_versions=["models/base/versions/1"],
    )
    new = model_pb2.Lineage(
        datasets=[model_pb2.DatasetRef(uri="s3://d/train", digest="sha256:bb", role="train"), evaluation],
        code=model_pb2.CodeRef(repository="git@x:r", commit="abd"),
        parameters={"lr": "0.05", "depth": "6", "epochs": "3"},
        parent_versions=["models/base/versions/1"],
    )
    diff = compare_pair(version(1, lineage=old), version(2, run_id="run-2", lineage=new)).lineage
    assert diff.datasets_added == (DatasetRef("s3://d/train", "sha256:bb", "train"),)
    assert diff.datasets_removed == (DatasetRef("s3://d/train", "sha256:aa", "train"),)
    assert diff.code_changed
    assert diff.parameters_changed == (
        ParameterChange("epochs", "", "3", DiffKind.ADDED),
        ParameterChange("lr", "0.1", "0.05", DiffKind.CHANGED),
        ParameterChange("seed", "1", "", DiffKind.REMOVED),
    )
    assert diff.run_id_changed
    assert not diff.parent_versions_changed


def test_parent_order_does_not_matter_but_membership_does() -> None:
    a = model_pb2.Lineage(parent_versions=["models/p/versions/1", "models/p/versions/2"])
    b = model_pb2.Lineage(parent_versions=["models/p/versions/2", "models/p/versions/1"])
    c = model_pb2.Lineage(parent_versions=["models/p/versions/2"])
    assert not compare_pair(version(lineage=a), version(lineage=b)).lineage.parent_versions_changed
    assert compare_pair(version(lineage=a), version(lineage=c)).lineage.parent_versions_changed


# --- whole comparisons -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 11])
def test_two_to_ten_versions(count: int) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        compare([version(i + 1) for i in range(count)])
    assert caught.value.violations[0].field == "names"


def test_every_version_is_compared_with_the_first_in_order() -> None:
    versions = [version(i, metrics={"auc": 0.8 + i / 100}) for i in (1, 3, 2)]
    result = compare(versions)
    assert result.baseline.version == 1
    assert [c.version for c in result.comparisons] == [3, 2]
    assert [c.metric_deltas[0].delta for c in result.comparisons] == pytest.approx([0.02, 0.01])


def test_proto_marks_missing_metric_sides_as_unset() -> None:
    response = comparison_to_proto(
        compare([version(1, metrics={"auc": 0.9, "loss": 0.0}), version(2, metrics={"loss": 0.1, "f1": 1})])
    )
    assert response.baseline == "models/m/versions/1"
    (comparison,) = response.comparisons
    assert comparison.model_version == "models/m/versions/2"
    by_name = {m.name: m for m in comparison.metric_deltas}
    auc, f1, loss = by_name["auc"], by_name["f1"], by_name["loss"]
    assert (auc.presence, f1.presence, loss.presence) == (
        pb.METRIC_PRESENCE_BASELINE_ONLY,
        pb.METRIC_PRESENCE_VERSION_ONLY,
        pb.METRIC_PRESENCE_BOTH,
    )
    assert auc.HasField("baseline") and not auc.HasField("value") and not auc.HasField("delta")
    assert f1.HasField("value") and not f1.HasField("baseline")
    assert loss.HasField("delta") and not loss.HasField("relative")  # baseline 0


_NAMES = st.text("abcxyz", min_size=1, max_size=3)
_FIELDS = st.lists(
    st.builds(
        lambda name, dtype, shape, optional: F(name=name, dtype=dtype, shape=shape, optional=optional),
        _NAMES,
        st.sampled_from(["float32", "int64", "string"]),
        st.lists(st.sampled_from([-1, 1, 3]), max_size=3),
        st.booleans(),
    ),
    max_size=5,
    unique_by=lambda f: f.name,
)


@given(
    inputs=_FIELDS,
    outputs=_FIELDS,
    metrics=st.dictionaries(_NAMES, st.floats(-1e6, 1e6)),
    params=st.dictionaries(_NAMES, _NAMES),
)
def test_a_version_compared_with_itself_shows_no_difference(
    inputs: list[model_pb2.SchemaField],
    outputs: list[model_pb2.SchemaField],
    metrics: dict[str, float],
    params: dict[str, str],
) -> None:
    v = version(
        metrics=metrics,
        inputs=schema(*inputs),
        outputs=schema(*outputs),
        lineage=model_pb2.Lineage(parameters=params),
    )
    result = compare_pair(v, v)
    assert result.input_schema.compatible and result.output_schema.compatible
    assert all(d.presence is MetricPresence.BOTH and d.delta == 0 for d in result.metric_deltas)
    assert result.dependency_changes == () and not result.python_version_changed
    lineage = result.lineage
    assert lineage.parameters_changed == () and not lineage.code_changed and not lineage.run_id_changed
