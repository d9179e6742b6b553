"""Catalog benchmark: CreateModelVersion, GetModelVersion and a filtered ListModelVersions.

Each workload runs at each concurrency (default 1 and 16 concurrent clients: asyncio tasks spread over a
few grpc.aio channels) for a fixed time after a warm-up, against one `modelreg-server` process on a fresh
PostgreSQL database, and again against the empty reference handler of `bench.empty_server` (a separate
process answering with a captured response of the same RPC, called with the same request-building and
response-parsing client code). Prints JSON: per workload and concurrency the ops, throughput, p50/p99,
errors, CPU use and the ratio to the empty handler; plus machine information.

Workloads:
  create         CreateModelVersion with realistic metadata (5 metrics, 3 labels, lineage with a dataset
                 and a code ref, a 10-field input schema, dependencies, request_id; no artifact), all on
                 one model
  create_spread  the same, client i registering on model i mod 16 (skipped at concurrency 1)
  get            GetModelVersion of a random version of a 5,000-version model
  list           ListModelVersions of that model, filter `metrics.auc > 0.9 AND labels.env = "prod"`,
                 page_size 50 (first page; about 1 version in 15 matches)

Usage: python bench/catalog.py [--seconds 10] [--out bench/results/catalog.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

# Running as `python bench/catalog.py` puts bench/ (not the repository) on sys.path.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.common import (
    CALL_TIMEOUT_S,
    CpuMeter,
    DbActivity,
    LoadResult,
    LoadRunner,
    Op,
    analyze_database,
    bearer,
    bootstrap_admin_token,
    emit_json,
    latency_summary,
    log,
    machine_info,
    pids_named,
    provision_database,
    ratio,
    sigterm_as_interrupt,
    start_empty_server,
    start_registry_server,
    utc_timestamp,
)
from bench.empty_server import method_path
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1 import model_registry_service_pb2_grpc as pb_grpc

Kind = Literal["create", "create_spread", "get", "list"]
KINDS: tuple[Kind, ...] = get_args(Kind)

LIST_MODEL = "bench-list"
CREATE_MODEL = "bench-create"
SPREAD_MODEL_PREFIX = "bench-spread-"
LIST_FILTER = 'metrics.auc > 0.9 AND labels.env = "prod"'
ENVIRONMENTS = ("prod", "staging", "dev")
RPC_OF: dict[Kind, str] = {
    "create": "CreateModelVersion",
    "create_spread": "CreateModelVersion",
    "get": "GetModelVersion",
    "list": "ListModelVersions",
}
# The empty handler's payload (captured response) per workload; both create workloads share one.
PAYLOAD_OF: dict[Kind, str] = {"create": "create", "create_spread": "create", "get": "get", "list": "list"}

_FEATURES = (
    ("amount", "float32"),
    ("currency", "string"),
    ("merchant_category", "int32"),
    ("hour_of_day", "int32"),
    ("days_since_last_txn", "float32"),
    ("card_age_days", "int64"),
    ("country_mismatch", "bool"),
    ("txn_count_24h", "int32"),
    ("avg_amount_30d", "float32"),
    ("device_embedding", "float32"),
)


def spread_model(index: int) -> str:
    """Name of the index-th model of the spread registration workload."""
    return f"{SPREAD_MODEL_PREFIX}{index:02d}"


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def version_request(model_id: str, rng: random.Random) -> pb.CreateModelVersionRequest:
    """A registration as a training pipeline would send it; auc and env drive the list filter's hit rate."""
    fields = [
        model_pb2.SchemaField(name=name, dtype=dtype, shape=[-1, 32] if name == "device_embedding" else [-1])
        for name, dtype in _FEATURES
    ]
    version = model_pb2.ModelVersion(
        run_id=f"run-{_hex(rng, 16)}",
        description="Nightly retrain on the last 90 days of card transactions.",
        labels={"env": rng.choice(ENVIRONMENTS), "team": "risk", "framework": "xgboost"},
        metrics={
            "auc": rng.uniform(0.5, 1.0),
            "accuracy": rng.uniform(0.8, 0.99),
            "precision": rng.uniform(0.6, 0.95),
            "recall": rng.uniform(0.5, 0.9),
            "f1": rng.uniform(0.55, 0.9),
        },
        lineage=model_pb2.Lineage(
            datasets=[
                model_pb2.DatasetRef(
                    uri="s3://datasets/risk/transactions/2026-01/train.parquet",
                    digest=f"sha256:{_hex(rng, 64)}",
                    role="train",
                )
            ],
            code=model_pb2.CodeRef(
                repository="https://git.example.com/risk/fraud-model", commit=_hex(rng, 40), path="train.py"
            ),
            parameters={"max_depth": "8", "eta": "0.1", "n_estimators": "400"},
        ),
        input_schema=model_pb2.Schema(fields=fields),
        output_schema=model_pb2.Schema(
            fields=[model_pb2.SchemaField(name="fraud_probability", dtype="float32", shape=[-1])]
        ),
        dependencies=model_pb2.Dependencies(
            python_version="3.11",
            packages=[
                model_pb2.PackageRequirement(name="xgboost", version="2.1.3"),
                model_pb2.PackageRequirement(name="numpy", version="2.2.1"),
                model_pb2.PackageRequirement(name="pandas", version="2.2.3"),
            ],
        ),
    )
    # No artifact_digest: the server checks it against S3, which would make this an artifact benchmark.
    # As the SDK does: every registration carries a fresh idempotency key.
    return pb.CreateModelVersionRequest(
        parent=f"models/{model_id}", model_version=version, request_id=uuid.uuid4().hex
    )


def get_request(versions: int, rng: random.Random) -> pb.GetModelVersionRequest:
    """GetModelVersion of a random existing version of the listing model."""
    return pb.GetModelVersionRequest(name=f"models/{LIST_MODEL}/versions/{rng.randint(1, versions)}")


def list_request(page_size: int) -> pb.ListModelVersionsRequest:
    """The filtered listing every list call sends."""
    return pb.ListModelVersionsRequest(parent=f"models/{LIST_MODEL}", page_size=page_size, filter=LIST_FILTER)


@dataclass(frozen=True)
class CatalogWorkload:
    """One catalog workload against the registry, or (`reference`) against the empty handler."""

    kind: Kind
    reference: bool
    versions: int
    spread_models: int
    page_size: int
    # Sent with every call, to the empty handler too, so both sides of the comparison carry it.
    metadata: tuple[tuple[str, str], ...]

    def _callable(
        self, channel: grpc.aio.Channel, request_type: Any, response_type: Any
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        if self.reference:
            return channel.unary_unary(
                method_path(PAYLOAD_OF[self.kind]),
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
        stub = pb_grpc.ModelRegistryServiceStub(channel)
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any] = getattr(stub, RPC_OF[self.kind])
        return method

    def caller(self, channel: grpc.aio.Channel, client: int, rng: random.Random) -> Op:
        """The op of one client: build a request, call, parse the response."""
        meta = self.metadata
        if self.kind in ("create", "create_spread"):
            model = CREATE_MODEL if self.kind == "create" else spread_model(client % self.spread_models)
            create = self._callable(channel, pb.CreateModelVersionRequest, model_pb2.ModelVersion)

            async def create_op() -> object:
                return await create(version_request(model, rng), timeout=CALL_TIMEOUT_S, metadata=meta)

            return create_op
        if self.kind == "get":
            get = self._callable(channel, pb.GetModelVersionRequest, model_pb2.ModelVersion)

            async def get_op() -> object:
                return await get(get_request(self.versions, rng), timeout=CALL_TIMEOUT_S, metadata=meta)

            return get_op
        listing = self._callable(channel, pb.ListModelVersionsRequest, pb.ListModelVersionsResponse)

        async def list_op() -> object:
            response = await listing(list_request(self.page_size), timeout=CALL_TIMEOUT_S, metadata=meta)
            if len(response.model_versions) != self.page_size:
                raise RuntimeError(f"short page: {len(response.model_versions)} versions")
            return response

        return list_op


# --------------------------------------------------------------------------------------------------
# Setup: models, seeded versions, captured payloads for the empty handler
# --------------------------------------------------------------------------------------------------


async def _seed(
    stubs: list[Any], model_id: str, count: int, clients: int, metadata: tuple[tuple[str, str], ...]
) -> float:
    """Registers `count` versions of `model_id` through the RPC with `clients` concurrent clients."""
    numbers = iter(range(count))

    async def client(index: int) -> None:
        rng = random.Random(index)
        stub = stubs[index % len(stubs)]
        for _ in numbers:  # one iterator shared by every client: each number is taken exactly once
            await stub.CreateModelVersion(
                version_request(model_id, rng), timeout=CALL_TIMEOUT_S, metadata=metadata
            )

    began = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return time.monotonic() - began


async def prepare(
    address: str, database_url: str, meta: tuple[tuple[str, str], ...], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Creates the models and seeds the listing model; returns the setup facts and the empty handler's
    payloads (a captured response per RPC)."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(args.channels)]
    try:
        stubs = [pb_grpc.ModelRegistryServiceStub(ch) for ch in channels]
        stub = stubs[0]
        model_ids = [LIST_MODEL, CREATE_MODEL, *(spread_model(i) for i in range(args.spread_models))]
        for model_id in model_ids:
            await stub.CreateModel(
                pb.CreateModelRequest(
                    model_id=model_id,
                    model=model_pb2.Model(description="benchmark model", labels={"team": "risk"}),
                ),
                metadata=meta,
            )
        log(f"seeding {args.seed_versions} versions of models/{LIST_MODEL} with 16 concurrent clients ...")
        seed_s = await _seed(stubs, LIST_MODEL, args.seed_versions, 16, meta)
        log(f"seeded in {seed_s:.1f} s ({args.seed_versions / seed_s:.0f} registrations/s)")
        await analyze_database(database_url)

        rng = random.Random(0)
        create_req = version_request(CREATE_MODEL, rng)
        created = await stub.CreateModelVersion(create_req, metadata=meta)
        get_req = get_request(1, rng)
        got = await stub.GetModelVersion(get_req, metadata=meta)
        list_req = list_request(args.page_size)
        page = await stub.ListModelVersions(list_req, metadata=meta)
        if len(page.model_versions) != args.page_size or not page.next_page_token:
            raise RuntimeError(f"the filter matched only {len(page.model_versions)} versions; seed more")
        matches = 0
        request = list_request(1000)
        while True:
            response = await stub.ListModelVersions(request, metadata=meta)
            matches += len(response.model_versions)
            if not response.next_page_token:
                break
            request.page_token = response.next_page_token

        payloads: dict[str, bytes] = {}
        sizes: dict[str, dict[str, int]] = {}
        for name, req, resp in (
            ("create", create_req, created),
            ("get", get_req, got),
            ("list", list_req, page),
        ):
            payloads[name] = resp.SerializeToString()
            sizes[name] = {"request_bytes": req.ByteSize(), "response_bytes": len(payloads[name])}
        setup = {
            "models": len(model_ids),
            "seed_versions": args.seed_versions,
            "seed_clients": 16,
            "seed_seconds": round(seed_s, 2),
            "seed_registrations_per_s": round(args.seed_versions / seed_s, 1),
            "analyzed_after_seeding": True,
            "list_filter": LIST_FILTER,
            "list_filter_matches": matches,
            "message_sizes": sizes,
        }
        return setup, payloads
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def _reference_summary(result: LoadResult) -> dict[str, Any]:
    summary = latency_summary(result.latencies_s, result.seconds)
    keep = ("ops", "throughput_per_s", "p50_ms", "p99_ms")
    return {
        **{k: summary[k] for k in keep},
        "errors": sum(result.errors.values()),
        "cpu": result.probes.get("cpu", {}),
    }


def _measure(
    runner: LoadRunner,
    args: argparse.Namespace,
    kind: Kind,
    concurrency: int,
    addresses: dict[bool, str],
    meta: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    """The registry and the empty handler, back to back, under the same load."""
    measured: dict[bool, LoadResult] = {}
    for reference in (True, False):
        workload = CatalogWorkload(
            kind, reference, args.seed_versions, args.spread_models, args.page_size, meta
        )
        target = "empty handler" if reference else "registry"
        log(f"{kind} x{concurrency} -> {target} ...")
        measured[reference] = runner.run(workload, addresses[reference], concurrency)
    real, empty = measured[False].summary(), _reference_summary(measured[True])
    log(
        f"{kind} x{concurrency}: {real['throughput_per_s']}/s p50 {real['p50_ms']} ms p99 {real['p99_ms']} ms"
        f" errors {real['errors']} | empty handler {empty['throughput_per_s']}/s p50 {empty['p50_ms']} ms"
    )
    # Server CPU per call: unlike throughput it hardly depends on what else the shared machine runs.
    server_cpu_ms = ratio(real["cpu"].get("server_cpu_pct", 0.0) * 10.0, real["throughput_per_s"], 2)
    return {
        "workload": kind,
        "rpc": RPC_OF[kind],
        "concurrency": concurrency,
        "client_procs": measured[False].client_procs,
        **real,
        "server_cpu_ms_per_op": server_cpu_ms,
        "empty_handler": empty,
        "ratio_to_empty_handler": {
            "throughput": ratio(real["throughput_per_s"], empty["throughput_per_s"]),
            "p50": ratio(real["p50_ms"], empty["p50_ms"], 1),
            "p99": ratio(real["p99_ms"], empty["p99_ms"], 1),
        },
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default 1,16)")
    parser.add_argument("--channels", type=int, default=4, help="channels per client process (default 4)")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--workloads", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    parser.add_argument("--seed-versions", type=int, default=5000, help="versions of the listed model")
    parser.add_argument("--spread-models", type=int, default=16, help="models of create_spread")
    parser.add_argument("--page-size", type=int, default=50, help="page size of the list workload")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.kinds = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    args = _parse_args(argv)
    started = utc_timestamp()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="modelreg-bench-"))
    succeeded = False
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            database = stack.enter_context(provision_database())
            meta = bearer(bootstrap_admin_token(database.url, work))
            server = stack.enter_context(start_registry_server(database.url, work / "server.log"))
            log(f"modelreg-server pid {server.pid} on {server.address}")
            setup, payloads = asyncio.run(prepare(server.address, database.url, meta, args))
            (work / "payloads").mkdir()
            for name, body in payloads.items():
                (work / "payloads" / f"{name}.bin").write_bytes(body)
            empty = stack.enter_context(start_empty_server(work / "payloads", work / "empty-server.log"))
            log(f"empty handler pid {empty.pid} on {empty.address}")
            runner = LoadRunner(
                client_procs=args.client_procs,
                channels=args.channels,
                warmup_s=args.warmup,
                seconds=args.seconds,
                probes=[
                    CpuMeter(
                        {
                            "server": lambda: [server.pid],
                            "empty_server": lambda: [empty.pid],
                            "postgres": lambda: pids_named("postgres"),
                        }
                    ),
                    DbActivity(database.url),
                ],
            )
            stack.callback(runner.close)
            addresses = {False: server.address, True: empty.address}
            results = [
                _measure(runner, args, kind, concurrency, addresses, meta)
                for kind in args.kinds
                for concurrency in args.concurrency_levels
                if not (kind == "create_spread" and concurrency == 1)
            ]
        succeeded = True
    finally:
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed or interrupted; server logs kept in {work}")
    document = {
        "benchmark": "catalog",
        "timestamp": started,
        "machine": {
            **machine,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "postgres": database.server_version,
            "postgres_source": database.source,
            "postgres_settings": database.settings,
        },
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency_levels,
            "channels_per_client_process": args.channels,
            "client_procs": args.client_procs,
            "page_size": args.page_size,
            "spread_models": args.spread_models,
        },
        "setup": setup,
        "results": results,
    }
    emit_json(document, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
