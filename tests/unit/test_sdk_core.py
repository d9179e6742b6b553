"""SDK core: names, configuration, request builders, error mapping, and the clients against an in-process
fake servicer (no registry server or database)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, empty_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

import modelreg
from modelreg import _core, errors
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_pb2_grpc

# --- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("fraud", "models/fraud"), ("models/fraud", "models/fraud")])
def test_model_name_accepts_id_or_name(given: str, expected: str) -> None:
    assert _core.model_name(given) == expected
    assert _core.model_id(given) == "fraud"


@pytest.mark.parametrize("bad", ["", "models/", "models/a/versions/1", "a/b"])
def test_model_name_rejects_other_shapes(bad: str) -> None:
    with pytest.raises(ValueError, match="model"):
        _core.model_name(bad)


def test_version_name() -> None:
    assert _core.version_name("fraud", 3) == "models/fraud/versions/3"
    assert _core.version_name("models/fraud", "12") == "models/fraud/versions/12"
    for bad in (0, -1, "x", "", "1.5"):
        with pytest.raises(ValueError, match="positive integer"):
            _core.version_name("fraud", bad)


@pytest.mark.parametrize("ref", ["models/fraud/versions/3", "fraud/3", "models/fraud/3"])
def test_version_references_normalise(ref: str) -> None:
    assert _core.parse_version_name(ref) == ("models/fraud", 3)
    assert _core.model_version_name(ref) == "models/fraud/versions/3"


@pytest.mark.parametrize("bad", ["fraud", "fraud/", "/3", "models/fraud/versions/x", "a/b/c"])
def test_version_references_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        _core.model_version_name(bad)


# --- configuration -------------------------------------------------------------------------------------


def test_config_defaults(tmp_path: Path) -> None:
    config = _core.ClientConfig.resolve(env={}, cwd=tmp_path)
    assert config.address == "127.0.0.1:50051"
    assert config.token is None
    assert config.timeout == 30.0
    assert not config.tls
    assert config.call_metadata == ()
    assert config.channel_credentials() is None


def test_config_from_env(tmp_path: Path) -> None:
    env = {"MODELREG_ADDRESS": "reg:9000", "MODELREG_TOKEN": "s3cret"}
    config = _core.ClientConfig.resolve(env=env, cwd=tmp_path)
    assert config.address == "reg:9000"
    assert config.call_metadata == (("authorization", "Bearer s3cret"),)
    assert "s3cret" not in repr(config)


def test_config_token_file_is_the_last_resort(tmp_path: Path) -> None:
    (tmp_path / ".modelreg").mkdir()
    (tmp_path / ".modelreg" / "admin.token").write_text("from-file\n")
    assert _core.ClientConfig.resolve(env={}, cwd=tmp_path).token == "from-file"
    assert _core.ClientConfig.resolve(env={"MODELREG_TOKEN": "env"}, cwd=tmp_path).token == "env"
    assert _core.ClientConfig.resolve(token="arg", env={"MODELREG_TOKEN": "env"}, cwd=tmp_path).token == "arg"
    assert _core.ClientConfig.resolve(token="", env={"MODELREG_TOKEN": "env"}, cwd=tmp_path).token is None


def test_config_token_file_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELREG_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".modelreg").mkdir()
    (tmp_path / ".modelreg" / "admin.token").write_text("cwd-token")
    assert modelreg.Registry("127.0.0.1:1").config.token == "cwd-token"


def test_config_arguments_win_and_root_certs_enable_tls(tmp_path: Path) -> None:
    config = _core.ClientConfig.resolve(
        "here:1", timeout=None, root_certificates=b"PEM", env={"MODELREG_ADDRESS": "there:2"}, cwd=tmp_path
    )
    assert config.address == "here:1"
    assert config.timeout is None
    assert config.tls
    with pytest.raises(ValueError, match="timeout"):
        _core.ClientConfig.resolve(timeout=0, env={}, cwd=tmp_path)


def test_service_config_retries_only_idempotent_methods(tmp_path: Path) -> None:
    options = dict(
        _core.ClientConfig.resolve(env={}, cwd=tmp_path, options=(("grpc.x", 1),)).channel_options()
    )
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.x"] == 1
    (method_config,) = json.loads(options["grpc.service_config"])["methodConfig"]
    retried = {(n["service"], n["method"]) for n in method_config["name"]}
    idempotent = {
        "ModelRegistryService": (
            "GetModel", "ListModels", "GetModelVersion", "ListModelVersions", "CreateModelVersion",
        ),
        "LifecycleService": (
            "GetAlias", "ListAliases", "ListAliasHistory", "ListStageTransitions", "GetTrafficPolicy",
        ),
        "ServingService": ("ResolveAlias", "BatchResolveAliases", "ResolveRoute"),
    }  # fmt: skip
    assert retried == {(f"modelreg.v1.{svc}", m) for svc, methods in idempotent.items() for m in methods}
    descriptors = {
        "ModelRegistryService": service_pb2.DESCRIPTOR,
        "LifecycleService": lifecycle_pb2.DESCRIPTOR,
        "ServingService": lifecycle_pb2.DESCRIPTOR,
    }
    for svc, methods in idempotent.items():
        known = descriptors[svc].services_by_name[svc].methods_by_name
        assert all(m in known for m in methods)
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 5


# --- request builders ----------------------------------------------------------------------------------


def test_create_model_request() -> None:
    request = _core.create_model_request("fraud", description="d", labels={"team": "risk"}, owner_team="risk")
    assert request.model_id == "fraud"
    assert request.model.description == "d"
    assert dict(request.model.labels) == {"team": "risk"}
    assert request.model.owner_team == "risk"
    assert _core.create_model_request("models/fraud").model_id == "fraud"


def test_update_model_request_masks_only_given_fields() -> None:
    request = _core.update_model_request("fraud", description="new", etag="e1")
    assert request.model.name == "models/fraud"
    assert request.model.etag == "e1"
    assert list(request.update_mask.paths) == ["description"]

    request = _core.update_model_request("fraud", labels={}, owner_team="")
    assert list(request.update_mask.paths) == ["labels", "owner_team"]
    assert dict(request.model.labels) == {}

    with pytest.raises(ValueError, match="at least one"):
        _core.update_model_request("fraud")


def test_update_model_version_request() -> None:
    request = _core.update_model_version_request("fraud/2", labels={"a": "b"})
    assert request.model_version.name == "models/fraud/versions/2"
    assert list(request.update_mask.paths) == ["labels"]
    with pytest.raises(ValueError, match="at least one"):
        _core.update_model_version_request("fraud/2")


def test_delete_and_get_requests() -> None:
    request = _core.delete_model_request("fraud", force=True, etag="e")
    assert (request.name, request.force, request.etag) == ("models/fraud", True, "e")
    assert _core.get_model_request("fraud").name == "models/fraud"
    assert _core.get_model_version_request("fraud/7").name == "models/fraud/versions/7"


def test_create_model_version_request_from_dicts() -> None:
    request = _core.create_model_version_request(
        "fraud",
        run_id="run-1",
        metrics={"auc": 1, "loss": 0.25},
        lineage={
            "datasets": [{"uri": "s3://b/train.parquet", "role": "train"}],
            "code": {"repository": "https://git/x", "commit": "abc"},
            "parentVersions": ["models/base/versions/1"],
        },
        input_schema={"fields": [{"name": "x", "dtype": "float32", "shape": [-1, 3]}]},
        dependencies={"python_version": "3.11", "packages": [{"name": "numpy", "version": "2.1"}]},
        artifact_digest="sha256:" + "0" * 64,
        request_id="req-1",
    )
    assert request.parent == "models/fraud"
    assert request.request_id == "req-1"
    version = request.model_version
    assert version.run_id == "run-1"
    assert dict(version.metrics) == {"auc": 1.0, "loss": 0.25}
    assert version.lineage.datasets[0].role == "train"
    assert version.lineage.code.commit == "abc"
    assert list(version.lineage.parent_versions) == ["models/base/versions/1"]
    assert list(version.input_schema.fields[0].shape) == [-1, 3]
    assert not version.HasField("output_schema")
    assert version.dependencies.packages[0].name == "numpy"


def test_create_model_version_request_from_messages_copies_them() -> None:
    schema = model_pb2.Schema(fields=[model_pb2.SchemaField(name="y", dtype="int64")])
    request = _core.create_model_version_request("fraud", output_schema=schema)
    schema.fields[0].name = "changed"
    assert request.model_version.output_schema.fields[0].name == "y"


def test_create_model_version_request_ids_are_generated_and_unique() -> None:
    first = _core.create_model_version_request("fraud").request_id
    second = _core.create_model_version_request("fraud").request_id
    assert first and second and first != second
    assert len(first) <= 128


def test_create_model_version_request_rejects_bad_nested_values() -> None:
    with pytest.raises(ValueError, match="lineage"):
        _core.create_model_version_request("fraud", lineage={"no_such_field": 1})
    with pytest.raises(TypeError, match=r"modelreg\.v1\.Schema"):
        _core.create_model_version_request("fraud", input_schema=["x"])  # type: ignore[arg-type]


def test_list_requests_and_paging() -> None:
    request = _core.list_model_versions_request(filter="version > 1", order_by="version", page_size=5)
    assert request.parent == "models/-"
    following = _core.next_page_request(request, "tok")
    assert following.page_token == "tok"
    assert (following.filter, following.order_by, following.page_size) == ("version > 1", "version", 5)
    assert request.page_token == ""
    assert _core.list_models_request(page_size=3).page_size == 3


# --- error mapping -------------------------------------------------------------------------------------


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rich_status(code: int, message: str, *details: Any) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message, details=[_packed(d) for d in details])


def _invalid_status() -> status_pb2.Status:
    return _rich_status(
        code_pb2.INVALID_ARGUMENT,
        "model_id: must start with a letter",
        error_details_pb2.ErrorInfo(
            domain="modelreg", reason="INVALID_MODEL_ID", metadata={"field": "model_id"}
        ),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="model_id", description="must start with a letter"
                )
            ]
        ),
    )


class _SyncCallError(grpc.RpcError):
    """What a sync stub raises, reduced to the grpc.Call accessors the SDK reads."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__()
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


def test_from_rpc_error_sync_unpacks_error_info_and_bad_request() -> None:
    err = errors.from_rpc_error(_SyncCallError(rpc_status.to_status(_invalid_status())))
    assert isinstance(err, modelreg.InvalidArgument)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "model_id: must start with a letter"
    assert err.reason == "INVALID_MODEL_ID"
    assert err.domain == "modelreg"
    assert err.metadata == {"field": "model_id"}
    assert err.field_violations == [("model_id", "must start with a letter")]
    assert [type(d) for d in err.details] == [error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]
    assert str(err) == "INVALID_ARGUMENT INVALID_MODEL_ID: model_id: must start with a letter"


def test_from_rpc_error_aio_unpacks_precondition_failure() -> None:
    status = _rich_status(
        code_pb2.FAILED_PRECONDITION,
        "model has 3 versions",
        error_details_pb2.ErrorInfo(
            domain="modelreg", reason="MODEL_HAS_VERSIONS", metadata={"versions": "3"}
        ),
        error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="VERSIONS", subject="models/fraud", description="delete the versions or pass force"
                )
            ]
        ),
    )
    grpc_status = rpc_status.to_status(status)
    aio_error = grpc.aio.AioRpcError(
        grpc_status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*grpc_status.trailing_metadata),
        grpc_status.details,
        None,
    )
    err = errors.from_rpc_error(aio_error)
    assert isinstance(err, modelreg.FailedPrecondition)
    assert err.reason == "MODEL_HAS_VERSIONS"
    assert err.metadata == {"versions": "3"}
    assert err.precondition_violations == [("VERSIONS", "models/fraud", "delete the versions or pass force")]
    assert err.field_violations == []


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, modelreg.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, modelreg.AlreadyExists),
        (grpc.StatusCode.ABORTED, modelreg.Conflict),
        (grpc.StatusCode.PERMISSION_DENIED, modelreg.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, modelreg.Unauthenticated),
        (grpc.StatusCode.UNAVAILABLE, modelreg.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, modelreg.DeadlineExceeded),
        (grpc.StatusCode.OUT_OF_RANGE, modelreg.OutOfRange),
        (grpc.StatusCode.DATA_LOSS, modelreg.DataLoss),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, modelreg.ResourceExhausted),
        (grpc.StatusCode.CANCELLED, modelreg.Cancelled),
        (grpc.StatusCode.INTERNAL, modelreg.Internal),
        (grpc.StatusCode.UNKNOWN, modelreg.Internal),
        (grpc.StatusCode.UNIMPLEMENTED, modelreg.ModelregError),
    ],
)
def test_status_codes_map_to_classes(code: grpc.StatusCode, cls: type[modelreg.ModelregError]) -> None:
    aio_error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom", None)
    err = errors.from_rpc_error(aio_error)
    assert type(err) is cls
    assert err.code is code
    assert (err.message, err.reason, err.details) == ("boom", "", [])
    assert str(err) == f"{code.name}: boom"


def test_unknown_detail_types_stay_packed_and_status_line_wins() -> None:
    status = _rich_status(
        code_pb2.NOT_FOUND,
        "message in the trailer",
        error_details_pb2.ErrorInfo(domain="modelreg", reason="MODEL_NOT_FOUND"),
        struct_pb2.Struct(),
    )
    status.details[1].type_url = "type.googleapis.com/acme.Unknown"
    trailers = rpc_status.to_status(status).trailing_metadata
    # A proxy rewrote the message: grpcio-status refuses the mismatch, the SDK keeps the details.
    rewritten = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "x", None
    )
    err = errors.from_rpc_error(rewritten)
    assert isinstance(err, modelreg.NotFound)
    assert err.message == "x"
    assert err.reason == "MODEL_NOT_FOUND"
    assert isinstance(err.details[1], any_pb2.Any)


def test_from_status() -> None:
    err = errors.from_status(_invalid_status())
    assert isinstance(err, modelreg.InvalidArgument)
    assert err.field_violations == [("model_id", "must start with a letter")]


def test_errors_are_exported() -> None:
    for name in ("InvalidArgument", "NotFound", "Conflict", "FailedPrecondition", "Internal"):
        assert issubclass(getattr(modelreg, name), modelreg.ModelregError)
    assert modelreg.Model is model_pb2.Model
    assert modelreg.__version__


# --- clients against an in-process fake servicer -------------------------------------------------------


class _FakeRegistry(service_pb2_grpc.ModelRegistryServiceServicer):
    """Scriptable servicer: records calls and fails the first `fail_first[method]` calls with UNAVAILABLE."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        self.fail_first: dict[str, int] = {}

    def _record(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        with self.lock:
            self.calls.append((method, request, metadata))
            remaining = self.fail_first.get(method, 0)
            self.fail_first[method] = remaining - 1
        if remaining > 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.calls if m == method)

    def CreateModel(
        self, request: service_pb2.CreateModelRequest, context: grpc.ServicerContext
    ) -> model_pb2.Model:
        self._record("CreateModel", request, context)
        if request.model_id == "taken":
            status = _rich_status(
                code_pb2.ALREADY_EXISTS,
                "model models/taken exists",
                error_details_pb2.ErrorInfo(
                    domain="modelreg", reason="MODEL_EXISTS", metadata={"model": "taken"}
                ),
            )
            context.abort_with_status(rpc_status.to_status(status))
        if request.model_id.startswith("9"):
            context.abort_with_status(rpc_status.to_status(_invalid_status()))
        return model_pb2.Model(name=f"models/{request.model_id}", description=request.model.description)

    def GetModel(
        self, request: service_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> model_pb2.Model:
        self._record("GetModel", request, context)
        return model_pb2.Model(name=request.name, etag="e1")

    def ListModels(
        self, request: service_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListModelsResponse:
        self._record("ListModels", request, context)
        page = int(request.page_token or "0")
        models = [model_pb2.Model(name=f"models/m{page * 2 + i}") for i in range(2)]
        return service_pb2.ListModelsResponse(
            models=models, next_page_token=str(page + 1) if page < 2 else ""
        )

    def UpdateModel(
        self, request: service_pb2.UpdateModelRequest, context: grpc.ServicerContext
    ) -> model_pb2.Model:
        self._record("UpdateModel", request, context)
        return request.model

    def DeleteModel(
        self, request: service_pb2.DeleteModelRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._record("DeleteModel", request, context)
        return empty_pb2.Empty()

    def CreateModelVersion(
        self, request: service_pb2.CreateModelVersionRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelVersion:
        self._record("CreateModelVersion", request, context)
        return model_pb2.ModelVersion(
            name=f"{request.parent}/versions/1", version=1, run_id=request.model_version.run_id
        )

    def GetModelVersion(
        self, request: service_pb2.GetModelVersionRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelVersion:
        self._record("GetModelVersion", request, context)
        context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")

    def ListModelVersions(
        self, request: service_pb2.ListModelVersionsRequest, context: grpc.ServicerContext
    ) -> service_pb2.ListModelVersionsResponse:
        self._record("ListModelVersions", request, context)
        versions = [model_pb2.ModelVersion(name=f"{request.parent}/versions/{n}", version=n) for n in (2, 1)]
        return service_pb2.ListModelVersionsResponse(model_versions=versions)

    def UpdateModelVersion(
        self, request: service_pb2.UpdateModelVersionRequest, context: grpc.ServicerContext
    ) -> model_pb2.ModelVersion:
        self._record("UpdateModelVersion", request, context)
        return request.model_version

    def CompareModelVersions(
        self, request: service_pb2.CompareModelVersionsRequest, context: grpc.ServicerContext
    ) -> service_pb2.CompareModelVersionsResponse:
        self._record("CompareModelVersions", request, context)
        return service_pb2.CompareModelVersionsResponse()


@pytest.fixture
def fake() -> Iterator[tuple[_FakeRegistry, str]]:
    servicer = _FakeRegistry()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_ModelRegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_sync_client_sends_token_and_builds_requests(fake: tuple[_FakeRegistry, str]) -> None:
    servicer, address = fake
    with modelreg.Registry(address, token="tok", timeout=5) as registry:
        model = registry.create_model("fraud", description="d")
        assert model.name == "models/fraud"
        updated = registry.update_model("fraud", owner_team="risk", etag="e1")
        assert updated.owner_team == "risk"
        registry.delete_model("models/fraud", force=True)
    method, request, _ = servicer.calls[-1]
    assert (method, request.name, request.force) == ("DeleteModel", "models/fraud", True)
    assert all(md.get("authorization") == "Bearer tok" for _, _, md in servicer.calls)
    assert "modelreg-python/" in servicer.calls[0][2]["user-agent"]


def test_sync_client_pages_transparently(fake: tuple[_FakeRegistry, str]) -> None:
    servicer, address = fake
    with modelreg.Registry(address, token="") as registry:
        names = [m.name for m in registry.list_models(filter='owner_team = "x"', page_size=2)]
    assert names == [f"models/m{i}" for i in range(6)]
    requests = [r for m, r, _ in servicer.calls if m == "ListModels"]
    assert [r.page_token for r in requests] == ["", "1", "2"]
    assert all(r.filter == 'owner_team = "x"' and r.page_size == 2 for r in requests)
    assert "authorization" not in servicer.calls[0][2]


def test_grpc_retries_idempotent_calls_on_unavailable(fake: tuple[_FakeRegistry, str]) -> None:
    servicer, address = fake
    servicer.fail_first = {"GetModel": 2, "CreateModelVersion": 1, "UpdateModel": 1, "CreateModel": 1}
    with modelreg.Registry(address, token="", timeout=10) as registry:
        assert registry.get_model("fraud").etag == "e1"
        version = registry.create_model_version("fraud", run_id="r1")
        assert version.version == 1
        with pytest.raises(modelreg.Unavailable):
            registry.update_model("fraud", description="x")
        with pytest.raises(modelreg.Unavailable):
            registry.create_model("fraud")
    assert servicer.count("GetModel") == 3
    assert servicer.count("UpdateModel") == 1
    assert servicer.count("CreateModel") == 1
    creates = [r for m, r, _ in servicer.calls if m == "CreateModelVersion"]
    assert len(creates) == 2
    assert creates[0].request_id and creates[0].request_id == creates[1].request_id


def test_sync_client_raises_typed_errors_with_details(fake: tuple[_FakeRegistry, str]) -> None:
    _, address = fake
    with modelreg.Registry(address, token="") as registry:
        with pytest.raises(modelreg.AlreadyExists) as exists:
            registry.create_model("taken")
        assert exists.value.reason == "MODEL_EXISTS"
        assert exists.value.metadata == {"model": "taken"}
        with pytest.raises(modelreg.InvalidArgument) as invalid:
            registry.create_model("9lives")
        assert invalid.value.field_violations == [("model_id", "must start with a letter")]
        with pytest.raises(modelreg.NotFound) as missing:
            registry.get_model_version("fraud/4")
        assert missing.value.message == "models/fraud/versions/4 not found"
        assert missing.value.reason == ""


async def test_async_client_matches_sync(fake: tuple[_FakeRegistry, str]) -> None:
    servicer, address = fake
    servicer.fail_first = {"ListModels": 1}
    async with modelreg.AsyncRegistry(address, token="tok") as registry:
        names = [m.name async for m in registry.list_models()]
        assert names == [f"models/m{i}" for i in range(6)]
        versions = [v.version async for v in registry.list_model_versions("fraud")]
        assert versions == [2, 1]
        version = await registry.update_model_version("fraud/2", description="d")
        assert version.name == "models/fraud/versions/2"
        with pytest.raises(modelreg.InvalidArgument) as invalid:
            await registry.create_model("9lives")
        assert invalid.value.reason == "INVALID_MODEL_ID"
        assert invalid.value.field_violations == [("model_id", "must start with a letter")]
        with pytest.raises(modelreg.NotFound):
            await registry.get_model_version("models/fraud/versions/9")
    assert servicer.count("ListModels") == 4
    assert all(md.get("authorization") == "Bearer tok" for _, _, md in servicer.calls)
