"""modelreg side by side with MLflow: the same registry operations on both, in one run, as a ratio table.

Starts one SeaweedFS S3 server and, next to each other on it:

  modelreg          one `modelreg-server` process on a fresh PostgreSQL database, bucket `modelreg-vs-mlflow`
  mlflow-4w         `mlflow server` as shipped (uvicorn, its default 4 workers, job runner) on its own fresh
                    database (`postgresql+psycopg2://`), artifacts proxied to s3://mlflow-vs-modelreg/mlflow-4w
  mlflow-1w         the same with `--workers 1` (MLflow at its best here) on a third database

Each system is driven from this process by its own Python client, the one its users get:

  modelreg  `modelreg.Registry`, the blocking SDK, one gRPC channel shared by the client threads
  MLflow    `mlflow.MlflowClient` over REST (its requests session keeps connections alive; the pool is sized
            to the client count with MLFLOW_HTTP_POOL_MAXSIZE so that no connection is dropped)

Both run under the same closed-loop harness: N threads, each repeating one call for a warm-up and then
`--seconds` measured (throughput, p50, p99, errors, CPU per call of client, server and the database's own
backends, and for MLflow the HTTP requests its client sends per call). A window in which fewer than
`--min-ops` calls ended is prolonged until they have (at most `--max-window` s), so that slow operations
are measured rather than reported as zero. Operations, at 1 and 16 clients:

  register  modelreg create_model_version (run id, description, 3 labels, 5 metrics) | MLflow
            create_model_version (run id, source in that run's artifacts, description, 3 tags)
  set_alias modelreg set_alias | MLflow set_registered_model_alias, to a random seeded version
  resolve   modelreg resolve_alias (the ResolveAlias RPC; no client cache) | MLflow get_model_version_by_alias
  search    the first page (50) of versions of a model with `--seed-versions` versions, one in three tagged
            env=prod: modelreg list_model_versions(filter='labels.env = "prod"') | MLflow
            search_model_versions("name = '...' AND tags.env = 'prod'", max_results=50)

then, `--repeats` times (fresh random bytes each time; the best run counts), an upload and a download of a
`--size-mib` file on each system: modelreg upload_model and download_model (fresh cache directory; default
path for a blob this large: straight from S3 over a presigned URL in parallel ranges, sha256-verified; once
more streamed through the registry with use_presigned_urls=False, outside the ratio), MLflow log_artifact
and download_artifacts with their defaults. Which path MLflow's bytes took
(through the tracking server, or straight to S3 with presigned URLs) is read from the tracking server's
access log during the transfer, not assumed. The order of the three systems rotates from row to row.
Before the rows, GET /health on one keep-alive connection shows each MLflow server's HTTP floor.

Prints JSON (per row: the three systems' figures and modelreg's ratio to each, and to the better MLflow) and
a table on stderr. Targets: modelreg ahead on every row, resolve at least 10x the better MLflow.

Usage: python bench/vs_mlflow.py [--seconds 10] [--size-mib 1024] [--out bench/results/vs_mlflow.json]
Needs the `bench` extra (mlflow, psycopg2-binary, boto3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Running as `python bench/vs_mlflow.py` puts bench/ (not the repository) on sys.path.
if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BenchDatabase,
    ListeningProcess,
    analyze_database,
    bootstrap_admin_token,
    emit_json,
    latency_summary,
    log,
    machine_info,
    process_cpu_seconds,
    provision_database,
    ratio,
    sigterm_as_interrupt,
    start_registry_server,
    utc_timestamp,
)
from modelreg_server.devstack import DEV_ACCESS_KEY, DEV_SECRET_KEY

MiB = 1024 * 1024
MODELREG = "modelreg"
MLFLOW_4W = "mlflow_4_workers"
MLFLOW_1W = "mlflow_1_worker"
SYSTEMS = (MODELREG, MLFLOW_4W, MLFLOW_1W)
SHORT = {MODELREG: "modelreg", MLFLOW_4W: "mlflow-4w", MLFLOW_1W: "mlflow-1w"}

REGISTER_MODEL = "bench-register"
SEARCH_MODEL = "bench-search"
ARTIFACT_MODEL = "bench-artifact"
ALIAS = "champion"
ENVIRONMENTS = ("prod", "staging", "dev")
PAGE_SIZE = 50
MODELREG_BUCKET = "modelreg-vs-mlflow"
MLFLOW_BUCKET = "mlflow-vs-modelreg"
WARMUP_BUCKET = "warmup"
METRICS = ("auc", "precision", "recall", "f1", "log_loss")
MLFLOW_READY_TIMEOUT_S = 900.0
_ACCESS_LINE = re.compile(rb'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


# --------------------------------------------------------------------------------------------------
# What a registration carries (the same facts on both systems)
# --------------------------------------------------------------------------------------------------


def _labels(rng: random.Random, env: str | None = None) -> dict[str, str]:
    return {"env": env or rng.choice(ENVIRONMENTS), "team": "risk", "framework": "xgboost"}


def _metrics(rng: random.Random) -> dict[str, float]:
    return {name: round(rng.uniform(0.5, 0.99), 4) for name in METRICS}


DESCRIPTION = "Nightly retrain on the last 90 days of card transactions."


# --------------------------------------------------------------------------------------------------
# The two clients behind one interface
# --------------------------------------------------------------------------------------------------


class System(Protocol):
    """One registry as its users' Python client sees it. Every method is one user-level call."""

    def create_model(self, model: str) -> None:
        """Creates the (registered) model."""
        ...

    def register(self, model: str, client: int, labels: Mapping[str, str], rng: random.Random) -> object:
        """Registers a new version of `model` (client `client` uses its own training run)."""
        ...

    def set_alias(self, model: str, alias: str, version: int) -> object:
        """Points `alias` of `model` at `version`."""
        ...

    def resolve(self, model: str, alias: str) -> int:
        """The version number `alias` of `model` points at."""
        ...

    def search(self, model: str, env: str, page_size: int) -> int:
        """The first page of versions of `model` labelled/tagged env=`env`; returns its length."""
        ...

    def upload(self, model: str, path: Path) -> str:
        """Publishes the file; returns a reference `download` takes."""
        ...

    def download(self, ref: str, dest: Path, cache: Path) -> Path:
        """Fetches what `upload` published into `dest`; returns the downloaded file."""
        ...


class ModelregSystem:
    """modelreg through its blocking SDK, one channel shared by every client thread."""

    def __init__(self, address: str, token: str) -> None:
        from modelreg import Registry

        self.registry = Registry(address, token=token, timeout=600.0)

    def create_model(self, model: str) -> None:
        """Creates the model."""
        self.registry.create_model(model, description="vs-mlflow benchmark", owner_team="risk")

    def register(self, model: str, client: int, labels: Mapping[str, str], rng: random.Random) -> object:
        """create_model_version with the training run's id, description, labels and metrics."""
        return self.registry.create_model_version(
            model,
            run_id=f"run-{client:02d}",
            description=DESCRIPTION,
            labels=labels,
            metrics=_metrics(rng),
        )

    def set_alias(self, model: str, alias: str, version: int) -> object:
        """set_alias (SetAlias RPC)."""
        return self.registry.set_alias(model, alias, version)

    def resolve(self, model: str, alias: str) -> int:
        """resolve_alias (ResolveAlias RPC); the SDK keeps no cache for it."""
        return int(self.registry.resolve_alias(model, alias).version)

    def search(self, model: str, env: str, page_size: int) -> int:
        """The first page of list_model_versions with a label filter: one ListModelVersions call."""
        versions = self.registry.list_model_versions(
            model, filter=f'labels.env = "{env}"', page_size=page_size
        )
        return len(list(itertools.islice(versions, page_size)))

    def upload(self, model: str, path: Path) -> str:
        """upload_model: hash, send the missing blobs, register a version with the package digest."""
        version = self.registry.upload_model(model, path, format="custom")
        return str(version.name)

    def download(self, ref: str, dest: Path, cache: Path, *, presigned: bool | None = None) -> Path:
        """download_model with its defaults (large blobs from S3 over presigned URLs, verified) and a fresh
        cache; `presigned=False` streams through the registry instead."""
        self.registry.download_model(ref, dest, cache_dir=cache, use_presigned_urls=presigned)
        files = [p for p in dest.rglob("*") if p.is_file()]
        if len(files) != 1:
            raise RuntimeError(f"expected one downloaded file, found {files}")
        return files[0]

    def close(self) -> None:
        """Closes the channel."""
        self.registry.close()


class MlflowSystem:
    """MLflow through `MlflowClient`: the one place this benchmark touches MLflow's API."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.experiment_id = ""
        self.runs: list[tuple[str, str]] = []  # (run id, artifact URI) per client
        self.upload_run: tuple[str, str] = ("", "")

    def prepare(self, clients: int, rng: random.Random) -> None:
        """An experiment and one training run (with metrics) per client; untimed."""
        from mlflow.entities import Metric

        self.experiment_id = self.client.create_experiment(f"vs-modelreg-{uuid.uuid4().hex[:8]}")
        now = int(time.time() * 1000)
        for _ in range(clients + 1):
            run = self.client.create_run(self.experiment_id)
            metrics = [Metric(name, value, now, 0) for name, value in _metrics(rng).items()]
            self.client.log_batch(run.info.run_id, metrics=metrics)
            self.runs.append((run.info.run_id, str(run.info.artifact_uri)))
        self.upload_run = self.runs.pop()

    def create_model(self, model: str) -> None:
        """Creates the registered model."""
        self.client.create_registered_model(model, description="vs-modelreg benchmark")

    def register(self, model: str, client: int, labels: Mapping[str, str], rng: random.Random) -> object:
        """create_model_version from the client's run, with description and tags (metrics live on the run)."""
        run_id, artifact_uri = self.runs[client % len(self.runs)]
        return self.client.create_model_version(
            model, source=f"{artifact_uri}/model", run_id=run_id, tags=dict(labels), description=DESCRIPTION
        )

    def set_alias(self, model: str, alias: str, version: int) -> object:
        """set_registered_model_alias."""
        self.client.set_registered_model_alias(model, alias, str(version))
        return None

    def resolve(self, model: str, alias: str) -> int:
        """get_model_version_by_alias."""
        return int(self.client.get_model_version_by_alias(model, alias).version)

    def search(self, model: str, env: str, page_size: int) -> int:
        """search_model_versions with a tag filter, one page."""
        page = self.client.search_model_versions(
            f"name = '{model}' AND tags.env = '{env}'", max_results=page_size
        )
        return len(page)

    def upload(self, model: str, path: Path) -> str:
        """log_artifact into the upload run, with the client's defaults."""
        run_id, _ = self.upload_run
        self.client.log_artifact(run_id, str(path), artifact_path="model")
        return f"model/{path.name}"

    def download(self, ref: str, dest: Path, cache: Path) -> Path:
        """download_artifacts with the client's defaults (`cache` is unused: MLflow keeps none)."""
        run_id, _ = self.upload_run
        dest.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, ref, str(dest)))


# --------------------------------------------------------------------------------------------------
# Processes: the MLflow server, process groups, CPU and I/O accounting
# --------------------------------------------------------------------------------------------------


def _pgrp(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[2])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def group_pids(pgid: int) -> list[int]:
    """Every live process of process group `pgid`."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _pgrp(int(entry.name)) == pgid
    ]


def postgres_backends(database: str) -> list[int]:
    """The PostgreSQL backends serving `database` (their process title names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres" and f" {database} " in _cmdline(
                    int(entry.name)
                ):
                    found.append(int(entry.name))
    return found


def _database_name(url: str) -> str:
    return url.rpartition("/")[2].partition("?")[0]


def _backends_of(database: str) -> Callable[[], list[int]]:
    return lambda: postgres_backends(database)


class Meter:
    """CPU seconds of named groups of processes, and of this process, between `start()` and `stop()`.

    A group is re-enumerated at `stop()`; a process that appeared meanwhile (a restarted worker, a new
    database backend) counts from zero.
    """

    def __init__(self, groups: Mapping[str, Callable[[], Sequence[int]]]) -> None:
        self._groups = groups
        self._cpu: dict[int, float] = {}
        self._client_cpu = 0.0
        self._wall = 0.0

    def start(self) -> None:
        """First snapshot."""
        self._cpu = {}
        for pids in self._groups.values():
            for pid in pids():
                self._cpu[pid] = process_cpu_seconds(pid) or 0.0
        self._client_cpu = time.process_time()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """`{group}_cpu_s` per group, and `client_cpu_s` (this process)."""
        readings: dict[str, float] = {"client_cpu_s": round(time.process_time() - self._client_cpu, 3)}
        for name, pids in self._groups.items():
            cpu = 0.0
            for pid in pids():
                after = process_cpu_seconds(pid)
                if after is not None:
                    cpu += after - self._cpu.get(pid, 0.0)
            readings[f"{name}_cpu_s"] = round(cpu, 3)
        return readings


class MlflowServer:
    """`mlflow server` in its own process group, stopped as a group."""

    def __init__(
        self, name: str, database: BenchDatabase, s3_endpoint: str, port: int, workers: int | None, work: Path
    ) -> None:
        self.name = name
        self.workers = workers or 4
        self.port = port
        self.log_path = work / f"{name}.log"
        self.backend_uri = database.url.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.database = _database_name(database.url)
        self.argv = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            f"s3://{MLFLOW_BUCKET}/{name}",
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(["--workers", str(workers)] if workers is not None else []),
        ]
        env = {
            **os.environ,
            "MLFLOW_S3_ENDPOINT_URL": f"http://{s3_endpoint}",
            # SeaweedFS checks signatures against its one identity (the dev key pair).
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.startup_s: float | None = None
        self.workers_started = 0

    @property
    def url(self) -> str:
        """The tracking URI."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        """Process group (and PID) of the `mlflow server` command."""
        return self.proc.pid

    def log_text(self, start: int = 0) -> bytes:
        """The server log from byte `start`."""
        with self.log_path.open("rb") as f:
            f.seek(start)
            return f.read()

    def log_size(self) -> int:
        """Current size of the server log."""
        return self.log_path.stat().st_size

    def requests_since(self, offset: int) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request in the access log from byte `offset`."""
        return [
            (m.group(1).decode(), m.group(2).decode(errors="replace"), int(m.group(3)))
            for m in _ACCESS_LINE.finditer(self.log_text(offset))
        ]

    def worker_restarts(self) -> int:
        """Workers uvicorn's supervisor found dead (or unresponsive) and replaced so far."""
        return self.log_text().count(b"] died")

    def server_pids(self) -> list[int]:
        """The HTTP server's processes (supervisor and workers), without the job runner."""
        return [
            p for p in group_pids(self.pgid) if "huey" not in (c := _cmdline(p)) and "_job_runner" not in c
        ]

    def job_pids(self) -> list[int]:
        """The background job runner's processes that `mlflow server` starts by default."""
        return [p for p in group_pids(self.pgid) if "huey" in (c := _cmdline(p)) or "_job_runner" in c]

    def wait_ready(self, timeout: float = MLFLOW_READY_TIMEOUT_S) -> None:
        """Until /health answers and every worker has completed its start-up."""
        deadline = self.started_at + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_text()[-3000:].decode(errors="replace")
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log tail:\n{tail}")
            healthy = False
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp,
            ):
                healthy = resp.status == 200
            self.workers_started = self.log_text().count(b"Application startup complete")
            if healthy and self.workers_started >= self.workers:
                self.startup_s = round(time.monotonic() - self.started_at, 1)
                return
            if time.monotonic() > deadline:
                if not healthy:
                    raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")
                # Serving, with workers still being (re)started: measure it as it is, and say so.
                up = f"{self.workers_started} of {self.workers}"
                log(f"{self.name}: only {up} workers up after {timeout:.0f} s")
                self.startup_s = round(time.monotonic() - self.started_at, 1)
                return
            time.sleep(0.5)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # Workers and job consumers may outlive the command; the group id is ours alone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()


def free_tcp_port() -> int:
    """A free loopback port below the ephemeral range (SeaweedFS's rule for its own ports too)."""
    from modelreg_server.devstack import free_port

    return free_port(below=32000)


# --------------------------------------------------------------------------------------------------
# The closed-loop harness (threads, the same for every system)
# --------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """What one measured run produced."""

    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    meter: dict[str, float] = field(default_factory=dict)
    http_requests: int | None = None
    http_errors: int | None = None
    worker_restarts: int | None = None


def run_closed_loop(
    make_op: Callable[[int], Callable[[], object]],
    concurrency: int,
    warmup_s: float,
    seconds: float,
    meter: Meter,
    server: MlflowServer | None,
    *,
    min_ops: int = 1,
    max_seconds: float = 300.0,
) -> Window:
    """`concurrency` threads each repeat their op; calls ending inside the measured window count.

    The window lasts `seconds`, longer if fewer than `min_ops` calls have ended in it by then (slow
    operations), but at most `max_seconds`: it then closes just after the call that made `min_ops`.
    """
    ops = [make_op(i) for i in range(concurrency)]
    result = Window(seconds)
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2
    measure_from = start_at + warmup_s
    stop_at = [measure_from + seconds]  # moved later (under the lock) while too few calls have ended

    def client(index: int) -> None:
        op = ops[index]
        time.sleep(max(0.0, start_at - time.monotonic()))
        while (begin := time.monotonic()) < stop_at[0]:
            try:
                op()
            except Exception as exc:  # counted, not fatal
                outcome: str | None = type(exc).__name__
            else:
                outcome = None
            end = time.monotonic()
            with lock:
                if measure_from <= end <= stop_at[0]:
                    if outcome is None:
                        result.latencies_s.append(end - begin)
                    else:
                        result.errors[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    log_from = server.log_size() if server else 0
    restarts_before = server.worker_restarts() if server else 0
    meter.start()
    time.sleep(max(0.0, stop_at[0] - time.monotonic()))
    while True:
        with lock:
            now = time.monotonic()
            ended = len(result.latencies_s) + sum(result.errors.values())
            if ended >= min_ops or now >= measure_from + max_seconds:
                stop_at[0] = now
                break
            stop_at[0] = now + 1.0  # keep the clients going
        time.sleep(0.02)
    result.seconds = stop_at[0] - measure_from
    result.meter = meter.stop()
    if server is not None:
        requests = server.requests_since(log_from)
        result.http_requests = len(requests)
        result.http_errors = sum(1 for _, _, status in requests if status >= 400)
        result.worker_restarts = server.worker_restarts() - restarts_before
    for thread in threads:
        thread.join(max_seconds)
    return result


def summarize(window: Window, system: str) -> dict[str, Any]:
    """The figures of one system in one row: latency summary, errors, CPU per call."""
    summary = latency_summary(window.latencies_s, window.seconds)
    ops = summary["ops"] or 0
    meter = window.meter

    def per_op_ms(seconds: float) -> float | None:
        return round(seconds * 1000.0 / ops, 2) if ops else None

    cpu = {
        "client": per_op_ms(meter.get("client_cpu_s", 0.0)),
        "server": per_op_ms(meter.get(f"{system}_cpu_s", 0.0)),
        "database_backends": per_op_ms(meter.get(f"{system}_db_cpu_s", 0.0)),
    }
    if system != MODELREG:
        cpu["job_runner"] = per_op_ms(meter.get(f"{system}_jobs_cpu_s", 0.0))
    figures: dict[str, Any] = {
        **summary,
        "errors": sum(window.errors.values()),
        "error_types": dict(sorted(window.errors.items())),
        "cpu_ms_per_op": cpu,
    }
    if window.http_requests is not None:
        figures["http_requests_per_op"] = round(window.http_requests / ops, 2) if ops else None
        figures["http_error_responses"] = window.http_errors
        figures["worker_restarts"] = window.worker_restarts
    return figures


# --------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------


def seed(system: System, versions: int, clients: int) -> float:
    """Registers `versions` versions of the search model, one in three tagged env=prod; returns seconds."""
    numbers = iter(range(versions))
    lock = threading.Lock()
    stop = threading.Event()  # set when the benchmark is interrupted, so that the clients give up

    def client(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            system.register(SEARCH_MODEL, index, _labels(rng, ENVIRONMENTS[number % 3]), rng)

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        try:
            for future in [pool.submit(client, i) for i in range(clients)]:
                future.result()
        finally:
            stop.set()
    return time.monotonic() - began


def _write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            f.write(block)
            left -= len(block)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------

OPS = ("register", "set_alias", "resolve", "search")
OP_TITLE = {
    "register": "register version",
    "set_alias": "set alias",
    "resolve": "resolve alias",
    "search": "search (filter, page 50)",
    "upload": "upload",
    "download": "download",
}


def _op_factory(system: System, op: str, seed_versions: int) -> Callable[[int], Callable[[], object]]:
    def make(client: int) -> Callable[[], object]:
        rng = random.Random(1000 + client)
        if op == "register":
            return lambda: system.register(REGISTER_MODEL, client, _labels(rng), rng)
        if op == "set_alias":
            return lambda: system.set_alias(SEARCH_MODEL, ALIAS, rng.randint(1, seed_versions))
        if op == "resolve":
            return lambda: system.resolve(SEARCH_MODEL, ALIAS)

        def search() -> int:
            found = system.search(SEARCH_MODEL, "prod", PAGE_SIZE)
            if found != PAGE_SIZE:
                raise RuntimeError(f"short page: {found}")
            return found

        return search

    return make


def _ratios(row: dict[str, Any], key: str) -> dict[str, float | None]:
    """modelreg's figure over each MLflow's, and over the better of the two (higher is better)."""
    ours = row[MODELREG][key]
    theirs = [row[s][key] for s in (MLFLOW_4W, MLFLOW_1W) if row[s][key] is not None]
    return {
        "vs_mlflow_4_workers": ratio(ours, row[MLFLOW_4W][key], 2),
        "vs_mlflow_1_worker": ratio(ours, row[MLFLOW_1W][key], 2),
        "vs_best_mlflow": ratio(ours, max(theirs), 2) if theirs else None,
    }


@dataclass
class Bench:
    """Everything a run has started, and the figures it measured."""

    args: argparse.Namespace
    systems: dict[str, System]
    mlflow_servers: dict[str, MlflowServer]
    meter: Meter
    work: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    source_sha256: str = ""

    def order(self, row_index: int) -> list[str]:
        """The three systems, rotated by one per row so that none is always measured first."""
        shift = row_index % len(SYSTEMS)
        return [*SYSTEMS[shift:], *SYSTEMS[:shift]]

    def catalog_row(self, op: str, concurrency: int) -> dict[str, Any]:
        """One operation at one client count on all three systems."""
        row: dict[str, Any] = {"op": op, "clients": concurrency, "unit": "ops/s"}
        for name in self.order(len(self.rows)):
            make = _op_factory(self.systems[name], op, self.args.seed_versions)
            server = self.mlflow_servers.get(name)
            window = run_closed_loop(
                make,
                concurrency,
                self.args.warmup,
                self.args.seconds,
                self.meter,
                server,
                min_ops=self.args.min_ops,
                max_seconds=self.args.max_window,
            )
            row[name] = summarize(window, name)
            figures = row[name]
            log(
                f"{op} x{concurrency} {SHORT[name]}: {figures['throughput_per_s']}/s"
                f" p50 {figures['p50_ms']} ms p99 {figures['p99_ms']} ms errors {figures['errors']}"
            )
        row["ratio_throughput"] = _ratios(row, "throughput_per_s")
        row["speedup_p50"] = {
            k: ratio(row[s]["p50_ms"], row[MODELREG]["p50_ms"], 2)
            for k, s in (("vs_mlflow_4_workers", MLFLOW_4W), ("vs_mlflow_1_worker", MLFLOW_1W))
        }
        self.rows.append(row)
        return row

    def _transfer(
        self, name: str, op: str, source: Path, size: int, ref: str, *, presigned: bool | None = None
    ) -> tuple[str, dict[str, Any]]:
        """One upload (returns the reference to download) or one download (checked) on one system."""
        system = self.systems[name]
        server = self.mlflow_servers.get(name)
        dest, cache = self.work / f"download-{name}", self.work / f"cache-{name}"
        for leftover in (dest, cache):
            shutil.rmtree(leftover, ignore_errors=True)
        restarts = server.worker_restarts() if server else 0
        log_from = server.log_size() if server else 0
        self.meter.start()
        began = time.perf_counter()
        if op == "upload":
            ref = system.upload(ARTIFACT_MODEL, source)
            got = None
        elif presigned is not None:
            assert isinstance(system, ModelregSystem)
            got = system.download(ref, dest, cache, presigned=presigned)
        else:
            got = system.download(ref, dest, cache)
        seconds = time.perf_counter() - began
        meter = self.meter.stop()
        if got is not None and _sha256(got) != self.source_sha256:
            raise RuntimeError(f"{name} downloaded different bytes")
        for leftover in (dest, cache):
            shutil.rmtree(leftover, ignore_errors=True)
        figures: dict[str, Any] = {
            "seconds": round(seconds, 2),
            "mb_s": round(size / seconds / 1e6, 1),
            "cpu_s": {
                "client": meter.get("client_cpu_s"),
                "server": meter.get(f"{name}_cpu_s"),
                "seaweedfs": meter.get("seaweedfs_cpu_s"),
            },
        }
        if server is None:
            figures["path"] = MODELREG_PATHS["through_registry" if presigned is False else op]
        else:
            requests = server.requests_since(log_from)
            figures["path"] = mlflow_path(op, requests)
            figures["http_requests"] = dict(Counter(f"{m} {_endpoint(p)}" for m, p, _ in requests))
            figures["worker_restarts"] = server.worker_restarts() - restarts
        variant = " (through the registry)" if presigned is False else ""
        log(f"{op} {SHORT[name]}{variant}: {figures['mb_s']} MB/s, {figures['path']}")
        return ref, figures

    def transfer_rows(self, size: int, repeats: int) -> None:
        """Uploads and downloads of a fresh random file per repeat on every system; the best run counts.

        Every repeat writes new bytes: modelreg would otherwise find the blob already stored and send
        nothing. modelreg also downloads once per repeat through the registry (not in the ratio).
        """
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            op: {n: [] for n in SYSTEMS} for op in ("upload", "download")
        }
        relayed: list[dict[str, Any]] = []
        source = self.work / "model.bin"
        for repeat in range(repeats):
            log(f"repeat {repeat + 1}/{repeats}: writing {size // MiB} MiB of random bytes")
            _write_random_file(source, size)
            self.source_sha256 = _sha256(source)
            refs: dict[str, str] = {}
            for op in ("upload", "download"):
                for name in self.order(repeat + (op == "download")):
                    log(f"{op} {size // MiB} MiB {SHORT[name]} ...")
                    refs[name], figures = self._transfer(name, op, source, size, refs.get(name, ""))
                    runs[op][name].append(figures)
            relayed.append(
                self._transfer(MODELREG, "download", source, size, refs[MODELREG], presigned=False)[1]
            )
            source.unlink()
        for op in ("upload", "download"):
            row: dict[str, Any] = {"op": op, "clients": 1, "unit": "MB/s", "size_mib": size // MiB}
            for name in SYSTEMS:
                best = max(runs[op][name], key=lambda figures: float(figures["mb_s"]))
                row[name] = {**best, "runs_mb_s": [figures["mb_s"] for figures in runs[op][name]]}
            if op == "download":
                best = max(relayed, key=lambda figures: float(figures["mb_s"]))
                row[MODELREG]["through_registry_option"] = {**best, "runs_mb_s": [f["mb_s"] for f in relayed]}
            row["ratio_throughput"] = _ratios(row, "mb_s")
            self.rows.append(row)

    def health_floor(self, seconds: float) -> dict[str, Any]:
        """MLflow's HTTP floor: GET /health on one keep-alive connection, 1 client, per MLflow server."""
        floors: dict[str, Any] = {}
        for name, server in self.mlflow_servers.items():
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

            def health(connection: http.client.HTTPConnection = connection) -> object:
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"health answered {response.status}")
                return None

            window = run_closed_loop(lambda _: health, 1, 0.5, seconds, self.meter, server)
            connection.close()
            summary = latency_summary(window.latencies_s, window.seconds)
            floors[name] = {k: summary[k] for k in ("ops", "throughput_per_s", "p50_ms", "p99_ms")}
            log(f"GET /health keep-alive {SHORT[name]}: p50 {summary['p50_ms']} ms")
        return floors


MODELREG_PATHS = {
    "upload": "direct to S3 (the SDK default for blobs of 16 MiB to 5 GiB: CreateDirectUpload, one presigned "
    "PUT that signs the sha256 checksum and If-None-Match, CommitDirectUpload)",
    "download": "direct from S3 (the SDK default for blobs of 16 MiB and more: a presigned URL from "
    "GetBlobDownloadUrl, 4 parallel 64 MiB ranged GETs, sha256-verified)",
    "through_registry": "through the registry (DownloadBlob gRPC stream, use_presigned_urls=False)",
}


def _endpoint(path: str) -> str:
    """An access-log path without run ids, file names and query: the endpoint it hit."""
    path = path.partition("?")[0]
    for prefix in ("/api/2.0/mlflow-artifacts/presigned", "/api/2.0/mlflow-artifacts/artifacts"):
        if path.startswith(prefix + "/"):
            return prefix + "/..."
    return path


def mlflow_path(op: str, requests: Sequence[tuple[str, str, int]]) -> str:
    """Which way MLflow's client moved the bytes, from the tracking server's access log."""
    endpoints = {(method, _endpoint(path)) for method, path, _ in requests}
    if op == "upload":
        if any("/mlflow-artifacts/mpu/create" in path for _, path in endpoints):
            return "direct to S3 (presigned multipart upload; the server only signs)"
        if ("PUT", "/api/2.0/mlflow-artifacts/artifacts/...") in endpoints:
            return "through the tracking server (proxied PUT)"
    else:
        if ("GET", "/api/2.0/mlflow-artifacts/presigned/...") in endpoints:
            return "direct from S3 (presigned URL, ranged GETs; the server only signs)"
        if ("GET", "/api/2.0/mlflow-artifacts/artifacts/...") in endpoints:
            return "through the tracking server (proxied GET)"
    return f"unknown ({sorted(endpoints)})"


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _cell(figures: Mapping[str, Any], unit: str) -> str:
    if unit == "MB/s":
        return f"{figures['mb_s']:.1f}"
    value, p50 = figures["throughput_per_s"], figures["p50_ms"]
    return "-" if value is None or p50 is None else f"{value:.1f} ({p50:.1f} ms)"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The human-readable ratio table (throughput, and p50 in parentheses)."""
    header = (
        "operation",
        "clients",
        "unit",
        "modelreg",
        "mlflow-4w",
        "mlflow-1w",
        "vs 4w",
        "vs 1w",
        "vs best",
    )
    lines = [header]
    for row in rows:
        unit = row["unit"]
        ratios = row["ratio_throughput"]
        lines.append((
            OP_TITLE[row["op"]] + (f" {row['size_mib']} MiB" if "size_mib" in row else ""),
            str(row["clients"]),
            unit,
            *(_cell(row[s], unit) for s in SYSTEMS),
            _times(ratios["vs_mlflow_4_workers"]),
            _times(ratios["vs_mlflow_1_worker"]),
            _times(ratios["vs_best_mlflow"]),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    for row in rows:
        if row["unit"] == "MB/s":
            text.extend(f"  {row['op']} path, {SHORT[s]}: {row[s]['path']}" for s in SYSTEMS)
    return "\n".join(text)


def targets(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """modelreg ahead of the better MLflow on every row; resolve at least 10x ahead."""
    # A ratio is missing only when an MLflow completed no call in the longest window: not measured.
    unmeasured = [
        f"{r['op']} x{r['clients']}" for r in rows if r["ratio_throughput"]["vs_best_mlflow"] is None
    ]
    behind = [
        f"{r['op']} x{r['clients']}"
        for r in rows
        if r["ratio_throughput"]["vs_best_mlflow"] is not None
        and r["ratio_throughput"]["vs_best_mlflow"] <= 1.0
    ]
    resolve = [row["ratio_throughput"]["vs_best_mlflow"] or 0.0 for row in rows if row["op"] == "resolve"]
    return {
        "ahead_on_every_row": not behind and not unmeasured,
        "rows_not_ahead": behind,
        "rows_unmeasured": unmeasured,
        "resolve_at_least_10x": bool(resolve) and min(resolve) >= 10.0,
        "resolve_min_ratio": min(resolve) if resolve else None,
    }


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per timed op (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each (default 2)"
    )
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default 1,16)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"subset of {','.join(OPS)}")
    parser.add_argument(
        "--min-ops", type=int, default=5, help="calls a window waits for beyond --seconds (default 5)"
    )
    parser.add_argument(
        "--max-window", type=float, default=300.0, help="longest a window may grow to (default 300 s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="uploads and downloads per system, best counts (default 2)"
    )
    parser.add_argument("--seed-versions", type=int, default=1000, help="versions of the searched model")
    parser.add_argument("--size-mib", type=int, default=1024, help="artifact size; 0 skips transfers")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.op_list = [o.strip() for o in args.ops.split(",") if o.strip()]
    if unknown := set(args.op_list) - set(OPS):
        parser.error(f"unknown ops: {', '.join(sorted(unknown))}")
    return args


def _quiet_mlflow() -> None:
    import mlflow  # configures its loggers on import; quieten them afterwards

    del mlflow
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


@contextlib.contextmanager
def _seaweed(work: Path) -> Iterator[Any]:
    from modelreg_server.devstack import SeaweedS3, ensure_bucket

    s3 = SeaweedS3.start(work / "s3")
    try:
        for bucket in (MLFLOW_BUCKET, WARMUP_BUCKET):
            ensure_bucket(s3.endpoint, s3.access_key, s3.secret_key, bucket)
        yield s3
    finally:
        s3.stop(grace=5)


def _warm_s3(s3: Any, work: Path) -> None:
    """SeaweedFS allocates volumes on its first writes; pay for that before anything is measured."""
    warm = work / "warmup.bin"
    _write_random_file(warm, 64 * MiB)
    s3.client().fput_object(WARMUP_BUCKET, "warmup", str(warm), part_size=16 * MiB)
    warm.unlink()


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison; returns the exit code."""
    args = _parse_args(argv)
    max_clients = max([*args.concurrency_levels, 16])
    # MLflow's client keeps 10 connections per host by default; more client threads would reconnect.
    os.environ.setdefault("MLFLOW_HTTP_POOL_MAXSIZE", str(max_clients))
    _quiet_mlflow()
    started = utc_timestamp()
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="modelreg-vs-mlflow-"))
    succeeded = False
    setup: dict[str, Any] = {}
    servers_info: dict[str, Any] = {}
    try:
        with sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            log("starting SeaweedFS")
            s3 = stack.enter_context(_seaweed(work))
            _warm_s3(s3, work)
            databases = {
                name: stack.enter_context(provision_database(f"vs_mlflow_{name}")) for name in SYSTEMS
            }
            token = bootstrap_admin_token(databases[MODELREG].url, work)
            registry_server: ListeningProcess = stack.enter_context(
                start_registry_server(
                    databases[MODELREG].url,
                    work / "modelreg-server.log",
                    MODELREG_S3_ENDPOINT=s3.endpoint,
                    MODELREG_S3_ACCESS_KEY=s3.access_key,
                    MODELREG_S3_SECRET_KEY=s3.secret_key,
                    MODELREG_S3_BUCKET=MODELREG_BUCKET,
                )
            )
            log(f"modelreg-server pid {registry_server.pid} on {registry_server.address}")
            mlflow_servers: dict[str, MlflowServer] = {}
            # One after the other: started together they slow each other's start-up.
            for name, workers in ((MLFLOW_1W, 1), (MLFLOW_4W, None)):
                server = MlflowServer(name, databases[name], s3.endpoint, free_tcp_port(), workers, work)
                stack.callback(server.stop)
                log(f"starting {SHORT[name]}: {' '.join(server.argv)}")
                server.wait_ready()
                restarts = server.worker_restarts()
                log(f"{SHORT[name]} ready in {server.startup_s} s ({restarts} worker restarts)")
                mlflow_servers[name] = server

            modelreg = ModelregSystem(registry_server.address, token)
            stack.callback(modelreg.close)
            systems: dict[str, System] = {MODELREG: modelreg}
            rng = random.Random(7)
            for name in (MLFLOW_4W, MLFLOW_1W):
                mlflow_system = MlflowSystem(mlflow_servers[name].url)
                mlflow_system.prepare(max_clients, rng)
                systems[name] = mlflow_system
            for system in systems.values():
                for model in (REGISTER_MODEL, SEARCH_MODEL, ARTIFACT_MODEL):
                    system.create_model(model)
            # This machine's PostgreSQL runs without autovacuum; analyze as it would have on a live database
            # (fresh tables without statistics get plans costed for thousands of rows, JIT-compiled).
            for database in databases.values():
                asyncio.run(analyze_database(database.url))
            for name in SYSTEMS:
                log(f"seeding {args.seed_versions} versions on {SHORT[name]} with 16 clients ...")
                seconds = seed(systems[name], args.seed_versions, 16)
                systems[name].set_alias(SEARCH_MODEL, ALIAS, 1)
                setup[name] = {"seed_seconds": round(seconds, 1)}
                log(f"seeded {SHORT[name]} in {seconds:.1f} s")
            for database in databases.values():
                asyncio.run(analyze_database(database.url))

            groups: dict[str, Callable[[], Sequence[int]]] = {
                MODELREG: lambda: [registry_server.pid],
                f"{MODELREG}_db": _backends_of(_database_name(databases[MODELREG].url)),
                "seaweedfs": lambda: [s3.pid],
            }
            for name, server in mlflow_servers.items():
                groups[name] = server.server_pids
                groups[f"{name}_jobs"] = server.job_pids
                groups[f"{name}_db"] = _backends_of(server.database)
            bench = Bench(args, systems, mlflow_servers, Meter(groups), work)
            health = bench.health_floor(min(args.seconds, 5.0))
            for op in args.op_list:
                for concurrency in args.concurrency_levels:
                    bench.catalog_row(op, concurrency)
            if args.size_mib > 0:
                bench.transfer_rows(args.size_mib * MiB, max(1, args.repeats))
            for name, server in mlflow_servers.items():
                servers_info[name] = {
                    "argv": server.argv,
                    "startup_seconds": server.startup_s,
                    "workers_up_at_start": server.workers_started,
                    "worker_restarts_total": server.worker_restarts(),
                    "health_keepalive": health[name],
                    "processes_at_end": {
                        "server": len(server.server_pids()),
                        "job_runner": len(server.job_pids()),
                    },
                }
            rows = bench.rows
        succeeded = True
    finally:
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"failed or interrupted; logs kept in {work}")
    import mlflow
    import sqlalchemy

    document = {
        "benchmark": "vs_mlflow",
        "timestamp": started,
        "machine": {
            **machine,
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
            "postgres": databases[MODELREG].server_version,
            "mlflow": mlflow.__version__,
            "sqlalchemy": sqlalchemy.__version__,
        },
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency_levels,
            "seed_versions": args.seed_versions,
            "page_size": PAGE_SIZE,
            "size_mib": args.size_mib,
            "transfer_repeats": args.repeats,
            "min_ops_per_window": args.min_ops,
            "max_window_s": args.max_window,
            "harness": "closed loop, one thread per client, in this process, for every system",
            "mlflow_http_pool_maxsize": os.environ["MLFLOW_HTTP_POOL_MAXSIZE"],
            "analyze": "ANALYZE on every database before and after seeding (autovacuum is off here)",
        },
        "clients": {
            MODELREG: "modelreg.Registry (blocking SDK), one gRPC channel shared by the client threads",
            "mlflow": "mlflow.MlflowClient (REST over a keep-alive requests session), shared by the threads",
            "resolve": "modelreg: Registry.resolve_alias -> ResolveAlias RPC (no cache); "
            "MLflow: MlflowClient.get_model_version_by_alias",
        },
        "servers": {MODELREG: {"processes": 1}, **servers_info},
        "setup": setup,
        "results": rows,
        "targets": targets(rows),
    }
    emit_json(document, args.out)
    print(table(rows), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
