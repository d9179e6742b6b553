"""modelreg end to end: train, push, promote, split traffic, serve with hot swap, roll back.

Run it against the dev stack (`make run` in another terminal):

    .venv/bin/python -m examples.end_to_end

It trains two small scikit-learn models, pushes each as a package with its schema, metrics and lineage,
moves the first through STAGING to PRODUCTION, points `champion` at it and `canary` at the second with a
90/10 traffic split, and starts a tiny serving process that answers from the `champion` package and swaps
it in place when `champion` moves. Then the canary is promoted and rolled back again.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from modelreg import AliasResolver, Change, ChangeType, Registry

FEATURES = ("amount", "hour", "merchant_risk")


def training_data(seed: int = 7, rows: int = 400) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """A small synthetic fraud data set: three features, a binary label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    y = (x @ np.array([1.5, -0.5, 2.0]) + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    return x, y


def train(directory: Path, c: float) -> float:
    """Fits a model with regularisation `c`, writes it to `directory` and returns its training AUC."""
    x, y = training_data()
    model = LogisticRegression(C=c).fit(x, y)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pkl").write_bytes(pickle.dumps(model))
    (directory / "features.txt").write_text("\n".join(FEATURES) + "\n")
    return float(roc_auc_score(y, model.predict_proba(x)[:, 1]))


def push(registry: Registry, model: str, directory: Path, c: float, auc: float) -> int:
    """Registers the package in `directory` with its schema, metrics and lineage; returns its version."""
    x, y = training_data()
    data_digest = "sha256:" + hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    version = registry.upload_model(
        model,
        directory,
        format="sklearn",
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        metrics={"auc": auc},
        lineage={
            "datasets": [{"uri": "synthetic://fraud?seed=7", "digest": data_digest, "role": "train"}],
            "code": {"repository": "https://example.invalid/modelreg", "commit": "examples"},
            "parameters": {"C": str(c)},
        },
        input_schema={"fields": [{"name": name, "dtype": "float64", "shape": [-1]} for name in FEATURES]},
        output_schema={"fields": [{"name": "fraud_probability", "dtype": "float64", "shape": [-1]}]},
        dependencies={
            "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
            "packages": [
                {"name": "scikit-learn", "version": sklearn.__version__},
                {"name": "numpy", "version": np.__version__},
            ],
        },
    )
    return version.version


@dataclass
class Server:
    """A tiny serving process: answers from the `champion` package and hot-swaps it when champion moves."""

    registry: Registry
    model: str
    cache: Path
    version: int = 0
    swaps: list[int] = field(default_factory=list)
    _predictor: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _swapped: threading.Condition = field(default_factory=threading.Condition)

    def load(self, version: int) -> None:
        """Downloads (from the local cache when possible) and swaps in a version's package."""
        target = self.cache / f"v{version}"
        self.registry.download_model(f"models/{self.model}/versions/{version}", target)
        predictor = pickle.loads((target / "model.pkl").read_bytes())  # our own, digest-verified package
        with self._lock:
            self._predictor, self.version = predictor, version
        with self._swapped:
            self.swaps.append(version)
            self._swapped.notify_all()

    def on_change(self, change: Change) -> None:
        """AliasResolver callback: reload when `champion` moves."""
        champion = f"models/{self.model}/aliases/champion"
        moved = change.type == ChangeType.Value("CHANGE_TYPE_ALIAS_SET") and change.alias == champion
        if moved and change.resolution.version != self.version:
            self.load(change.resolution.version)

    def predict(self, features: list[float]) -> tuple[int, float]:
        """(serving version, fraud probability) for one transaction."""
        with self._lock:
            predictor, version = self._predictor, self.version
        return version, float(predictor.predict_proba(np.array([features]))[0, 1])

    def wait_for(self, version: int, timeout: float = 30.0) -> None:
        """Blocks until `version` is being served."""
        with self._swapped:
            if not self._swapped.wait_for(lambda: self.version == version, timeout):
                raise TimeoutError(f"version {version} was not swapped in within {timeout} s")


def run(
    registry: Registry, address: str, model: str, workdir: Path, say: Callable[[str], None] = print
) -> Server:
    """The whole walk-through; returns the serving process, already stopped, for inspection."""
    registry.create_model(model, description="card fraud scorer (example)", labels={"team": "fraud"})
    auc1 = train(workdir / "v1", c=0.05)
    v1 = push(registry, model, workdir / "v1", 0.05, auc1)
    auc2 = train(workdir / "v2", c=1.0)
    v2 = push(registry, model, workdir / "v2", 1.0, auc2)
    say(f"pushed models/{model}/versions/{v1} (auc {auc1:.3f}) and /versions/{v2} (auc {auc2:.3f})")

    registry.transition_stage(f"{model}/{v1}", "staging", comment="offline eval passed")
    registry.transition_stage(f"{model}/{v1}", "production", comment="first release")
    registry.set_alias(model, "champion", v1)
    registry.set_alias(model, "canary", v2)
    registry.set_traffic_policy(model, {"champion": 90, "canary": 10}, comment="10% canary")
    say(f"champion -> v{v1}, canary -> v{v2}, traffic 90/10")

    server = Server(registry, model, workdir / "serving")
    server.load(registry.resolve_alias(model, "champion").version)
    with AliasResolver(address, models=[model], on_change=server.on_change) as resolver:
        shares = [resolver.route(model, f"user-{i}").version for i in range(1000)]
        say(f"routing 1000 users locally: {shares.count(v1)} to v{v1}, {shares.count(v2)} to v{v2}")
        say(f"serving v{server.predict([0.3, -1.0, 1.2])[0]}")

        registry.set_alias(model, "champion", v2, expected=v1, comment="canary looked good")
        server.wait_for(v2)
        say(f"champion moved: serving v{server.predict([0.3, -1.0, 1.2])[0]} without a restart")

        registry.rollback_alias(model, "champion", comment="incident: roll back")
        server.wait_for(v1)
        say(f"rolled back: serving v{server.predict([0.3, -1.0, 1.2])[0]}")
    return server


def main() -> None:
    """Runs the walk-through against $MODELREG_ADDRESS (default 127.0.0.1:50051)."""
    with Registry() as registry, tempfile.TemporaryDirectory() as tmp:
        model = f"fraud-example-{uuid.uuid4().hex[:6]}"
        run(registry, registry.address, model, Path(tmp))


if __name__ == "__main__":
    main()
