"""Real PostgreSQL and S3 for a test session.

Both helpers are generators meant as pytest fixture bodies, e.g.::

    @pytest.fixture(scope="session")
    def database_url() -> Iterator[str]:
        yield from provision_database()
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from modelreg_server.devstack import EmbeddedPostgres, SeaweedS3

LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Test data need not survive, so S3 gets a short SIGTERM grace instead of the 15 s dev default.
_S3_STOP_GRACE = 2.0


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _accepts_connections(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await connection.close()
    return True


def with_database(server_url: str, database: str) -> str:
    """`server_url` with its database (the URL path) replaced by `database`; the query (host=...) is kept."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def provision_database() -> Iterator[str]:
    """Yield the URL of a fresh, empty database; drop it (and stop any server started here) afterwards.

    The server is, in order: MODELREG_TEST_DATABASE_URL; the machine's PostgreSQL at 127.0.0.1:5432
    (user postgres, trust auth); an embedded PostgreSQL in a temporary directory.
    """
    admin_url = os.environ.get("MODELREG_TEST_DATABASE_URL")
    started: EmbeddedPostgres | None = None
    scratch: Path | None = None
    if not admin_url:
        if asyncio.run(_accepts_connections(LOCAL_POSTGRES_URL)):
            admin_url = LOCAL_POSTGRES_URL
        else:
            scratch = Path(tempfile.mkdtemp(prefix="modelreg-pg-"))
            try:
                started = EmbeddedPostgres.start(scratch / "pgdata")
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            admin_url = started.url
    name = f"modelreg_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_execute(admin_url, f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(admin_url, name)
        finally:
            asyncio.run(_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        if started is not None:
            started.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def provision_s3() -> Iterator[SeaweedS3]:
    """Yield a SeaweedFS S3 server running in a temporary directory; stop it and delete its data after."""
    scratch = Path(tempfile.mkdtemp(prefix="modelreg-s3-"))
    try:
        server = SeaweedS3.start(scratch / "s3")
        try:
            yield server
        finally:
            server.stop(grace=_S3_STOP_GRACE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
