"""Records of governance: promotion gates, promotion targets, promotion requests and their reviews."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from modelreg_server.domain.errors import PreconditionViolation
from modelreg_server.domain.gate_rules import Rule
from modelreg_server.domain.records import Stage

DEFAULT_REQUEST_TTL = timedelta(days=7)
MIN_REQUEST_TTL = timedelta(seconds=1)
MAX_REQUEST_TTL = timedelta(days=30)
MAX_REQUIRED_APPROVALS = 10


class RequestState(enum.IntEnum):
    """Numbers match modelreg.v1.PromotionRequestState (and the promotion_requests.state column)."""

    PENDING = 1
    APPROVED = 2
    EXECUTED = 3
    REJECTED = 4
    CANCELLED = 5
    EXPIRED = 6
    FAILED = 7


OPEN_STATES = frozenset({RequestState.PENDING, RequestState.APPROVED})


@dataclass(frozen=True)
class Target:
    """Where a guarded move takes a version: PRODUCTION or a (protected) alias."""

    stage: Stage | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"alias {self.alias}" if self.alias is not None else "PRODUCTION"


@dataclass(frozen=True)
class GatesRecord:
    """A model's promotion gates; revision 0 means never configured."""

    model_id: str
    rules: tuple[Rule, ...] = ()
    required_approvals: int = 0
    request_ttl: timedelta = DEFAULT_REQUEST_TTL
    revision: int = 0
    updater: str = ""
    update_time: datetime | None = None


@dataclass(frozen=True)
class Review:
    """An approval or a rejection."""

    principal: str
    approved: bool
    comment: str
    create_time: datetime


@dataclass(frozen=True)
class PromotionRequestRecord:
    """A stored promotion request with its reviews."""

    request_id: int
    model_id: str
    version: int
    target: Target
    archive_existing: bool
    state: RequestState
    requester: str
    comment: str
    required_approvals: int
    state_message: str
    failures: tuple[PreconditionViolation, ...]
    create_time: datetime
    update_time: datetime
    expire_time: datetime
    reviews: tuple[Review, ...] = ()

    @property
    def name(self) -> str:
        """`models/{model}/promotionRequests/{id}`."""
        return request_name(self.model_id, self.request_id)

    @property
    def approvals(self) -> tuple[Review, ...]:
        """Approvals, oldest first."""
        return tuple(r for r in self.reviews if r.approved)

    @property
    def rejection(self) -> Review | None:
        """The rejection, if any."""
        return next((r for r in self.reviews if not r.approved), None)


def request_name(model_id: str, request_id: int) -> str:
    """`models/{model}/promotionRequests/{id}`."""
    return f"models/{model_id}/promotionRequests/{request_id}"
