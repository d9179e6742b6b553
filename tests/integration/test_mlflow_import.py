"""`modelreg import-mlflow` against a real MLflow tracking server that the test starts.

MLflow (the optional extra `modelreg[mlflow]`) runs as `mlflow server` in its own process group, with a
SQLite backend store and proxied artifacts in a temporary directory; the test logs two scikit-learn runs,
registers versions, sets stages and aliases, imports them twice and compares what the registry holds.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelreg import NotFound, Registry, Schema, Stage
from modelreg.cli import main as cli_main
from modelreg.mlflow_import import (
    alias_id_for,
    dependencies_from,
    import_mlflow,
    label_key_for,
    metric_key_for,
    model_id_for,
    schema_from_mlflow,
    stage_path,
)
from modelreg_server.devstack import free_port

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sklearn") is None,
    reason="needs the mlflow extra: pip install '.[mlflow]'",
)

STARTUP_TIMEOUT = 240.0  # MLflow imports for tens of seconds on a busy 2-core machine
GIT_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server`."""

    url: str
    root: Path


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and its uvicorn worker: the process group the server leads."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # The worker may outlive the server by a moment; it is in the same group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` on a free port, with a SQLite store and served artifacts under a temp directory."""
    root = tmp_path_factory.mktemp("mlflow")
    url = f"http://127.0.0.1:{free_port(below=22000)}"
    log = root / "server.log"
    # The job runner serves MLflow's GenAI jobs only; it is one process less to start and stop.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                url.rsplit(":", 1)[1],
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(root / "artifacts"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        import mlflow  # slow as well: done while the server starts

        _wait_healthy(proc, url, log)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(url)
        try:
            yield MlflowServer(url, root)
        finally:
            mlflow.set_tracking_uri(previous)
    finally:
        _stop(proc)


@dataclass(frozen=True)
class Scenario:
    """What the test put into MLflow."""

    fraud: str
    churn: str
    run1: str
    run2: str
    mlflow_dir: Path
    predictions: list[int]


def _logged_model_id(source: str) -> str:
    """The MLflow 3 logged-model id in a version source `models:/m-…`, which MLflow wants repeated."""
    assert source.startswith("models:/m-"), source
    return source.removeprefix("models:/")


def _populate(server: MlflowServer, tmp: Path) -> Scenario:
    """Two runs and two registered models: fraud (v1, v2 Production, v3 Staging, aliases champion and
    Challenger_1) and churn (v1 Archived, alias old)."""
    import mlflow
    import mlflow.sklearn
    import numpy as np
    import sklearn
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import ColSpec
    from mlflow.types.schema import Schema as MlflowSchema
    from sklearn.linear_model import LogisticRegression

    suffix = secrets.token_hex(3)
    fraud, churn = f"Fraud Model {suffix}", f"churn_{suffix}"
    features = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]])
    labels = np.array([0, 1, 0, 1])
    requirements = [f"scikit-learn=={sklearn.__version__}"]
    client = mlflow.MlflowClient(server.url)

    with mlflow.start_run(run_name="baseline") as run1:
        mlflow.log_params({"C": "0.5", "solver": "lbfgs"})
        mlflow.log_metric("accuracy", 0.5, step=0)
        mlflow.log_metric("accuracy", 0.75, step=1)
        mlflow.log_metric("val loss", 0.25)
        mlflow.set_tags({"mlflow.source.git.commit": GIT_COMMIT, "team": "risk"})
        dataset = from_numpy(features, source="s3://data/fraud/train.npy", name="train")
        mlflow.log_input(dataset, context="training")
        first = LogisticRegression(C=0.5).fit(features, labels)
        mlflow.sklearn.log_model(
            first,
            name="model",
            signature=infer_signature(features, first.predict(features)),
            pip_requirements=requirements,
            registered_model_name=fraud,
        )
    with mlflow.start_run(run_name="wider") as run2:
        mlflow.log_params({"C": "1.0", "solver": "lbfgs"})
        mlflow.log_metric("accuracy", 0.9)
        second = LogisticRegression(C=1.0).fit(features, labels)
        predictions = [int(p) for p in second.predict(features)]
        columns = ModelSignature(
            inputs=MlflowSchema([ColSpec("double", "f1"), ColSpec("double", "f2", required=False)]),
            outputs=MlflowSchema([ColSpec("long", "label")]),
        )
        mlflow.sklearn.log_model(
            second,
            name="model",
            signature=columns,
            pip_requirements=requirements,
            registered_model_name=fraud,
        )

    v1, v2 = client.get_model_version(fraud, "1"), client.get_model_version(fraud, "2")
    client.update_registered_model(fraud, description="Flags fraudulent card payments.")
    client.set_registered_model_tag(fraud, "domain", "payments")
    client.create_model_version(
        fraud,
        source=str(v2.source),
        run_id=run2.info.run_id,
        tags={"validated": "yes"},
        description="candidate",
        model_id=_logged_model_id(str(v2.source)),
    )
    client.transition_model_version_stage(fraud, "1", "Production")
    client.transition_model_version_stage(fraud, "2", "Production")  # MLflow keeps both in Production
    client.transition_model_version_stage(fraud, "3", "Staging")
    client.set_registered_model_alias(fraud, "champion", "2")
    client.set_registered_model_alias(fraud, "Challenger_1", "3")

    client.create_registered_model(churn, tags={"domain": "retention"})
    client.create_model_version(
        churn, source=str(v1.source), run_id=run1.info.run_id, model_id=_logged_model_id(str(v1.source))
    )
    client.transition_model_version_stage(churn, "1", "Archived")
    client.set_registered_model_alias(churn, "old", "1")

    mlflow_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(fraud, "2"), dst_path=str(tmp / "from-mlflow")
        )
    )
    return Scenario(fraud, churn, run1.info.run_id, run2.info.run_id, mlflow_dir, predictions)


def _fields(schema: Schema) -> list[tuple[str, str, list[int], bool]]:
    return [(f.name, f.dtype, list(f.shape), f.optional) for f in schema.fields]


def _same_tree(left: Path, right: Path) -> bool:
    files = sorted(str(p.relative_to(left)) for p in left.rglob("*") if p.is_file())
    other = sorted(str(p.relative_to(right)) for p in right.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(left, right, files, shallow=False)
    return files == other and not mismatch and not errors and len(match) == len(files)


@needs_mlflow
@pytest.mark.filterwarnings("ignore:.*transition_model_version_stage.*:FutureWarning")
def test_import_mlflow(mlflow_server: MlflowServer, server_address: str, tmp_path: Path) -> None:
    started = time.monotonic()
    scenario = _populate(mlflow_server, tmp_path)
    fraud_id, churn_id = f"fraud-model-{scenario.fraud[-6:]}", scenario.churn
    names = [scenario.fraud, scenario.churn]

    with Registry(server_address) as registry:
        planned = import_mlflow(registry, mlflow_server.url, models=names, dry_run=True).to_dict()
        assert planned["summary"]["models_created"] == 2
        assert planned["summary"]["versions_imported"] == 4
        assert {
            "version": f"models/{fraud_id}/versions/2",
            "stage": "PRODUCTION",
            "mlflow_stage": "Production",
        } in planned["stages"]
        with pytest.raises(NotFound):
            registry.get_model(fraud_id)

        report = import_mlflow(registry, mlflow_server.url, models=names, workdir=tmp_path)
        assert report.complete, report.failures
        summary = report.to_dict()["summary"]
        assert (summary["models_created"], summary["versions_imported"]) == (2, 4)
        assert sorted(report.models_created) == sorted([fraud_id, churn_id])
        assert any("all in Production" in w for w in report.warnings)
        assert any(f"{scenario.churn}@old" in w and "ARCHIVED" in w for w in report.warnings)

        model = registry.get_model(fraud_id)
        assert model.labels["mlflow-name"] == scenario.fraud
        assert model.labels["domain"] == "payments"
        assert model.description == "Flags fraudulent card payments."

        versions = {v.version: v for v in registry.list_model_versions(fraud_id)}
        assert sorted(versions) == [1, 2, 3]  # numbered as in MLflow
        v1, v2, v3 = versions[1], versions[2], versions[3]

        assert v1.run_id == scenario.run1
        assert dict(v1.metrics) == {"accuracy": 0.75, "val_loss": 0.25}
        assert dict(v1.lineage.parameters) == {"C": "0.5", "solver": "lbfgs"}
        assert v1.lineage.code.commit == GIT_COMMIT
        assert [(d.uri, d.role) for d in v1.lineage.datasets] == [("s3://data/fraud/train.npy", "training")]
        assert {"mlflow-model", "mlflow-version", "mlflow-stage", "team", "mlflow-run-name"} <= set(v1.labels)
        assert (v1.labels["mlflow-version"], v1.labels["mlflow-stage"], v1.labels["team"]) == (
            "1",
            "Production",
            "risk",
        )
        assert _fields(v1.input_schema) == [("input_0", "float64", [-1, 2], False)]
        assert _fields(v1.output_schema) == [("output_0", "int64", [-1], False)]
        v = sys.version_info
        assert v1.dependencies.python_version == f"{v.major}.{v.minor}.{v.micro}"
        import sklearn

        assert ("scikit-learn", sklearn.__version__) in [
            (p.name, p.version) for p in v1.dependencies.packages
        ]

        assert v2.run_id == scenario.run2
        assert dict(v2.metrics) == {"accuracy": 0.9}
        assert _fields(v2.input_schema) == [("f1", "float64", [-1], False), ("f2", "float64", [-1], True)]
        assert _fields(v2.output_schema) == [("label", "int64", [-1], False)]
        assert (v3.labels["validated"], v3.description, v3.run_id) == ("yes", "candidate", scenario.run2)
        assert v3.artifact_digest == v2.artifact_digest  # the same MLflow model, so the same package

        assert (v1.stage, v2.stage, v3.stage) == (
            Stage.STAGE_ARCHIVED,
            Stage.STAGE_PRODUCTION,
            Stage.STAGE_STAGING,
        )
        aliases = {a.name.rsplit("/", 1)[1]: a.version for a in registry.list_aliases(fraud_id)}
        assert aliases == {"champion": 2, "challenger-1": 3}

        [churn] = registry.list_model_versions(churn_id)
        assert (churn.version, churn.stage, churn.run_id) == (1, Stage.STAGE_ARCHIVED, scenario.run1)
        assert churn.artifact_digest == v1.artifact_digest
        assert registry.list_aliases(churn_id) == []

        # The package round-trips: same files as MLflow serves, and MLflow loads and runs it.
        pulled = registry.download_model(f"{fraud_id}@champion", tmp_path / "pulled", use_cache=False)
        assert _same_tree(scenario.mlflow_dir, pulled)
        import mlflow.sklearn
        import numpy as np

        loaded = mlflow.sklearn.load_model(str(pulled))
        features = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.9, 0.1]])
        assert [int(p) for p in loaded.predict(features)] == scenario.predictions

        transitions = len(list(registry.list_stage_transitions(fraud_id)))
        alias_moves = len(list(registry.list_alias_history(fraud_id)))

        # Again, through the CLI: nothing is imported, moved or set twice.
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli_main(
                ["import-mlflow", "--tracking-uri", mlflow_server.url, "--address", server_address]
            )
        assert code == 0
        again = json.loads(out.getvalue())
        assert again["summary"]["models_created"] == 0
        assert again["summary"]["models_skipped"] == 2
        assert again["summary"]["versions_imported"] == 0
        assert again["summary"]["versions_skipped"] == 4
        assert (again["summary"]["stage_changes"], again["summary"]["aliases_set"]) == (0, 0)
        assert len(list(registry.list_model_versions(fraud_id))) == 3
        assert len(list(registry.list_stage_transitions(fraud_id))) == transitions
        assert len(list(registry.list_alias_history(fraud_id))) == alias_moves

        # MLflow goes on (a new version), and so does modelreg (a manual alias move and demotion): a third
        # run imports the new version and leaves what was changed in modelreg alone.
        _add_version(mlflow_server, scenario)
        registry.set_alias(fraud_id, "champion", 3, comment="manual")
        registry.transition_stage(f"{fraud_id}/3", "none", comment="manual")
        third = import_mlflow(registry, mlflow_server.url, models=names)
        assert third.complete, third.failures
        assert third.versions_imported == [
            {"mlflow": f"{scenario.fraud}/4", "modelreg": f"models/{fraud_id}/versions/4"}
        ]
        assert third.stages == [] and third.aliases == []
        assert any("@champion" in w and "left alone" in w for w in third.warnings)
        assert any(f"{fraud_id}/versions/3 is NONE" in w for w in third.warnings)
        assert registry.get_alias(fraud_id, "champion").version == 3
        assert registry.get_model_version(f"{fraud_id}/3").stage == Stage.STAGE_NONE
    print(f"mlflow import test body: {time.monotonic() - started:.1f} s")


def _add_version(server: MlflowServer, scenario: Scenario) -> None:
    import mlflow

    client = mlflow.MlflowClient(server.url)
    source = str(client.get_model_version(scenario.fraud, "2").source)
    client.create_model_version(
        scenario.fraud, source=source, run_id=scenario.run2, model_id=_logged_model_id(source)
    )


# --- the mapping, without servers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("Fraud Model", "fraud-model"),
        ("churn_v2.1", "churn_v2.1"),
        ("  Zürich / Prices!! ", "zurich-prices"),
        ("42 answers", "model-42-answers"),
        ("___", "model"),
        ("x" * 100, "x" * 63),
    ],
)
def test_model_id_for(name: str, model_id: str) -> None:
    assert model_id_for(name) == model_id


def test_model_id_for_disambiguates_within_63_characters() -> None:
    plain, hashed = model_id_for("A" * 80), model_id_for("A" * 80, disambiguate=True)
    assert (
        hashed.startswith(plain[:54])
        and len(hashed) == 63
        and hashed != model_id_for("A" * 81, disambiguate=True)
    )


def test_keys_and_aliases() -> None:
    assert label_key_for("mlflow.source.git.commit") == "mlflow.source.git.commit"
    assert label_key_for("owner email") == "owner-email"
    assert label_key_for("1st") == "tag-1st"
    assert metric_key_for("val loss") == "val_loss"
    assert metric_key_for("f1:macro") == "f1_macro"
    assert metric_key_for("3rd") == "_3rd"
    assert alias_id_for("Challenger_1") == "challenger-1"
    assert alias_id_for("2024") == "alias-2024"


def test_stage_path_follows_the_allowed_moves() -> None:
    none, staging, production, archived = (
        Stage.STAGE_NONE,
        Stage.STAGE_STAGING,
        Stage.STAGE_PRODUCTION,
        Stage.STAGE_ARCHIVED,
    )
    assert stage_path(none, production) == [staging, production]
    assert stage_path(none, archived) == [archived]
    assert stage_path(archived, production) == [none, staging, production]
    assert stage_path(production, production) == []


def test_schema_from_mlflow() -> None:
    specs = [
        {"type": "tensor", "tensor-spec": {"dtype": "<U0", "shape": [-1]}},
        {"name": "tags", "type": "array", "items": {"type": "string"}, "required": False},
        {"name": "price", "type": "double"},
        {"name": "price", "type": "float"},
    ]
    schema, notes = schema_from_mlflow(specs, "input")
    assert _fields(schema) == [
        ("input_0", "string", [-1], False),
        ("tags", "array<string>", [-1], True),
        ("price", "float64", [-1], False),
        ("price_3", "float32", [-1], False),
    ]
    assert notes == []
    assert schema_from_mlflow(None, "output")[0].fields == []


def test_dependencies_from(tmp_path: Path) -> None:
    (tmp_path / "python_env.yaml").write_text("python: 3.11.9\nbuild_dependencies:\n- pip\n")
    (tmp_path / "requirements.txt").write_text(
        "mlflow==3.17.2\n# comment\nscikit-learn[alldeps] == 1.9.1 ; python_version >= '3.9'\nnumpy>=2\n"
    )
    deps, unpinned = dependencies_from(tmp_path)
    assert deps is not None and deps.python_version == "3.11.9"
    assert [(p.name, p.version) for p in deps.packages] == [("mlflow", "3.17.2"), ("scikit-learn", "1.9.1")]
    assert unpinned == ["numpy>=2"]
    assert dependencies_from(tmp_path / "missing") == (None, [])
