"""`modelreg` CLI: argument parsing, output formatting and exit codes, with the client replaced by a fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from modelreg import cli, errors
from modelreg.v1 import model_pb2

# --- parsing -------------------------------------------------------------------------------------------


def test_models_list_options() -> None:
    args = cli.build_parser().parse_args(
        ["models", "list", "--filter", 'owner_team = "risk"', "--order-by", "name desc", "--limit", "3"]
    )
    assert (args.resource, args.command) == ("models", "list")
    assert (args.filter, args.order_by, args.limit) == ('owner_team = "risk"', "name desc", 3)
    assert (args.address, args.token, args.timeout, args.json) == (None, None, 30.0, False)


def test_global_options_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--address", "h:1", "--json", "--timeout", "2.5", "models", "get", "fraud"])
    after = parser.parse_args(["models", "get", "fraud", "--address", "h:1", "--json", "--timeout", "2.5"])
    for args in (before, after):
        assert (args.address, args.json, args.timeout, args.name) == ("h:1", True, 2.5, "fraud")


def test_models_create_collects_labels() -> None:
    args = cli.build_parser().parse_args(
        ["models", "create", "fraud", "--label", "team=risk", "--label", "tier=1=a", "--owner-team", "risk"]
    )
    assert args.model_id == "fraud"
    assert dict(args.labels) == {"team": "risk", "tier": "1=a"}
    assert (args.owner_team, args.description) == ("risk", "")


def test_versions_create_collects_metrics() -> None:
    digest = "sha256:" + "a" * 64
    args = cli.build_parser().parse_args(
        [
            "versions",
            "create",
            "fraud",
            "--run-id",
            "r1",
            "--metric",
            "auc=0.93",
            "--metric",
            "n=3",
            "--digest",
            digest,
        ]
    )
    assert (args.model, args.run_id, args.digest) == ("fraud", "r1", digest)
    assert dict(args.metrics) == {"auc": 0.93, "n": 3.0}


def test_versions_list_defaults_to_every_model() -> None:
    args = cli.build_parser().parse_args(["versions", "list"])
    assert (args.model, args.filter, args.limit) == ("-", "", None)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["models"],
        ["models", "frobnicate"],
        ["models", "get"],
        ["models", "create", "fraud", "--label", "novalue"],
        ["models", "create", "fraud", "--label", "=v"],
        ["versions", "create", "fraud", "--metric", "auc=high"],
        ["versions", "create", "fraud", "--metric", "auc=nan"],
        ["models", "list", "--limit", "0"],
        ["models", "list", "--timeout", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0_and_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit codes:" in out
    assert "3   not found" in out


def test_exit_codes_are_distinct_per_error_class() -> None:
    expected = {
        errors.NotFound: 3,
        errors.AlreadyExists: 4,
        errors.InvalidArgument: 5,
        errors.OutOfRange: 5,
        errors.FailedPrecondition: 6,
        errors.Conflict: 7,
        errors.PermissionDenied: 8,
        errors.Unauthenticated: 8,
        errors.Unavailable: 9,
        errors.DeadlineExceeded: 10,
        errors.Internal: 1,
        errors.DataLoss: 1,
    }
    for cls, code in expected.items():
        assert cli.exit_code_for(cls("x")) == code, cls
    assert cli.exit_code_for(errors.ModelregError("x", code=grpc.StatusCode.UNIMPLEMENTED)) == 1


# --- formatting ----------------------------------------------------------------------------------------


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500)


def test_format_table_aligns_columns() -> None:
    table = cli.format_table(["NAME", "N", "NOTE"], [["models/a", "10", ""], ["b", "2", "multi\nline  text"]])
    assert table.splitlines() == [
        "NAME      N   NOTE",
        "models/a  10",
        "b         2   multi line text",
    ]


def test_format_table_without_rows_prints_the_header() -> None:
    assert cli.format_table(["NAME", "LATEST"], []) == "NAME  LATEST"


def test_format_fields_indents_continuation_lines() -> None:
    text = cli.format_fields([("name", "models/a"), ("description", "one\ntwo"), ("etag", "")])
    assert text.splitlines() == ["name         models/a", "description  one", "             two", "etag"]


def test_value_formatters() -> None:
    assert cli.format_timestamp(_ts(0)) == "1970-01-01T00:00:00Z"
    assert cli.format_timestamp(timestamp_pb2.Timestamp()) == ""
    assert cli.format_timestamp(_ts(1_767_323_045)) == "2026-01-02T03:04:05Z"
    assert cli.format_labels({"z": "1", "a": "2"}) == "a=2,z=1"
    assert cli.format_metrics({"loss": 0.1234567891, "auc": 1.0}) == "auc=1 loss=0.123457"
    assert cli.stage_label(model_pb2.STAGE_PRODUCTION) == "PRODUCTION"


def test_models_table() -> None:
    models = [
        model_pb2.Model(name="models/fraud", latest_version=12, owner_team="risk", labels={"t": "1"}),
        model_pb2.Model(name="models/churn", update_time=_ts(1_767_323_045)),
    ]
    assert cli.models_table(models).splitlines() == [
        "NAME          LATEST  OWNER  LABELS  UPDATED",
        "models/fraud  12      risk   t=1",
        "models/churn  0                      2026-01-02T03:04:05Z",
    ]


def test_versions_table() -> None:
    version = model_pb2.ModelVersion(
        name="models/fraud/versions/3", stage=model_pb2.STAGE_STAGING, run_id="r9", metrics={"auc": 0.9}
    )
    lines = cli.versions_table([version]).splitlines()
    assert lines[0].split() == ["NAME", "STAGE", "RUN", "METRICS", "CREATED"]
    assert lines[1].split() == ["models/fraud/versions/3", "STAGING", "r9", "auc=0.9"]


def test_message_fields_flattens_nested_messages() -> None:
    version = model_pb2.ModelVersion(
        name="models/fraud/versions/1",
        version=1,
        labels={"a": "b"},
        lineage=model_pb2.Lineage(
            datasets=[model_pb2.DatasetRef(uri="s3://x", role="train")],
            parent_versions=["models/p/versions/1"],
        ),
        input_schema=model_pb2.Schema(fields=[model_pb2.SchemaField(name="x", shape=[-1, 3], optional=True)]),
    )
    pairs = cli.message_fields(version)
    assert [key for key, _ in pairs][:4] == ["name", "version", "run_id", "description"]
    fields = dict(pairs)
    assert fields["name"] == "models/fraud/versions/1"
    assert fields["version"] == "1"
    assert fields["labels.a"] == "b"
    assert fields["lineage.datasets[0].uri"] == "s3://x"
    assert fields["lineage.parent_versions"] == "models/p/versions/1"
    assert fields["input_schema.fields[0].shape"] == "-1, 3"
    assert fields["input_schema.fields[0].optional"] == "true"
    assert fields["stage"] == "STAGE_UNSPECIFIED"
    assert fields["metrics"] == ""
    assert fields["create_time"] == ""
    assert "lineage.datasets[0].digest" not in fields
    assert "lineage.code" not in fields


def test_message_fields_renders_timestamps() -> None:
    fields = dict(cli.message_fields(model_pb2.Model(name="models/a", create_time=_ts(1_767_323_045))))
    assert fields["create_time"] == "2026-01-02T03:04:05.000000500Z"
    assert fields["latest_version"] == "0"


# --- commands against a fake client --------------------------------------------------------------------


class _FakeRegistry:
    """Stands in for modelreg.Registry inside cli.main."""

    instances: list[_FakeRegistry] = []
    fail_with: errors.ModelregError | None = None

    def __init__(self, address: str | None, *, token: str | None, timeout: float | None) -> None:
        self.address, self.token, self.timeout = address, token, timeout
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        _FakeRegistry.instances.append(self)

    def __enter__(self) -> _FakeRegistry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))
        if _FakeRegistry.fail_with is not None:
            raise _FakeRegistry.fail_with

    def list_models(self, **kwargs: Any) -> Iterator[model_pb2.Model]:
        self._record("list_models", **kwargs)
        return iter([model_pb2.Model(name=f"models/m{i}", latest_version=i) for i in range(5)])

    def get_model(self, name: str) -> model_pb2.Model:
        self._record("get_model", name)
        return model_pb2.Model(name="models/fraud", owner_team="risk")

    def create_model(self, model_id: str, **kwargs: Any) -> model_pb2.Model:
        self._record("create_model", model_id, **kwargs)
        return model_pb2.Model(name=f"models/{model_id}", **kwargs)

    def delete_model(self, name: str, **kwargs: Any) -> None:
        self._record("delete_model", name, **kwargs)

    def list_model_versions(self, model: str, **kwargs: Any) -> Iterator[model_pb2.ModelVersion]:
        self._record("list_model_versions", model, **kwargs)
        return iter([model_pb2.ModelVersion(name="models/fraud/versions/1", version=1, metrics={"auc": 0.5})])

    def get_model_version(self, name: str) -> model_pb2.ModelVersion:
        self._record("get_model_version", name)
        return model_pb2.ModelVersion(name="models/fraud/versions/1", version=1)

    def create_model_version(self, model: str, **kwargs: Any) -> model_pb2.ModelVersion:
        self._record("create_model_version", model, **kwargs)
        return model_pb2.ModelVersion(name=f"models/{model}/versions/2", version=2, run_id=kwargs["run_id"])


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> type[_FakeRegistry]:
    _FakeRegistry.instances = []
    _FakeRegistry.fail_with = None
    monkeypatch.setattr(cli, "Registry", _FakeRegistry)
    return _FakeRegistry


def test_models_list_table_with_limit(
    fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "list", "--limit", "2", "--address", "h:1", "--token", "t"]) == 0
    (registry,) = fake_registry.instances
    assert (registry.address, registry.token, registry.timeout) == ("h:1", "t", 30.0)
    assert registry.calls == [("list_models", (), {"filter": "", "order_by": "", "page_size": 2})]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["NAME", "models/m0", "models/m1"]


def test_models_list_json_is_a_list(
    fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--json", "models", "list"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in items] == [f"models/m{i}" for i in range(5)]
    assert items[0]["latestVersion"] == "0"


def test_versions_create_passes_options(
    fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "versions",
        "create",
        "fraud",
        "--run-id",
        "r1",
        "--metric",
        "auc=0.9",
        "--label",
        "a=b",
        "--json",
    ]
    assert cli.main(argv) == 0
    (registry,) = fake_registry.instances
    method, args, kwargs = registry.calls[0]
    assert (method, args) == ("create_model_version", ("fraud",))
    assert kwargs == {
        "run_id": "r1",
        "description": "",
        "labels": {"a": "b"},
        "metrics": {"auc": 0.9},
        "artifact_digest": "",
    }
    assert json.loads(capsys.readouterr().out)["version"] == "2"


def test_get_prints_fields(fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "get", "fraud"]) == 0
    out = capsys.readouterr().out
    assert any(line.split() == ["name", "models/fraud"] for line in out.splitlines())
    assert any(line.split() == ["owner_team", "risk"] for line in out.splitlines())


def test_delete(fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "delete", "fraud", "--force"]) == 0
    assert fake_registry.instances[0].calls == [("delete_model", ("models/fraud",), {"force": True})]
    assert capsys.readouterr().out == "deleted models/fraud\n"
    assert cli.main(["models", "delete", "fraud", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {}


def test_errors_print_one_line_and_map_exit_codes(
    fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_registry.fail_with = errors.NotFound("model models/nope not found", reason="MODEL_NOT_FOUND")
    assert cli.main(["models", "get", "nope"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: NOT_FOUND MODEL_NOT_FOUND: model models/nope not found\n"

    fake_registry.fail_with = errors.FailedPrecondition("model has versions", reason="MODEL_HAS_VERSIONS")
    assert cli.main(["models", "delete", "fraud"]) == 6
    assert capsys.readouterr().err.startswith("error: FAILED_PRECONDITION MODEL_HAS_VERSIONS:")


def test_malformed_names_are_usage_errors(
    fake_registry: type[_FakeRegistry], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["models", "delete", "a/b"]) == 2
    assert capsys.readouterr().err.startswith("error: not a model id or model name")


def test_unreachable_server_exits_9(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--address", "127.0.0.1:1", "--token", "", "models", "create", "fraud"]) == 9
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE")
