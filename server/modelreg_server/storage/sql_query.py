"""Compiles parsed filters and sort orders to parameterised PostgreSQL (asyncpg `$n` placeholders).

Client input only ever travels as parameter values: the SQL text is assembled from our own column
expressions, fixed operators and placeholders.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from modelreg_server.domain.filtering import And, Comparison, FilterError, Node, Not, Or, Value

_COMPARE = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1
_LIKE_ESCAPE = "ESCAPE '\\'"


class Params:
    """Collects query parameters and hands out their placeholders.

    `offset` is the number of placeholders the query already uses before these ($1..$offset).
    """

    def __init__(self, offset: int = 0) -> None:
        if offset < 0:
            raise ValueError("offset must not be negative")
        self.offset = offset
        self.values: list[object] = []

    def add(self, value: object) -> str:
        """Appends `value` and returns its placeholder, e.g. `$3`."""
        self.values.append(value)
        return f"${self.offset + len(self.values)}"


@dataclass(frozen=True)
class FieldSpec:
    """How a filterable field maps to SQL; `column` is trusted SQL written by us."""

    kind: Literal["string", "int", "double", "timestamp", "enum", "labels", "metrics"]
    column: str
    enum_values: Mapping[str, int] | None = None


@dataclass(frozen=True)
class SortColumn:
    """One ORDER BY expression (trusted SQL) with its direction and whether it can be NULL."""

    sql: str
    descending: bool
    nullable: bool


def compile_filter(node: Node, fields: Mapping[str, FieldSpec], params: Params) -> str:
    """Compiles a parsed filter to a parenthesised boolean SQL expression.

    Raises FilterError for unknown fields and values or operators a field does not accept.
    """
    if isinstance(node, Comparison):
        return _compile_comparison(node, fields, params)
    if isinstance(node, And):
        return _join(" AND ", [compile_filter(item, fields, params) for item in node.items], "TRUE")
    if isinstance(node, Or):
        return _join(" OR ", [compile_filter(item, fields, params) for item in node.items], "FALSE")
    if isinstance(node, Not):
        # A comparison against a missing label or metric is NULL; NOT of it must match those rows.
        return f"(NOT COALESCE({compile_filter(node.item, fields, params)}, false))"
    raise TypeError(f"not a filter node: {node!r}")


def order_clause(cols: Sequence[SortColumn]) -> str:
    """Renders `ORDER BY ...` for `cols`, with NULLs of nullable columns always sorting last."""
    if not cols:
        raise ValueError("at least one sort column is required")
    items: list[str] = []
    for col in cols:
        if col.nullable:
            items.append(f"({col.sql} IS NULL) ASC")
        items.append(f"{col.sql} {'DESC' if col.descending else 'ASC'}")
    return "ORDER BY " + ", ".join(items)


def keyset_condition(cols: Sequence[SortColumn], last: Sequence[object], params: Params) -> str:
    """SQL condition: the row sorts strictly after the row whose sort values were `last`.

    Consistent with `order_clause`; the final column(s) must form a unique, non-null tiebreaker.
    """
    if not cols or len(cols) != len(last):
        raise ValueError("keyset needs one value per sort column")
    for col, value in zip(cols, last, strict=True):
        if value is None and not col.nullable:
            raise ValueError(f"sort column {col.sql} is not nullable but the keyset value is None")
    directions = {col.descending for col in cols}
    if len(directions) == 1 and not any(col.nullable for col in cols):
        op = "<" if cols[0].descending else ">"
        placeholders = [params.add(value) for value in last]
        if len(cols) == 1:
            return f"({cols[0].sql} {op} {placeholders[0]})"
        return f"(({', '.join(col.sql for col in cols)}) {op} ({', '.join(placeholders)}))"
    optional = [None if value is None else params.add(value) for value in last]
    branches: list[str] = []
    for i, col in enumerate(cols):
        after = _strictly_after(col, optional[i])
        if after is None:
            continue
        prefix = [_same_as(cols[j], optional[j]) for j in range(i)]
        branches.append(_join(" AND ", [*prefix, after], "TRUE"))
    return _join(" OR ", branches, "FALSE")


def metric_sort_sql(column: str, key: str, params: Params) -> str:
    """Sort expression for `metrics.KEY`: the metric as float8, NULL when missing."""
    return f"({column}->>{params.add(key)}::text)::float8"


def label_sort_sql(column: str, key: str, params: Params) -> str:
    """Sort expression for `labels.KEY`: the label value as text, NULL when missing."""
    return f"({column}->>{params.add(key)}::text)"


def _join(separator: str, parts: Sequence[str], empty: str) -> str:
    if not parts:
        return empty
    if len(parts) == 1:
        return parts[0]
    return "(" + separator.join(parts) + ")"


def _strictly_after(col: SortColumn, placeholder: str | None) -> str | None:
    """Condition for `col` sorting after `placeholder`'s value; None when nothing can (NULLs are last)."""
    if placeholder is None:
        return None
    op = "<" if col.descending else ">"
    if col.nullable:
        return f"({col.sql} IS NULL OR {col.sql} {op} {placeholder})"
    return f"({col.sql} {op} {placeholder})"


def _same_as(col: SortColumn, placeholder: str | None) -> str:
    if placeholder is None:
        return f"({col.sql} IS NULL)"
    if col.nullable:
        return f"({col.sql} IS NOT DISTINCT FROM {placeholder})"
    return f"({col.sql} = {placeholder})"


def _compile_comparison(cmp: Comparison, fields: Mapping[str, FieldSpec], params: Params) -> str:
    name = cmp.path[0]
    spec = fields.get(name)
    if spec is None:
        raise FilterError(
            f"unknown field {name!r} at position {cmp.position}; "
            f"filterable fields: {', '.join(sorted(fields))}",
            cmp.position,
        )
    if cmp.op not in _COMPARE and cmp.op != ":":
        raise FilterError(f"unknown operator {cmp.op!r} at position {cmp.position}", cmp.position)
    if spec.kind == "labels":
        return _compile_labels(cmp, spec.column, params)
    if spec.kind == "metrics":
        return _compile_metrics(cmp, spec.column, params)
    if len(cmp.path) > 1:
        raise FilterError(f"field {name!r} has no subfields at position {cmp.position}", cmp.position)
    if spec.kind == "string":
        return _compile_string(cmp, spec.column, params)
    if spec.kind == "enum":
        return _compile_enum(cmp, spec, params)
    if cmp.op == ":":
        raise _bad_operator(cmp)
    sql_op = _COMPARE[cmp.op]
    if spec.kind == "int":
        return f"({spec.column} {sql_op} {params.add(_integer(cmp))}::bigint)"
    if spec.kind == "double":
        return f"({spec.column} {sql_op} {params.add(_double(cmp))}::float8)"
    return f"({spec.column} {sql_op} {params.add(_timestamp(cmp))}::timestamptz)"


def _compile_string(cmp: Comparison, column: str, params: Params) -> str:
    text = cmp.value.text
    if cmp.op == ":":
        if cmp.value.kind == "star":
            return f"(COALESCE({column}, '') <> '')"
        return f"({column} LIKE {params.add('%' + _escape_like(text) + '%')} {_LIKE_ESCAPE})"
    if cmp.op == "=" and text.endswith("*"):
        return f"({column} LIKE {params.add(_escape_like(text[:-1]) + '%')} {_LIKE_ESCAPE})"
    if cmp.op == "!=":
        return f"({column} IS DISTINCT FROM {params.add(text)})"
    return f"({column} {_COMPARE[cmp.op]} {params.add(text)})"


def _compile_labels(cmp: Comparison, column: str, params: Params) -> str:
    text = cmp.value.text
    if len(cmp.path) == 1:
        if cmp.op == ":" and cmp.value.kind != "star":
            return f"({column} ? {params.add(text)}::text)"
        raise _needs_key(cmp)
    key = ".".join(cmp.path[1:])
    if cmp.op == ":" and cmp.value.kind == "star":
        return f"({column} ? {params.add(key)}::text)"
    if cmp.op == "=" and not text.endswith("*"):
        # Containment can use the GIN index on the labels column.
        return f"({column} @> {params.add({key: text})}::jsonb)"
    value_sql = f"({column}->>{params.add(key)}::text)"
    if cmp.op == ":":
        return f"({value_sql} LIKE {params.add('%' + _escape_like(text) + '%')} {_LIKE_ESCAPE})"
    if cmp.op == "=":
        return f"({value_sql} LIKE {params.add(_escape_like(text[:-1]) + '%')} {_LIKE_ESCAPE})"
    if cmp.op == "!=":
        return f"({value_sql} IS DISTINCT FROM {params.add(text)})"
    return f"({value_sql} {_COMPARE[cmp.op]} {params.add(text)})"


def _compile_metrics(cmp: Comparison, column: str, params: Params) -> str:
    if len(cmp.path) == 1:
        if cmp.op == ":" and cmp.value.kind != "star":
            return f"({column} ? {params.add(cmp.value.text)}::text)"
        raise _needs_key(cmp)
    key = ".".join(cmp.path[1:])
    if cmp.op == ":":
        if cmp.value.kind != "star":
            raise FilterError(
                f"use '{cmp.path[0]}.KEY:*' to test whether a metric exists (position {cmp.position})",
                cmp.position,
            )
        return f"({column} ? {params.add(key)}::text)"
    value_sql = f"({column}->>{params.add(key)}::text)::float8"
    return f"({value_sql} {_COMPARE[cmp.op]} {params.add(_double(cmp))}::float8)"


def _compile_enum(cmp: Comparison, spec: FieldSpec, params: Params) -> str:
    if cmp.op not in ("=", "!="):
        raise _bad_operator(cmp)
    names = spec.enum_values or {}
    number = _enum_lookup(names, cmp.value)
    if number is None:
        choices = ", ".join(sorted(names))
        raise FilterError(
            f"invalid value {cmp.value.text!r} for field {cmp.path[0]!r} at position {cmp.value.position}; "
            f"expected one of: {choices}",
            cmp.value.position,
        )
    return f"({spec.column} {_COMPARE[cmp.op]} {params.add(number)})"


def _enum_lookup(names: Mapping[str, int], value: Value) -> int | None:
    """Finds `value` by full name or by the name without the common prefix (e.g. `STAGE_`), ignoring case."""
    if value.kind not in ("word", "string") or not names:
        return None
    wanted = value.text.upper()
    prefix = _common_prefix(list(names))
    for name, number in names.items():
        if wanted in (name.upper(), name[len(prefix) :].upper()):
            return number
    return None


def _common_prefix(names: list[str]) -> str:
    """The longest shared prefix ending in `_` (so `STAGE_PRODUCTION` alone still yields `STAGE_`)."""
    shortest, longest = min(names), max(names)
    size = 0
    while size < len(shortest) and shortest[size] == longest[size]:
        size += 1
    return shortest[: shortest.rfind("_", 0, size) + 1]


def _integer(cmp: Comparison) -> int:
    value = cmp.value
    if value.kind != "number" or not _INTEGER.fullmatch(value.text):
        raise FilterError(
            f"field {cmp.path[0]!r} expects an integer, got {value.text!r} at position {value.position}",
            value.position,
        )
    try:
        number = int(value.text)
    except ValueError:  # more digits than Python converts by default
        number = _BIGINT_MAX + 1
    if not _BIGINT_MIN <= number <= _BIGINT_MAX:
        raise FilterError(f"integer out of range at position {value.position}", value.position)
    return number


def _double(cmp: Comparison) -> float:
    value = cmp.value
    if value.kind != "number":
        raise FilterError(
            f"field {'.'.join(cmp.path)!r} expects a number, got {value.text!r} at position {value.position}",
            value.position,
        )
    number = float(value.text)
    if not math.isfinite(number):
        raise FilterError(f"number out of range at position {value.position}", value.position)
    return number


def _timestamp(cmp: Comparison) -> datetime:
    value = cmp.value
    text = value.text
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text) if value.kind in ("string", "word") else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise FilterError(
            f"field {cmp.path[0]!r} expects an RFC 3339 timestamp with a time zone, e.g. "
            f'"2024-05-01T12:00:00Z", got {value.text!r} at position {value.position}',
            value.position,
        )
    return parsed


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _needs_key(cmp: Comparison) -> FilterError:
    name = cmp.path[0]
    return FilterError(
        f"field {name!r} needs a key at position {cmp.position}, "
        f"e.g. '{name}.KEY {cmp.op} ...' or '{name}:KEY'",
        cmp.position,
    )


def _bad_operator(cmp: Comparison) -> FilterError:
    return FilterError(
        f"operator {cmp.op!r} is not supported for field {cmp.path[0]!r} at position {cmp.position}",
        cmp.position,
    )
