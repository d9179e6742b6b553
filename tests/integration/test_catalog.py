"""The catalog over real gRPC against a real server process and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2

from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as pb
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg_server.domain.manifest import Manifest, ManifestFile, canonical_bytes
from tests.support.packages import publish, sha, upload
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub as ArtifactStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub as AsyncStub

Code = grpc.StatusCode


def new_id(prefix: str = "m") -> str:
    """A model id unique within the session."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stub(server_address: str) -> AsyncIterator[AsyncStub]:
    async with open_channel(server_address) as channel:
        yield ModelRegistryServiceStub(channel)


@pytest.fixture
async def artifacts(server_address: str) -> AsyncIterator[ArtifactStub]:
    async with open_channel(server_address) as channel:
        yield ArtifactServiceStub(channel)


async def test_a_version_never_points_at_missing_bytes(stub: AsyncStub, artifacts: ArtifactStub) -> None:
    model_id = await make_model(stub)
    nowhere = await fails(
        stub.CreateModelVersion(version_request(model_id, artifact_digest=sha(b"never uploaded")))
    )
    assert (nowhere.code, nowhere.reason) == (Code.FAILED_PRECONDITION, "BLOBS_MISSING")
    weights = b"weights that were never uploaded"
    manifest = Manifest.of("sklearn", [ManifestFile("model.pkl", sha(weights), len(weights))])
    await upload(artifacts, canonical_bytes(manifest))
    partial = await fails(
        stub.CreateModelVersion(version_request(model_id, artifact_digest=sha(canonical_bytes(manifest))))
    )
    assert (partial.code, partial.reason) == (Code.FAILED_PRECONDITION, "BLOBS_MISSING")
    assert [v[1] for v in partial.precondition_violations] == [sha(weights)]
    await upload(artifacts, weights)
    created = await stub.CreateModelVersion(
        version_request(model_id, artifact_digest=sha(canonical_bytes(manifest)))
    )
    assert created.version == 1
    found = await stub.ListModelVersions(
        pb.ListModelVersionsRequest(
            parent="models/-", filter=f'artifact_digest = "{created.artifact_digest}"'
        )
    )
    assert [v.name for v in found.model_versions] == [created.name]


async def make_model(stub: AsyncStub, **labels: str) -> str:
    model_id = new_id()
    await stub.CreateModel(pb.CreateModelRequest(model_id=model_id, model=model_pb2.Model(labels=labels)))
    return model_id


def version_request(model_id: str, **kwargs: Any) -> pb.CreateModelVersionRequest:
    return pb.CreateModelVersionRequest(
        parent=f"models/{model_id}", model_version=model_pb2.ModelVersion(**kwargs)
    )


async def test_create_get_and_duplicate_model(stub: AsyncStub) -> None:
    model_id = new_id()
    created = await stub.CreateModel(
        pb.CreateModelRequest(
            model_id=model_id,
            model=model_pb2.Model(
                name="models/ignored", description="d", labels={"team": "fraud"}, owner_team="risk"
            ),
        )
    )
    assert created.name == f"models/{model_id}"
    assert created.labels["team"] == "fraud"
    assert created.latest_version == 0
    assert created.etag and created.uid
    got = await stub.GetModel(pb.GetModelRequest(name=created.name))
    assert got == created
    failure = await fails(stub.CreateModel(pb.CreateModelRequest(model_id=model_id)))
    assert failure.code == Code.ALREADY_EXISTS
    assert failure.reason == "MODEL_ALREADY_EXISTS"


@pytest.mark.parametrize(
    "bad_id", ["", "Upper", "1starts-with-digit", "a" * 64, "has space", "slash/x", "ünï"]
)
async def test_invalid_model_id(stub: AsyncStub, bad_id: str) -> None:
    failure = await fails(stub.CreateModel(pb.CreateModelRequest(model_id=bad_id)))
    assert failure.code == Code.INVALID_ARGUMENT
    assert [f for f, _ in failure.field_violations] == ["model_id"]


async def test_missing_resources_are_not_found(stub: AsyncStub) -> None:
    failure = await fails(stub.GetModel(pb.GetModelRequest(name="models/does-not-exist")))
    assert (failure.code, failure.reason) == (Code.NOT_FOUND, "MODEL_NOT_FOUND")
    model_id = await make_model(stub)
    failure = await fails(
        stub.GetModelVersion(pb.GetModelVersionRequest(name=f"models/{model_id}/versions/7"))
    )
    assert (failure.code, failure.reason) == (Code.NOT_FOUND, "VERSION_NOT_FOUND")
    failure = await fails(stub.CreateModelVersion(version_request("nope-" + model_id)))
    assert failure.code == Code.NOT_FOUND


@pytest.mark.parametrize(
    "name",
    ["", "models/", "models/x/versions/0", "models/x/versions/-1", "models/x/versions/abc", "x/y/versions/1"],
)
async def test_malformed_version_names(stub: AsyncStub, name: str) -> None:
    failure = await fails(stub.GetModelVersion(pb.GetModelVersionRequest(name=name)))
    assert failure.code == Code.INVALID_ARGUMENT
    assert failure.field_violations[0][0] == "name"


async def test_fifty_concurrent_registrations_get_versions_1_to_50(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    results = await asyncio.gather(
        *(stub.CreateModelVersion(version_request(model_id, run_id=f"run-{i}")) for i in range(50))
    )
    assert sorted(r.version for r in results) == list(range(1, 51))
    model = await stub.GetModel(pb.GetModelRequest(name=f"models/{model_id}"))
    assert model.latest_version == 50


async def test_concurrent_registrations_across_two_replicas_are_gap_free(
    server_address: str, start_replica: Callable[[], ServerProcess]
) -> None:
    replica = start_replica()
    async with (
        open_channel(server_address) as first,
        open_channel(replica.address) as second,
    ):
        stubs = [ModelRegistryServiceStub(first), ModelRegistryServiceStub(second)]
        model_id = await make_model(stubs[0])
        results = await asyncio.gather(
            *(stubs[i % 2].CreateModelVersion(version_request(model_id, run_id=str(i))) for i in range(40))
        )
    assert sorted(r.version for r in results) == list(range(1, 41))


async def test_request_id_makes_registration_idempotent(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    request = version_request(model_id, run_id="r1", metrics={"auc": 0.9})
    request.request_id = "req-" + uuid.uuid4().hex
    results = await asyncio.gather(*(stub.CreateModelVersion(request) for _ in range(10)))
    assert {r.name for r in results} == {f"models/{model_id}/versions/1"}
    request.model_version.run_id = "r2"
    failure = await fails(stub.CreateModelVersion(request))
    assert (failure.code, failure.reason) == (Code.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert (await stub.GetModel(pb.GetModelRequest(name=f"models/{model_id}"))).latest_version == 1


async def test_version_metadata_round_trips(stub: AsyncStub, artifacts: ArtifactStub) -> None:
    model_id = await make_model(stub)
    parent = await stub.CreateModelVersion(version_request(model_id, run_id="base"))
    digest, _ = await publish(artifacts, {"model.onnx": b"weights", "README": b"hello"})
    mv = model_pb2.ModelVersion(
        run_id="run-42",
        description="gbm",
        labels={"team": "fraud"},
        metrics={"auc": 0.93, "val/loss": 0.12},
        lineage=model_pb2.Lineage(
            datasets=[
                model_pb2.DatasetRef(
                    uri="s3://data/train.parquet", digest="sha256:" + "cd" * 32, role="train"
                )
            ],
            code=model_pb2.CodeRef(repository="https://git.example/fraud", commit="abc123"),
            parameters={"max_depth": "6"},
            parent_versions=[parent.name],
        ),
        input_schema=model_pb2.Schema(
            fields=[model_pb2.SchemaField(name="amount", dtype="float32", shape=[-1, 1])]
        ),
        output_schema=model_pb2.Schema(fields=[model_pb2.SchemaField(name="score", dtype="float32")]),
        dependencies=model_pb2.Dependencies(
            python_version="3.11",
            packages=[model_pb2.PackageRequirement(name="scikit-learn", version="1.5.2")],
        ),
        artifact_digest=digest,
        creator="mallory",
        stage=model_pb2.STAGE_PRODUCTION,
    )
    created = await stub.CreateModelVersion(
        pb.CreateModelVersionRequest(parent=f"models/{model_id}", model_version=mv)
    )
    assert created.version == 2
    assert created.creator == "admin"  # the authenticated principal, never taken from the client
    assert created.stage == model_pb2.STAGE_NONE  # output only
    for field in ("run_id", "description", "labels", "metrics", "lineage", "input_schema", "output_schema"):
        assert getattr(created, field) == getattr(mv, field), field
    assert created.dependencies == mv.dependencies
    assert created.artifact_digest == digest
    assert await stub.GetModelVersion(pb.GetModelVersionRequest(name=created.name)) == created


async def test_invalid_version_fields_are_all_reported(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    mv = model_pb2.ModelVersion(
        run_id="a\x00b",
        metrics={"auc": float("nan"), "bad name": 1.0},
        artifact_digest="md5:123",
        labels={"9bad": "x"},
        input_schema=model_pb2.Schema(fields=[model_pb2.SchemaField(name="", dtype="")]),
        lineage=model_pb2.Lineage(parent_versions=["not-a-version"]),
    )
    failure = await fails(
        stub.CreateModelVersion(pb.CreateModelVersionRequest(parent=f"models/{model_id}", model_version=mv))
    )
    assert failure.code == Code.INVALID_ARGUMENT
    fields = {f for f, _ in failure.field_violations}
    assert "model_version.run_id" in fields
    assert "model_version.artifact_digest" in fields
    assert "model_version.metrics['auc']" in fields
    assert "model_version.metrics['bad name']" in fields
    assert "model_version.labels['9bad']" in fields
    assert "model_version.input_schema.fields[0].name" in fields
    assert "model_version.lineage.parent_versions[0]" in fields
    assert (await stub.GetModel(pb.GetModelRequest(name=f"models/{model_id}"))).latest_version == 0


async def test_lineage_parent_must_exist(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    missing = f"models/{model_id}/versions/9"
    request = version_request(model_id, lineage=model_pb2.Lineage(parent_versions=[missing]))
    failure = await fails(stub.CreateModelVersion(request))
    assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "PARENT_VERSION_NOT_FOUND")
    assert failure.precondition_violations[0][1] == missing


async def test_registered_fields_are_immutable(stub: AsyncStub, database_url: str) -> None:
    model_id = await make_model(stub)
    created = await stub.CreateModelVersion(version_request(model_id, run_id="orig", metrics={"auc": 0.5}))
    changed = model_pb2.ModelVersion(name=created.name, run_id="forged", description="better words")
    failure = await fails(
        stub.UpdateModelVersion(
            pb.UpdateModelVersionRequest(
                model_version=changed, update_mask=field_mask_pb2.FieldMask(paths=["run_id", "description"])
            )
        )
    )
    assert failure.code == Code.INVALID_ARGUMENT
    assert failure.field_violations[0][0] == "update_mask.paths[0]"
    updated = await stub.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model_version=changed, update_mask=field_mask_pb2.FieldMask(paths=["description"])
        )
    )
    assert (updated.description, updated.run_id) == ("better words", "orig")
    assert updated.etag != created.etag
    # Without a mask only the mutable fields that are set change; run_id in the message is ignored.
    again = await stub.UpdateModelVersion(pb.UpdateModelVersionRequest(model_version=changed))
    assert again.run_id == "orig"
    # The database itself refuses, whoever asks.
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresError, match="immutable"):
            await conn.execute(
                "UPDATE model_versions SET metrics = '{\"auc\": 1.0}' WHERE model_id = $1 AND version = 1",
                model_id,
            )
    finally:
        await conn.close()


async def test_update_model_with_mask_and_etag(stub: AsyncStub) -> None:
    model_id = await make_model(stub, team="a")
    name = f"models/{model_id}"
    current = await stub.GetModel(pb.GetModelRequest(name=name))
    updated = await stub.UpdateModel(
        pb.UpdateModelRequest(
            model=model_pb2.Model(name=name, description="new", labels={"team": "b"}, etag=current.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert (updated.description, dict(updated.labels)) == ("new", {"team": "a"})
    stale = await fails(
        stub.UpdateModel(
            pb.UpdateModelRequest(model=model_pb2.Model(name=name, owner_team="x", etag=current.etag))
        )
    )
    assert (stale.code, stale.reason) == (Code.ABORTED, "ETAG_MISMATCH")
    bad_mask = await fails(
        stub.UpdateModel(
            pb.UpdateModelRequest(
                model=model_pb2.Model(name=name), update_mask=field_mask_pb2.FieldMask(paths=["nope"])
            )
        )
    )
    assert bad_mask.code == Code.INVALID_ARGUMENT
    everything = await stub.UpdateModel(
        pb.UpdateModelRequest(
            model=model_pb2.Model(name=name), update_mask=field_mask_pb2.FieldMask(paths=["*"])
        )
    )
    assert (everything.description, dict(everything.labels), everything.owner_team) == ("", {}, "")


async def test_delete_model_refused_while_it_has_versions(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    name = f"models/{model_id}"
    await stub.CreateModelVersion(version_request(model_id))
    failure = await fails(stub.DeleteModel(pb.DeleteModelRequest(name=name)))
    assert (failure.code, failure.reason) == (Code.FAILED_PRECONDITION, "MODEL_HAS_VERSIONS")
    assert failure.precondition_violations
    stale = await fails(stub.DeleteModel(pb.DeleteModelRequest(name=name, force=True, etag='"0000"')))
    assert stale.code == Code.ABORTED
    await stub.DeleteModel(pb.DeleteModelRequest(name=name, force=True))
    assert (await fails(stub.GetModel(pb.GetModelRequest(name=name)))).code == Code.NOT_FOUND
    versions = await fails(stub.ListModelVersions(pb.ListModelVersionsRequest(parent=name)))
    assert versions.code == Code.NOT_FOUND


async def list_all(stub: AsyncStub, request: pb.ListModelVersionsRequest) -> list[model_pb2.ModelVersion]:
    items: list[model_pb2.ModelVersion] = []
    while True:
        page = await stub.ListModelVersions(request)
        items.extend(page.model_versions)
        if not page.next_page_token:
            return items
        request.page_token = page.next_page_token


async def test_filters_and_ordering(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    for i, auc in enumerate([0.7, 0.95, 0.9, 0.85]):
        labels = {"env": "prod"} if i % 2 else {"env": "dev"}
        await stub.CreateModelVersion(
            version_request(model_id, run_id=f"run-{i}", metrics={"auc": auc}, labels=labels)
        )
    await stub.CreateModelVersion(version_request(model_id, run_id="no-metrics"))
    parent = f"models/{model_id}"

    async def versions(filter_: str, order_by: str = "") -> list[int]:
        items = await list_all(
            stub, pb.ListModelVersionsRequest(parent=parent, filter=filter_, order_by=order_by, page_size=2)
        )
        return [v.version for v in items]

    assert await versions("metrics.auc >= 0.9", "metrics.auc desc") == [2, 3]
    assert await versions("", "metrics.auc desc") == [2, 3, 4, 1, 5]  # missing metric sorts last
    assert await versions("", "metrics.auc") == [1, 4, 3, 2, 5]
    assert await versions('labels.env = "prod"', "version") == [2, 4]
    assert await versions('labels.env = "prod" OR run_id = "run-0"', "version") == [1, 2, 4]
    assert await versions("NOT metrics.auc > 0.8", "version") == [1, 5]
    assert await versions("metrics:auc AND -labels.env = dev", "version") == [2, 4]
    assert await versions('run_id = "run-*"', "version desc") == [4, 3, 2, 1]
    assert await versions("stage = STAGE_NONE AND version > 3", "version") == [4, 5]
    assert await versions('create_time > "2000-01-01T00:00:00Z"', "version") == [1, 2, 3, 4, 5]
    assert await versions("", "") == [5, 4, 3, 2, 1]  # default: newest first
    across = await list_all(
        stub, pb.ListModelVersionsRequest(parent="models/-", filter=f'model_id = "{model_id}"')
    )
    assert len(across) == 5


@pytest.mark.parametrize(
    ("filter_", "field"),
    [
        ("metrics.auc >", "filter"),
        ("unknown_field = 1", "filter"),
        ('version = "abc"', "filter"),
        ("(" * 40 + "version = 1" + ")" * 40, "filter"),
        ("version = 1 AND " * 2000 + "version = 1", "filter"),
        ("'; DROP TABLE model_versions; --", "filter"),
        ("stage = STAGE_BOGUS", "filter"),
    ],
)
async def test_malformed_filters_are_invalid_argument(stub: AsyncStub, filter_: str, field: str) -> None:
    model_id = await make_model(stub)
    failure = await fails(
        stub.ListModelVersions(pb.ListModelVersionsRequest(parent=f"models/{model_id}", filter=filter_))
    )
    assert failure.code == Code.INVALID_ARGUMENT
    assert failure.field_violations[0][0] == field


@pytest.mark.parametrize(
    "filter_",
    [
        'run_id = "\'; DROP TABLE model_versions; --"',
        'labels.team = "x\') OR 1=1 --"',
        'labels."a\'b" = "c"',
        'description : "%_\\\\"',
        'run_id = "日本語 🎉 \u202e"',
        'run_id = "' + "x" * 3000 + '"',
    ],
)
async def test_injection_attempts_match_nothing(stub: AsyncStub, filter_: str) -> None:
    model_id = await make_model(stub)
    await stub.CreateModelVersion(version_request(model_id, run_id="r"))
    page = await stub.ListModelVersions(
        pb.ListModelVersionsRequest(parent=f"models/{model_id}", filter=filter_)
    )
    assert list(page.model_versions) == []
    still_there = await stub.ListModelVersions(pb.ListModelVersionsRequest(parent=f"models/{model_id}"))
    assert len(still_there.model_versions) == 1


async def test_page_size_and_token_rules(stub: AsyncStub) -> None:
    model_id = await make_model(stub)
    for _ in range(3):
        await stub.CreateModelVersion(version_request(model_id))
    parent = f"models/{model_id}"
    negative = await fails(stub.ListModelVersions(pb.ListModelVersionsRequest(parent=parent, page_size=-1)))
    assert negative.field_violations[0][0] == "page_size"
    first = await stub.ListModelVersions(pb.ListModelVersionsRequest(parent=parent, page_size=2))
    assert len(first.model_versions) == 2 and first.next_page_token
    other_filter = await fails(
        stub.ListModelVersions(
            pb.ListModelVersionsRequest(
                parent=parent, page_size=2, filter="version > 0", page_token=first.next_page_token
            )
        )
    )
    assert other_filter.field_violations[0][0] == "page_token"
    garbage = await fails(
        stub.ListModelVersions(pb.ListModelVersionsRequest(parent=parent, page_token="garbage!"))
    )
    assert garbage.code == Code.INVALID_ARGUMENT
    huge = await stub.ListModelVersions(pb.ListModelVersionsRequest(parent=parent, page_size=10**9))
    assert len(huge.model_versions) == 3 and not huge.next_page_token


async def test_paging_1000_versions_with_concurrent_inserts_sees_no_duplicates(
    stub: AsyncStub,
) -> None:
    model_id = await make_model(stub)
    for start in range(0, 1000, 100):
        await asyncio.gather(
            *(stub.CreateModelVersion(version_request(model_id)) for _ in range(start, start + 100))
        )
    parent = f"models/{model_id}"
    seen: list[int] = []
    stop = asyncio.Event()

    async def writer() -> int:
        written = 0
        while not stop.is_set():
            await stub.CreateModelVersion(version_request(model_id))
            written += 1
        return written

    writer_task = asyncio.create_task(writer())
    request = pb.ListModelVersionsRequest(parent=parent, page_size=37, order_by="version")
    while True:
        page = await stub.ListModelVersions(request)
        seen.extend(v.version for v in page.model_versions)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    stop.set()
    written = await writer_task
    assert written > 0
    assert len(seen) == len(set(seen))
    assert set(range(1, 1001)) <= set(seen)
    assert seen == sorted(seen)


async def test_list_models_filters_by_label_and_pages(stub: AsyncStub) -> None:
    team = "t" + uuid.uuid4().hex[:8]
    ids = sorted([await make_model(stub, team=team) for _ in range(5)])
    request = pb.ListModelsRequest(filter=f'labels.team = "{team}"', page_size=2)
    names: list[str] = []
    while True:
        page = await stub.ListModels(request)
        names.extend(m.name for m in page.models)
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert names == [f"models/{i}" for i in ids]
    by_name = await stub.ListModels(pb.ListModelsRequest(filter=f'name = "models/{ids[0]}"'))
    assert [m.name for m in by_name.models] == [f"models/{ids[0]}"]
