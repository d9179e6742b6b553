"""The SDK and the `modelreg` CLI end to end against a real server (fixture `server_address`)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelreg import (
    AlreadyExists,
    AsyncRegistry,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Registry,
    Stage,
)

DIGEST = "sha256:" + "ab" * 32


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry(server_address: str) -> Iterator[Registry]:
    with Registry(server_address, timeout=15) as client:
        yield client


def test_model_and_versions_round_trip(registry: Registry) -> None:
    model_id = _unique("lifecycle")
    model = registry.create_model(
        model_id, description="fraud scorer", labels={"team": "risk"}, owner_team="risk"
    )
    assert model.name == f"models/{model_id}"
    assert (model.description, dict(model.labels), model.owner_team) == (
        "fraud scorer",
        {"team": "risk"},
        "risk",
    )
    assert model.latest_version == 0
    assert model.etag and model.uid
    assert model.create_time.seconds > 0
    assert registry.get_model(model_id) == model

    with pytest.raises(AlreadyExists) as exists:
        registry.create_model(model_id)
    assert exists.value.reason

    created = [
        registry.create_model_version(
            model.name,
            run_id=f"run-{n}",
            metrics={"auc": 0.8 + n / 100},
            labels={"n": str(n)},
            lineage={
                "datasets": [{"uri": "s3://data/train.parquet", "digest": DIGEST, "role": "train"}],
                "code": {"repository": "https://git.example/fraud", "commit": "abc123"},
                "parameters": {"lr": "0.1"},
            },
            input_schema={"fields": [{"name": "amount", "dtype": "float32", "shape": [-1]}]},
            output_schema={"fields": [{"name": "score", "dtype": "float32"}]},
            dependencies={
                "python_version": "3.11",
                "packages": [{"name": "scikit-learn", "version": "1.5.2"}],
            },
        )
        for n in (1, 2, 3)
    ]
    assert [v.version for v in created] == [1, 2, 3]
    assert created[2].name == f"models/{model_id}/versions/3"
    assert created[0].stage in (Stage.Value("STAGE_NONE"), Stage.Value("STAGE_UNSPECIFIED"))
    assert registry.get_model(model_id).latest_version == 3

    fetched = registry.get_model_version(f"{model_id}/2")
    assert fetched.run_id == "run-2"
    assert fetched.metrics["auc"] == pytest.approx(0.82)
    assert fetched.lineage.code.commit == "abc123"
    assert fetched.lineage.datasets[0].role == "train"
    assert list(fetched.input_schema.fields[0].shape) == [-1]
    assert fetched.dependencies.packages[0].name == "scikit-learn"


def test_list_versions_pages_orders_and_filters(registry: Registry) -> None:
    model = registry.create_model(_unique("listing"))
    for n in range(1, 8):
        registry.create_model_version(model.name, run_id=f"run-{n}", metrics={"auc": n / 10})

    ordered = [v.version for v in registry.list_model_versions(model.name, order_by="version", page_size=2)]
    assert ordered == [1, 2, 3, 4, 5, 6, 7]
    newest_first = [v.version for v in registry.list_model_versions(model.name, page_size=3)]
    assert newest_first == [7, 6, 5, 4, 3, 2, 1]
    filtered = registry.list_model_versions(model.name, filter="metrics.auc >= 0.5", order_by="version")
    assert [v.version for v in filtered] == [5, 6, 7]
    by_run = list(registry.list_model_versions(model.name, filter='run_id = "run-3"'))
    assert [v.version for v in by_run] == [3]

    everywhere = {
        v.name for v in registry.list_model_versions("-", filter='run_id = "run-3"', page_size=1000)
    }
    assert f"{model.name}/versions/3" in everywhere


def test_list_models_pages_and_filters(registry: Registry) -> None:
    suite = uuid.uuid4().hex
    names = sorted(
        registry.create_model(_unique("paged"), labels={"suite": suite}, owner_team=f"team-{i % 2}").name
        for i in range(5)
    )
    listed = [m.name for m in registry.list_models(filter=f'labels.suite = "{suite}"', page_size=2)]
    assert listed == names
    team0 = [
        m.name for m in registry.list_models(filter=f'labels.suite = "{suite}" AND owner_team = "team-0"')
    ]
    assert len(team0) == 3
    descending = [
        m.name for m in registry.list_models(filter=f'labels.suite = "{suite}"', order_by="name desc")
    ]
    assert descending == names[::-1]


def test_update_with_etag_and_conflict(registry: Registry) -> None:
    model = registry.create_model(_unique("etag"), description="v1", labels={"a": "1"})
    updated = registry.update_model(model.name, description="v2", etag=model.etag)
    assert updated.description == "v2"
    assert dict(updated.labels) == {"a": "1"}
    assert updated.etag != model.etag

    with pytest.raises(Conflict) as conflict:
        registry.update_model(model.name, description="v3", etag=model.etag)
    assert conflict.value.reason
    assert registry.get_model(model.name).description == "v2"

    cleared = registry.update_model(model.name, labels={}, owner_team="ml")
    assert (dict(cleared.labels), cleared.owner_team, cleared.description) == ({}, "ml", "v2")

    version = registry.create_model_version(model.name, description="first")
    relabelled = registry.update_model_version(version.name, labels={"approved": "yes"})
    assert dict(relabelled.labels) == {"approved": "yes"}
    assert relabelled.description == "first"


def test_typed_errors(registry: Registry) -> None:
    missing = _unique("missing")
    with pytest.raises(NotFound) as not_found:
        registry.get_model(missing)
    assert not_found.value.reason
    assert not_found.value.domain == "modelreg"
    with pytest.raises(NotFound):
        registry.get_model_version(f"{missing}/1")
    with pytest.raises(NotFound):
        registry.create_model_version(missing, run_id="r")

    with pytest.raises(InvalidArgument) as invalid:
        registry.create_model("9-starts-with-a-digit")
    assert invalid.value.reason
    assert [field for field, _ in invalid.value.field_violations] == ["model_id"]

    model = registry.create_model(_unique("errors"))
    with pytest.raises(InvalidArgument) as bad_digest:
        registry.create_model_version(model.name, artifact_digest="md5:1234")
    assert any("artifact_digest" in field for field, _ in bad_digest.value.field_violations)

    with pytest.raises(InvalidArgument) as bad_filter:
        list(registry.list_models(filter="no_such_field = 1"))
    assert [field for field, _ in bad_filter.value.field_violations] == ["filter"]
    with pytest.raises(InvalidArgument):
        list(registry.list_models(page_size=-1))


def test_delete_needs_force_while_versions_exist(registry: Registry) -> None:
    empty = registry.create_model(_unique("delete-empty"))
    registry.update_model(empty.name, description="changed")
    with pytest.raises(Conflict):
        registry.delete_model(empty.name, etag=empty.etag)
    registry.delete_model(empty.name)
    with pytest.raises(NotFound):
        registry.get_model(empty.name)

    model = registry.create_model(_unique("delete-full"))
    registry.create_model_version(model.name, run_id="r1")
    with pytest.raises(FailedPrecondition) as refused:
        registry.delete_model(model.name)
    assert refused.value.reason
    assert refused.value.precondition_violations
    assert registry.get_model(model.name).latest_version == 1

    registry.delete_model(model.name, force=True)
    with pytest.raises(NotFound):
        registry.get_model(model.name)
    with pytest.raises(NotFound):
        registry.get_model_version(f"{model.name}/versions/1")


def test_request_id_makes_version_creation_idempotent(registry: Registry) -> None:
    model = registry.create_model(_unique("idempotent"))
    request_id = uuid.uuid4().hex
    first = registry.create_model_version(model.name, run_id="r1", request_id=request_id)
    again = registry.create_model_version(model.name, run_id="r1", request_id=request_id)
    assert again.name == first.name
    other = registry.create_model_version(model.name, run_id="r1")
    assert (first.version, other.version) == (1, 2)


async def test_async_concurrent_versions_are_numbered_1_to_20(server_address: str) -> None:
    async with AsyncRegistry(server_address, timeout=30) as registry:
        model = await registry.create_model(_unique("concurrent"))
        versions = await asyncio.gather(
            *(registry.create_model_version(model.name, run_id=f"run-{i}") for i in range(20))
        )
        assert sorted(v.version for v in versions) == list(range(1, 21))
        assert len({v.run_id for v in versions}) == 20
        listed = [
            v.version async for v in registry.list_model_versions(model.name, order_by="version", page_size=7)
        ]
        assert listed == list(range(1, 21))
        assert (await registry.get_model(model.name)).latest_version == 20
        with pytest.raises(NotFound):
            await registry.get_model(_unique("missing"))


# --- CLI -----------------------------------------------------------------------------------------------


def _cli(server_address: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # Only the session's token reaches the CLI: address and everything else come from the arguments.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELREG_") or k == "MODELREG_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "modelreg.cli", "--address", server_address, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_json_output_and_exit_codes(server_address: str, tmp_path: Path) -> None:
    model_id = _unique("cli")
    suite = uuid.uuid4().hex

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return _cli(server_address, tmp_path, *argv)

    created = run("--json", "models", "create", model_id, "--label", f"suite={suite}", "--owner-team", "risk")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["name"] == f"models/{model_id}"
    assert json.loads(created.stdout)["labels"] == {"suite": suite}

    for n in (1, 2):
        version = run(
            "versions", "create", model_id, "--run-id", f"r{n}", "--metric", f"auc=0.9{n}", "--json"
        )
        assert version.returncode == 0, version.stderr
        assert json.loads(version.stdout)["version"] == str(n)

    listed = run("versions", "list", model_id, "--order-by", "version", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [item["version"] for item in json.loads(listed.stdout)] == ["1", "2"]

    limited = run("versions", "list", model_id, "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)) == 1

    table = run("versions", "list", model_id, "--filter", "metrics.auc > 0.915")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "STAGE", "RUN"]
    assert [line.split()[0] for line in lines[1:]] == [f"models/{model_id}/versions/2"]

    got = run("versions", "get", f"{model_id}/1")
    assert got.returncode == 0, got.stderr
    assert f"models/{model_id}/versions/1" in got.stdout

    models = run("models", "list", "--filter", f'labels.suite = "{suite}"', "--json")
    assert [item["latestVersion"] for item in json.loads(models.stdout)] == ["2"]

    missing = run("models", "get", _unique("nope"))
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: NOT_FOUND ")
    assert len(missing.stderr.splitlines()) == 1

    assert run("models", "create", model_id).returncode == 4
    invalid = run("models", "create", "Not_Valid!")
    assert invalid.returncode == 5
    assert invalid.stderr.startswith("error: INVALID_ARGUMENT ")
    assert run("models", "list", "--filter", "bogus_field = 1").returncode == 5

    refused = run("models", "delete", model_id)
    assert refused.returncode == 6
    assert refused.stderr.startswith("error: FAILED_PRECONDITION ")

    deleted = run("models", "delete", model_id, "--force", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {}
    assert run("models", "get", model_id).returncode == 3

    assert run("models", "create").returncode == 2
    assert run("versions", "get", "not-a-version-name").returncode == 2
