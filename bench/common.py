"""Helpers the benchmarks share: databases, server processes, the load runner, CPU accounting, statistics.

A benchmark here starts everything it measures as separate processes on the loopback interface (the
registry server, the empty reference server of `bench.empty_server`), drives them with grpc.aio clients
(asyncio tasks over a few channels, from this process or from several client processes), and prints one
JSON document. Absolute times on the shared 2-core machines are noise, so every figure is reported next to
the same load against the empty reference handler, measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CALL_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"listening on (\S+:\d+)")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress for the human at the terminal; stdout is reserved for the JSON result."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Statistics and output
# --------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of already sorted values, interpolating between closest ranks."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def latency_summary(latencies_s: Sequence[float], seconds: float) -> dict[str, Any]:
    """ops, seconds, throughput_per_s, p50_ms, p99_ms, mean_ms and max_ms of one measured window."""
    ordered = sorted(latencies_s)
    return {
        "ops": len(ordered),
        "seconds": round(seconds, 3),
        "throughput_per_s": round(len(ordered) / seconds, 1) if seconds > 0 else None,
        "p50_ms": _ms(percentile(ordered, 50)),
        "p99_ms": _ms(percentile(ordered, 99)),
        "mean_ms": _ms(sum(ordered) / len(ordered)) if ordered else None,
        "max_ms": _ms(ordered[-1]) if ordered else None,
    }


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator rounded, or None when either is missing or the denominator is zero."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def emit_json(document: Mapping[str, Any], out: Path | None) -> None:
    """Prints the result document to stdout and, when `out` is given, writes it there too."""
    text = json.dumps(document, indent=2)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        log(f"wrote {out}")


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_info(**extra: Any) -> dict[str, Any]:
    """What the figures were measured on: CPUs, memory, load, Python, gRPC and protobuf."""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
        "protobuf": protobuf_version,
        "protobuf_backend": api_implementation.Type(),
        "asyncpg": asyncpg.__version__,
        **extra,
    }


# --------------------------------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is field 3, utime 14 and stime 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def pids_named(command: str) -> list[int]:
    """PIDs whose command name (/proc/PID/comm) is `command`, e.g. every `postgres` process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == command:
                    found.append(int(entry.name))
    return found


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


class Probe(Protocol):
    """Something observed over each measured window; its readings land under `name` in the run's result."""

    name: str

    def start(self) -> None:
        """The window opens."""
        ...

    def stop(self) -> dict[str, float]:
        """The window closes: the readings."""
        ...


class CpuMeter:
    """CPU used by groups of processes, and by the whole machine, between `start()` and `stop()`.

    Percentages are of one core (a process using two cores fully reports 200); `machine_busy_pct` is of
    all cores together.
    """

    name = "cpu"

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self._groups = groups
        self._pids: dict[str, list[int]] = {}
        self._before: dict[int, float] = {}
        self._machine: tuple[int, int] = (0, 0)
        self._wall = 0.0

    def start(self) -> None:
        """Takes the first snapshot."""
        self._pids = {name: list(pids()) for name, pids in self._groups.items()}
        self._before = {}
        for pids in self._pids.values():
            for pid in pids:
                used = process_cpu_seconds(pid)
                if used is not None:
                    self._before[pid] = used
        self._machine = _machine_jiffies()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Takes the second snapshot; returns `{GROUP}_cpu_pct` per group and `machine_busy_pct`."""
        wall = time.monotonic() - self._wall
        busy, total = _machine_jiffies()
        result: dict[str, float] = {}
        for name, pids in self._pids.items():
            used = 0.0
            for pid in pids:
                after = process_cpu_seconds(pid)
                if after is not None and pid in self._before:
                    used += after - self._before[pid]
            result[f"{name}_cpu_pct"] = round(100.0 * used / wall, 1) if wall > 0 else 0.0
        busy_delta, total_delta = busy - self._machine[0], total - self._machine[1]
        result["machine_busy_pct"] = round(100.0 * busy_delta / total_delta, 1) if total_delta else 0.0
        return result


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


class ListeningProcess:
    """A server subprocess that prints `... listening on HOST:PORT` on stdout once it accepts calls.

    It runs in its own session (a Ctrl-C at the terminal reaches only the benchmark, which then stops it
    in order) and is stopped by its PID: SIGTERM, then SIGKILL after a grace period.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self._address: str | None = None
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        # The reader keeps draining stdout after the address line so the child can never block on a full pipe.
        self._reader = threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True)
        self._reader.start()
        if not self._ready.wait(startup_timeout) or self._address is None:
            self.stop()
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} did not start within {startup_timeout:.0f} s; log tail:\n{tail}")
        self.address: str = self._address

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if self._address is None and (match := _LISTENING.search(line)):
                self._address = match.group(1)
                self._ready.set()
        self._ready.set()  # EOF: the process died (or closed stdout) before listening

    @property
    def pid(self) -> int:
        """The process ID."""
        return self.proc.pid

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM the process, SIGKILL it after `grace` seconds; returns its exit code. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ListeningProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _start_off_conventional_port(start: Callable[[], ListeningProcess]) -> ListeningProcess:
    """Port 0 can land on 50051 (it is inside the ephemeral range), which a developer's server may want."""
    for _ in range(3):
        process = start()
        if not process.address.endswith(":50051"):
            return process
        process.stop()
    raise RuntimeError("the kernel kept handing out port 50051")


def start_registry_server(database_url: str, log_path: Path, **settings: str) -> ListeningProcess:
    """`modelreg-server serve` on a free loopback port against `database_url` (extra MODELREG_* env)."""
    env = {"MODELREG_DATABASE_URL": database_url, **settings}
    argv = [sys.executable, "-m", "modelreg_server", "serve", "--listen", "127.0.0.1:0"]
    return _start_off_conventional_port(
        lambda: ListeningProcess("modelreg-server", argv, log_path=log_path, env=env)
    )


def bootstrap_admin_token(database_url: str, work_dir: Path) -> str:
    """Creates the first admin principal of a fresh database; returns its bearer token.

    The token goes through a mode-600 file in `work_dir` rather than a pipe, so it never lands in a log.
    """
    token_file = work_dir / "admin.token"
    argv = [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--database-url", database_url]
    done = subprocess.run(
        [*argv, "--output", str(token_file)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bootstrap-admin failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return token_file.read_text().strip()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates as `token`."""
    return (("authorization", f"Bearer {token}"),)


def start_empty_server(payload_dir: Path, log_path: Path) -> ListeningProcess:
    """The reference server of `bench.empty_server`, serving the payloads in `payload_dir`."""
    argv = [sys.executable, "-m", "bench.empty_server", "--payload-dir", str(payload_dir)]
    return _start_off_conventional_port(lambda: ListeningProcess("empty-server", argv, log_path=log_path))


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turns SIGTERM into KeyboardInterrupt, so `finally` blocks stop servers and drop databases."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDatabase:
    """A database created for one benchmark run."""

    url: str
    source: str  # where the server came from: local, MODELREG_TEST_DATABASE_URL, embedded
    server_version: str
    settings: dict[str, str]


async def _connects(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


def _with_database(server_url: str, database: str) -> str:
    """`server_url` pointing at `database`; query parameters such as a socket `host=` are kept."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{database}"))


async def _create(admin_url: str, name: str) -> tuple[str, dict[str, str]]:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        version: str = await conn.fetchval("SHOW server_version")
        settings = {
            row["name"]: row["setting"]
            for row in await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                ["synchronous_commit", "fsync", "shared_buffers", "max_connections", "wal_sync_method"],
            )
        }
        return version, settings
    finally:
        await conn.close()


async def _drop(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def analyze_database(url: str) -> None:
    """Refreshes planner statistics after seeding, as autovacuum would have done on a long-lived database.

    Without it, a table filled seconds ago may still carry the statistics of an empty one, and which plan
    a listing gets would depend on whether autovacuum happened to run during the benchmark.
    """
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


@contextlib.contextmanager
def provision_database(prefix: str = "modelreg_bench") -> Iterator[BenchDatabase]:
    """A fresh database `{prefix}_<hex>`, dropped afterwards.

    The server is the machine's PostgreSQL at 127.0.0.1:5432 (user postgres, trust) when it answers, else
    the one MODELREG_TEST_DATABASE_URL points at, else an embedded PostgreSQL in a temporary directory
    (stopped afterwards).
    """
    with contextlib.ExitStack() as stack:
        if asyncio.run(_connects(LOCAL_POSTGRES_URL)):
            admin_url, source = LOCAL_POSTGRES_URL, "local 127.0.0.1:5432"
        elif env_url := os.environ.get("MODELREG_TEST_DATABASE_URL"):
            admin_url, source = env_url, "MODELREG_TEST_DATABASE_URL"
        else:
            from modelreg_server.devstack import EmbeddedPostgres

            scratch = Path(tempfile.mkdtemp(prefix="modelreg-bench-pg-"))
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
            log("no PostgreSQL at 127.0.0.1:5432 and no MODELREG_TEST_DATABASE_URL: starting an embedded one")
            embedded = EmbeddedPostgres.start(scratch / "pgdata")
            stack.callback(embedded.stop)
            admin_url, source = embedded.url, "embedded"
        name = f"{prefix}_{secrets.token_hex(6)}"
        version, settings = asyncio.run(_create(admin_url, name))
        stack.callback(lambda: asyncio.run(_drop(admin_url, name)))
        log(f"created database {name} ({source}, PostgreSQL {version})")
        yield BenchDatabase(_with_database(admin_url, name), source, version, settings)


class DbActivity:
    """What the database's client backends are doing, sampled from pg_stat_activity during the window.

    Readings are average numbers of backends per state: `running` (executing, not waiting), `lock_wait`
    (blocked on a row or transaction lock), `io_wait` (WAL or data file I/O, e.g. the commit's fsync),
    `waiting_for_server` (inside a transaction, waiting for the server's next statement) and `idle`.
    The sampler runs in its own thread with its own event loop and connection.
    """

    name = "db_backends"
    _QUERY = (
        "SELECT state, wait_event_type FROM pg_stat_activity "
        "WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )

    def __init__(self, url: str, interval_s: float = 0.02) -> None:
        self._url = url
        self._database = urlsplit(url).path.lstrip("/")
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tally: Counter[str] = Counter()
        self._samples = 0

    @staticmethod
    def _category(state: str | None, wait_type: str | None) -> str:
        if state == "active":
            if wait_type == "Lock":
                return "lock_wait"
            if wait_type == "IO":
                return "io_wait"
            return "running"
        if state in ("idle in transaction", "idle in transaction (aborted)"):
            return "waiting_for_server"
        return "idle"

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            while not self._stop.is_set():
                for row in await conn.fetch(self._QUERY, self._database):
                    self._tally[self._category(row["state"], row["wait_event_type"])] += 1
                self._samples += 1
                await asyncio.sleep(self._interval)
        finally:
            await conn.close()

    def start(self) -> None:
        """Starts sampling."""
        self._stop.clear()
        self._tally = Counter()
        self._samples = 0
        self._thread = threading.Thread(target=asyncio.run, args=(self._sample(),), daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Stops sampling; average backends per category."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        samples = max(1, self._samples)
        categories = ("running", "lock_wait", "io_wait", "waiting_for_server", "idle")
        return {c: round(self._tally[c] / samples, 2) for c in categories}


# --------------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------------

Op = Callable[[], Awaitable[object]]


class Workload(Protocol):
    """One kind of call. Must pickle (it is shipped to client processes) and build its ops lazily."""

    def caller(self, channel: grpc.aio.Channel, client: int, rng: random.Random) -> Op:
        """The op one concurrent client repeats; `client` numbers the clients of a run from 0."""
        ...


@dataclass(frozen=True)
class Window:
    """When a run starts (time.monotonic(), the same clock in every process), warms up and stops."""

    start_at: float
    warmup_s: float
    seconds: float

    @property
    def measure_from(self) -> float:
        """Ops completing from here on count."""
        return self.start_at + self.warmup_s

    @property
    def stop_at(self) -> float:
        """No op starts after this; ops completing after it do not count."""
        return self.measure_from + self.seconds


@dataclass(frozen=True)
class SharePlan:
    """The part of a run one client process performs."""

    address: str
    clients: range
    channels: int
    window: Window
    seed: int


@dataclass
class ShareResult:
    """What one client process measured inside the window."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_share(
    workload: Workload, plan: SharePlan, on_window: Callable[[bool], None] | None = None
) -> ShareResult:
    """Runs this process's clients through the window; `on_window(True/False)` marks its start and end."""
    result = ShareResult()
    window = plan.window
    channels = [grpc.aio.insecure_channel(plan.address) for _ in range(max(1, plan.channels))]
    try:
        await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 15) for ch in channels))

        async def client(index: int, client_id: int) -> None:
            rng = random.Random(plan.seed * 1_000_003 + client_id)
            op = workload.caller(channels[index % len(channels)], client_id, rng)
            await _sleep_until(window.start_at)
            while (begin := time.monotonic()) < window.stop_at:
                try:
                    await op()
                except grpc.aio.AioRpcError as exc:
                    outcome: str | None = exc.code().name
                except Exception as exc:  # counted, not fatal: one bad call must not end the run
                    outcome = type(exc).__name__
                else:
                    outcome = None
                end = time.monotonic()
                if window.measure_from <= end <= window.stop_at:
                    if outcome is None:
                        result.latencies_s.append(end - begin)
                    else:
                        result.errors[outcome] += 1

        async def meter() -> None:
            await _sleep_until(window.measure_from)
            cpu_before = time.process_time()
            if on_window:
                on_window(True)
            await _sleep_until(window.stop_at)
            result.cpu_s = time.process_time() - cpu_before
            if on_window:
                on_window(False)

        await asyncio.gather(meter(), *(client(i, c) for i, c in enumerate(plan.clients)))
    finally:
        await asyncio.gather(*(ch.close(None) for ch in channels))
    return result


def _run_share_in_process(workload: Workload, plan: SharePlan) -> ShareResult:
    return asyncio.run(run_share(workload, plan))


def _ready(hold_s: float) -> int:
    time.sleep(hold_s)
    return os.getpid()


@dataclass
class LoadResult:
    """A run's measurements, merged over its client processes."""

    concurrency: int
    client_procs: int
    seconds: float
    latencies_s: list[float]
    errors: dict[str, int]
    probes: dict[str, dict[str, float]]

    def summary(self) -> dict[str, Any]:
        """The figures of the run (see `latency_summary`), its errors and the probes' readings."""
        return {
            **latency_summary(self.latencies_s, self.seconds),
            "errors": sum(self.errors.values()),
            "error_codes": dict(sorted(self.errors.items())),
            **self.probes,
        }


def _split(concurrency: int, parts: int) -> list[range]:
    """range(concurrency) cut into at most `parts` contiguous, near-equal, non-empty slices."""
    parts = max(1, min(parts, concurrency))
    bounds = [concurrency * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class LoadRunner:
    """Runs workloads at a given concurrency from one or more client processes.

    With one client process the asyncio tasks run in this process. With more, a pool of spawned
    processes (created once, reused for every run) each runs its slice of the clients with `channels`
    channels of its own; they align on a shared monotonic start time. The probes observe every measured
    window from this process; the CPU of the client processes themselves is reported as
    `cpu.client_cpu_pct`.
    """

    def __init__(
        self,
        *,
        client_procs: int,
        channels: int,
        warmup_s: float,
        seconds: float,
        probes: Sequence[Probe] = (),
    ) -> None:
        self.client_procs = max(1, client_procs)
        self.channels = channels
        self.warmup_s = warmup_s
        self.seconds = seconds
        self._probes = probes
        self._runs = 0
        self._pool: ProcessPoolExecutor | None = None
        if self.client_procs > 1:
            self._pool = ProcessPoolExecutor(
                self.client_procs, mp_context=multiprocessing.get_context("spawn")
            )
            # Pay for interpreter start-up and imports now, not inside a measured window. The pool spawns a
            # worker per submission that finds none idle, so tasks held for a moment bring every worker up.
            pids: set[int] = set()
            for _ in range(5):
                batch = [self._pool.submit(_ready, 0.5) for _ in range(self.client_procs)]
                pids.update(f.result() for f in batch)
                if len(pids) >= self.client_procs:
                    break
            log(f"client processes ready: {sorted(pids)}")

    def run(self, workload: Workload, address: str, concurrency: int) -> LoadResult:
        """One run: warm-up, then `seconds` measured; returns the merged result."""
        self._runs += 1
        slices = _split(concurrency, self.client_procs)
        lead = 0.3 if self._pool is None else 1.0
        window = Window(time.monotonic() + lead, self.warmup_s, self.seconds)
        plans = [
            SharePlan(address, clients, min(self.channels, len(clients)), window, seed=self._runs)
            for clients in slices
        ]
        readings: dict[str, dict[str, float]] = {}

        def on_window(started: bool) -> None:
            for probe in self._probes:
                if started:
                    probe.start()
                else:
                    readings[probe.name] = probe.stop()

        if self._pool is None:
            shares = [asyncio.run(run_share(workload, plans[0], on_window))]
        else:
            futures: list[Future[ShareResult]] = [
                self._pool.submit(_run_share_in_process, workload, plan) for plan in plans
            ]
            time.sleep(max(0.0, window.measure_from - time.monotonic()))
            on_window(True)
            time.sleep(max(0.0, window.stop_at - time.monotonic()))
            on_window(False)
            shares = [f.result() for f in futures]
        errors: Counter[str] = Counter()
        latencies: list[float] = []
        for share in shares:
            latencies.extend(share.latencies_s)
            errors.update(share.errors)
        client_cpu = sum(share.cpu_s for share in shares)
        cpu = {"client_cpu_pct": round(100.0 * client_cpu / self.seconds, 1), **readings.get("cpu", {})}
        if "machine_busy_pct" in cpu:
            # Whatever else ran on the machine meanwhile (other users' jobs): how noisy this window was.
            ours = sum(v for k, v in cpu.items() if k != "machine_busy_pct")
            cpu["unattributed_cpu_pct"] = round(
                max(0.0, cpu["machine_busy_pct"] * (os.cpu_count() or 1) - ours), 1
            )
        readings["cpu"] = cpu
        return LoadResult(concurrency, len(slices), self.seconds, latencies, dict(errors), readings)

    def close(self) -> None:
        """Shuts the client process pool down."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
