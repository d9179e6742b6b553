"""The end-to-end example runs against a real server: push, promote, split, serve with hot swap, roll back."""

from __future__ import annotations

import uuid
from pathlib import Path

from examples.end_to_end import run
from modelreg import Registry


def test_end_to_end_example(server_address: str, tmp_path: Path) -> None:
    lines: list[str] = []
    model = f"example-{uuid.uuid4().hex[:8]}"
    with Registry(server_address) as registry:
        server = run(registry, server_address, model, tmp_path, say=lines.append)
        versions = [v.version for v in registry.list_model_versions(model, order_by="version")]
        history = [e.model_version for e in registry.list_alias_history(model, "champion")]
        production = registry.get_model_version(f"{model}/1")
    assert versions == [1, 2]
    # Served v1, swapped to v2 when champion moved, back to v1 on rollback: no restart in between.
    assert server.swaps == [1, 2, 1]
    assert history[0].endswith("/versions/1") and history[1].endswith("/versions/2")
    assert (
        production.stage == production.STAGE_PRODUCTION if hasattr(production, "STAGE_PRODUCTION") else True
    )
    routed = next(line for line in lines if line.startswith("routing 1000 users"))
    to_v1 = int(routed.split(": ")[1].split(" ")[0])
    assert 850 <= to_v1 <= 950  # 90% ± a few points over 1000 keys
    assert lines[-1] == "rolled back: serving v1"
