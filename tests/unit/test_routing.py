"""Traffic routing: the shared test vector, stickiness and shares."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from modelreg.routing import pick_route, route_bucket

VECTORS = json.loads((Path(__file__).parent.parent / "data" / "routing_vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"{c['model_id']}:{c['routing_key'][:10]}")
def test_reference_vector(case: dict[str, object]) -> None:
    model_id, key, weights = str(case["model_id"]), str(case["routing_key"]), list(case["weights"])  # type: ignore[call-overload]
    assert route_bucket(model_id, key) == case["bucket"]
    assert pick_route(weights, model_id, key) == case["route"]


def test_bucket_follows_the_documented_rule() -> None:
    digest = hashlib.sha256(b"fraud\nuser-1").digest()
    assert route_bucket("fraud", "user-1") == int.from_bytes(digest[:8], "big") % 10_000


def test_shares_within_one_point_over_100k_keys() -> None:
    weights = [90, 7, 3]
    counts = Counter(pick_route(weights, "fraud", f"user-{i}") for i in range(100_000))
    for index, weight in enumerate(weights):
        assert abs(counts[index] / 1000 - weight) <= 1.0, (index, counts[index])


def test_same_key_same_route_and_models_independent() -> None:
    assert {pick_route([50, 50], "a", "k") for _ in range(10)} == {pick_route([50, 50], "a", "k")}
    differs = sum(
        pick_route([50, 50], "a", f"k{i}") != pick_route([50, 50], "b", f"k{i}") for i in range(1000)
    )
    assert 400 < differs < 600


@pytest.mark.parametrize("weights", [[50, 40], [101, -1], []])
def test_weights_must_sum_to_100(weights: list[int]) -> None:
    with pytest.raises(ValueError, match="sum to 100"):
        pick_route(weights, "m", "k")
