"""OpenTelemetry for the server: traces, metrics and structured logs.

Exporters follow the standard environment variables: OTEL_TRACES_EXPORTER and OTEL_METRICS_EXPORTER
(`none` — the default here —, `console`, or `otlp` over HTTP/protobuf to OTEL_EXPORTER_OTLP_ENDPOINT),
OTEL_SERVICE_NAME; MODELREG_METRICS_PORT additionally serves Prometheus text at /metrics. Instruments are
created on the global (proxy) tracer and meter, so code may record before `setup` runs; without setup
everything is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)

tracer = trace.get_tracer("modelreg_server")
meter = metrics.get_meter("modelreg_server")

rpc_count = meter.create_counter("modelreg.rpc.count", description="RPCs handled, by method and status code")
rpc_latency = meter.create_histogram(
    "modelreg.rpc.duration", unit="ms", description="RPC handling time, by method and status code"
)
bytes_uploaded = meter.create_counter(
    "modelreg.artifacts.uploaded", unit="By", description="Blob bytes received"
)
bytes_downloaded = meter.create_counter(
    "modelreg.artifacts.downloaded", unit="By", description="Blob bytes sent"
)


@dataclass
class Gauges:
    """Callbacks that report live values (cache counters, watchers, pool use) when metrics are read."""

    sources: dict[str, Callable[[], float]] = field(default_factory=dict)

    def add(self, name: str, read: Callable[[], float]) -> None:
        """Registers a value to report under `name`."""
        self.sources[name] = read

    def observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable-instrument callback for `name`."""

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            read = self.sources.get(name)
            return [Observation(read())] if read is not None else []

        return callback


gauges = Gauges()
meter.create_observable_counter(
    "modelreg.resolve_cache.hits", [gauges.observe("cache.hits")], description="Resolve cache hits"
)
meter.create_observable_counter(
    "modelreg.resolve_cache.misses", [gauges.observe("cache.misses")], description="Resolve cache misses"
)
meter.create_observable_gauge(
    "modelreg.watchers", [gauges.observe("watchers")], description="Connected watchers"
)
meter.create_observable_gauge(
    "modelreg.db.pool.in_use", [gauges.observe("db.in_use")], description="PostgreSQL connections in use"
)


def tracer_enabled() -> bool:
    """Whether spans go anywhere (avoids building spans no one exports on hot paths)."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The caller's trace context from gRPC metadata (W3C traceparent)."""
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    return propagate.extract(carrier)


def record_rpc(method: str, code: str, started: float) -> None:
    """Counts one finished RPC and its latency."""
    attributes = {"rpc.method": method, "rpc.grpc.status_code": code}
    rpc_count.add(1, attributes)
    rpc_latency.record((time.perf_counter() - started) * 1000, attributes)


def _span_exporter(name: str) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name not in ("", "none"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; use none, console or otlp", name)
    return None


def _metric_readers(env: Mapping[str, str], metrics_port: int) -> list[MetricReader]:
    readers: list[MetricReader] = []
    kind = env.get("OTEL_METRICS_EXPORTER", "none")
    if kind == "console":
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    elif kind not in ("", "none", "prometheus"):
        log.warning("OTEL_METRICS_EXPORTER=%s is not supported here; use none, console or otlp", kind)
    if metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
        readers.append(PrometheusMetricReader())
    return readers


@dataclass
class TelemetryHandle:
    """What setup installed, to flush at shutdown."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None

    def shutdown(self) -> None:
        """Flushes and stops exporters."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def setup(metrics_port: int = 0, env: Mapping[str, str] | None = None) -> TelemetryHandle:
    """Installs the providers the environment asks for; nothing when it asks for none."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "modelreg-server")})
    tracer_provider = None
    exporter = _span_exporter(env.get("OTEL_TRACES_EXPORTER", "none"))
    if exporter is not None:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
    meter_provider = None
    readers = _metric_readers(env, metrics_port)
    if readers:
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
    return TelemetryHandle(tracer_provider, meter_provider)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the trace and span ids of the current span."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: int = logging.INFO) -> None:
    """Structured JSON logs on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.Formatter.converter = time.gmtime
