"""Keyset-paginated SELECTs shared by the repositories."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from modelreg_server.domain.filtering import Node
from modelreg_server.domain.ordering import OrderKey
from modelreg_server.storage.db import Connection
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


@dataclass(frozen=True)
class ListingSpec:
    """How one resource is listed: its columns and source, filterable and sortable fields, tiebreaker."""

    columns: str
    source: str
    filter_fields: Mapping[str, FieldSpec]
    sort_fields: Mapping[str, tuple[str, bool]]  # name -> (sql, nullable)
    labels_column: str
    metrics_column: str | None
    tiebreak: Sequence[str]

    def sortable(self, path: tuple[str, ...]) -> bool:
        """Whether order_by may name this path."""
        if len(path) == 1:
            return path[0] in self.sort_fields
        return len(path) >= 2 and (
            path[0] == "labels" or (path[0] == "metrics" and bool(self.metrics_column))
        )


@dataclass(frozen=True)
class PageRows:
    """Rows of one page and the sort values of its last row when more rows follow."""

    rows: list[asyncpg.Record]
    cursor: list[object] | None


def _sort_columns(spec: ListingSpec, order: Sequence[OrderKey], params: Params) -> list[SortColumn]:
    cols: list[SortColumn] = []
    for key in order:
        head, rest = key.path[0], ".".join(key.path[1:])
        if head == "labels" and rest:
            cols.append(SortColumn(label_sort_sql(spec.labels_column, rest, params), key.descending, True))
        elif head == "metrics" and rest and spec.metrics_column:
            cols.append(SortColumn(metric_sort_sql(spec.metrics_column, rest, params), key.descending, True))
        else:
            sql, nullable = spec.sort_fields[head]
            cols.append(SortColumn(sql, key.descending, nullable))
    # The tiebreaker follows the direction of the last key so single-direction orders stay index-friendly.
    last_desc = order[-1].descending if order else False
    cols.extend(SortColumn(sql, last_desc, False) for sql in spec.tiebreak)
    return cols


async def fetch_page(
    conn: Connection,
    spec: ListingSpec,
    *,
    where: Callable[[Params], list[str]],
    filter_node: Node | None,
    order: Sequence[OrderKey],
    after: Sequence[object] | None,
    limit: int,
) -> PageRows:
    """Runs one page of a listing: WHERE fixed conditions AND filter AND after-cursor, ORDER BY, LIMIT."""
    params = Params()
    conditions = where(params)
    if filter_node is not None:
        conditions.append(compile_filter(filter_node, spec.filter_fields, params))
    cols = _sort_columns(spec, order, params)
    if after is not None:
        conditions.append(keyset_condition(cols, after, params))
    keys = ", ".join(f"{col.sql} AS _k{i}" for i, col in enumerate(cols))
    sql = f"SELECT {spec.columns}, {keys} FROM {spec.source}"
    if conditions:
        sql += " WHERE " + " AND ".join(f"({c})" for c in conditions)
    sql += f" {order_clause(cols)} LIMIT {int(limit) + 1}"
    rows = await conn.fetch(sql, *params.values)
    if len(rows) <= limit:
        return PageRows(list(rows), None)
    page = list(rows[:limit])
    last = page[-1]
    return PageRows(page, [last[f"_k{i}"] for i in range(len(cols))])
