"""Helpers to call the server with raw stubs and inspect error details."""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

T = TypeVar("T")


@dataclass
class Failure:
    """A failed call: status code, message and unpacked google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)


def failure_of(err: grpc.aio.AioRpcError) -> Failure:
    """Decodes grpc-status-details-bin of an aio error."""
    result = Failure(err.code(), err.details() or "")
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key != "grpc-status-details-bin":
            continue
        assert isinstance(value, bytes)
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            pre = error_details_pb2.PreconditionFailure()
            if detail.Unpack(info):
                assert info.domain == "modelreg"
                result.reason, result.metadata = info.reason, dict(info.metadata)
            elif detail.Unpack(bad):
                result.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Unpack(pre):
                result.precondition_violations = [(v.type, v.subject, v.description) for v in pre.violations]
    return result


async def fails(call: Awaitable[Any]) -> Failure:
    """Awaits a call that must fail and returns its decoded failure."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return failure_of(err)
    raise AssertionError("call succeeded but was expected to fail")


if TYPE_CHECKING:  # generic only in the type stubs
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self._metadata))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one call type only, hence one class per type.
class _BearerUnaryUnary(_Bearer, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerUnaryStream(_Bearer, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _BearerStreamUnary(_Bearer, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _BearerStreamStream(_Bearer, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def bearer_interceptors(token: str) -> list[Any]:
    """Interceptors that authenticate every call of an aio channel as `token`."""
    kinds = (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)
    return [kind(token) for kind in kinds]


def channel(address: str, token: str | None = None) -> grpc.aio.Channel:
    """An aio channel that authenticates as `token` (default: the session's admin, MODELREG_TOKEN)."""
    token = token if token is not None else os.environ.get("MODELREG_TOKEN", "")
    return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token) if token else [])
