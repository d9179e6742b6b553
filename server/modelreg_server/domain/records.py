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


@dataclass(frozen=True)
class ModelFields:
    """The client-settable fields of a model."""

    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    owner_team: str = ""


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


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing and the token of the next (empty at the end)."""

    items: list[T]
    next_page_token: str
