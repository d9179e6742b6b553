"""Serving benchmark: ResolveAlias throughput and latency, and SetAlias-to-watcher propagation.

Part 1, resolve. One `modelreg-server` process on a fresh PostgreSQL database serves ResolveAlias of one
alias (answered from the replica's cache after the first call). The same load (1 and 16 concurrent
clients: asyncio tasks over a few grpc.aio channels, in `--client-procs` client processes) then runs
against the empty reference handler of `bench.empty_server`, which answers with the captured
ResolveAliasResponse (same size) and receives the same request and metadata. Reported per concurrency:
throughput, p50/p99, errors, CPU of client, server and PostgreSQL, and the ratio to the empty handler.

Part 2, watch. `--watchers` WatchAliases streams on one model, spread over `--watch-procs` client
processes and `--watch-channels` channels (separate TCP connections) per process, read the snapshot; then
this process makes `--changes` SetAlias calls `--change-interval` seconds apart, each timed from just
before the call (time.monotonic(), CLOCK_MONOTONIC: one clock for every process on the host) to the
arrival of its change at each watcher. Reported: p50/p99/max of those latencies and, per watcher, whether
it saw exactly the SetAlias revisions, in order, none missing, none extra.

Targets: ResolveAlias with 16 clients >= 0.8x the empty handler's throughput and p99 <= 10 ms, and
>= 10x MLflow's get_model_version_by_alias (~230/s with 16 clients on these machines); SetAlias-to-
watcher p99 <= 50 ms with 1,000 watchers; zero lost or reordered watch events.

Usage: python bench/resolve.py [--seconds 10] [--out bench/results/resolve.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

# Running as `python bench/resolve.py` puts bench/ (not the repository) on sys.path.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.common import (
    CALL_TIMEOUT_S,
    CpuMeter,
    ListeningProcess,
    LoadResult,
    LoadRunner,
    Op,
    bearer,
    bootstrap_admin_token,
    emit_json,
    latency_summary,
    log,
    machine_info,
    percentile,
    pids_named,
    process_cpu_seconds,
    provision_database,
    ratio,
    sigterm_as_interrupt,
    start_empty_server,
    start_registry_server,
    utc_timestamp,
)
from bench.empty_server import method_path
from modelreg.v1 import lifecycle_service_pb2 as lpb
from modelreg.v1 import lifecycle_service_pb2_grpc as lpb_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1 import model_registry_service_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str], ...]

RESOLVE_MODEL = "bench-serve"
RESOLVE_ALIAS = "prod"
WATCH_MODEL = "bench-watch"
WATCH_ALIAS = "live"
PAYLOAD = "resolve"
FANOUT_SERVICE = "bench.FanoutService"
# MLflow's get_model_version_by_alias with 16 clients on these machines (measured separately, see README).
MLFLOW_RESOLVE_PER_S = 230.0
# Separate TCP connections: grpc otherwise lets channels with equal arguments share one subchannel.
_OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def alias_name(model: str, alias: str) -> str:
    """`models/{model}/aliases/{alias}`."""
    return f"models/{model}/aliases/{alias}"


# --------------------------------------------------------------------------------------------------
# Part 1: ResolveAlias against the registry and against the empty handler
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolveWorkload:
    """ResolveAlias of one alias against the registry, or (`reference`) the empty handler."""

    reference: bool
    expected_version: int
    # Sent with every call, to the empty handler too, so both sides of the comparison carry it.
    metadata: Metadata

    def caller(self, channel: grpc.aio.Channel, client: int, rng: random.Random) -> Op:
        """The op of one client: build the request, call, check the answer."""
        call: grpc.aio.UnaryUnaryMultiCallable[lpb.ResolveAliasRequest, lpb.ResolveAliasResponse]
        if self.reference:
            call = channel.unary_unary(
                method_path(PAYLOAD),
                request_serializer=lpb.ResolveAliasRequest.SerializeToString,
                response_deserializer=lpb.ResolveAliasResponse.FromString,
            )
        else:
            call = lpb_grpc.ServingServiceStub(channel).ResolveAlias
        name = alias_name(RESOLVE_MODEL, RESOLVE_ALIAS)
        meta, expected = self.metadata, self.expected_version

        async def resolve_op() -> object:
            response = await call(lpb.ResolveAliasRequest(name=name), timeout=CALL_TIMEOUT_S, metadata=meta)
            if response.version != expected:
                raise RuntimeError(f"resolved to version {response.version}, expected {expected}")
            return response

        return resolve_op


async def _create_versions(stub: Any, model: str, count: int, meta: Metadata) -> None:
    await stub.CreateModel(
        pb.CreateModelRequest(model_id=model, model=model_pb2.Model(description="benchmark model")),
        metadata=meta,
    )
    for i in range(count):
        version = model_pb2.ModelVersion(run_id=f"run-{i}", metrics={"auc": 0.9}, labels={"env": "prod"})
        await stub.CreateModelVersion(
            pb.CreateModelVersionRequest(parent=f"models/{model}", model_version=version), metadata=meta
        )


async def prepare(address: str, meta: Metadata) -> tuple[dict[str, Any], bytes]:
    """The served and the watched model with two versions each and an alias; returns the setup facts
    and the captured ResolveAliasResponse (the empty handler's payload)."""
    async with grpc.aio.insecure_channel(address) as channel:
        registry = pb_grpc.ModelRegistryServiceStub(channel)
        lifecycle = lpb_grpc.LifecycleServiceStub(channel)
        serving = lpb_grpc.ServingServiceStub(channel)
        for model in (RESOLVE_MODEL, WATCH_MODEL):
            await _create_versions(registry, model, 2, meta)
        for model, alias in ((RESOLVE_MODEL, RESOLVE_ALIAS), (WATCH_MODEL, WATCH_ALIAS)):
            await lifecycle.SetAlias(
                lpb.SetAliasRequest(
                    name=alias_name(model, alias), model_version=f"models/{model}/versions/1"
                ),
                metadata=meta,
            )
        request = lpb.ResolveAliasRequest(name=alias_name(RESOLVE_MODEL, RESOLVE_ALIAS))
        response = await serving.ResolveAlias(request, metadata=meta)
    payload = response.SerializeToString()
    setup = {
        "alias": request.name,
        "resolved_to": response.model_version,
        "message_sizes": {"request_bytes": request.ByteSize(), "response_bytes": len(payload)},
    }
    return setup, payload


def _reference_summary(result: LoadResult) -> dict[str, Any]:
    summary = result.summary()
    keep = ("ops", "throughput_per_s", "p50_ms", "p99_ms", "errors", "cpu")
    return {k: summary[k] for k in keep}


def measure_resolve(
    runner: LoadRunner, addresses: dict[bool, str], concurrency: int, meta: Metadata
) -> dict[str, Any]:
    """The empty handler, then the registry, back to back under the same load."""
    measured: dict[bool, LoadResult] = {}
    for reference in (True, False):
        log(f"resolve x{concurrency} -> {'empty handler' if reference else 'registry'} ...")
        measured[reference] = runner.run(
            ResolveWorkload(reference, 1, meta), addresses[reference], concurrency
        )
    real, empty = measured[False].summary(), _reference_summary(measured[True])
    log(
        f"resolve x{concurrency}: {real['throughput_per_s']}/s p50 {real['p50_ms']} ms"
        f" p99 {real['p99_ms']} ms errors {real['errors']}"
        f" | empty handler {empty['throughput_per_s']}/s p99 {empty['p99_ms']} ms"
    )
    server_cpu_ms = ratio(real["cpu"].get("server_cpu_pct", 0.0) * 10.0, real["throughput_per_s"], 3)
    empty_cpu_ms = ratio(empty["cpu"].get("empty_server_cpu_pct", 0.0) * 10.0, empty["throughput_per_s"], 3)
    return {
        "rpc": "ResolveAlias",
        "concurrency": concurrency,
        "client_procs": measured[False].client_procs,
        **real,
        # Server CPU per call: unlike throughput it hardly depends on what else the shared machine runs.
        "server_cpu_ms_per_op": server_cpu_ms,
        "empty_handler": {**empty, "server_cpu_ms_per_op": empty_cpu_ms},
        "ratio_to_empty_handler": {
            "throughput": ratio(real["throughput_per_s"], empty["throughput_per_s"]),
            "p50": ratio(real["p50_ms"], empty["p50_ms"], 2),
            "p99": ratio(real["p99_ms"], empty["p99_ms"], 2),
            "server_cpu_per_op": ratio(server_cpu_ms, empty_cpu_ms, 2),
        },
    }


# --------------------------------------------------------------------------------------------------
# Part 2: SetAlias to watcher propagation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchPlan:
    """What one watcher process does."""

    address: str
    metadata: Metadata
    model: str
    reference: bool
    first_watcher: int
    watchers: int
    channels: int
    changes: int
    # After the setter is done, how long stragglers may still take before the watchers are stopped.
    grace_s: float


@dataclass
class WatchShare:
    """What one watcher process saw: per watcher, (revision, version, arrival time) of every live change."""

    first_watcher: int
    arrivals: list[list[tuple[int, int, float]]]
    errors: dict[int, str] = field(default_factory=dict)
    snapshot_seconds: float = 0.0
    cpu_s_while_changing: float = 0.0


async def _watch(plan: WatchPlan, ready: Event, go: Event, done: Event) -> WatchShare:
    channels = [
        grpc.aio.insecure_channel(plan.address, options=_OWN_CONNECTION) for _ in range(plan.channels)
    ]
    share = WatchShare(plan.first_watcher, [[] for _ in range(plan.watchers)])
    snapshots_left = plan.watchers
    all_snapshots = asyncio.Event()
    request = lpb.WatchAliasesRequest(models=[f"models/{plan.model}"])

    async def watcher(index: int) -> None:
        nonlocal snapshots_left
        channel = channels[index % len(channels)]
        watch: grpc.aio.UnaryStreamMultiCallable[lpb.WatchAliasesRequest, lpb.WatchAliasesResponse]
        if plan.reference:
            watch = channel.unary_stream(
                f"/{FANOUT_SERVICE}/Watch",
                request_serializer=lpb.WatchAliasesRequest.SerializeToString,
                response_deserializer=lpb.WatchAliasesResponse.FromString,
            )
        else:
            watch = lpb_grpc.ServingServiceStub(channel).WatchAliases
        seen = share.arrivals[index]
        in_snapshot = True
        try:
            async for message in watch(request, metadata=plan.metadata):
                arrived = time.monotonic()
                if in_snapshot:
                    if message.heartbeat and not message.snapshot:
                        in_snapshot = False
                        snapshots_left -= 1
                        if snapshots_left == 0:
                            all_snapshots.set()
                    continue
                for change in message.changes:
                    seen.append((change.revision, change.resolution.version, arrived))
                if len(seen) >= plan.changes:
                    return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                share.errors[index] = f"{exc.code().name}: {exc.details()}"
        finally:
            if in_snapshot:
                snapshots_left -= 1
                if snapshots_left == 0:
                    all_snapshots.set()

    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 30) for ch in channels))
        began = time.monotonic()
        tasks = [asyncio.create_task(watcher(i)) for i in range(plan.watchers)]
        await all_snapshots.wait()
        share.snapshot_seconds = time.monotonic() - began
        ready.set()
        await asyncio.to_thread(go.wait)
        cpu_before = time.process_time()
        await asyncio.to_thread(done.wait)
        _, pending = await asyncio.wait(tasks, timeout=plan.grace_s)
        share.cpu_s_while_changing = time.process_time() - cpu_before
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))
    return share


def watch_process(plan: WatchPlan, ready: Event, go: Event, done: Event, results: Queue[WatchShare]) -> None:
    """Body of a watcher process: opens the streams, reports ready, records changes until `done`."""
    results.put(asyncio.run(_watch(plan, ready, go, done)))


async def _set_aliases(
    address: str, meta: Metadata, changes: int, interval: float, reference: bool
) -> tuple[list[tuple[int, int, float]], list[float]]:
    """Moves the watched alias back and forth (or, `reference`, has the fan-out server publish a change
    message of the same shape); returns (revision, version, start time) per call and the call latencies."""
    sent: list[tuple[int, int, float]] = []
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        lifecycle = lpb_grpc.LifecycleServiceStub(channel)
        publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{FANOUT_SERVICE}/Publish", request_serializer=None, response_deserializer=None
        )
        name = alias_name(WATCH_MODEL, WATCH_ALIAS)
        await channel.channel_ready()
        for i in range(changes):
            version = 2 if i % 2 == 0 else 1
            target = f"models/{WATCH_MODEL}/versions/{version}"
            if reference:
                message = _reference_change(i + 1, version, name, target).SerializeToString()
                started = time.monotonic()
                await publish(message, timeout=CALL_TIMEOUT_S, metadata=meta)
                revision = i + 1
            else:
                request = lpb.SetAliasRequest(name=name, model_version=target)
                started = time.monotonic()
                alias = await lifecycle.SetAlias(request, timeout=CALL_TIMEOUT_S, metadata=meta)
                revision = alias.revision
            latencies.append(time.monotonic() - started)
            sent.append((revision, version, started))
            await asyncio.sleep(interval)
    return sent, latencies


def _reference_change(revision: int, version: int, alias: str, target: str) -> lpb.WatchAliasesResponse:
    """A watch message like the registry's for one alias move."""
    change = lpb.Change(
        revision=revision,
        type=lpb.CHANGE_TYPE_ALIAS_SET,
        model=f"models/{WATCH_MODEL}",
        alias=alias,
        resolution=lpb.ResolveAliasResponse(
            model_version=target, version=version, stage=model_pb2.STAGE_NONE, revision=revision
        ),
        actor="admin",
    )
    change.create_time.GetCurrentTime()
    return lpb.WatchAliasesResponse(changes=[change], revision=revision)


# --------------------------------------------------------------------------------------------------
# The fan-out reference: a grpc.aio server that only relays published bytes to every open stream
# --------------------------------------------------------------------------------------------------


async def serve_fanout(listen: str) -> None:
    """`/bench.FanoutService/Watch` streams a heartbeat, then every message `Publish` receives (raw bytes,
    never parsed), until SIGTERM or SIGINT: the least any server can do per watcher and change."""
    subscribers: set[asyncio.Queue[bytes]] = set()
    heartbeat = lpb.WatchAliasesResponse(heartbeat=True).SerializeToString()

    async def watch(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        subscribers.add(queue)
        try:
            yield heartbeat
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)

    async def publish(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        for queue in subscribers:
            queue.put_nowait(request)
        return b""

    handlers = {
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
        "Publish": grpc.unary_unary_rpc_method_handler(publish),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(FANOUT_SERVICE, handlers),))
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"fanout-server listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


def _split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """(first index, count) of `parts` near-equal slices of range(total)."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _check_watchers(
    shares: list[WatchShare], sent: list[tuple[int, int, float]], watchers: int
) -> tuple[list[float], dict[str, Any]]:
    """Latencies of every (watcher, change) and the completeness/order verdict."""
    expected = [revision for revision, _, _ in sent]
    started = {revision: at for revision, _, at in sent}
    versions = {revision: version for revision, version, _ in sent}
    latencies: list[float] = []
    complete = missing_total = extra_total = reordered = wrong_version = duplicates = 0
    errors: dict[str, str] = {}
    for share in shares:
        for seen in share.arrivals:
            revisions = [revision for revision, _, _ in seen]
            if revisions == expected:
                complete += 1
            if any(b <= a for a, b in itertools.pairwise(revisions)):
                reordered += 1
            duplicates += len(revisions) - len(set(revisions))
            missing_total += len(set(expected) - set(revisions))
            extra_total += len(set(revisions) - set(expected))
            for revision, version, arrived in seen:
                if revision in started:
                    latencies.append(arrived - started[revision])
                    if versions[revision] != version:
                        wrong_version += 1
        for index, message in share.errors.items():
            errors[str(share.first_watcher + index)] = message
    verdict = {
        "watchers": watchers,
        "watchers_with_every_change_in_order": complete,
        "watchers_reordered": reordered,
        "missing_events": missing_total,
        "extra_events": extra_total,
        "duplicate_events": duplicates,
        "wrong_version_events": wrong_version,
        "stream_errors": len(errors),
        "stream_error_samples": dict(list(errors.items())[:5]),
    }
    return latencies, verdict


def measure_watch(
    address: str, server_pid: int, meta: Metadata, args: argparse.Namespace, *, reference: bool = False
) -> dict[str, Any]:
    """Opens the watchers in client processes, moves the alias (or, `reference`, publishes through the
    fan-out server), and checks what every watcher received."""
    ctx = multiprocessing.get_context("spawn")
    ready_events = [ctx.Event() for _ in range(args.watch_procs)]
    go, done = ctx.Event(), ctx.Event()
    results: Queue[WatchShare] = ctx.Queue()
    processes = []
    for i, (first, count) in enumerate(_split_evenly(args.watchers, args.watch_procs)):
        plan = WatchPlan(
            address,
            meta,
            WATCH_MODEL,
            reference,
            first,
            count,
            args.watch_channels,
            args.changes,
            args.watch_grace,
        )
        proc = ctx.Process(
            target=watch_process, args=(plan, ready_events[i], go, done, results), name=f"watchers-{i}"
        )
        proc.start()
        processes.append(proc)
    try:
        began = time.monotonic()
        for event in ready_events:
            if not event.wait(300):
                raise RuntimeError("watchers did not finish their snapshots within 300 s")
        log(f"{args.watchers} watchers connected and past their snapshot in {time.monotonic() - began:.1f} s")
        time.sleep(1.0)  # let the connection burst settle
        # The server's CPU with every watcher connected and nothing changing (heartbeats), to subtract.
        idle_cpu = process_cpu_seconds(server_pid) or 0.0
        time.sleep(args.idle_window)
        idle_cpu = (process_cpu_seconds(server_pid) or 0.0) - idle_cpu
        pids = [p.pid for p in processes if p.pid is not None]
        cpu_before = {pid: process_cpu_seconds(pid) or 0.0 for pid in [server_pid, *pids]}
        load_before = os.getloadavg()[0]
        go.set()
        wall = time.monotonic()
        sent, set_latencies = asyncio.run(
            _set_aliases(address, meta, args.changes, args.change_interval, reference)
        )
        done.set()
        log(f"{len(sent)} changes made; collecting what the watchers saw ...")
        shares = [results.get(timeout=args.watch_grace + 120) for _ in processes]
        wall = time.monotonic() - wall
        cpu_after = {pid: process_cpu_seconds(pid) or 0.0 for pid in cpu_before}
    finally:
        done.set()
        go.set()
        for proc in processes:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(10)
    latencies, verdict = _check_watchers(shares, sent, args.watchers)
    ordered = sorted(latencies)
    server_cpu = cpu_after[server_pid] - cpu_before[server_pid]
    client_cpu = sum(cpu_after[pid] - cpu_before[pid] for pid in cpu_after if pid != server_pid)
    idle_rate = idle_cpu / args.idle_window
    # What each change cost the server: its CPU beyond the idle rate, per change and per delivery.
    change_cpu = max(0.0, server_cpu - idle_rate * wall) / max(1, len(sent))
    summary = {
        "watchers": args.watchers,
        "watch_procs": args.watch_procs,
        "channels_per_proc": args.watch_channels,
        "changes": len(sent),
        "change_interval_s": args.change_interval,
        "deliveries": len(latencies),
        "deliveries_expected": len(sent) * args.watchers,
        "latency_ms": {
            "p50": _ms(percentile(ordered, 50)),
            "p90": _ms(percentile(ordered, 90)),
            "p99": _ms(percentile(ordered, 99)),
            "max": _ms(ordered[-1] if ordered else None),
        },
        # The last watcher's arrival per change: how long one change takes to reach everybody.
        "fan_out_complete_ms": _fan_out(shares, sent),
        # SetAlias (reference: Publish) itself, from call to response: part of every latency above.
        "change_call": latency_summary(set_latencies, sum(set_latencies)),
        "snapshot_seconds_per_proc": [round(s.snapshot_seconds, 2) for s in shares],
        "cpu_pct_while_changing": {
            "server": round(100.0 * server_cpu / wall, 1),
            "watcher_procs_total": round(100.0 * client_cpu / wall, 1),
        },
        "server_cpu_pct_idle_watchers": round(100.0 * idle_rate, 1),
        "server_cpu_ms_per_change": round(change_cpu * 1000.0, 2),
        "server_cpu_us_per_delivery": round(change_cpu * 1e6 / max(1, args.watchers), 1),
        "loadavg_1m_before": round(load_before, 2),
        **verdict,
    }
    latency = summary["latency_ms"]
    kind = " (fan-out reference)" if reference else ""
    log(
        f"watch{kind}: p50 {latency['p50']} ms p99 {latency['p99']} ms "
        f"max {latency['max']} ms; {verdict['watchers_with_every_change_in_order']}/"
        f"{args.watchers} watchers saw every change in order"
    )
    return summary


def _fan_out(shares: list[WatchShare], sent: list[tuple[int, int, float]]) -> dict[str, float | None]:
    started = {revision: at for revision, _, at in sent}
    last: dict[int, float] = {}
    for share in shares:
        for seen in share.arrivals:
            for revision, _, arrived in seen:
                if revision in started:
                    last[revision] = max(last.get(revision, 0.0), arrived - started[revision])
    ordered = sorted(last.values())
    return {"p50": _ms(percentile(ordered, 50)), "max": _ms(ordered[-1] if ordered else None)}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _targets(results: list[dict[str, Any]], watch: dict[str, Any] | None) -> dict[str, Any]:
    at16 = next((r for r in results if r["concurrency"] == 16), None)
    targets: dict[str, Any] = {}
    if at16 is not None:
        throughput_ratio = at16["ratio_to_empty_handler"]["throughput"] or 0.0
        p99 = at16["p99_ms"]
        per_s = at16["throughput_per_s"] or 0.0
        targets["resolve_16_throughput_ge_0.8x_empty"] = {
            "value": throughput_ratio,
            "met": throughput_ratio >= 0.8,
        }
        targets["resolve_16_p99_le_10ms"] = {"value": p99, "met": p99 is not None and p99 <= 10.0}
        targets["resolve_16_ge_10x_mlflow"] = {
            "value": round(per_s / MLFLOW_RESOLVE_PER_S, 1),
            "mlflow_reference_per_s": MLFLOW_RESOLVE_PER_S,
            "met": per_s >= 10 * MLFLOW_RESOLVE_PER_S,
        }
    if watch is not None:
        p99 = watch["latency_ms"]["p99"]
        targets["watch_p99_le_50ms"] = {
            "value": p99,
            "fanout_reference_p99": (watch.get("fanout_reference") or {}).get("latency_ms", {}).get("p99"),
            "met": p99 is not None and p99 <= 50.0,
        }
        lost = watch["missing_events"] + watch["stream_errors"]
        disordered = watch["watchers_reordered"] + watch["duplicate_events"] + watch["extra_events"]
        targets["watch_zero_lost_or_reordered"] = {
            "lost": lost,
            "reordered_or_duplicated": disordered,
            "met": lost == 0 and disordered == 0 and watch["wrong_version_events"] == 0,
        }
    return targets


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default 1,16)")
    parser.add_argument("--channels", type=int, default=4, help="channels per client process (default 4)")
    parser.add_argument("--client-procs", type=int, default=1, help="resolve client processes (default 1)")
    parser.add_argument("--watchers", type=int, default=1000, help="WatchAliases streams (default 1000)")
    parser.add_argument("--watch-procs", type=int, default=2, help="watcher processes (default 2)")
    parser.add_argument("--watch-channels", type=int, default=4, help="connections per watcher process")
    parser.add_argument("--changes", type=int, default=50, help="SetAlias calls (default 50)")
    parser.add_argument("--change-interval", type=float, default=0.2, help="seconds between SetAlias calls")
    parser.add_argument("--watch-grace", type=float, default=10.0, help="seconds stragglers may take")
    parser.add_argument(
        "--idle-window", type=float, default=5.0, help="seconds of server CPU measured with idle watchers"
    )
    parser.add_argument("--skip-resolve", action="store_true", help="only the watch part")
    parser.add_argument("--skip-watch", action="store_true", help="only the resolve part")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--serve-fanout", metavar="LISTEN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    args = _parse_args(argv)
    if args.serve_fanout:
        asyncio.run(serve_fanout(args.serve_fanout))
        return 0
    started = utc_timestamp()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="modelreg-bench-resolve-"))
    succeeded = False
    results: list[dict[str, Any]] = []
    watch: dict[str, Any] | None = None
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            database = stack.enter_context(provision_database())
            token = bootstrap_admin_token(database.url, work)
            meta = bearer(token)
            server = stack.enter_context(start_registry_server(database.url, work / "server.log"))
            log(f"modelreg-server pid {server.pid} on {server.address}")
            setup, payload = asyncio.run(prepare(server.address, meta))
            if not args.skip_resolve:
                (work / "payloads").mkdir()
                (work / "payloads" / f"{PAYLOAD}.bin").write_bytes(payload)
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
                        )
                    ],
                )
                stack.callback(runner.close)
                addresses = {False: server.address, True: empty.address}
                results = [measure_resolve(runner, addresses, c, meta) for c in args.concurrency_levels]
            if not args.skip_watch:
                registry_watch = measure_watch(server.address, server.pid, meta, args)
                fanout = stack.enter_context(
                    ListeningProcess(
                        "fanout-server",
                        [sys.executable, "-m", "bench.resolve", "--serve-fanout", "127.0.0.1:0"],
                        log_path=work / "fanout-server.log",
                    )
                )
                log(f"fan-out reference pid {fanout.pid} on {fanout.address}")
                reference_watch = measure_watch(fanout.address, fanout.pid, meta, args, reference=True)
                watch = {
                    **registry_watch,
                    "fanout_reference": reference_watch,
                    "ratio_to_fanout_reference": {
                        key: ratio(registry_watch["latency_ms"][key], reference_watch["latency_ms"][key], 2)
                        for key in ("p50", "p99")
                    }
                    | {
                        "server_cpu_per_delivery": ratio(
                            registry_watch["server_cpu_us_per_delivery"],
                            reference_watch["server_cpu_us_per_delivery"],
                            2,
                        )
                    },
                }
        succeeded = True
    finally:
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed or interrupted; server logs kept in {work}")
    document = {
        "benchmark": "resolve",
        "timestamp": started,
        "machine": {
            **machine,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "postgres": database.server_version,
            "postgres_source": database.source,
        },
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency_levels,
            "channels_per_client_process": args.channels,
            "client_procs": args.client_procs,
        },
        "setup": setup,
        "resolve": results,
        "watch": watch,
        "targets": _targets(results, watch),
    }
    emit_json(document, args.out)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
