"""Plain records the domain and storage layers exchange (no protobuf below the API layer)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

JsonObject = dict[str, Any]
T = TypeVar("T")


class Stage(enum.IntEnum):
    """Lifecycle stage; numbers match modelreg.v1.Stage."""

    NONE = 1
    STAGING = 2
    PRODUCTION = 3
    ARCHIVED = 4


class PromotionPolicy(enum.IntEnum):
    """Which promotion patterns a model allows; numbers match modelreg.v1.PromotionPolicy."""

    STAGES_AND_ALIASES = 1
    STAGES = 2
    ALIASES = 3
    IMMUTABLE = 4

    @property
    def allows_stages(self) -> bool:
        """Whether stage transitions are allowed."""
        return self in (PromotionPolicy.STAGES_AND_ALIASES, PromotionPolicy.STAGES)

    @property
    def allows_aliases(self) -> bool:
        """Whether aliases and traffic policies may change."""
        return self in (PromotionPolicy.STAGES_AND_ALIASES, PromotionPolicy.ALIASES)


class ChangeType(enum.IntEnum):
    """Kinds of change in the feed; numbers match modelreg.v1.ChangeType."""

    ALIAS_SET = 1
    ALIAS_DELETED = 2
    STAGE_CHANGED = 3
    TRAFFIC_CHANGED = 4
    POLICY_CHANGED = 5
    MODEL_DELETED = 6
    MODEL_CREATED = 7
    MODEL_UPDATED = 8
    VERSION_CREATED = 9
    VERSION_UPDATED = 10


# What WatchAliases streams; the catalog changes go only to webhooks and the event log.
SERVING_CHANGES = frozenset(
    {
        ChangeType.ALIAS_SET,
        ChangeType.ALIAS_DELETED,
        ChangeType.STAGE_CHANGED,
        ChangeType.TRAFFIC_CHANGED,
        ChangeType.POLICY_CHANGED,
        ChangeType.MODEL_DELETED,
    }
)


@dataclass(frozen=True)
class ModelRecord:
    """A stored model."""

    model_id: str
    uid: str
    description: str
    labels: dict[str, str]
    owner_team: str
    latest_version: int
    revision: int
    create_time: datetime
    update_time: datetime
    promotion_policy: PromotionPolicy = PromotionPolicy.STAGES_AND_ALIASES
    protected_aliases: tuple[str, ...] = ("champion",)


@dataclass(frozen=True)
class ModelFields:
    """The client-settable fields of a model."""

    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    owner_team: str = ""
    promotion_policy: PromotionPolicy = PromotionPolicy.STAGES_AND_ALIASES
    protected_aliases: tuple[str, ...] = ("champion",)


@dataclass(frozen=True)
class NewVersion:
    """What a client registers; everything but description and labels is immutable afterwards."""

    run_id: str = ""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: JsonObject = field(default_factory=dict)
    input_schema: JsonObject = field(default_factory=dict)
    output_schema: JsonObject = field(default_factory=dict)
    dependencies: JsonObject = field(default_factory=dict)
    artifact_digest: str = ""
    # lineage, schemas and dependencies once more as the API layer's encoding, opaque below it (reads are
    # far cheaper from it than from the JSON objects above).
    details: bytes = field(default=b"", compare=False)


@dataclass(frozen=True)
class VersionRecord:
    """A stored model version."""

    model_id: str
    version: int
    run_id: str
    description: str
    labels: dict[str, str]
    metrics: dict[str, float]
    lineage: JsonObject
    input_schema: JsonObject
    output_schema: JsonObject
    dependencies: JsonObject
    artifact_digest: str
    stage: Stage
    creator: str
    revision: int
    create_time: datetime
    update_time: datetime
    aliases: tuple[str, ...] = ()
    details: bytes | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the token of the next (empty at the end)."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True)
class Caller:
    """Who makes a call and how: recorded with every change and checked against every permission."""

    principal: str
    request_id: str = ""
    peer: str = ""
    action: str = ""
    # (role number, scope) pairs of the principal's bindings; viewer is implied.
    roles: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Resolution:
    """What an alias (or a route) resolves to."""

    model_id: str
    version: int
    artifact_digest: str
    stage: Stage
    revision: int


@dataclass(frozen=True)
class AliasRecord:
    """A stored alias with the state of the version it points at."""

    model_id: str
    alias: str
    version: int
    revision: int
    updater: str
    create_time: datetime
    update_time: datetime
    artifact_digest: str = ""
    stage: Stage = Stage.NONE

    def resolution(self) -> Resolution:
        """The alias as a resolution."""
        return Resolution(self.model_id, self.version, self.artifact_digest, self.stage, self.revision)


@dataclass(frozen=True)
class AliasMove:
    """One entry of an alias's history; version None means deleted, previous None means created."""

    model_id: str
    alias: str
    version: int | None
    previous_version: int | None
    actor: str
    comment: str
    revision: int
    create_time: datetime


@dataclass(frozen=True)
class StageMove:
    """One stage transition of a version."""

    model_id: str
    version: int
    from_stage: Stage
    to_stage: Stage
    actor: str
    comment: str
    revision: int
    create_time: datetime


@dataclass(frozen=True)
class Route:
    """A traffic route: an alias or a pinned version, and its weight in percent."""

    weight: int
    alias: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class TrafficPolicyRecord:
    """A model's traffic split."""

    model_id: str
    routes: tuple[Route, ...]
    revision: int
    updater: str
    update_time: datetime | None


@dataclass(frozen=True)
class Change:
    """One entry of the change feed."""

    revision: int
    change_type: ChangeType
    model_id: str
    actor: str
    create_time: datetime
    alias: str | None = None
    resolution: Resolution | None = None
    previous_stage: Stage | None = None
    routes: tuple[Route, ...] | None = None
    policy: PromotionPolicy | None = None
