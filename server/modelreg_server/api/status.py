"""Turns registry errors into gRPC statuses with google.rpc details, and guards every RPC handler."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from modelreg_server import telemetry
from modelreg_server.api.identity import Guarded, authenticate, forget
from modelreg_server.domain import errors
from modelreg_server.storage.db import translate

log = logging.getLogger(__name__)

DOMAIN = "modelreg"

_CODES: dict[type[errors.RegistryError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(err: errors.RegistryError) -> status_pb2.Status:
    """The google.rpc.Status for a registry error: code, message, ErrorInfo and the specific details."""
    code = _CODES.get(type(err), grpc.StatusCode.INTERNAL)
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=dict(err.metadata)))
    ]
    if isinstance(err, errors.InvalidArgument) and err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        details.append(_pack(bad))
    if isinstance(err, errors.FailedPrecondition) and err.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in err.violations
            ]
        )
        details.append(_pack(failure))
    return status_pb2.Status(code=code.value[0], message=err.message, details=details)


def _internal_status() -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error", details=[_pack(info)])


def _status_for(exc: Exception) -> status_pb2.Status:
    if isinstance(exc, errors.RegistryError):
        return to_status(exc)
    mapped = translate(exc)
    if mapped is not None:
        return to_status(mapped)
    log.exception("unhandled error in RPC handler")
    return _internal_status()


S = TypeVar("S", bound=Guarded)
Req = TypeVar("Req")
Resp = TypeVar("Resp")


_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


class _Telemetry:
    """What the installed OpenTelemetry providers want from each RPC, re-read at most once a second: every
    read of the global providers looks up environment variables, which costs more than a cached
    ResolveAlias spends on everything else."""

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._read_at = -math.inf
        self.tracing = False
        self.metering = False
        self.trace_headers: frozenset[str] = frozenset()

    def refresh(self, now: float) -> None:
        """Re-reads the providers if the last read is older than the interval."""
        if now - self._read_at < self._interval:
            return
        self._read_at = now
        self.tracing = telemetry.tracer_enabled()
        self.metering = isinstance(metrics.get_meter_provider(), MeterProvider)
        self.trace_headers = frozenset(propagate.get_global_textmap().fields)

    def carries_trace(self, metadata: Iterable[tuple[str, str | bytes]]) -> bool:
        """Whether the call's metadata holds a header the propagators read (e.g. traceparent)."""
        headers = self.trace_headers
        return any(key in headers for key, _ in metadata)


_telemetry = _Telemetry()


class _CallScope:
    """Around one RPC: its server span (continuing the caller's trace), status code for the metrics,
    authentication, and the error-to-status mapping.

    The span is skipped when no tracer provider is installed and the caller sent no trace context: it would
    be a no-op span, and building it costs as much as the rest of a cached ResolveAlias. With a trace
    context but no provider the caller's (non-recording) span is still made current, so the JSON logs keep
    the caller's trace id.
    """

    def __init__(self, service: Guarded, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.method = f"{_service_name(service)}/{method}"
        self.action = method
        self.context = context
        self.started = time.perf_counter()
        self.code = "OK"
        self.span: Span | None = None
        _telemetry.refresh(self.started)
        metadata = context.invocation_metadata() or ()
        if _telemetry.tracing or _telemetry.carries_trace(metadata):
            self.span = telemetry.tracer.start_span(
                self.method,
                context=telemetry.extract_context(metadata),
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.method": method,
                    "rpc.service": _service_name(service),
                },
            )

    def activate(self) -> AbstractContextManager[object]:
        """Makes the span current (nothing when there is none)."""
        return _NO_SPAN if self.span is None else trace.use_span(self.span, end_on_exit=False)

    async def fail(self, exc: Exception) -> NoReturn:
        status = _status_for(exc)
        self.code = next((c.name for c in grpc.StatusCode if c.value[0] == status.code), "UNKNOWN")
        if self.span is not None:
            self.span.set_attribute("rpc.grpc.status_code", status.code)
            if self.code == "INTERNAL":
                self.span.set_status(Status(StatusCode.ERROR, status.message))
        await self.context.abort(*_abort_args(status))

    def close(self, cancelled: bool = False) -> None:
        if cancelled:
            self.code = "CANCELLED"
        forget(self.context)
        if _telemetry.metering:
            telemetry.record_rpc(self.method, self.code, self.started)
        if self.span is not None:
            self.span.end()


def _abort_args(status: status_pb2.Status) -> tuple[grpc.StatusCode, str, Any]:
    converted = rpc_status.to_status(status)
    return converted.code, converted.details, converted.trailing_metadata


_SERVICE_NAMES: dict[type, str] = {}


def _service_name(service: object) -> str:
    """`modelreg.v1.ModelRegistryService` from the generated servicer base class."""
    kind = type(service)
    name = _SERVICE_NAMES.get(kind)
    if name is None:
        base = next(
            (c.__name__ for c in kind.__mro__ if c.__name__.endswith("ServiceServicer")), kind.__name__
        )
        name = _SERVICE_NAMES[kind] = "modelreg.v1." + base.removesuffix("Servicer")
    return name


def unary(
    handler: Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Decorates a unary (or client-streaming) handler: a span and metrics, authentication of the caller,
    and every failure leaves with the right status."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        scope = _CallScope(self, handler.__name__, context)
        cancelled = False
        try:
            with scope.activate():
                await authenticate(self.access, context, scope.action)
                return await handler(self, request, context)
        except asyncio.CancelledError:
            cancelled = True
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await scope.fail(exc)
        finally:
            scope.close(cancelled)

    return wrapper


def streaming(
    handler: Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[S, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Like `unary`, for server-streaming handlers written as async generators."""

    @functools.wraps(handler)
    async def wrapper(
        self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        scope = _CallScope(self, handler.__name__, context)
        cancelled = False
        try:
            with scope.activate():
                await authenticate(self.access, context, scope.action)
            async for item in handler(self, request, context):
                yield item
        except asyncio.CancelledError:
            cancelled = True
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await scope.fail(exc)
        finally:
            scope.close(cancelled)

    return wrapper
