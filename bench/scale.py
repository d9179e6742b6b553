"""Scale benchmark: query latency and plans as the catalog grows to 100k models and 1M versions.

One fresh database grows through the sizes given by `--models` and `--versions` (paired, ascending). Each
step bulk-loads the rows it adds with COPY (asyncpg `copy_records_to_table`): models with labels, owner and
a consistent `latest_version`; versions with labels, metrics, lineage/schema/dependency metadata (jsonb and
the serialized `details` column, built by the server's own conversion code) and stages (a PRODUCTION latest
version for 30% of the models, STAGING for 10%, some archived older versions); and one `prod` alias per
model on its latest version, with `registry_revision` moved past the aliases' revisions. Triggers, foreign
keys and CHECKs stay on; the secondary indexes are dropped for the load and rebuilt after it (as pg_restore
does), then the tables are VACUUM ANALYZEd. Event, history and audit tables get no rows: nothing happened to
seeded data. Ten "wide" models hold 10% of the versions (1% each), the others about ten each.

At each size a `modelreg-server` is started and every query runs for `--seconds` with one client (latency,
not throughput): ListModels (page 50), ListModels filtered by a label, ListModelVersions of a wide model
filtered by a metric and a label, ListModelVersions of all models filtered by label and stage, and by a
metric, GetModelVersion of a random version, ResolveAlias of a random model's alias (a cache miss nearly
always: the DB path). The SQL each one runs, built by the repositories' own query builders, is then
EXPLAINed (ANALYZE, BUFFERS): which indexes it uses, whether anything is scanned sequentially, buffers
touched, execution time.

Target: cost grows no worse than logarithmically with the catalog, and every plan uses an index.

Usage: python bench/scale.py [--models 2000,20000 --versions 20000,200000] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Running as `python bench/scale.py` puts bench/ (not the repository) on sys.path.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import grpc

from bench.common import (
    CALL_TIMEOUT_S,
    LoadRunner,
    Op,
    bearer,
    bootstrap_admin_token,
    emit_json,
    log,
    machine_info,
    provision_database,
    ratio,
    sigterm_as_interrupt,
    start_registry_server,
    utc_timestamp,
)
from modelreg.v1 import lifecycle_service_pb2 as lpb
from modelreg.v1 import lifecycle_service_pb2_grpc as lpb_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1 import model_registry_service_pb2_grpc as pb_grpc
from modelreg_server.api.convert import new_version_from_proto
from modelreg_server.domain.catalog import DEFAULT_MODEL_ORDER, DEFAULT_VERSION_ORDER
from modelreg_server.domain.filtering import parse_filter
from modelreg_server.storage import lifecycle_repo, model_repo, version_repo
from modelreg_server.storage.db import create_pool

Metadata = tuple[tuple[str, str], ...]

WIDE_MODELS = 10
WIDE_SHARE = 0.10
ALIAS = "prod"
TEAMS = 50
ENVIRONMENTS = (("prod", 0.2), ("staging", 0.3), ("dev", 0.5))
FRAMEWORKS = ("xgboost", "torch", "sklearn")
COPY_CHUNK = 50_000
SEED_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
TABLES = ("models", "model_versions", "aliases")

MODELS_LABEL_FILTER = 'labels.team = "team-7"'
WIDE_VERSIONS_FILTER = 'metrics.auc > 0.9 AND labels.env = "prod"'
ALL_VERSIONS_FILTER = 'labels.env = "prod" AND stage = STAGE_PRODUCTION'
ALL_VERSIONS_METRIC_FILTER = "metrics.auc > 0.99"


def model_id(index: int) -> str:
    """The index-th seeded model; the first WIDE_MODELS are the wide ones."""
    return f"m{index:07d}"


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """One step of the growth."""

    models: int
    versions: int

    def wide_versions(self) -> int:
        """Versions of each wide model."""
        return max(1, int(self.versions * WIDE_SHARE / WIDE_MODELS))

    def regular_versions(self) -> int:
        """Versions of each other model."""
        regular = self.models - WIDE_MODELS
        return max(1, round((self.versions - WIDE_MODELS * self.wide_versions()) / regular)) if regular else 0


@dataclass
class Seeded:
    """What the database holds so far."""

    models: int = 0
    versions: dict[int, int] | None = None  # model index -> versions, for the wide models
    regular: dict[int, int] | None = None  # first model index of a step -> versions per model from there
    revision: int = 0
    rows: int = 0

    def version_count(self, index: int) -> int:
        """How many versions model `index` has."""
        assert self.versions is not None and self.regular is not None
        if index in self.versions:
            return self.versions[index]
        start = max(s for s in self.regular if s <= index)
        return self.regular[start]


def _templates() -> list[tuple[str, str, str, str, bytes]]:
    """(lineage, input_schema, output_schema, dependencies) as jsonb text and the details bytes, as the
    server stores them for a few realistic registrations."""
    import json

    templates = []
    for variant in range(4):
        mv = model_pb2.ModelVersion(
            lineage=model_pb2.Lineage(
                datasets=[
                    model_pb2.DatasetRef(
                        uri=f"s3://datasets/risk/v{variant}/train.parquet",
                        digest="sha256:" + f"{variant:x}" * 64,
                        role="train",
                    )
                ],
                code=model_pb2.CodeRef(
                    repository="https://git.example.com/risk/model",
                    commit=f"{variant:x}" * 40,
                    path="train.py",
                ),
                parameters={"max_depth": str(4 + variant), "eta": "0.1"},
            ),
            input_schema=model_pb2.Schema(
                fields=[model_pb2.SchemaField(name=f"f{i}", dtype="float32", shape=[-1]) for i in range(10)]
            ),
            output_schema=model_pb2.Schema(fields=[model_pb2.SchemaField(name="score", dtype="float32")]),
            dependencies=model_pb2.Dependencies(
                python_version="3.11", packages=[model_pb2.PackageRequirement(name="numpy", version="2.2.1")]
            ),
        )
        new = new_version_from_proto(mv)
        templates.append(
            (
                json.dumps(new.lineage),
                json.dumps(new.input_schema),
                json.dumps(new.output_schema),
                json.dumps(new.dependencies),
                new.details,
            )
        )
    return templates


def _environment(rng: random.Random) -> str:
    draw = rng.random()
    for name, share in ENVIRONMENTS:
        if draw < share:
            return name
        draw -= share
    return ENVIRONMENTS[-1][0]


def _version_rows(
    rng: random.Random,
    plan: list[tuple[int, int, int]],
    templates: list[tuple[str, str, str, str, bytes]],
    clock: list[int],
) -> Iterator[tuple[Any, ...]]:
    """model_versions rows for (model index, first version, last version) triples."""
    labels = {
        (env, team, fw): f'{{"env": "{env}", "team": "team-{team}", "framework": "{fw}"}}'
        for env, _ in ENVIRONMENTS
        for team in range(TEAMS)
        for fw in FRAMEWORKS
    }
    for index, first, last in plan:
        name = model_id(index)
        team = index % TEAMS
        production = index % 10 < 3
        staging = index % 10 == 3
        for version in range(first, last + 1):
            clock[0] += 1
            at = SEED_EPOCH + timedelta(milliseconds=clock[0])
            lineage, input_schema, output_schema, dependencies, details = templates[version % len(templates)]
            if version == last:
                stage = 3 if production else 2 if staging else 1
            else:
                stage = 4 if rng.random() < 0.2 else 1
            env = _environment(rng)
            yield (
                name,
                version,
                f"run-{index}-{version}",
                "",
                labels[(env, team, FRAMEWORKS[version % 3])],
                f'{{"auc": {rng.uniform(0.5, 1.0):.5f}, "accuracy": {rng.uniform(0.7, 1.0):.5f}, '
                f'"loss": {rng.uniform(0.0, 1.0):.5f}}}',
                lineage,
                input_schema,
                output_schema,
                dependencies,
                stage,
                "seed",
                at,
                at,
                details,
            )


_VERSION_COLUMNS = [
    "model_id",
    "version",
    "run_id",
    "description",
    "labels",
    "metrics",
    "lineage",
    "input_schema",
    "output_schema",
    "dependencies",
    "stage",
    "creator",
    "create_time",
    "update_time",
    "details",
]


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _secondary_indexes(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, definition) of the indexes of the seeded tables that no constraint owns."""
    rows = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[]) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        list(TABLES),
    )
    return [(r["indexname"], r["indexdef"]) for r in rows]


async def grow(url: str, size: Size, seeded: Seeded) -> dict[str, Any]:
    """Adds the models, versions and aliases that take the database from `seeded` to `size`."""
    rng = random.Random(size.versions)
    templates = _templates()
    if seeded.versions is None:
        seeded.versions, seeded.regular = {}, {}
    assert seeded.versions is not None and seeded.regular is not None
    wide_target = size.wide_versions()
    regular = size.regular_versions()
    # (model index, first new version, last version) of every model that gains versions.
    plan: list[tuple[int, int, int]] = []
    for index in range(min(WIDE_MODELS, size.models)):
        have = seeded.versions.get(index, 0)
        if wide_target > have:
            plan.append((index, have + 1, wide_target))
            seeded.versions[index] = wide_target
    first_new = max(seeded.models, WIDE_MODELS)
    if size.models > first_new:
        seeded.regular[first_new] = regular
        plan.extend((i, 1, regular) for i in range(first_new, size.models))
    new_models = range(seeded.models, size.models)
    new_versions = sum(last - first + 1 for _, first, last in plan)
    conn = await asyncpg.connect(url, timeout=30)
    timings: dict[str, float] = {}
    try:
        began = time.monotonic()
        indexes = await _secondary_indexes(conn)
        for name, _ in indexes:
            await conn.execute(f'DROP INDEX "{name}"')
        timings["drop_indexes_s"] = time.monotonic() - began

        began = time.monotonic()
        latest = {index: last for index, _, last in plan}
        model_rows = [
            (
                model_id(i),
                f"seeded model {i}",
                f'{{"team": "team-{i % TEAMS}", "domain": "{("risk", "ads", "search")[i % 3]}"}}',
                f"team-{i % TEAMS}",
                latest[i],
                SEED_EPOCH + timedelta(seconds=i),
                SEED_EPOCH + timedelta(seconds=i),
            )
            for i in new_models
        ]
        for chunk in _chunks(iter(model_rows), COPY_CHUNK):
            await conn.copy_records_to_table(
                "models",
                records=chunk,
                columns=[
                    "model_id",
                    "description",
                    "labels",
                    "owner_team",
                    "latest_version",
                    "create_time",
                    "update_time",
                ],
            )
        # Wide models that existed already gain versions: move their counters, and their PRODUCTION version
        # back to STAGING (the new latest version takes PRODUCTION; a model has at most one).
        for index, _, last in plan:
            if index < seeded.models:
                await conn.execute(
                    "UPDATE models SET latest_version = $2 WHERE model_id = $1", model_id(index), last
                )
                await conn.execute(
                    "UPDATE model_versions SET stage = 2 WHERE model_id = $1 AND stage = 3", model_id(index)
                )
        timings["models_s"] = time.monotonic() - began

        began = time.monotonic()
        clock = [seeded.rows]
        for chunk in _chunks(_version_rows(rng, plan, templates, clock), COPY_CHUNK):
            await conn.copy_records_to_table("model_versions", records=chunk, columns=_VERSION_COLUMNS)
        seeded.rows = clock[0]
        timings["versions_s"] = time.monotonic() - began

        # One `prod` alias per model on its latest version (moved for wide models that grew).
        began = time.monotonic()
        alias_rows = []
        moved = []
        for index, _, last in plan:
            seeded.revision += 1
            if index < seeded.models:
                moved.append((model_id(index), last, seeded.revision))
            else:
                at = SEED_EPOCH + timedelta(days=400)
                alias_rows.append((model_id(index), ALIAS, last, seeded.revision, "seed", at, at))
        for chunk in _chunks(iter(alias_rows), COPY_CHUNK):
            await conn.copy_records_to_table(
                "aliases",
                records=chunk,
                columns=["model_id", "alias", "version", "revision", "updater", "create_time", "update_time"],
            )
        for name, version, revision in moved:
            await conn.execute(
                "UPDATE aliases SET version = $3, revision = $4 WHERE model_id = $1 AND alias = $2",
                name,
                ALIAS,
                version,
                revision,
            )
        await conn.execute("UPDATE registry_revision SET value = GREATEST(value, $1)", seeded.revision)
        timings["aliases_s"] = time.monotonic() - began

        began = time.monotonic()
        for _, definition in indexes:
            await conn.execute(definition)
        timings["rebuild_indexes_s"] = time.monotonic() - began

        began = time.monotonic()
        for table in TABLES:
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        timings["vacuum_analyze_s"] = time.monotonic() - began
        totals = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM models) AS models,"
            " (SELECT count(*) FROM model_versions) AS versions,"
            " (SELECT count(*) FROM aliases) AS aliases,"
            " pg_total_relation_size('model_versions') AS versions_bytes"
        )
    finally:
        await conn.close()
    seeded.models = max(seeded.models, size.models)
    load_s = timings["models_s"] + timings["versions_s"] + timings["aliases_s"]
    total_s = sum(timings.values())
    assert totals is not None
    return {
        "added_models": len(model_rows),
        "added_versions": new_versions,
        "models": totals["models"],
        "versions": totals["versions"],
        "aliases": totals["aliases"],
        "model_versions_table_mib": round(totals["versions_bytes"] / 2**20, 1),
        "secondary_indexes_rebuilt": len(indexes),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "copy_rows_per_s": round((len(model_rows) + new_versions + len(plan)) / load_s) if load_s else None,
        "versions_per_s_including_indexes": round(new_versions / total_s) if total_s else None,
    }


# --------------------------------------------------------------------------------------------------
# Queries over RPC
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryWorkload:
    """One query kind, repeated with random models and versions of the current size."""

    kind: str
    models: int
    wide_versions: int
    regular_start: tuple[tuple[int, int], ...]  # (first model index, versions per model) steps
    metadata: Metadata

    def _versions_of(self, index: int) -> int:
        if index < WIDE_MODELS:
            return self.wide_versions
        return max((count for start, count in self.regular_start if start <= index), default=1)

    def caller(self, channel: grpc.aio.Channel, client: int, rng: random.Random) -> Op:
        """The op of one client."""
        registry = pb_grpc.ModelRegistryServiceStub(channel)
        serving = lpb_grpc.ServingServiceStub(channel)
        meta = self.metadata
        call: Callable[[], Awaitable[object]]
        if self.kind == "list_models":
            request = pb.ListModelsRequest(page_size=50)

            def call() -> Awaitable[object]:
                return registry.ListModels(request, timeout=CALL_TIMEOUT_S, metadata=meta)

        elif self.kind == "search_models_label":
            request_f = pb.ListModelsRequest(page_size=50, filter=MODELS_LABEL_FILTER)

            def call() -> Awaitable[object]:
                return registry.ListModels(request_f, timeout=CALL_TIMEOUT_S, metadata=meta)

        elif self.kind in ("search_versions_wide", "search_versions_all", "search_versions_all_metric"):

            def call() -> Awaitable[object]:
                return registry.ListModelVersions(
                    _versions_request(self.kind, rng), timeout=CALL_TIMEOUT_S, metadata=meta
                )

        elif self.kind == "get_version":

            def call() -> Awaitable[object]:
                index = rng.randrange(self.models)
                version = rng.randint(1, self._versions_of(index))
                request = pb.GetModelVersionRequest(name=f"models/{model_id(index)}/versions/{version}")
                return registry.GetModelVersion(request, timeout=CALL_TIMEOUT_S, metadata=meta)

        else:

            def call() -> Awaitable[object]:
                name = f"models/{model_id(rng.randrange(self.models))}/aliases/{ALIAS}"
                return serving.ResolveAlias(
                    lpb.ResolveAliasRequest(name=name), timeout=CALL_TIMEOUT_S, metadata=meta
                )

        async def op() -> object:
            return await call()

        return op


def _versions_request(kind: str, rng: random.Random) -> pb.ListModelVersionsRequest:
    if kind == "search_versions_wide":
        return pb.ListModelVersionsRequest(
            parent=f"models/{model_id(rng.randrange(WIDE_MODELS))}", page_size=50, filter=WIDE_VERSIONS_FILTER
        )
    text = ALL_VERSIONS_FILTER if kind == "search_versions_all" else ALL_VERSIONS_METRIC_FILTER
    return pb.ListModelVersionsRequest(parent="models/-", page_size=50, filter=text)


KINDS = (
    "list_models",
    "search_models_label",
    "search_versions_wide",
    "search_versions_all",
    "search_versions_all_metric",
    "get_version",
    "resolve_alias",
)
RPC_OF = {
    "list_models": "ListModels",
    "search_models_label": "ListModels",
    "search_versions_wide": "ListModelVersions",
    "search_versions_all": "ListModelVersions",
    "search_versions_all_metric": "ListModelVersions",
    "get_version": "GetModelVersion",
    "resolve_alias": "ResolveAlias",
}
FILTER_OF = {
    "search_models_label": MODELS_LABEL_FILTER,
    "search_versions_wide": WIDE_VERSIONS_FILTER,
    "search_versions_all": ALL_VERSIONS_FILTER,
    "search_versions_all_metric": ALL_VERSIONS_METRIC_FILTER,
}


# --------------------------------------------------------------------------------------------------
# EXPLAIN of the repositories' SQL
# --------------------------------------------------------------------------------------------------


class _Captured(Exception):
    """Raised by the capturing connection once it has the statement."""

    def __init__(self, sql: str, args: Sequence[object]) -> None:
        super().__init__(sql)
        self.sql = sql
        self.params = list(args)


class _CapturingConnection:
    """Stands in for a connection: records the first statement a repository function sends."""

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        raise _Captured(sql, args)

    async def fetchrow(self, sql: str, *args: object) -> Any:
        raise _Captured(sql, args)

    async def fetchval(self, sql: str, *args: object) -> Any:
        raise _Captured(sql, args)


async def _capture(build: Callable[[Any], Awaitable[object]]) -> _Captured:
    try:
        await build(_CapturingConnection())
    except _Captured as captured:
        return captured
    raise RuntimeError("the repository function sent no statement")


async def _statement(kind: str, rng: random.Random, workload: QueryWorkload) -> _Captured:
    """The SQL (and parameters) the server runs for one call of `kind`, from the repositories."""
    if kind in ("list_models", "search_models_label"):
        node = parse_filter(FILTER_OF.get(kind, ""))
        return await _capture(
            lambda c: model_repo.list_page(
                c, filter_node=node, order=DEFAULT_MODEL_ORDER, after=None, limit=50
            )
        )
    if kind.startswith("search_versions"):
        request = _versions_request(kind, rng)
        model = None if request.parent == "models/-" else request.parent.removeprefix("models/")
        node = parse_filter(request.filter)
        return await _capture(
            lambda c: version_repo.list_page(
                c, model_id=model, filter_node=node, order=DEFAULT_VERSION_ORDER, after=None, limit=50
            )
        )
    index = rng.randrange(workload.models)
    if kind == "get_version":
        version = rng.randint(1, workload._versions_of(index))
        return await _capture(lambda c: version_repo.get(c, model_id(index), version))
    return await _capture(lambda c: lifecycle_repo.resolve_with_revision(c, model_id(index), ALIAS))


def _walk(node: dict[str, Any], depth: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    yield depth, node
    for child in node.get("Plans", []):
        yield from _walk(child, depth + 1)


_INDEX_NODES = ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
# One-row tables (the revision counter): a sequential scan of them is one page, not a missing index.
_ONE_ROW_TABLES = frozenset({"registry_revision", "audit_head"})


def summarize_plan(explained: list[dict[str, Any]]) -> dict[str, Any]:
    """Index use, sequential scans, buffers and times of an EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)."""
    top = explained[0]
    root = top["Plan"]
    lines = []
    indexes: list[str] = []
    seq_scans: list[str] = []
    for depth, node in _walk(root):
        kind = node["Node Type"]
        text = kind
        if "Index Name" in node:
            text += f" using {node['Index Name']}"
            indexes.append(node["Index Name"])
        if "Relation Name" in node:
            text += f" on {node['Relation Name']}"
            if kind == "Seq Scan" and node["Relation Name"] not in _ONE_ROW_TABLES:
                seq_scans.append(node["Relation Name"])
        text += f" (rows {node.get('Actual Rows')}, loops {node.get('Actual Loops')})"
        lines.append("  " * depth + text)
    return {
        "uses_index": any(n["Node Type"] in _INDEX_NODES for _, n in _walk(root)),
        "indexes": sorted(set(indexes)),
        "seq_scans": sorted(set(seq_scans)),
        "execution_ms": round(top["Execution Time"], 3),
        "planning_ms": round(top["Planning Time"], 3),
        "shared_buffers_hit": root.get("Shared Hit Blocks", 0),
        "shared_buffers_read": root.get("Shared Read Blocks", 0),
        "plan": lines,
    }


async def explain_all(url: str, workload_of: Callable[[str], QueryWorkload], samples: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of each kind's SQL, `samples` times with random arguments; the median
    execution and the plan of the first run."""
    pool = await create_pool(url, min_size=1, max_size=1)
    results: dict[str, Any] = {}
    try:
        async with pool.acquire() as conn:
            for kind in KINDS:
                rng = random.Random(7)
                runs = []
                for _ in range(samples):
                    captured = await _statement(kind, rng, workload_of(kind))
                    rows = await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + captured.sql, *captured.params
                    )
                    runs.append(summarize_plan(rows))
                first = runs[0]
                ordered = sorted(r["execution_ms"] for r in runs)
                results[kind] = {
                    **first,
                    "execution_ms_median": ordered[len(ordered) // 2],
                    "shared_buffers_median": sorted(
                        r["shared_buffers_hit"] + r["shared_buffers_read"] for r in runs
                    )[len(runs) // 2],
                    "sql": captured.sql if len(captured.sql) < 4000 else captured.sql[:4000] + " ...",
                }
    finally:
        await pool.close()
    return results


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _growth_between(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Per query, how p50, p99, execution time and buffers grew from one size to another, next to how
    log N and N grew."""
    n_first, n_last = first["catalog"]["versions"], last["catalog"]["versions"]
    out: dict[str, Any] = {
        "versions": [n_first, n_last],
        "n_ratio": ratio(n_last, n_first, 2),
        "log_n_ratio": round(math.log(n_last) / math.log(n_first), 3),
    }
    for kind in KINDS:
        a, b = first["queries"][kind], last["queries"][kind]
        ea, eb = first["explain"][kind], last["explain"][kind]
        buffers = ratio(max(1, eb["shared_buffers_median"]), max(1, ea["shared_buffers_median"]), 2)
        out[kind] = {
            "p50_ratio": ratio(b["p50_ms"], a["p50_ms"], 2),
            "p99_ratio": ratio(b["p99_ms"], a["p99_ms"], 2),
            "execution_ms_ratio": ratio(eb["execution_ms_median"], ea["execution_ms_median"], 2),
            "buffers_ratio": buffers,
            # Buffers touched are the machine-independent cost: within 2x the growth of log N counts as
            # logarithmic (a linear scan would grow like N).
            "no_worse_than_log": buffers is not None and buffers <= 2 * out["log_n_ratio"],
        }
    return out


def _growth(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Growth between each pair of consecutive sizes and from the smallest to the largest. The verdict
    uses the two largest sizes: below them the planner may still prefer plans that only suit small tables."""
    if len(steps) < 2:
        return {}
    return {
        "consecutive": [_growth_between(a, b) for a, b in itertools.pairwise(steps)],
        "smallest_to_largest": _growth_between(steps[0], steps[-1]),
        "verdict_between": [steps[-2]["catalog"]["versions"], steps[-1]["catalog"]["versions"]],
    }


def _log_verdict(growth: dict[str, Any]) -> dict[str, Any]:
    if not growth:
        return {"met": None}
    last = growth["consecutive"][-1]
    worse = sorted(kind for kind in KINDS if not last[kind]["no_worse_than_log"])
    return {"between_versions": growth["verdict_between"], "met": not worse, "exceptions": worse}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="2000,20000", help="models at each size (default 2000,20000)")
    parser.add_argument(
        "--versions", default="20000,200000", help="versions at each size (default 20000,200000)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per query (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each query")
    parser.add_argument("--explain-samples", type=int, default=5, help="EXPLAIN runs per query (default 5)")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    models = [int(m) for m in args.models.split(",") if m.strip()]
    versions = [int(v) for v in args.versions.split(",") if v.strip()]
    if len(models) != len(versions):
        parser.error("--models and --versions need the same number of sizes")
    sizes = [Size(m, v) for m, v in zip(models, versions, strict=True)]
    if any(s.models <= WIDE_MODELS or s.versions < s.models for s in sizes):
        parser.error(f"each size needs more than {WIDE_MODELS} models and at least one version per model")
    if sizes != sorted(sizes, key=lambda s: (s.models, s.versions)) or len({s.models for s in sizes}) != len(
        sizes
    ):
        parser.error("sizes must grow")
    args.sizes = sizes
    return args


def _migrate(url: str) -> None:
    argv = [sys.executable, "-m", "modelreg_server", "migrate", "--database-url", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"migrate failed: {done.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    args = _parse_args(argv)
    started = utc_timestamp()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="modelreg-bench-scale-"))
    steps: list[dict[str, Any]] = []
    succeeded = False
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            database = stack.enter_context(provision_database("modelreg_bench_scale"))
            _migrate(database.url)
            meta = bearer(bootstrap_admin_token(database.url, work))
            seeded = Seeded()
            for size in args.sizes:
                log(f"growing to {size.models} models / {size.versions} versions ...")
                load_before = os.getloadavg()[0]
                seeding = asyncio.run(grow(database.url, size, seeded))
                log(
                    f"seeded +{seeding['added_versions']} versions in "
                    f"{sum(seeding['seconds'].values()):.1f} s "
                    f"({seeding['copy_rows_per_s']} rows/s by COPY; {seeding['seconds']})"
                )
                regular = tuple(sorted((seeded.regular or {}).items()))

                def workload_of(
                    kind: str, size: Size = size, regular: tuple[tuple[int, int], ...] = regular
                ) -> QueryWorkload:
                    return QueryWorkload(kind, size.models, size.wide_versions(), regular, meta)

                with start_registry_server(database.url, work / f"server-{size.models}.log") as server:
                    runner = LoadRunner(
                        client_procs=1, channels=1, warmup_s=args.warmup, seconds=args.seconds
                    )
                    queries = {}
                    for kind in KINDS:
                        result = runner.run(workload_of(kind), server.address, 1).summary()
                        queries[kind] = {"rpc": RPC_OF[kind], "filter": FILTER_OF.get(kind, ""), **result}
                        log(
                            f"  {kind}: p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                            f"({result['ops']} calls, {result['errors']} errors)"
                        )
                    runner.close()
                explained = asyncio.run(explain_all(database.url, workload_of, args.explain_samples))
                for kind, plan in explained.items():
                    log(
                        f"  EXPLAIN {kind}: index {plan['uses_index']} {plan['indexes']} "
                        f"seq {plan['seq_scans']} "
                        f"{plan['execution_ms_median']} ms, {plan['shared_buffers_median']} buffers"
                    )
                steps.append(
                    {
                        "catalog": {
                            "models": seeding["models"],
                            "versions": seeding["versions"],
                            "aliases": seeding["aliases"],
                            "wide_model_versions": size.wide_versions(),
                        },
                        "seeding": seeding,
                        "loadavg_1m_before": round(load_before, 2),
                        "queries": queries,
                        "explain": explained,
                    }
                )
        succeeded = True
    finally:
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed or interrupted; logs kept in {work}")
    growth = _growth(steps)
    # Judged at the largest size: on small tables the planner rightly prefers sequential scans.
    largest = steps[-1]["explain"] if steps else {}
    unindexed = sorted(kind for kind, plan in largest.items() if not plan["uses_index"] or plan["seq_scans"])
    document = {
        "benchmark": "scale",
        "timestamp": started,
        "machine": {
            **machine,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "postgres": database.server_version,
            "postgres_source": database.source,
            "postgres_settings": database.settings,
        },
        "config": {
            "sizes": [[s.models, s.versions] for s in args.sizes],
            "seconds_per_query": args.seconds,
            "concurrency": 1,
            "explain_samples": args.explain_samples,
            "wide_models": WIDE_MODELS,
            "wide_share": WIDE_SHARE,
        },
        "steps": steps,
        "growth": growth,
        "targets": {
            "every_plan_uses_an_index_at_largest_size": {"met": not unindexed, "exceptions": unindexed},
            "cost_grows_no_worse_than_log": {
                "met": all(v["no_worse_than_log"] for k, v in growth.items() if k in KINDS)
                if growth
                else None
            },
        },
    }
    emit_json(document, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
