"""Soak benchmark: a mixed workload over two replicas for a bounded time, watching errors and memory.

Two `modelreg-server` processes share one fresh PostgreSQL database and one SeaweedFS S3 server. After
seeding `--models` models (each with a few versions and a `prod` alias), `--clients` concurrent clients
(asyncio tasks in this process, half of their channels to each replica) run for `--seconds` after a
`--warmup`, each call drawn at random: 90% ResolveAlias, 5% CreateModelVersion, 5% SetAlias (the model's
`prod` alias to a random existing version). Alongside, `--uploaders` clients publish packages with the SDK
(`AsyncRegistry.upload_model`: a fresh `--upload-kib` KiB file each time, so every upload really sends
bytes), alternating between the replicas. Every second the VmRSS of both servers is read from /proc.

Prints JSON: throughput, p50/p99/max and errors per RPC (errors must be 0), the RSS series of both
servers with its trend (must be flat), their CPU, and the machine's load.

Usage: python bench/soak.py [--seconds 60] [--out bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Running as `python bench/soak.py` puts bench/ (not the repository) on sys.path.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.common import (
    CALL_TIMEOUT_S,
    ListeningProcess,
    bearer,
    bootstrap_admin_token,
    emit_json,
    latency_summary,
    log,
    machine_info,
    pids_named,
    process_cpu_seconds,
    provision_database,
    sigterm_as_interrupt,
    start_registry_server,
    utc_timestamp,
)
from modelreg.aio import AsyncRegistry
from modelreg.errors import ModelregError
from modelreg.v1 import lifecycle_service_pb2 as lpb
from modelreg.v1 import lifecycle_service_pb2_grpc as lpb_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1 import model_registry_service_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str], ...]

MODEL_PREFIX = "soak-"
ALIAS = "prod"
BUCKET = "modelreg-soak"
RESOLVE_SHARE = 0.90
REGISTER_SHARE = 0.05  # the rest are alias moves
SEED_VERSIONS = 2
# RSS counts as flat when the last fifth of the samples (median) is within this much of the first fifth.
RSS_FLAT_FRACTION = 0.05
RSS_FLAT_MIB = 16.0


def model_id(index: int) -> str:
    """The index-th soak model."""
    return f"{MODEL_PREFIX}{index:04d}"


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class RssRecorder:
    """Samples the VmRSS of some processes every `interval` seconds in a thread."""

    def __init__(self, pids: list[int], interval: float = 1.0) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
        self._origin = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while True:
            now = round(time.monotonic() - self._origin, 1)
            for pid in self.pids:
                value = rss_mib(pid)
                if value is not None:
                    self.samples[pid].append((now, round(value, 1)))
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        """Starts sampling; time 0 is now."""
        self._origin = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Stops sampling."""
        self._stop.set()
        self._thread.join(5)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def rss_trend(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Start/end (medians of the first and last fifth), min, max, least-squares slope and the verdict."""
    if len(samples) < 5:
        return {"samples": samples, "flat": None}
    values = [v for _, v in samples]
    fifth = max(1, len(samples) // 5)
    start, end = _median(values[:fifth]), _median(values[-fifth:])
    times = [t for t, _ in samples]
    mean_t, mean_v = sum(times) / len(times), sum(values) / len(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread if spread else 0.0
    allowed = max(RSS_FLAT_MIB, RSS_FLAT_FRACTION * start)
    return {
        "start_mib": round(start, 1),
        "end_mib": round(end, 1),
        "min_mib": min(values),
        "max_mib": max(values),
        "growth_mib": round(end - start, 1),
        "slope_mib_per_min": round(slope * 60.0, 2),
        "allowed_growth_mib": round(allowed, 1),
        "flat": end - start <= allowed,
        "samples": [[t, v] for t, v in samples],
    }


# --------------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Latencies and errors per RPC, kept only for calls that end inside the measured window."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    error_samples: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0


@dataclass(frozen=True)
class Window:
    """time.monotonic() bounds of the run."""

    measure_from: float
    stop_at: float


class Catalog:
    """What the clients know about the seeded models: how many versions each has (only ever grows)."""

    def __init__(self, models: int) -> None:
        self.versions = [SEED_VERSIONS] * models

    def register(self, index: int, version: int) -> None:
        """Records a newly registered version."""
        self.versions[index] = max(self.versions[index], version)


def _version(rng: random.Random, run: int) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        run_id=f"run-{run}-{rng.getrandbits(32):08x}",
        description="soak registration",
        labels={"env": rng.choice(("prod", "staging", "dev")), "team": "soak"},
        metrics={"auc": rng.uniform(0.5, 1.0), "loss": rng.uniform(0.0, 1.0)},
        lineage=model_pb2.Lineage(
            code=model_pb2.CodeRef(
                repository="https://git.example.com/soak", commit=f"{rng.getrandbits(160):040x}"
            )
        ),
    )


async def _timed(
    tally: Tally, window: Window, rpc: str, call: Callable[[], Awaitable[object]]
) -> object | None:
    began = time.monotonic()
    outcome: str | None = None
    result: object | None = None
    try:
        result = await call()
    except grpc.aio.AioRpcError as exc:
        outcome = exc.code().name
        detail = f"{rpc}: {exc.code().name} {exc.details()}"
    except ModelregError as exc:
        outcome = type(exc).__name__
        detail = f"{rpc}: {exc}"
    except Exception as exc:  # counted, not fatal: one bad call must not end the soak
        outcome = type(exc).__name__
        detail = f"{rpc}: {exc!r}"
    end = time.monotonic()
    if window.measure_from <= end <= window.stop_at:
        if outcome is None:
            tally.latencies[rpc].append(end - began)
        else:
            tally.errors[rpc][outcome] += 1
            if len(tally.error_samples) < 10:
                tally.error_samples.append(detail[:300])
    return result


async def _client(
    index: int,
    channels: list[grpc.aio.Channel],
    catalog: Catalog,
    window: Window,
    tally: Tally,
    meta: Metadata,
) -> None:
    rng = random.Random(index)
    channel = channels[index % len(channels)]
    registry = pb_grpc.ModelRegistryServiceStub(channel)
    lifecycle = lpb_grpc.LifecycleServiceStub(channel)
    serving = lpb_grpc.ServingServiceStub(channel)
    runs = 0
    while time.monotonic() < window.stop_at:
        model = rng.randrange(len(catalog.versions))
        name = model_id(model)
        draw = rng.random()
        if draw < RESOLVE_SHARE:
            request = lpb.ResolveAliasRequest(name=f"models/{name}/aliases/{ALIAS}")
            await _timed(
                tally,
                window,
                "ResolveAlias",
                functools.partial(serving.ResolveAlias, request, timeout=CALL_TIMEOUT_S, metadata=meta),
            )
        elif draw < RESOLVE_SHARE + REGISTER_SHARE:
            runs += 1
            create = pb.CreateModelVersionRequest(
                parent=f"models/{name}", model_version=_version(rng, runs), request_id=uuid.uuid4().hex
            )
            created = await _timed(
                tally,
                window,
                "CreateModelVersion",
                functools.partial(registry.CreateModelVersion, create, timeout=CALL_TIMEOUT_S, metadata=meta),
            )
            if isinstance(created, model_pb2.ModelVersion):
                catalog.register(model, created.version)
        else:
            target = rng.randint(1, catalog.versions[model])
            move = lpb.SetAliasRequest(
                name=f"models/{name}/aliases/{ALIAS}", model_version=f"models/{name}/versions/{target}"
            )
            await _timed(
                tally,
                window,
                "SetAlias",
                functools.partial(lifecycle.SetAlias, move, timeout=CALL_TIMEOUT_S, metadata=meta),
            )


async def _uploader(
    index: int,
    addresses: list[str],
    token: str,
    catalog: Catalog,
    window: Window,
    tally: Tally,
    scratch: Path,
    size: int,
) -> None:
    rng = random.Random(10_000 + index)
    clients = [AsyncRegistry(address, token=token) for address in addresses]
    try:
        uploads = 0
        while time.monotonic() < window.stop_at:
            client = clients[uploads % len(clients)]
            uploads += 1
            model = rng.randrange(len(catalog.versions))
            path = scratch / f"upload-{index}-{uploads}.bin"
            path.write_bytes(rng.randbytes(size))
            try:
                created = await _timed(
                    tally,
                    window,
                    "UploadModel",
                    functools.partial(
                        client.upload_model,
                        model_id(model),
                        path,
                        run_id=f"upload-{index}-{uploads}",
                        parallelism=2,
                    ),
                )
            finally:
                path.unlink(missing_ok=True)
            if isinstance(created, model_pb2.ModelVersion):
                catalog.register(model, created.version)
                if window.measure_from <= time.monotonic() <= window.stop_at:
                    tally.bytes_uploaded += size
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def seed(address: str, meta: Metadata, models: int) -> float:
    """Creates the models, SEED_VERSIONS versions each and their `prod` alias; returns the seconds taken."""
    began = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        registry = pb_grpc.ModelRegistryServiceStub(channel)
        lifecycle = lpb_grpc.LifecycleServiceStub(channel)
        indexes = iter(range(models))

        async def worker(seed_rng: int) -> None:
            rng = random.Random(seed_rng)
            for i in indexes:
                name = model_id(i)
                await registry.CreateModel(
                    pb.CreateModelRequest(model_id=name, model=model_pb2.Model(description="soak model")),
                    metadata=meta,
                )
                for run in range(SEED_VERSIONS):
                    await registry.CreateModelVersion(
                        pb.CreateModelVersionRequest(
                            parent=f"models/{name}", model_version=_version(rng, run)
                        ),
                        metadata=meta,
                    )
                await lifecycle.SetAlias(
                    lpb.SetAliasRequest(
                        name=f"models/{name}/aliases/{ALIAS}", model_version=f"models/{name}/versions/1"
                    ),
                    metadata=meta,
                )

        await asyncio.gather(*(worker(i) for i in range(8)))
    return time.monotonic() - began


async def soak(
    addresses: list[str], token: str, meta: Metadata, args: argparse.Namespace, scratch: Path
) -> tuple[Tally, Window]:
    """Runs the clients and uploaders through warm-up and the measured window."""
    # Separate connections per channel (grpc would otherwise share one per target), split over the replicas.
    options = (("grpc.use_local_subchannel_pool", 1),)
    channels = [
        grpc.aio.insecure_channel(addresses[i % len(addresses)], options=options)
        for i in range(max(len(addresses), args.channels))
    ]
    tally = Tally()
    catalog = Catalog(args.models)
    now = time.monotonic()
    window = Window(now + args.warmup, now + args.warmup + args.seconds)
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 15) for ch in channels))
        await asyncio.gather(
            *(_client(i, channels, catalog, window, tally, meta) for i in range(args.clients)),
            *(
                _uploader(i, addresses, token, catalog, window, tally, scratch, args.upload_kib * 1024)
                for i in range(args.uploaders)
            ),
        )
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))
    return tally, window


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds before (default 10)")
    parser.add_argument("--models", type=int, default=100, help="seeded models (default 100)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent RPC clients (default 16)")
    parser.add_argument("--channels", type=int, default=4, help="channels, split over the replicas")
    parser.add_argument("--uploaders", type=int, default=1, help="concurrent package uploaders (default 1)")
    parser.add_argument("--upload-kib", type=int, default=1024, help="size of each uploaded package (KiB)")
    parser.add_argument("--db-pool-size", type=int, default=8, help="PostgreSQL pool per replica (default 8)")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the soak; returns the exit code (1 when a target is missed)."""
    from modelreg_server.devstack import SeaweedS3

    args = _parse_args(argv)
    started = utc_timestamp()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="modelreg-bench-soak-"))
    succeeded = False
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            database = stack.enter_context(provision_database("modelreg_bench_soak"))
            log("starting SeaweedFS")
            s3 = SeaweedS3.start(work / "s3")
            stack.callback(s3.stop)
            token = bootstrap_admin_token(database.url, work)
            meta = bearer(token)
            s3_env = {
                "MODELREG_S3_ENDPOINT": s3.endpoint,
                "MODELREG_S3_ACCESS_KEY": s3.access_key,
                "MODELREG_S3_SECRET_KEY": s3.secret_key,
                "MODELREG_S3_BUCKET": BUCKET,
                # The machine's PostgreSQL is shared (max_connections 100): two replicas with the default
                # pool of 16 each, plus their listeners, can run it out of connections.
                "MODELREG_DB_POOL_SIZE": str(args.db_pool_size),
            }
            # One after the other: the first applies the migrations.
            servers: list[ListeningProcess] = []
            for i in range(2):
                server = start_registry_server(database.url, work / f"server-{i}.log", **s3_env)
                stack.enter_context(server)
                servers.append(server)
                log(f"replica {i}: pid {server.pid} on {server.address}")
            addresses = [s.address for s in servers]
            log(f"seeding {args.models} models ...")
            seed_s = asyncio.run(seed(addresses[0], meta, args.models))
            log(f"seeded in {seed_s:.1f} s; soaking for {args.warmup:.0f} + {args.seconds:.0f} s ...")
            recorder = RssRecorder([s.pid for s in servers])
            cpu_pids = {"server_0": [servers[0].pid], "server_1": [servers[1].pid], "seaweedfs": [s3.pid]}
            recorder.start()
            load_before = os.getloadavg()[0]
            cpu_before = {k: sum(process_cpu_seconds(p) or 0.0 for p in v) for k, v in cpu_pids.items()}
            postgres_before = sum(process_cpu_seconds(p) or 0.0 for p in pids_named("postgres"))
            began = time.monotonic()
            scratch = work / "uploads"
            scratch.mkdir()
            tally, window = asyncio.run(soak(addresses, token, meta, args, scratch))
            wall = time.monotonic() - began
            recorder.stop()
            cpu = {
                f"{k}_cpu_pct": round(
                    100.0 * (sum(process_cpu_seconds(p) or 0.0 for p in v) - cpu_before[k]) / wall, 1
                )
                for k, v in cpu_pids.items()
            }
            cpu["postgres_all_cpu_pct"] = round(
                100.0
                * (sum(process_cpu_seconds(p) or 0.0 for p in pids_named("postgres")) - postgres_before)
                / wall,
                1,
            )
            load_after = os.getloadavg()[0]
            exit_codes = [s.stop() for s in servers]
        succeeded = not any(tally.errors.values())
    finally:
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed, interrupted or saw errors; logs kept in {work}")
    seconds = window.stop_at - window.measure_from
    rpcs: dict[str, Any] = {}
    for rpc in ("ResolveAlias", "CreateModelVersion", "SetAlias", "UploadModel"):
        errors = tally.errors.get(rpc, Counter())
        rpcs[rpc] = {
            **latency_summary(tally.latencies.get(rpc, []), seconds),
            "errors": sum(errors.values()),
            "error_codes": dict(sorted(errors.items())),
        }
    total_ops = sum(r["ops"] for r in rpcs.values())
    total_errors = sum(r["errors"] for r in rpcs.values())
    # The trend covers the measured window; the warm-up (caches and pools filling) is left out.
    memory = [
        {
            "replica": i,
            "pid": s.pid,
            "exit_code": exit_codes[i],
            **rss_trend([(t, v) for t, v in recorder.samples[s.pid] if t >= args.warmup]),
        }
        for i, s in enumerate(servers)
    ]
    document = {
        "benchmark": "soak",
        "timestamp": started,
        "machine": {
            **machine,
            "loadavg_1m_before_window": round(load_before, 2),
            "loadavg_1m_at_end": round(load_after, 2),
            "postgres": database.server_version,
            "postgres_source": database.source,
        },
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "replicas": 2,
            "models": args.models,
            "clients": args.clients,
            "channels": args.channels,
            "uploaders": args.uploaders,
            "upload_kib": args.upload_kib,
            "db_pool_size_per_replica": args.db_pool_size,
            "mix": {"ResolveAlias": RESOLVE_SHARE, "CreateModelVersion": REGISTER_SHARE, "SetAlias": 0.05},
        },
        "setup": {"seed_seconds": round(seed_s, 1), "versions_per_model": SEED_VERSIONS},
        "throughput_per_s": round(total_ops / seconds, 1),
        "upload_mb_s": round(tally.bytes_uploaded / seconds / 1e6, 2),
        "rpcs": rpcs,
        "errors_total": total_errors,
        "error_samples": tally.error_samples,
        "cpu": cpu,
        "server_rss": memory,
        "targets": {
            "zero_errors": {"value": total_errors, "met": total_errors == 0},
            "rss_flat": {
                "rule": f"median of the last fifth of the samples within max({RSS_FLAT_MIB:.0f} MiB, "
                f"{RSS_FLAT_FRACTION:.0%}) of the first fifth's",
                "growth_mib": [m.get("growth_mib") for m in memory],
                "met": all(m.get("flat") for m in memory),
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
