"""The per-replica cache behind the serving hot path.

Entries are filled lazily from PostgreSQL and dropped when the change feed (or a local commit) reports a
newer revision for their model. A fill carries the registry revision its read saw; it is kept only if no
invalidation newer than that read has arrived, so a slow read can never reinstate an older answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass
class CacheStats:
    """Counters for telemetry."""

    hits: int = 0
    misses: int = 0
    invalidations: int = 0


@dataclass
class ModelScopedCache(Generic[V]):
    """Values keyed by (model id, key), invalidated per model by revision."""

    max_entries: int = 200_000
    enabled: bool = False
    stats: CacheStats = field(default_factory=CacheStats)
    _entries: dict[tuple[str, str], V] = field(default_factory=dict)
    _keys_by_model: dict[str, set[str]] = field(default_factory=dict)
    _invalidated: dict[str, int] = field(default_factory=dict)
    _floor: int = 0

    def get(self, model_id: str, key: str) -> tuple[bool, V | None]:
        """(hit, value). A miss when disabled."""
        if not self.enabled:
            return False, None
        try:
            value = self._entries[(model_id, key)]
        except KeyError:
            self.stats.misses += 1
            return False, None
        self.stats.hits += 1
        return True, value

    def store(self, model_id: str, key: str, value: V, read_revision: int) -> None:
        """Keeps a value read at `read_revision` unless the model changed after that read."""
        if not self.enabled or read_revision < max(self._floor, self._invalidated.get(model_id, 0)):
            return
        if len(self._entries) >= self.max_entries:
            self.clear()
        self._entries[(model_id, key)] = value
        self._keys_by_model.setdefault(model_id, set()).add(key)

    def invalidate(self, model_id: str, revision: int) -> None:
        """Drops the model's entries; reads older than `revision` will not be stored."""
        self.stats.invalidations += 1
        if revision > self._invalidated.get(model_id, 0):
            self._invalidated[model_id] = revision
        for key in self._keys_by_model.pop(model_id, ()):
            self._entries.pop((model_id, key), None)

    def clear(self, floor: int | None = None) -> None:
        """Drops everything; with `floor`, refuses fills read before that revision."""
        self._floor = max(self._floor, floor or 0, max(self._invalidated.values(), default=0))
        self._entries.clear()
        self._keys_by_model.clear()
        self._invalidated.clear()

    def __len__(self) -> int:
        return len(self._entries)
