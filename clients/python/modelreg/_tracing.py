"""A CLIENT span for every RPC, with the W3C trace context (`traceparent`) sent in the call metadata.

Active only when `opentelemetry` is importable (the SDK does not depend on it). Spans are named like the
server's, `modelreg.v1.<Service>/<Method>`, and go wherever the application's tracer provider sends
them; without a provider they record nothing, yet a trace the caller is in still reaches the server,
which continues it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised only where opentelemetry is absent
    ENABLED = False
else:
    ENABLED = True

__all__ = ["ENABLED", "aio_interceptors", "intercept_channel"]

TRACER_NAME = "modelreg"

if TYPE_CHECKING:  # the interceptor bases are generic only in the type stubs
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor[Any, Any]
    _SyncStreamStream = grpc.StreamStreamClientInterceptor[Any, Any]
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _SyncUnaryUnary = grpc.UnaryUnaryClientInterceptor
    _SyncUnaryStream = grpc.UnaryStreamClientInterceptor
    _SyncStreamUnary = grpc.StreamUnaryClientInterceptor
    _SyncStreamStream = grpc.StreamStreamClientInterceptor
    _AioUnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _AioUnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _AioStreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _AioStreamStream = grpc.aio.StreamStreamClientInterceptor

# Tasks that read the status of finished aio calls; referenced here so they are not collected early.
_PENDING: set[asyncio.Task[None]] = set()


def _method_name(method: str | bytes) -> str:
    return (method.decode() if isinstance(method, bytes) else method).lstrip("/")


def _start_span(address: str, method: str | bytes) -> tuple[Span, list[tuple[str, str]]]:
    """A started CLIENT span and the metadata entries that carry its context to the server."""
    name = _method_name(method)
    service, _, rpc_method = name.partition("/")
    host, _, port = address.rpartition(":")
    attributes: dict[str, str | int] = {
        "rpc.system": "grpc",
        "rpc.service": service,
        "rpc.method": rpc_method,
        "server.address": host or address,
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    span = trace.get_tracer(TRACER_NAME).start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, list(carrier.items())


def _end_span(span: Span, code: grpc.StatusCode | None) -> None:
    if code is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


# --- sync ------------------------------------------------------------------------------------------------


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = tuple(metadata)
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


def _sync_status(call: Any) -> grpc.StatusCode | None:
    try:
        code = call.code()
    except Exception:  # an outcome that failed before it had a status
        return None
    return code if isinstance(code, grpc.StatusCode) else None


class _SyncTracing(_SyncUnaryUnary, _SyncUnaryStream, _SyncStreamUnary, _SyncStreamStream):
    """One interceptor for the four call types of a sync channel."""

    def __init__(self, address: str) -> None:
        self._address = address

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        span, headers = _start_span(self._address, details.method)
        try:
            call = continuation(_CallDetails(details, (*(details.metadata or ()), *headers)), request)
        except BaseException:
            _end_span(span, grpc.StatusCode.UNKNOWN)
            raise
        # Runs at once for finished unary outcomes, else when the stream ends.
        call.add_done_callback(lambda done: _end_span(span, _sync_status(done)))
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)


def intercept_channel(channel: grpc.Channel, address: str) -> grpc.Channel:
    """`channel` with a client span per call, or `channel` itself without opentelemetry."""
    if not ENABLED:
        return channel
    return grpc.intercept_channel(channel, _SyncTracing(address))


# --- asyncio ---------------------------------------------------------------------------------------------


async def _end_after_status(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except Exception:
        code = None
    _end_span(span, code)


def _aio_done(span: Span, call: Any) -> None:
    # The status of an aio call is only available through a coroutine.
    try:
        task = asyncio.get_running_loop().create_task(_end_after_status(span, call))
    except RuntimeError:  # no loop left (the channel is being torn down)
        _end_span(span, None)
        return
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)


class _AioTracing:
    def __init__(self, address: str) -> None:
        self._address = address

    async def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        span, headers = _start_span(self._address, details.method)
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + tuple(headers)))
        traced = grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )
        try:
            call = await continuation(traced, request)
        except BaseException:
            _end_span(span, grpc.StatusCode.UNKNOWN)
            raise
        call.add_done_callback(functools.partial(_aio_done, span))
        return call


# grpc.aio files each interceptor under one call type only, hence one class per type.
class _AioTracingUnaryUnary(_AioTracing, _AioUnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _AioTracingUnaryStream(_AioTracing, _AioUnaryStream):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class _AioTracingStreamUnary(_AioTracing, _AioStreamUnary):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class _AioTracingStreamStream(_AioTracing, _AioStreamStream):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def aio_interceptors(address: str) -> list[Any]:
    """Interceptors for `grpc.aio` channels (none without opentelemetry)."""
    if not ENABLED:
        return []
    kinds = (_AioTracingUnaryUnary, _AioTracingUnaryStream, _AioTracingStreamUnary, _AioTracingStreamStream)
    return [kind(address) for kind in kinds]
