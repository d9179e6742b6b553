"""Traffic routing: which route of a traffic policy serves a routing key.

The server's ResolveRoute and the SDK's AliasResolver.route both call `pick_route`, so a serving process
computes locally exactly the assignment the server would. The rule, for other-language clients:

    bucket = int.from_bytes(sha256(f"{model_id}\\n{routing_key}".encode("utf-8")).digest()[:8], "big") % 10000
    walk the routes in order, summing weight * 100; the first route whose running sum exceeds bucket wins.

Weights are percentages summing to 100; routes with weight 0 never win. tests/data/routing_vectors.json
holds reference assignments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def route_bucket(model_id: str, routing_key: str) -> int:
    """The key's bucket in [0, 10000) for this model (independent across models)."""
    digest = hashlib.sha256(f"{model_id}\n{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def pick_route(weights: Sequence[int], model_id: str, routing_key: str) -> int:
    """Index of the route that serves `routing_key`, given the routes' weights in percent (sum 100)."""
    if sum(weights) != 100 or any(w < 0 for w in weights):
        raise ValueError(f"route weights must be non-negative and sum to 100, got {list(weights)}")
    bucket = route_bucket(model_id, routing_key)
    running = 0
    for index, weight in enumerate(weights):
        running += weight * (BUCKETS // 100)
        if bucket < running:
            return index
    raise AssertionError("unreachable: weights sum to 100")
