"""Import registered models from an MLflow tracking server: `modelreg import-mlflow --tracking-uri URL`.

```python
from modelreg import Registry
from modelreg.mlflow_import import import_mlflow

with Registry() as registry:
    report = import_mlflow(registry, "http://mlflow.internal:5000")
print(report.to_dict()["summary"])
```

Every MLflow registered model becomes a modelreg model whose id is derived from the MLflow name (see
:func:`model_id_for`) and which keeps the name in the label `mlflow-name`. Every READY version, in
version-number order (so a fresh import numbers versions as MLflow did), becomes a modelreg version with:

- `run_id`, the run's latest metrics, its parameters as `lineage.parameters`, its git commit, repository
  and entry point as `lineage.code`, its dataset inputs as `lineage.datasets`;
- the version's tags and the run's own (non-`mlflow.`) tags as labels, plus `mlflow-model`,
  `mlflow-version` and `mlflow-stage` recording where it came from;
- the signature of its MLmodel file as `input_schema` / `output_schema`, its `python_env.yaml` and pinned
  `requirements.txt` as `dependencies`;
- its artifacts, downloaded from MLflow and published with :meth:`Registry.upload_model` (format `mlflow`).

Stages follow: Staging → STAGING, Production → PRODUCTION (through STAGING), Archived → ARCHIVED.
MLflow allows several Production versions per model and modelreg one, so the newest stays in PRODUCTION
and the others are archived (reported as a warning). MLflow aliases are then set on the same versions
(not on archived ones, which modelreg forbids).

Re-running imports nothing twice: versions are recognised by their `mlflow-model` / `mlflow-version`
labels, and each is created with a request id derived from the MLflow model and version, so even a crash
between registration and its response cannot duplicate it. Stage moves and aliases the importer made are
finished on the next run; ones that someone changed in modelreg since are left alone and reported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import tempfile
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import grpc

from modelreg import _core
from modelreg.client import Registry
from modelreg.errors import AlreadyExists, ModelregError, NotFound, Unavailable
from modelreg.v1 import model_pb2

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "LABEL_MODEL",
    "LABEL_NAME",
    "LABEL_STAGE",
    "LABEL_VERSION",
    "PACKAGE_FORMAT",
    "ImportReport",
    "MlflowImporter",
    "MlflowSource",
    "MlflowSourceError",
    "SourceModel",
    "SourceRun",
    "SourceVersion",
    "add_arguments",
    "alias_id_for",
    "dependencies_from",
    "import_mlflow",
    "label_key_for",
    "metric_key_for",
    "model_id_for",
    "run_command",
    "schema_from_mlflow",
    "stage_path",
]

LABEL_NAME: Final = "mlflow-name"
"""Model label holding the MLflow registered model name."""
LABEL_MODEL: Final = "mlflow-model"
"""Version label holding the MLflow registered model name."""
LABEL_VERSION: Final = "mlflow-version"
"""Version label holding the MLflow version number."""
LABEL_STAGE: Final = "mlflow-stage"
"""Version label holding the MLflow stage at import time (absent for `None`)."""
PACKAGE_FORMAT: Final = "mlflow"
"""Format of the packages made from MLflow model directories."""
COMMENT_PREFIX: Final = "mlflow import"
"""Start of the comment on every stage move and alias change the importer makes."""

_MAX_ID = 63
_MAX_LABELS = 64
_MAX_LABEL_VALUE = 256
_MAX_METRICS = 512
_MAX_DESCRIPTION = 16 * 1024
_REQUEST_ID_PREFIX = "mlflow-import-"
_MLFLOW_PAGE_SIZE = 100
_PROMPT_TAG = "mlflow.prompt.is_prompt"

_LABEL_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_METRIC_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}")
_DTYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_\[\]<>, ]{0,63}")
_DATA_DIGEST_RE = re.compile(r"[a-z0-9]+:[A-Za-z0-9+/=_-]{8,256}")
_PINNED_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*===?\s*([^\s;,#]+)")
_PYTHON_RE = re.compile(r"^python:\s*[\"']?([0-9][^\s\"']*)", re.MULTILINE)

# MLflow column types, as the dtype names modelreg schemas use elsewhere.
_COLUMN_DTYPES: Final[Mapping[str, str]] = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "string",
    "binary": "bytes",
    "datetime": "datetime",
    "any": "any",
}

_STAGES: Final[Mapping[str, model_pb2.Stage.ValueType]] = {
    "none": model_pb2.STAGE_NONE,
    "staging": model_pb2.STAGE_STAGING,
    "production": model_pb2.STAGE_PRODUCTION,
    "archived": model_pb2.STAGE_ARCHIVED,
}

# The stage moves the registry allows (see TransitionModelVersionStage).
_MOVES: Final[Mapping[model_pb2.Stage.ValueType, tuple[model_pb2.Stage.ValueType, ...]]] = {
    model_pb2.STAGE_NONE: (model_pb2.STAGE_STAGING, model_pb2.STAGE_ARCHIVED),
    model_pb2.STAGE_STAGING: (model_pb2.STAGE_PRODUCTION, model_pb2.STAGE_NONE, model_pb2.STAGE_ARCHIVED),
    model_pb2.STAGE_PRODUCTION: (model_pb2.STAGE_STAGING, model_pb2.STAGE_ARCHIVED),
    model_pb2.STAGE_ARCHIVED: (model_pb2.STAGE_NONE,),
}

# Refusals that concern one stage move or alias; anything else (unavailable, deadline) fails the import.
_REFUSALS: Final = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


# --- mapping MLflow names and values onto modelreg's rules ------------------------------------------


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def model_id_for(name: str, *, disambiguate: bool = False) -> str:
    """The modelreg model id for an MLflow registered model name.

    Lowercase ASCII, runs of characters a model id cannot hold turned into `-`, starting with a letter
    (`model-` is put in front otherwise), at most 63 characters: `"Fraud Model"` → `fraud-model`. With
    `disambiguate`, a hash of the name is appended (`fraud-model-1a2b3c4d`): the id used when the plain
    one is taken by another model.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9._-]+", "-", text)
    text = re.sub(r"-{2,}", "-", text).strip("-._")
    if not text[:1].isalpha():
        text = f"model-{text}".rstrip("-")
    suffix = f"-{_short_hash(name)}" if disambiguate else ""
    return text[: _MAX_ID - len(suffix)].rstrip("-._") + suffix


def _name_label(name: str) -> str:
    """A label value standing for an MLflow name; overlong names keep a prefix and a hash."""
    if len(name) <= _MAX_LABEL_VALUE:
        return name
    return f"{name[: _MAX_LABEL_VALUE - 9]}~{_short_hash(name)}"


def label_key_for(key: str) -> str:
    """A valid label key for an MLflow tag key: invalid characters → `-`, a letter first, ≤ 63 chars."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-")
    if not text[:1].isalpha():
        text = f"tag-{text}".rstrip("-")
    return text[:_MAX_ID]


def metric_key_for(key: str) -> str:
    """A valid metric name for an MLflow metric key (spaces, colons, ... → `_`), at most 128 chars."""
    text = re.sub(r"[^A-Za-z0-9_./-]", "_", key)
    if not re.match(r"[A-Za-z_]", text):
        text = f"_{text}"
    return text[:128]


def alias_id_for(alias: str) -> str:
    """A valid modelreg alias for an MLflow alias: lowercase, other characters → `-`, a letter first."""
    text = re.sub(r"[^a-z0-9]+", "-", alias.lower()).strip("-")
    if not text[:1].isalpha():
        text = f"alias-{text}".rstrip("-")
    return text[:_MAX_ID].rstrip("-")


def _request_id(name: str, version: int) -> str:
    digest = hashlib.sha256(f"{name}\x00{version}".encode()).hexdigest()[:40]
    return f"{_REQUEST_ID_PREFIX}{digest}"


def _filter_string(text: str) -> str:
    """`text` as a double-quoted string literal of a modelreg (AIP-160) filter."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def _mlflow_string(text: str) -> str:
    """`text` as a string literal of an MLflow search filter."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise MlflowSourceError(f"cannot search for the MLflow name {text!r}: it holds both kinds of quotes")


def stage_of(mlflow_stage: str) -> model_pb2.Stage.ValueType:
    """The modelreg stage for an MLflow stage name (`None`, `Staging`, `Production`, `Archived`)."""
    return _STAGES.get(mlflow_stage.strip().lower(), model_pb2.STAGE_NONE)


def stage_path(
    current: model_pb2.Stage.ValueType, target: model_pb2.Stage.ValueType
) -> list[model_pb2.Stage.ValueType]:
    """The shortest list of allowed moves from `current` to `target` (empty when they are equal)."""
    if current == model_pb2.STAGE_UNSPECIFIED:
        current = model_pb2.STAGE_NONE
    previous: dict[model_pb2.Stage.ValueType, model_pb2.Stage.ValueType] = {}
    queue = deque([current])
    while queue:
        stage = queue.popleft()
        if stage == target:
            path: list[model_pb2.Stage.ValueType] = []
            while stage != current:
                path.append(stage)
                stage = previous[stage]
            return path[::-1]
        for following in _MOVES[stage]:
            if following != current and following not in previous:
                previous[following] = stage
                queue.append(following)
    raise ValueError(f"no stage path from {current} to {target}")  # unreachable: the graph is connected


def _stage_name(stage: model_pb2.Stage.ValueType) -> str:
    return model_pb2.Stage.Name(stage).removeprefix("STAGE_")


def _column_dtype(spec: Mapping[str, object]) -> str:
    kind = spec.get("type")
    if kind == "array":
        items = spec.get("items")
        inner = _column_dtype(items) if isinstance(items, Mapping) else "any"
        return f"array<{inner}>"
    if kind == "map":
        values = spec.get("values")
        inner = _column_dtype(values) if isinstance(values, Mapping) else "any"
        return f"map<string, {inner}>"
    if kind == "object":
        return "object"
    if isinstance(kind, str):
        return _COLUMN_DTYPES.get(kind, kind)
    return "any"


def _tensor_dtype(dtype: object) -> str:
    text = str(dtype).lstrip("<>|=")
    if text[:1] == "U" or text in {"str", "unicode"}:
        return "string"
    if text[:1] == "S" or text == "bytes":
        return "bytes"
    if text == "O":
        return "object"
    return text


def schema_from_mlflow(specs: object, side: str) -> tuple[model_pb2.Schema, list[str]]:
    """Schema fields from an MLflow signature side, as its JSON form (a list of column or tensor specs).

    A column (`{"name": "age", "type": "long", "required": false}`) becomes a field of shape `[-1]` (one
    value per row) with the dtype named as modelreg does (`int64`), optional unless required; a tensor
    (`{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}`) keeps dtype and shape.
    Unnamed specs are called `{side}_{i}`. Returns the schema and notes on what could not be kept.
    """
    schema = model_pb2.Schema()
    notes: list[str] = []
    if not isinstance(specs, list):
        return schema, notes
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            notes.append(f"{side} spec {i} is not an object; left out")
            continue
        name = spec.get("name")
        field_name = name if isinstance(name, str) and name else f"{side}_{i}"
        if field_name in seen:
            field_name = f"{field_name}_{i}"
        seen.add(field_name)
        if spec.get("type") == "tensor":
            tensor = spec.get("tensor-spec")
            tensor = tensor if isinstance(tensor, Mapping) else {}
            dtype = _tensor_dtype(tensor.get("dtype", ""))
            raw_shape = tensor.get("shape")
            dims = raw_shape if isinstance(raw_shape, list) else []
            shape = [d if isinstance(d, int) and d >= -1 else -1 for d in dims]
            optional = False
        else:
            dtype = _column_dtype(spec)
            shape = [-1]
            optional = spec.get("required", True) is False
        if not _DTYPE_RE.fullmatch(dtype):
            notes.append(f"{side} field {field_name!r}: dtype {dtype[:80]!r} recorded as 'object'")
            dtype = "object"
        schema.fields.append(
            model_pb2.SchemaField(name=field_name, dtype=dtype, shape=shape, optional=optional)
        )
    return schema, notes


def dependencies_from(model_dir: Path) -> tuple[model_pb2.Dependencies | None, list[str]]:
    """The Python version (`python_env.yaml`) and `==`-pinned packages (`requirements.txt`) of an MLflow
    model directory; None when it has neither. Also returns the requirements left out for not being pinned.
    """
    deps = model_pb2.Dependencies()
    python_env = model_dir / "python_env.yaml"
    if python_env.is_file():
        found = _PYTHON_RE.search(python_env.read_text(encoding="utf-8", errors="replace"))
        if found:
            deps.python_version = found.group(1)
    unpinned: list[str] = []
    requirements = model_dir / "requirements.txt"
    if requirements.is_file():
        for raw in requirements.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            pinned = _PINNED_RE.fullmatch(line.split(";", 1)[0].strip())
            if pinned:
                deps.packages.append(model_pb2.PackageRequirement(name=pinned[1], version=pinned[2]))
            else:
                unpinned.append(line)
    if not deps.python_version and not deps.packages:
        return None, unpinned
    return deps, unpinned


# --- the MLflow side ---------------------------------------------------------------------------------


class MlflowSourceError(RuntimeError):
    """MLflow could not be reached or refused a request."""


@dataclass(frozen=True)
class SourceModel:
    """An MLflow registered model."""

    name: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_prompt(self) -> bool:
        """MLflow 3 keeps prompts as registered models; they are not models to import."""
        return self.tags.get(_PROMPT_TAG, "").lower() == "true"


@dataclass(frozen=True)
class SourceVersion:
    """One version of an MLflow registered model."""

    model: str
    version: int
    run_id: str = ""
    description: str = ""
    stage: str = "None"
    status: str = "READY"
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """`name/version`, as the report shows it."""
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class SourceDataset:
    """A dataset input of an MLflow run."""

    name: str
    digest: str
    source: str
    context: str = ""


@dataclass(frozen=True)
class SourceRun:
    """What an MLflow run tells about the versions it produced."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    datasets: Sequence[SourceDataset] = ()


@dataclass(frozen=True)
class SourceSignature:
    """The signature of an MLflow model in its JSON form (lists of column or tensor specs), if any."""

    inputs: object = None
    outputs: object = None


class MlflowSource:
    """Read access to an MLflow tracking server and model registry. Only this class touches MLflow.

    mlflow is imported when an instance is made, so `modelreg` works without it; install it with
    `pip install 'modelreg[mlflow]'`. Credentials come from MLflow's own variables
    (`MLFLOW_TRACKING_TOKEN`, `MLFLOW_TRACKING_USERNAME` / `_PASSWORD`, ...).
    """

    def __init__(
        self, tracking_uri: str, *, registry_uri: str | None = None, client: MlflowClient | None = None
    ) -> None:
        """Connect (lazily) to the tracking server at `tracking_uri`; `registry_uri` defaults to it."""
        try:
            import mlflow
        except ImportError as exc:
            raise MlflowSourceError(
                "mlflow is not installed; install it with: pip install 'modelreg[mlflow]'"
            ) from exc
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self._client = client or mlflow.MlflowClient(
            tracking_uri=tracking_uri, registry_uri=self.registry_uri
        )

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise MlflowSourceError(f"MLflow: {what}: {exc.message}") from exc
        except OSError as exc:  # includes requests' errors, which artifact downloads can raise
            raise MlflowSourceError(f"MLflow: {what}: {exc}") from exc

    def model_names(self) -> list[str]:
        """The names of every registered model, sorted."""
        names: list[str] = []
        with self._errors("listing registered models"):
            token: str | None = None
            while True:
                page = self._client.search_registered_models(max_results=_MLFLOW_PAGE_SIZE, page_token=token)
                names.extend(str(model.name) for model in page)
                token = page.token
                if not token:
                    break
        return sorted(names)

    def model(self, name: str) -> SourceModel:
        """One registered model, with its tags and aliases."""
        with self._errors(f"reading registered model {name!r}"):
            model = self._client.get_registered_model(name)
        return SourceModel(
            name=str(model.name),
            description=str(model.description or ""),
            tags={str(k): str(v) for k, v in dict(model.tags or {}).items()},
            aliases={str(k): int(v) for k, v in dict(model.aliases or {}).items()},
        )

    def versions(self, model: str) -> list[SourceVersion]:
        """Every version of `model`, by version number."""
        found: list[SourceVersion] = []
        query = f"name = {_mlflow_string(model)}"
        with self._errors(f"listing the versions of {model!r}"):
            token: str | None = None
            while True:
                page = self._client.search_model_versions(
                    query, max_results=_MLFLOW_PAGE_SIZE, page_token=token
                )
                found.extend(
                    SourceVersion(
                        model=v.name,
                        version=int(v.version),
                        run_id=v.run_id or "",
                        description=v.description or "",
                        stage=v.current_stage or "None",
                        status=v.status or "READY",
                        tags=dict(v.tags or {}),
                    )
                    for v in page
                )
                token = page.token
                if not token:
                    break
        return sorted(found, key=lambda v: v.version)

    def run(self, run_id: str) -> SourceRun:
        """The latest metrics, the params, tags and dataset inputs of a run."""
        with self._errors(f"reading run {run_id}"):
            run = self._client.get_run(run_id)
        datasets: list[SourceDataset] = []
        if run.inputs is not None:
            for item in run.inputs.dataset_inputs:
                context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
                ds = item.dataset
                datasets.append(SourceDataset(ds.name, ds.digest, ds.source, context))
        return SourceRun(
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
            tags=dict(run.data.tags),
            datasets=datasets,
        )

    def download(self, version: SourceVersion, dest: Path) -> Path:
        """Download the artifacts of a version under `dest`; returns the directory (or file) they are in."""
        import mlflow.artifacts

        with self._errors(f"downloading the artifacts of {version.ref}"):
            uri = self._client.get_model_version_download_uri(version.model, str(version.version))
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri,
                dst_path=str(dest),
                tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri,
            )
        return Path(local)

    def signature(self, model_dir: Path) -> SourceSignature:
        """The signature recorded in the MLmodel file of a downloaded model (empty without one)."""
        if not (model_dir / "MLmodel").is_file():
            return SourceSignature()
        from mlflow.models import Model

        with self._errors(f"reading {model_dir / 'MLmodel'}"):
            signature = Model.load(str(model_dir)).signature
        if signature is None:
            return SourceSignature()
        as_dict: dict[str, Any] = signature.to_dict()
        return SourceSignature(
            inputs=_json_or_none(as_dict.get("inputs")), outputs=_json_or_none(as_dict.get("outputs"))
        )


def _json_or_none(text: object) -> object:
    if not isinstance(text, str):
        return None
    try:
        decoded: object = json.loads(text)
    except ValueError:
        return None
    return decoded


# --- the import ----------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did (or, with `dry_run`, would do). `to_dict()` is its JSON form."""

    tracking_uri: str
    dry_run: bool = False
    models_created: list[str] = field(default_factory=list)
    models_skipped: list[str] = field(default_factory=list)
    versions_imported: list[dict[str, str]] = field(default_factory=list)
    versions_skipped: list[dict[str, str]] = field(default_factory=list)
    stages: list[dict[str, str]] = field(default_factory=list)
    aliases: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing failed (warnings are fine); run the import again to retry failures."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: a `summary` of counts, then the details."""
        return {
            "tracking_uri": self.tracking_uri,
            "dry_run": self.dry_run,
            "summary": {
                "models_created": len(self.models_created),
                "models_skipped": len(self.models_skipped),
                "versions_imported": len(self.versions_imported),
                "versions_skipped": len(self.versions_skipped),
                "stage_changes": len(self.stages),
                "aliases_set": len(self.aliases),
                "warnings": len(self.warnings),
                "failures": len(self.failures),
            },
            "models": {"created": self.models_created, "skipped": self.models_skipped},
            "versions": {"imported": self.versions_imported, "skipped": self.versions_skipped},
            "stages": self.stages,
            "aliases": self.aliases,
            "warnings": self.warnings,
            "failures": self.failures,
        }


@dataclass
class _Target:
    """A modelreg version that an MLflow version maps onto, and the stage it should end up in."""

    source: SourceVersion
    name: str
    stage: model_pb2.Stage.ValueType
    current: model_pb2.Stage.ValueType
    fresh: bool
    """Registered by this run (or, in a dry run, to be): nobody can have moved it yet."""


class MlflowImporter:
    """Imports MLflow registered models into a registry; see the module docstring for the mapping."""

    def __init__(
        self,
        registry: Registry,
        source: MlflowSource,
        *,
        dry_run: bool = False,
        workdir: str | Path | None = None,
    ) -> None:
        """Import from `source` into `registry`; `workdir` holds the downloads (default: system temp)."""
        self.registry = registry
        self.source = source
        self.dry_run = dry_run
        self.workdir = workdir
        self.report = ImportReport(tracking_uri=source.tracking_uri, dry_run=dry_run)

    def run(self, models: Iterable[str] = ()) -> ImportReport:
        """Import the registered models named (all of them when `models` is empty) and return the report.

        Raises:
            MlflowSourceError: The registered models could not be listed. Failures of single models and
                versions are recorded in the report instead.
        """
        for name in sorted(set(models)) or self.source.model_names():
            try:
                model = self.source.model(name)
                if model.is_prompt:
                    self.report.warnings.append(f"{name}: an MLflow prompt, not a model; left out")
                    continue
                self._import_model(model)
            except (ModelregError, MlflowSourceError) as exc:
                if _is_unavailable(exc):
                    raise
                self._fail(name, exc)
        return self.report

    def _fail(self, what: str, exc: BaseException) -> None:
        self.report.failures.append({"mlflow": what, "error": str(exc)})

    # --- models -----------------------------------------------------------------------------------------

    def _import_model(self, model: SourceModel) -> None:
        model_id, existing = self._resolve_model(model)
        if existing is None:
            self._create_model(model, model_id)
        else:
            self.report.models_skipped.append(model_id)
        imported = self._imported_versions(model_id, model, existing)
        latest = existing.latest_version if existing is not None else 0
        targets: list[_Target] = []
        planned = 0
        for version in self.source.versions(model.name):
            found = imported.get(version.version)
            if found is not None:
                self.report.versions_skipped.append(
                    {"mlflow": version.ref, "modelreg": found.name, "reason": "already imported"}
                )
                targets.append(_Target(version, found.name, stage_of(version.stage), found.stage, False))
                continue
            if version.status.upper() != "READY":
                self.report.versions_skipped.append(
                    {"mlflow": version.ref, "modelreg": "", "reason": f"MLflow status {version.status}"}
                )
                continue
            if self.dry_run:
                planned += 1
                name = _core.version_name(model_id, latest + planned)
                self.report.versions_imported.append({"mlflow": version.ref, "modelreg": name})
                targets.append(_Target(version, name, stage_of(version.stage), model_pb2.STAGE_NONE, True))
                continue
            try:
                created, fresh = self._import_version(model_id, version)
            except (ModelregError, MlflowSourceError, OSError, ValueError) as exc:
                if _is_unavailable(exc):
                    raise
                self._fail(version.ref, exc)
                continue
            targets.append(_Target(version, created.name, stage_of(version.stage), created.stage, fresh))
        self._demote_extra_production(model, targets)
        self._apply_stages(targets)
        self._apply_aliases(model, model_id, targets, model_existed=existing is not None)

    def _resolve_model(self, model: SourceModel) -> tuple[str, model_pb2.Model | None]:
        """The id to import `model` into, and that model if it exists already (imported before)."""
        label = _name_label(model.name)
        candidates = [model_id_for(model.name), model_id_for(model.name, disambiguate=True)]
        for model_id in candidates:
            try:
                existing = self.registry.get_model(model_id)
            except NotFound:
                return model_id, None
            if existing.labels.get(LABEL_NAME) == label:
                return model_id, existing
        raise AlreadyExists(
            f"models {' and '.join(candidates)} exist but were not imported from MLflow model {model.name!r}",
            reason="MODEL_ID_TAKEN",
        )

    def _create_model(self, model: SourceModel, model_id: str) -> None:
        labels = self._labels(model.name, {LABEL_NAME: _name_label(model.name)}, [model.tags])
        description = model.description
        if len(description) > _MAX_DESCRIPTION:
            self.report.warnings.append(f"{model.name}: description cut to {_MAX_DESCRIPTION} characters")
            description = description[:_MAX_DESCRIPTION]
        self.report.models_created.append(model_id)
        if self.dry_run:
            return
        try:
            self.registry.create_model(model_id, description=description, labels=labels)
        except AlreadyExists:
            # Another import created it meanwhile; go on only if it is ours.
            if self.registry.get_model(model_id).labels.get(LABEL_NAME) != labels[LABEL_NAME]:
                raise
            self.report.models_created.pop()
            self.report.models_skipped.append(model_id)

    def _imported_versions(
        self, model_id: str, model: SourceModel, existing: model_pb2.Model | None
    ) -> dict[int, model_pb2.ModelVersion]:
        """The versions imported from `model` before, by MLflow version number."""
        if existing is None:
            return {}
        query = f"labels.{LABEL_MODEL} = {_filter_string(_name_label(model.name))}"
        found: dict[int, model_pb2.ModelVersion] = {}
        for version in self.registry.list_model_versions(model_id, filter=query, order_by="version"):
            number = version.labels.get(LABEL_VERSION, "")
            if not number.isdigit():
                continue
            if int(number) in found:
                self.report.warnings.append(
                    f"{model.name}/{number}: imported twice ({found[int(number)].name}, {version.name}); "
                    "using the first"
                )
                continue
            found[int(number)] = version
        return found

    # --- versions ---------------------------------------------------------------------------------------

    def _import_version(self, model_id: str, version: SourceVersion) -> tuple[model_pb2.ModelVersion, bool]:
        """Register `version` with its artifacts; returns the version and whether it is new."""
        run = self._run(version)
        labels = {LABEL_MODEL: _name_label(version.model), LABEL_VERSION: str(version.version)}
        if stage_of(version.stage) != model_pb2.STAGE_NONE:
            labels[LABEL_STAGE] = version.stage
        # The run's system tags (mlflow.*) are lineage already, or noise; only its name is kept.
        run_tags = {k: v for k, v in run.tags.items() if not k.startswith("mlflow.")}
        if "mlflow.runName" in run.tags:
            run_tags["mlflow-run-name"] = run.tags["mlflow.runName"]
        labels = self._labels(version.ref, labels, [version.tags, run_tags])
        with tempfile.TemporaryDirectory(prefix="modelreg-mlflow-", dir=self.workdir) as tmp:
            package = self.source.download(version, Path(tmp))
            model_dir = package if package.is_dir() else package.parent
            signature = self.source.signature(model_dir)
            input_schema, notes = schema_from_mlflow(signature.inputs, "input")
            output_schema, more_notes = schema_from_mlflow(signature.outputs, "output")
            dependencies, unpinned = dependencies_from(model_dir)
            self.report.warnings.extend(f"{version.ref}: {note}" for note in [*notes, *more_notes])
            if unpinned:
                self.report.warnings.append(
                    f"{version.ref}: requirements without an == pin not recorded: {', '.join(unpinned)}"
                )
            try:
                created = self.registry.upload_model(
                    model_id,
                    package,
                    format=PACKAGE_FORMAT,
                    run_id=version.run_id,
                    description=version.description[:_MAX_DESCRIPTION],
                    labels=labels,
                    metrics=self._metrics(version.ref, run.metrics),
                    lineage=self._lineage(run),
                    input_schema=input_schema if input_schema.fields else None,
                    output_schema=output_schema if output_schema.fields else None,
                    dependencies=dependencies,
                    request_id=_request_id(version.model, version.version),
                )
            except AlreadyExists as exc:
                # The request id was used before: that version exists, but its origin labels were edited.
                earlier = exc.metadata.get("model_version")
                if exc.reason != "REQUEST_ID_REUSED" or not earlier:
                    raise
                found = self.registry.get_model_version(earlier)
                self.report.warnings.append(
                    f"{version.ref}: imported before as {found.name}, whose {LABEL_MODEL}/{LABEL_VERSION} "
                    "labels were changed since"
                )
                self.report.versions_skipped.append(
                    {"mlflow": version.ref, "modelreg": found.name, "reason": "already imported"}
                )
                return found, False
        self.report.versions_imported.append({"mlflow": version.ref, "modelreg": created.name})
        return created, True

    def _run(self, version: SourceVersion) -> SourceRun:
        if not version.run_id:
            return SourceRun()
        try:
            return self.source.run(version.run_id)
        except MlflowSourceError as exc:
            self.report.warnings.append(
                f"{version.ref}: run {version.run_id} not readable ({exc}); no lineage"
            )
            return SourceRun()

    def _labels(
        self, what: str, reserved: Mapping[str, str], sources: Sequence[Mapping[str, str]]
    ) -> dict[str, str]:
        """`reserved` plus the tags of `sources` (earlier sources win) under valid label keys."""
        labels = dict(reserved)
        for tags in sources:
            for key, value in sorted(tags.items()):
                label = label_key_for(key)
                if label in labels:
                    continue
                if len(value) > _MAX_LABEL_VALUE:
                    self.report.warnings.append(f"{what}: tag {key!r} longer than 256 characters; left out")
                elif len(labels) >= _MAX_LABELS:
                    self.report.warnings.append(
                        f"{what}: more than {_MAX_LABELS} labels; tag {key!r} left out"
                    )
                else:
                    labels[label] = value
        return labels

    def _metrics(self, what: str, metrics: Mapping[str, float]) -> dict[str, float]:
        kept: dict[str, float] = {}
        for key, value in sorted(metrics.items()):
            if not math.isfinite(value):
                self.report.warnings.append(f"{what}: metric {key!r} is {value}; left out")
            elif len(kept) >= _MAX_METRICS:
                self.report.warnings.append(f"{what}: more than {_MAX_METRICS} metrics; {key!r} left out")
            else:
                kept.setdefault(metric_key_for(key), value)
        return kept

    @staticmethod
    def _lineage(run: SourceRun) -> model_pb2.Lineage:
        lineage = model_pb2.Lineage(parameters=dict(run.params))
        lineage.code.repository = run.tags.get("mlflow.source.git.repoURL", "")
        lineage.code.commit = run.tags.get("mlflow.source.git.commit", "")
        lineage.code.path = run.tags.get("mlflow.source.name", "")
        for ds in run.datasets:
            uri = _dataset_uri(ds)
            digest = f"mlflow:{ds.digest}" if ds.digest else ""
            lineage.datasets.append(
                model_pb2.DatasetRef(
                    uri=uri, digest=digest if _DATA_DIGEST_RE.fullmatch(digest) else "", role=ds.context
                )
            )
        return lineage

    # --- stages and aliases -----------------------------------------------------------------------------

    def _demote_extra_production(self, model: SourceModel, targets: list[_Target]) -> None:
        production = [t for t in targets if t.stage == model_pb2.STAGE_PRODUCTION]
        if len(production) < 2:
            return
        keep = max(production, key=lambda t: t.source.version)
        for target in production:
            if target is not keep:
                target.stage = model_pb2.STAGE_ARCHIVED
        others = ", ".join(str(t.source.version) for t in production if t is not keep)
        self.report.warnings.append(
            f"{model.name}: versions {others} and {keep.source.version} are all in Production in MLflow; "
            f"modelreg allows one: {keep.name} is PRODUCTION, the others ARCHIVED"
        )

    def _owned(self, target: _Target) -> bool:
        """Whether the importer may move this version: its stage is untouched since registration, or the
        importer made its last move (an interrupted import left it half-way)."""
        if self.dry_run or target.fresh:
            return True
        last = next(iter(self.registry.list_stage_transitions(target.name, page_size=1)), None)
        if last is None:
            return target.current in (model_pb2.STAGE_NONE, model_pb2.STAGE_UNSPECIFIED)
        return last.comment.startswith(COMMENT_PREFIX)

    def _apply_stages(self, targets: Sequence[_Target]) -> None:
        # Archive and demote first, so a version leaving PRODUCTION frees it for the one entering.
        for target in sorted(
            targets, key=lambda t: (t.stage == model_pb2.STAGE_PRODUCTION, t.source.version)
        ):
            if target.current == target.stage or (
                target.current == model_pb2.STAGE_UNSPECIFIED and target.stage == model_pb2.STAGE_NONE
            ):
                continue
            if not self._owned(target):
                self.report.warnings.append(
                    f"{target.source.ref}: {target.name} is {_stage_name(target.current)} in modelreg, "
                    f"changed there since the import; not moved to {_stage_name(target.stage)}"
                )
                continue
            comment = f"{COMMENT_PREFIX}: {target.source.ref} is {target.source.stage} in MLflow"
            if target.stage != stage_of(target.source.stage):
                comment += ", where a newer version is in Production too"
            for stage in stage_path(target.current, target.stage):
                if not self.dry_run:
                    try:
                        self.registry.transition_stage(target.name, stage, comment=comment)
                    except ModelregError as exc:
                        if exc.code not in _REFUSALS:
                            raise
                        self.report.warnings.append(
                            f"{target.source.ref}: {target.name} not moved to {_stage_name(stage)}: {exc}"
                        )
                        break
                target.current = stage
                self.report.stages.append(
                    {"version": target.name, "stage": _stage_name(stage), "mlflow_stage": target.source.stage}
                )

    def _apply_aliases(
        self, model: SourceModel, model_id: str, targets: Sequence[_Target], *, model_existed: bool
    ) -> None:
        if not model.aliases:
            return
        by_number = {t.source.version: t for t in targets}
        current: dict[str, str] = {}
        if model_existed:
            current = {
                _core.parse_alias_name(a.name)[1]: a.model_version
                for a in self.registry.list_aliases(model_id)
            }
        taken: dict[str, str] = {}
        for alias, number in sorted(model.aliases.items()):
            where = f"{model.name}@{alias}"
            alias_id = alias_id_for(alias)
            if alias_id in taken:
                self.report.warnings.append(
                    f"{where}: becomes {alias_id!r} like @{taken[alias_id]}; left out"
                )
                continue
            taken[alias_id] = alias
            target = by_number.get(number)
            if target is None:
                self.report.warnings.append(f"{where}: version {number} was not imported; alias left out")
                continue
            if target.current == model_pb2.STAGE_ARCHIVED:
                self.report.warnings.append(
                    f"{where}: {target.name} is ARCHIVED, which cannot hold aliases; alias left out"
                )
                continue
            if current.get(alias_id) == target.name:
                continue
            if alias_id in current:
                self.report.warnings.append(
                    f"{where}: {model_id}@{alias_id} points at {current[alias_id]} in modelreg; left alone"
                )
                continue
            if not self.dry_run:
                try:
                    self.registry.set_alias(
                        model_id,
                        alias_id,
                        target.name,
                        expected=_core.ABSENT,
                        comment=f"{COMMENT_PREFIX}: {where} -> version {number}",
                    )
                except ModelregError as exc:
                    if exc.code not in _REFUSALS:
                        raise
                    self.report.warnings.append(f"{where}: not set: {exc}")
                    continue
            entry = {"model": _core.model_name(model_id), "alias": alias_id, "version": target.name}
            if alias_id != alias:
                entry["mlflow_alias"] = alias
            self.report.aliases.append(entry)


def _dataset_uri(ds: SourceDataset) -> str:
    """Where a dataset lives, from the JSON `source` MLflow records (`{"uri": ...}` and the like)."""
    decoded = _json_or_none(ds.source)
    if isinstance(decoded, Mapping):
        for key in ("uri", "url", "path", "table_name"):
            value = decoded.get(key)
            if isinstance(value, str) and value:
                return value
    return f"mlflow-dataset:{ds.name or ds.digest}"


def _is_unavailable(exc: BaseException) -> bool:
    """Errors that would fail every later call as well: stop instead of recording one failure per version."""
    return isinstance(exc, ModelregError) and exc.code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )


def import_mlflow(
    registry: Registry,
    tracking_uri: str,
    *,
    registry_uri: str | None = None,
    models: Iterable[str] = (),
    dry_run: bool = False,
    workdir: str | Path | None = None,
) -> ImportReport:
    """Import the registered models of an MLflow server (all, or those named in `models`) into `registry`.

    Safe to run again: what was imported before is skipped. With `dry_run`, only reads happen and the report
    tells what would be done (version numbers assume nobody else registers versions meanwhile).

    Raises:
        MlflowSourceError: MLflow is unreachable, or mlflow is not installed.
        Unavailable, Unauthenticated: The registry is unreachable or refuses the token.
    """
    source = MlflowSource(tracking_uri, registry_uri=registry_uri)
    return MlflowImporter(registry, source, dry_run=dry_run, workdir=workdir).run(models)


# --- command line --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `modelreg import-mlflow`."""
    parser.add_argument("--tracking-uri", required=True, metavar="URL", help="MLflow tracking server URL")
    parser.add_argument(
        "--registry-uri",
        default=None,
        metavar="URL",
        help="MLflow model registry URL (default: tracking URI)",
    )
    parser.add_argument(
        "--model",
        dest="mlflow_models",
        action="append",
        default=[],
        metavar="NAME",
        help="import only this MLflow registered model (repeatable; default: all)",
    )
    parser.add_argument("--dry-run", action="store_true", help="only report what would be imported")
    parser.add_argument(
        "--workdir", default=None, metavar="DIR", help="where artifacts are downloaded (default: temp dir)"
    )


def run_command(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    """`modelreg import-mlflow`: import, then print the report as JSON.

    Raises:
        Unavailable: MLflow could not be reached (exit code 9).
        ModelregError: Some models or versions failed (exit code 1); running again retries them.
    """
    try:
        report = import_mlflow(
            registry,
            args.tracking_uri,
            registry_uri=args.registry_uri,
            models=args.mlflow_models,
            dry_run=args.dry_run,
            workdir=args.workdir,
        )
    except MlflowSourceError as exc:
        raise Unavailable(str(exc), reason="MLFLOW_UNAVAILABLE") from exc
    print(json.dumps(report.to_dict(), indent=2), file=out)
    if not report.complete:
        raise ModelregError(
            f"{len(report.failures)} model(s) or version(s) failed; run the import again to retry them",
            reason="MLFLOW_IMPORT_INCOMPLETE",
        )
