"""Tests for compiling filters and sort orders to parameterised SQL (no database server needed)."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelreg_server.domain.filtering import FilterError, parse_filter
from modelreg_server.storage.sql_query import (
    FieldSpec,
    Params,
    SortColumn,
    compile_filter,
    keyset_condition,
    label_sort_sql,
    metric_sort_sql,
    order_clause,
)

STAGES = {"STAGE_UNSPECIFIED": 0, "STAGE_STAGING": 1, "STAGE_PRODUCTION": 2}
FIELDS = {
    "name": FieldSpec("string", "v.name"),
    "version": FieldSpec("int", "v.version"),
    "score": FieldSpec("double", "v.score"),
    "create_time": FieldSpec("timestamp", "v.create_time"),
    "stage": FieldSpec("enum", "v.stage", STAGES),
    "labels": FieldSpec("labels", "v.labels"),
    "metrics": FieldSpec("metrics", "v.metrics"),
}


def compile_text(text: str, offset: int = 0) -> tuple[str, list[object]]:
    node = parse_filter(text)
    assert node is not None
    params = Params(offset)
    return compile_filter(node, FIELDS, params), params.values


def compile_error(text: str) -> FilterError:
    with pytest.raises(FilterError) as info:
        compile_text(text)
    return info.value


def test_params_numbering_and_offset() -> None:
    params = Params()
    assert (params.add("a"), params.add(2)) == ("$1", "$2")
    shifted = Params(offset=3)
    assert shifted.add(None) == "$4"
    assert shifted.values == [None]
    with pytest.raises(ValueError):
        Params(-1)


@pytest.mark.parametrize(
    ("text", "sql", "values"),
    [
        ('name = "m"', "(v.name = $1)", ["m"]),
        ("name != m", "(v.name IS DISTINCT FROM $1)", ["m"]),
        ('name >= "b"', "(v.name >= $1)", ["b"]),
        ('name = "res_net%*"', "(v.name LIKE $1 ESCAPE '\\')", ["res\\_net\\%%"]),
        ('name = "a\\\\b*"', "(v.name LIKE $1 ESCAPE '\\')", ["a\\\\b%"]),
        ("name = *", "(v.name LIKE $1 ESCAPE '\\')", ["%"]),
        ('name : "50%"', "(v.name LIKE $1 ESCAPE '\\')", ["%50\\%%"]),
        ("name:*", "(COALESCE(v.name, '') <> '')", []),
        ("version = 3", "(v.version = $1::bigint)", [3]),
        ("version != -3", "(v.version <> $1::bigint)", [-3]),
        ("score < 1e-3", "(v.score < $1::float8)", [0.001]),
        ("score >= 2", "(v.score >= $1::float8)", [2.0]),
        (
            'create_time > "2024-05-01T12:00:00Z"',
            "(v.create_time > $1::timestamptz)",
            [datetime(2024, 5, 1, 12, tzinfo=UTC)],
        ),
        (
            "create_time <= '2024-05-01T12:00:00.123456+02:00'",
            "(v.create_time <= $1::timestamptz)",
            [datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))],
        ),
        ("stage = STAGE_PRODUCTION", "(v.stage = $1)", [2]),
        ("stage = PRODUCTION", "(v.stage = $1)", [2]),
        ('stage != "staging"', "(v.stage <> $1)", [1]),
        ('labels.team = "nlp"', "(v.labels @> $1::jsonb)", [{"team": "nlp"}]),
        ("labels.tier = 1", "(v.labels @> $1::jsonb)", [{"tier": "1"}]),
        ('labels.team != "nlp"', "((v.labels->>$1::text) IS DISTINCT FROM $2)", ["team", "nlp"]),
        ('labels.team < "m"', "((v.labels->>$1::text) < $2)", ["team", "m"]),
        ('labels.team = "nl*"', "((v.labels->>$1::text) LIKE $2 ESCAPE '\\')", ["team", "nl%"]),
        ('labels.team : "l"', "((v.labels->>$1::text) LIKE $2 ESCAPE '\\')", ["team", "%l%"]),
        ("labels:team", "(v.labels ? $1::text)", ["team"]),
        ('labels:"a.b"', "(v.labels ? $1::text)", ["a.b"]),
        ("labels.team:*", "(v.labels ? $1::text)", ["team"]),
        ('labels."app.kubernetes.io/name":*', "(v.labels ? $1::text)", ["app.kubernetes.io/name"]),
        ("labels.a.b = x", "(v.labels @> $1::jsonb)", [{"a.b": "x"}]),
        ("metrics.auc >= 0.9", "((v.metrics->>$1::text)::float8 >= $2::float8)", ["auc", 0.9]),
        ("metrics.loss != 0", "((v.metrics->>$1::text)::float8 <> $2::float8)", ["loss", 0.0]),
        ("metrics:auc", "(v.metrics ? $1::text)", ["auc"]),
        ("metrics.auc:*", "(v.metrics ? $1::text)", ["auc"]),
    ],
)
def test_comparisons(text: str, sql: str, values: list[object]) -> None:
    assert compile_text(text) == (sql, values)


def test_timestamp_parameter_is_aware_and_exact() -> None:
    _, values = compile_text('create_time = "2024-05-01T12:00:00.000001z"')
    assert values == [datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)]


def test_boolean_structure() -> None:
    sql, values = compile_text('name = "a" OR NOT (version > 1 AND metrics.auc > 0.5) labels:x')
    assert sql == (
        "(((v.name = $1) OR (NOT COALESCE(((v.version > $2::bigint) AND "
        "((v.metrics->>$3::text)::float8 > $4::float8)), false))) AND (v.labels ? $5::text))"
    )
    assert values == ["a", 1, "auc", 0.5, "x"]


def test_not_of_missing_metric_matches_via_coalesce() -> None:
    sql, _ = compile_text("NOT metrics.auc > 0.9")
    assert sql == "(NOT COALESCE(((v.metrics->>$1::text)::float8 > $2::float8), false))"


def test_placeholders_continue_after_offset() -> None:
    sql, values = compile_text('name = "a" version = 2', offset=2)
    assert sql == "((v.name = $3) AND (v.version = $4::bigint))"
    assert values == ["a", 2]


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("owner = 1", "unknown field 'owner' at position 0; filterable fields: create_time, labels,", 0),
        ("version = 1 name.x = 1", "field 'name' has no subfields at position 12", 12),
        ("version = 1.5", "expects an integer, got '1.5' at position 10", 10),
        ("version = abc", "expects an integer, got 'abc' at position 10", 10),
        ("version = 99999999999999999999", "integer out of range at position 10", 10),
        ("version : 1", "operator ':' is not supported for field 'version' at position 0", 0),
        ('score > "x"', "expects a number, got 'x' at position 8", 8),
        ("score > 1e999", "number out of range at position 8", 8),
        ('create_time > "2024-05-01T12:00:00"', "with a time zone", 14),
        ('create_time > "yesterday"', "expects an RFC 3339 timestamp", 14),
        ("create_time > 5", "expects an RFC 3339 timestamp", 14),
        ("stage = RETIRED", "invalid value 'RETIRED' for field 'stage' at position 8; expected one of:", 8),
        ("stage > PRODUCTION", "operator '>' is not supported for field 'stage'", 0),
        ("stage = 2", "invalid value '2'", 8),
        ('labels = "x"', "field 'labels' needs a key at position 0", 0),
        ("labels:*", "field 'labels' needs a key", 0),
        ("metrics > 1", "field 'metrics' needs a key", 0),
        ("metrics.auc > high", "expects a number, got 'high' at position 14", 14),
        ("metrics.auc : 1", "use 'metrics.KEY:*'", 0),
    ],
)
def test_compile_errors(text: str, message: str, position: int) -> None:
    error = compile_error(text)
    assert message in error.message
    assert error.position == position


INJECTION = "'; DROP TABLE x; --"
_NOT_STAR_ENDING = st.text(max_size=30).filter(lambda s: not s.endswith("*"))


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


TEMPLATES = [
    "name = {v}",
    "name != {v}",
    "name : {v}",
    "name < {v}",
    "labels.{k} = {v}",
    "labels.{k} != {v}",
    "labels.{k} >= {v}",
    "labels.{k} : {v}",
    "labels:{k}",
    "labels.{k}:*",
    "metrics.{k} > 0.5",
    "metrics.{k}:*",
    "metrics:{k}",
    "NOT (name = {v} OR labels.{k} = {v})",
]


@settings(max_examples=300)
@given(
    template=st.sampled_from(TEMPLATES),
    key_noise=st.text(min_size=0, max_size=20),
    value_noise=_NOT_STAR_ENDING,
)
def test_client_text_never_reaches_sql(template: str, key_noise: str, value_noise: str) -> None:
    key = key_noise + INJECTION
    value = INJECTION + value_noise
    sql, values = compile_text(template.format(k=quote(key), v=quote(value)))
    benign_sql, _ = compile_text(template.format(k=quote("k"), v=quote("v")))
    assert sql == benign_sql  # the SQL text does not depend on client values at all
    assert "DROP" not in sql
    assert ";" not in sql
    assert "--" not in sql
    assert any(INJECTION in str(v) for v in values)  # ...it travels as a parameter instead


@given(st.text(max_size=60))
def test_compile_of_any_parsed_filter_raises_only_filter_error(text: str) -> None:
    try:
        node = parse_filter(text)
        if node is not None:
            compile_filter(node, FIELDS, Params())
    except FilterError:
        pass


def test_label_value_with_unicode_is_passed_as_an_object_param() -> None:
    _, values = compile_text('labels."ключ" = "значение ✓"')
    assert values == [{"ключ": "значение ✓"}]


# --- ORDER BY and keyset pagination ---------------------------------------------------------------


def test_order_clause() -> None:
    cols = [SortColumn("a", True, True), SortColumn("b", False, False), SortColumn("v.id", True, False)]
    assert order_clause(cols) == "ORDER BY (a IS NULL) ASC, a DESC, b ASC, v.id DESC"
    with pytest.raises(ValueError):
        order_clause([])


def test_keyset_uses_row_comparison_when_uniform() -> None:
    params = Params(1)
    cols = [SortColumn("v.create_time", False, False), SortColumn("v.id", False, False)]
    assert keyset_condition(cols, [10, 20], params) == "((v.create_time, v.id) > ($2, $3))"
    assert params.values == [10, 20]
    desc = [SortColumn("v.create_time", True, False), SortColumn("v.id", True, False)]
    assert keyset_condition(desc, [1, 2], Params()) == "((v.create_time, v.id) < ($1, $2))"
    assert keyset_condition([SortColumn("v.id", False, False)], [5], Params()) == "(v.id > $1)"


def test_keyset_expands_for_mixed_directions_and_nulls() -> None:
    cols = [SortColumn("m", True, True), SortColumn("v.id", False, False)]
    params = Params()
    assert keyset_condition(cols, [0.5, 7], params) == (
        "((m IS NULL OR m < $1) OR ((m IS NOT DISTINCT FROM $1) AND (v.id > $2)))"
    )
    assert params.values == [0.5, 7]
    params = Params()
    assert keyset_condition(cols, [None, 7], params) == "((m IS NULL) AND (v.id > $1))"
    assert params.values == [7]


def test_keyset_rejects_bad_input() -> None:
    cols = [SortColumn("v.id", False, False)]
    with pytest.raises(ValueError):
        keyset_condition(cols, [1, 2], Params())
    with pytest.raises(ValueError):
        keyset_condition(cols, [None], Params())


def test_metric_and_label_sort_sql() -> None:
    params = Params(2)
    assert metric_sort_sql("v.metrics", "val auc", params) == "(v.metrics->>$3::text)::float8"
    assert label_sort_sql("v.labels", "team", params) == "(v.labels->>$4::text)"
    assert params.values == ["val auc", "team"]


_ROW_VALUE = st.one_of(st.none(), st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(
    spec=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=3),
    id_descending=st.booleans(),
    rows=st.lists(st.tuples(_ROW_VALUE, _ROW_VALUE, _ROW_VALUE), max_size=25),
    page_size=st.integers(1, 4),
)
def test_keyset_pages_match_full_ordering(
    spec: list[tuple[bool, bool]],
    id_descending: bool,
    rows: list[tuple[int | None, int | None, int | None]],
    page_size: int,
) -> None:
    """Evaluates the generated SQL in SQLite: walking pages must reproduce the full ORDER BY."""
    cols = [SortColumn(f"c{i}", desc, nullable) for i, (desc, nullable) in enumerate(spec)]
    cols.append(SortColumn("id", id_descending, False))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (c0, c1, c2, id INTEGER PRIMARY KEY)")
    for row_id, row in enumerate(rows):
        # Non-nullable columns get no NULLs, as the caller promises.
        values = [0 if v is None and not (i < len(spec) and spec[i][1]) else v for i, v in enumerate(row)]
        db.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (*values, row_id))
    select = f"SELECT {', '.join(c.sql for c in cols)} FROM t"
    expected = [r[-1] for r in db.execute(f"{select} {order_clause(cols)}")]
    seen: list[int] = []
    last: list[object] | None = None
    while True:
        params = Params()
        where = "" if last is None else f"WHERE {keyset_condition(cols, last, params)}"
        sql = re.sub(r"\$(\d+)", r"?\1", f"{select} {where} {order_clause(cols)} LIMIT {page_size}")
        page = db.execute(sql, params.values).fetchall()
        seen.extend(r[-1] for r in page)
        if len(page) < page_size:
            break
        last = list(page[-1])
    assert seen == expected
