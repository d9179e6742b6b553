"""Typed errors raised by the modelreg SDK.

Every failed call raises a subclass of :class:`ModelregError`, chosen by the gRPC status code. The
server packs `google.rpc` detail messages into the status (`grpc-status-details-bin`); they are
unpacked here so callers can branch on :attr:`ModelregError.reason` and read field or precondition
violations without touching protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, cast

import grpc
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "Conflict",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "ModelregError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_class_for",
    "from_rpc_error",
    "from_status",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ModelregError(Exception):
    """Base class of every error the SDK raises for a failed call.

    Attributes:
        code: The gRPC status code.
        message: The human-readable status message.
        reason: UPPER_SNAKE machine-readable cause from `google.rpc.ErrorInfo` (e.g. `MODEL_NOT_FOUND`);
            empty when the status carried no ErrorInfo (e.g. a client-side deadline).
        domain: `ErrorInfo.domain`, `"modelreg"` for errors produced by the registry.
        metadata: `ErrorInfo.metadata`.
        details: Every detail message of the status, unpacked (unknown types stay `google.protobuf.Any`).
        field_violations: `(field, description)` pairs from `google.rpc.BadRequest`.
        precondition_violations: `(type, subject, description)` triples from
            `google.rpc.PreconditionFailure`.
    """

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        details: Iterable[Message] = (),
    ) -> None:
        super().__init__(message)
        self.code: grpc.StatusCode = code if code is not None else self.grpc_code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.details: list[Message] = list(details)
        self.field_violations: list[tuple[str, str]] = []
        self.precondition_violations: list[tuple[str, str, str]] = []
        for detail in self.details:
            if isinstance(detail, error_details_pb2.BadRequest):
                self.field_violations.extend((v.field, v.description) for v in detail.field_violations)
            elif isinstance(detail, error_details_pb2.PreconditionFailure):
                self.precondition_violations.extend(
                    (v.type, v.subject, v.description) for v in detail.violations
                )

    def __str__(self) -> str:
        if self.reason:
            return f"{self.code.name} {self.reason}: {self.message}"
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"
        )


class InvalidArgument(ModelregError):
    """The request is malformed; see :attr:`field_violations` (INVALID_ARGUMENT)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ModelregError):
    """The named resource does not exist (NOT_FOUND)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ModelregError):
    """A resource with that name exists already (ALREADY_EXISTS)."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ModelregError):
    """The registry is not in a state that allows the operation; see
    :attr:`precondition_violations` (FAILED_PRECONDITION)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(ModelregError):
    """A concurrency conflict such as a stale etag: re-read and retry (ABORTED)."""

    grpc_code = grpc.StatusCode.ABORTED


class PermissionDenied(ModelregError):
    """The caller is not allowed to do this (PERMISSION_DENIED)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ModelregError):
    """Missing or invalid credentials (UNAUTHENTICATED)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ModelregError):
    """The registry or one of its backends cannot be reached (UNAVAILABLE)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ModelregError):
    """The call did not finish before its deadline (DEADLINE_EXCEEDED)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(ModelregError):
    """An offset or position past the end (OUT_OF_RANGE)."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class DataLoss(ModelregError):
    """Data was lost or corrupted, e.g. bytes that do not match their digest (DATA_LOSS)."""

    grpc_code = grpc.StatusCode.DATA_LOSS


class ResourceExhausted(ModelregError):
    """A quota or size limit was hit (RESOURCE_EXHAUSTED)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(ModelregError):
    """The call was cancelled (CANCELLED)."""

    grpc_code = grpc.StatusCode.CANCELLED


class Internal(ModelregError):
    """The server failed unexpectedly (INTERNAL or UNKNOWN)."""

    grpc_code = grpc.StatusCode.INTERNAL


_CLASS_BY_CODE: dict[grpc.StatusCode, type[ModelregError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Conflict,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        OutOfRange,
        DataLoss,
        ResourceExhausted,
        Cancelled,
        Internal,
    )
}
# grpcio reports an exception escaping a servicer as UNKNOWN: to the caller that is a server bug.
_CLASS_BY_CODE[grpc.StatusCode.UNKNOWN] = Internal


def error_class_for(code: grpc.StatusCode) -> type[ModelregError]:
    """Return the exception class raised for a gRPC status code (`ModelregError` for unmapped codes)."""
    return _CLASS_BY_CODE.get(code, ModelregError)


def _unpack(packed: any_pb2.Any) -> Message:
    """Unpack a detail into its concrete type when that type is known to the default descriptor pool."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        return packed
    message: Message = message_factory.GetMessageClass(descriptor)()
    return message if packed.Unpack(message) else packed


def from_status(status: status_pb2.Status) -> ModelregError:
    """Build the typed error for a `google.rpc.Status` message (what the server packs in its trailers)."""
    return _build(_code_from_number(status.code), status.message, status)


def from_rpc_error(err: grpc.RpcError) -> ModelregError:
    """Convert a failed call into the typed error, unpacking the status details the server sent.

    Works for errors raised by sync stubs (`grpc.RpcError` that is also a `grpc.Call`) and by
    `grpc.aio` stubs (`grpc.aio.AioRpcError`, whose accessors are plain methods, not coroutines).
    """
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else None
    if not isinstance(code, grpc.StatusCode):
        return Internal(str(err) or type(err).__name__, code=grpc.StatusCode.UNKNOWN)
    status = _rich_status(err)
    # The status line is authoritative; the packed status only contributes its details.
    return _build(code, err.details() or (status.message if status is not None else ""), status)


def _build(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> ModelregError:
    details = [_unpack(packed) for packed in status.details] if status is not None else []
    info = next((d for d in details if isinstance(d, error_details_pb2.ErrorInfo)), None)
    return error_class_for(code)(
        message,
        code=code,
        reason=info.reason if info is not None else "",
        domain=info.domain if info is not None else "",
        metadata=dict(info.metadata) if info is not None else None,
        details=details,
    )


def _rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    try:
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:
        # Code or message in the packed status disagree with the status line; the details are still the
        # server's best description of the failure, so decode them directly.
        return _status_from_trailers(err)
    except DecodeError:
        return None
    return cast(status_pb2.Status | None, status)


def _status_from_trailers(err: grpc.RpcError) -> status_pb2.Status | None:
    trailers: Any = err.trailing_metadata() or ()
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def _code_from_number(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
