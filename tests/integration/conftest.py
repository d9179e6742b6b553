"""Integration fixtures: a SeaweedFS S3 server for the session, wired into the server processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelreg_server.devstack import SeaweedS3
from tests.support.services import provision_s3

TEST_BUCKET = "modelreg-test"


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the test session."""
    yield from provision_s3()


@pytest.fixture(scope="session")
def server_env(server_env: dict[str, str], s3: SeaweedS3) -> dict[str, str]:
    """The environment of tests/conftest.py (database and the rest), plus S3."""
    return {
        **server_env,
        "MODELREG_S3_ENDPOINT": s3.endpoint,
        "MODELREG_S3_ACCESS_KEY": s3.access_key,
        "MODELREG_S3_SECRET_KEY": s3.secret_key,
        "MODELREG_S3_BUCKET": TEST_BUCKET,
        "MODELREG_S3_SECURE": "false",
        "MODELREG_WATCH_HEARTBEAT_S": "0.5",
    }
