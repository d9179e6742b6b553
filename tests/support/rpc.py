"""Helpers to call the server with raw stubs and inspect error details."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
