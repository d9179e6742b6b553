"""Session fixtures: a fresh PostgreSQL database, and a real server process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.services import provision_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a database created for this test session and dropped afterwards."""
    yield from provision_database()


@pytest.fixture(scope="session", autouse=True)
def admin_token(database_url: str) -> Iterator[str]:
    """A bootstrap admin token for the session, also exported as MODELREG_TOKEN for the SDK and CLI."""
    result = subprocess.run(
        [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    token = result.stdout.strip().splitlines()[-1]
    previous = os.environ.get("MODELREG_TOKEN")
    os.environ["MODELREG_TOKEN"] = token
    yield token
    if previous is None:
        os.environ.pop("MODELREG_TOKEN", None)
    else:
        os.environ["MODELREG_TOKEN"] = previous


@pytest.fixture(scope="session")
def server_env(database_url: str) -> dict[str, str]:
    """Environment for server processes of this session."""
    return {"MODELREG_DATABASE_URL": database_url}


@pytest.fixture(scope="session")
def server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server replica shared by the session."""
    proc = ServerProcess(server_env, tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server_address(server: ServerProcess) -> str:
    """host:port of the session's server."""
    return server.address


@pytest.fixture
def start_replica(server_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Factory for extra replicas on the same database; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        proc = ServerProcess(server_env, tmp_path / f"replica{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
