"""Integration tests for modelreg_server.devstack: real PostgreSQL, SeaweedFS and `run_dev` processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from modelreg_server.devstack import (
    SEAWEED_GRPC_OFFSET,
    SEAWEED_PORT_LIMIT,
    EmbeddedPostgres,
    SeaweedS3,
    ensure_bucket,
    free_port,
)
from tests.support.services import provision_database, provision_s3

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process checks read /proc")

# Runs run_dev in a child so the test can signal it like a terminal would.
RUN_DEV = (
    "import sys; from pathlib import Path; from modelreg_server.devstack import run_dev; "
    "sys.exit(run_dev(Path(sys.argv[1]), sys.argv[2], server_argv=sys.argv[3:]))"
)

# Stands in for `modelreg_server serve`: listens, records its PID and MODELREG_* env, then waits or exits 3.
FAKE_SERVER = """
import json, os, socket, sys, time
mode, listen, info = sys.argv[1:4]
host, _, port = listen.rpartition(":")
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((host, int(port)))
sock.listen()
env = {k: v for k, v in os.environ.items() if k.startswith("MODELREG_")}
with open(info + ".tmp", "w") as f:
    json.dump({"pid": os.getpid(), "env": env}, f)
os.replace(info + ".tmp", info)
if mode == "exit":
    sys.exit(3)
while True:
    time.sleep(3600)
"""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    """True once `pid` no longer names a live process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def processes_in(data_dir: Path) -> set[int]:
    """Live processes working in `data_dir` (PostgreSQL) or serving it (`weed server -dir=...`)."""
    found: set[int] = set()
    marker = f"-dir={data_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            in_dir = Path(os.readlink(entry / "cwd")) == data_dir
            serves_dir = marker in (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (in_dir or serves_dir) and not pid_gone(int(entry.name)):
            found.add(int(entry.name))
    return found


async def fetch_value(url: str, query: str) -> object:
    """Run one query on a fresh connection."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


def execute(url: str, statement: str) -> None:
    """Run one statement on a fresh connection."""

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    """A SeaweedFS S3 server shared by this module's tests."""
    yield from provision_s3()


# --------------------------------------------------------------------------------------------------
# free_port
# --------------------------------------------------------------------------------------------------


def _bind(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    _bind(port)


def test_free_port_below_keeps_the_grpc_port_free_too() -> None:
    for _ in range(20):
        port = free_port(below=SEAWEED_PORT_LIMIT)
        assert 10000 <= port <= 22000
        _bind(port)
        _bind(port + SEAWEED_GRPC_OFFSET)


def test_free_port_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError):
        free_port(below=10000)


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def test_embedded_postgres_keeps_data_across_clean_and_unclean_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    began = time.monotonic()
    first = EmbeddedPostgres.start(data_dir)
    print(f"PostgreSQL first start (initdb) {time.monotonic() - began:.2f} s")
    try:
        assert asyncio.run(fetch_value(first.url, "SELECT 1")) == 1
        execute(first.url, "CREATE TABLE kept (value text); INSERT INTO kept VALUES ('hello')")
    finally:
        first.stop()
    first.stop()  # idempotent
    assert pid_gone(first.pid)
    assert processes_in(data_dir.resolve()) == set()

    second = EmbeddedPostgres.start(data_dir)
    try:
        assert second.pid != first.pid
        assert asyncio.run(fetch_value(second.url, "SELECT value FROM kept")) == "hello"
        # Unclean stop: the postmaster dies and leaves its postmaster.pid behind.
        os.kill(second.pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(second.pid), 10, "the killed postmaster to go")
        assert (data_dir / "postmaster.pid").exists()
    finally:
        second.stop()

    began = time.monotonic()
    with EmbeddedPostgres.start(data_dir) as third:
        print(f"PostgreSQL restart after SIGKILL {time.monotonic() - began:.2f} s")
        assert asyncio.run(fetch_value(third.url, "SELECT value FROM kept")) == "hello"
    assert pid_gone(third.pid)
    assert processes_in(data_dir.resolve()) == set()


def test_provision_database_creates_and_drops_a_fresh_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EmbeddedPostgres.start(tmp_path / "pgdata") as server:
        monkeypatch.setenv("MODELREG_TEST_DATABASE_URL", server.url)
        provisioned = provision_database()
        url = next(provisioned)
        name = asyncio.run(fetch_value(url, "SELECT current_database()"))
        assert isinstance(name, str)
        assert name.startswith("modelreg_test_")
        with pytest.raises(StopIteration):
            next(provisioned)
        query = f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        assert asyncio.run(fetch_value(server.url, query)) == 0


# --------------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------------


def test_seaweed_s3_serves_objects_survives_restart_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "s3"
    began = time.monotonic()
    first = SeaweedS3.start(data_dir)
    print(f"SeaweedFS first start {time.monotonic() - began:.2f} s")
    try:
        assert first.endpoint.startswith("127.0.0.1:")
        assert int(first.endpoint.rpartition(":")[2]) < SEAWEED_PORT_LIMIT
        ensure_bucket(first.endpoint, first.access_key, first.secret_key, "models")
        ensure_bucket(first.endpoint, first.access_key, first.secret_key, "models")  # already there: no-op
        client = first.client()
        client.put_object("models", "a/b.bin", io.BytesIO(b"weights"), length=7)
        assert client.get_object("models", "a/b.bin").read() == b"weights"
        # A second bucket needs fresh volumes; with default volume sizes this is where PUTs start failing.
        ensure_bucket(first.endpoint, first.access_key, first.secret_key, "other")
        client.put_object("other", "x", io.BytesIO(b"x"), length=1)

        # A new start on the same directory takes over from a weed its owner never stopped.
        began = time.monotonic()
        second = SeaweedS3.start(data_dir)
        print(f"SeaweedFS restart (reaping the old weed) {time.monotonic() - began:.2f} s")
    finally:
        first.stop(grace=1)
    assert pid_gone(first.pid)
    try:
        assert second.pid != first.pid
        assert second.endpoint == first.endpoint  # ports are remembered in the data directory
        assert second.client().get_object("models", "a/b.bin").read() == b"weights"
    finally:
        began = time.monotonic()
        second.stop()
        print(f"SeaweedFS stop with the default grace {time.monotonic() - began:.2f} s")
    second.stop()  # idempotent
    assert pid_gone(second.pid)
    assert processes_in(data_dir.resolve()) == set()
    assert not (data_dir / "weed.pid").exists()


# --------------------------------------------------------------------------------------------------
# run_dev
# --------------------------------------------------------------------------------------------------


def _dev_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_")}
    env.update(overrides)
    return env


def _spawn_run_dev(
    data_root: Path, listen: str, *, mode: str, info: Path, output: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    fake = [sys.executable, "-c", FAKE_SERVER, mode, listen, str(info)]
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", RUN_DEV, str(data_root), listen, *fake],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _finish(process: subprocess.Popen[bytes], timeout: float, output: Path) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(60)
        pytest.fail(f"run_dev did not exit within {timeout} s:\n{output.read_text()}")


def test_run_dev_stops_server_and_postgres_on_sigint(tmp_path: Path, s3: SeaweedS3) -> None:
    data_root = tmp_path / "dev"
    info = tmp_path / "server.json"
    output = tmp_path / "run_dev.out"
    listen = f"127.0.0.1:{free_port()}"
    env = _dev_env(
        MODELREG_S3_ENDPOINT=s3.endpoint,
        MODELREG_S3_ACCESS_KEY=s3.access_key,
        MODELREG_S3_SECRET_KEY=s3.secret_key,
    )
    process = _spawn_run_dev(data_root, listen, mode="serve", info=info, output=output, env=env)
    try:
        wait_for(
            lambda: "MODELREG_ADDRESS=" in output.read_text() or process.poll() is not None,
            120,
            "the run_dev banner",
        )
        text = output.read_text()
        assert process.poll() is None, text
        assert f"export MODELREG_ADDRESS={listen}" in text
        assert f"http://{listen}/modelreg.v1.ModelRegistryService/ListModels" in text

        server = json.loads(info.read_text())
        server_env = server["env"]
        assert server_env["MODELREG_S3_ENDPOINT"] == s3.endpoint
        assert server_env["MODELREG_S3_BUCKET"] == "modelreg"
        assert server_env["MODELREG_S3_SECURE"] == "false"
        assert asyncio.run(fetch_value(server_env["MODELREG_DATABASE_URL"], "SELECT 1")) == 1
        postgres = processes_in((data_root / "postgres").resolve())
        assert postgres

        process.send_signal(signal.SIGINT)
        assert _finish(process, 60, output) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert pid_gone(server["pid"])
    assert all(pid_gone(pid) for pid in postgres)
    assert processes_in((data_root / "postgres").resolve()) == set()
    s3.client().list_buckets()  # an S3 given through the environment is left alone


def test_run_dev_recovers_after_unclean_stop_and_returns_server_exit_code(tmp_path: Path) -> None:
    data_root = tmp_path / "dev"
    env = _dev_env()

    # An owner that dies without cleaning up leaves PostgreSQL, weed and the server running.
    first_info = tmp_path / "first.json"
    first_output = tmp_path / "first.out"
    first_listen = f"127.0.0.1:{free_port()}"
    first = _spawn_run_dev(
        data_root, first_listen, mode="serve", info=first_info, output=first_output, env=env
    )
    try:
        wait_for(lambda: first_info.exists() or first.poll() is not None, 120, "the first server")
        assert first.poll() is None, first_output.read_text()
    finally:
        first.kill()
        first.wait()
    orphan_server = json.loads(first_info.read_text())["pid"]
    os.kill(orphan_server, signal.SIGKILL)  # run_dev cannot know about its server's orphan
    assert processes_in((data_root / "postgres").resolve())
    assert processes_in((data_root / "s3").resolve())

    output = tmp_path / "second.out"
    second_info = tmp_path / "second.json"
    second_listen = f"127.0.0.1:{free_port()}"
    second = _spawn_run_dev(data_root, second_listen, mode="exit", info=second_info, output=output, env=env)
    try:
        assert _finish(second, 120, output) == 3, output.read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    server_env = json.loads(second_info.read_text())["env"]
    assert server_env["MODELREG_S3_ACCESS_KEY"] == "modelreg"
    assert processes_in((data_root / "postgres").resolve()) == set()
    assert processes_in((data_root / "s3").resolve()) == set()
