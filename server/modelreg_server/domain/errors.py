"""Domain errors: raised by the rules and storage layers, mapped to gRPC statuses by the API layer.

Every error carries a machine-readable UPPER_SNAKE `reason` (sent as google.rpc.ErrorInfo.reason with
domain "modelreg") and string metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field (google.rpc.BadRequest.FieldViolation)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One failed precondition (google.rpc.PreconditionFailure.Violation)."""

    type: str
    subject: str
    description: str


@dataclass
class RegistryError(Exception):
    """Base of every error the registry reports to clients."""

    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(RegistryError):
    """The request is malformed (INVALID_ARGUMENT)."""

    violations: Sequence[FieldViolation] = ()


@dataclass
class NotFound(RegistryError):
    """The named resource does not exist (NOT_FOUND)."""


@dataclass
class AlreadyExists(RegistryError):
    """A resource with that name exists already (ALREADY_EXISTS)."""


@dataclass
class FailedPrecondition(RegistryError):
    """The system is not in a state that allows the operation (FAILED_PRECONDITION)."""

    violations: Sequence[PreconditionViolation] = ()


@dataclass
class Aborted(RegistryError):
    """A concurrency conflict: stale etag, lost race, compare-and-swap mismatch (ABORTED)."""


@dataclass
class OutOfRange(RegistryError):
    """An offset or position past the end (OUT_OF_RANGE)."""


@dataclass
class PermissionDenied(RegistryError):
    """The caller lacks a permission (PERMISSION_DENIED)."""


@dataclass
class Unauthenticated(RegistryError):
    """No valid credentials (UNAUTHENTICATED)."""


@dataclass
class Unavailable(RegistryError):
    """A backend (PostgreSQL, S3) cannot be reached (UNAVAILABLE)."""


@dataclass
class ResourceExhausted(RegistryError):
    """A limit was hit, e.g. a watcher fell too far behind (RESOURCE_EXHAUSTED)."""


@dataclass
class DataLoss(RegistryError):
    """Received bytes do not match their declared digest (DATA_LOSS)."""


def invalid(field_path: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
    """Shorthand for an InvalidArgument naming one field."""
    return InvalidArgument(
        f"{field_path}: {description}",
        reason,
        {"field": field_path},
        [FieldViolation(field_path, description)],
    )
