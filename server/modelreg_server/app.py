"""Builds and runs the gRPC server: servicers, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelreg.v1 import (
    access_service_pb2,
    access_service_pb2_grpc,
    artifact_service_pb2,
    artifact_service_pb2_grpc,
    governance_service_pb2,
    governance_service_pb2_grpc,
    lifecycle_service_pb2,
    lifecycle_service_pb2_grpc,
    model_registry_service_pb2,
    model_registry_service_pb2_grpc,
    signing_service_pb2,
    signing_service_pb2_grpc,
    webhook_service_pb2,
    webhook_service_pb2_grpc,
)
from modelreg_server import telemetry
from modelreg_server.api.access_servicer import AccessServicer
from modelreg_server.api.artifact_servicer import ArtifactServicer
from modelreg_server.api.governance_servicer import GovernanceServicer
from modelreg_server.api.lifecycle_servicer import LifecycleServicer
from modelreg_server.api.registry_servicer import RegistryServicer
from modelreg_server.api.serving_servicer import ServingServicer
from modelreg_server.api.signing_servicer import SigningServicer
from modelreg_server.api.webhook_convert import render_event
from modelreg_server.api.webhook_servicer import WebhookServicer
from modelreg_server.config import Settings
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.approvals import Approvals
from modelreg_server.domain.artifacts import open_artifacts
from modelreg_server.domain.audit import AuditLog
from modelreg_server.domain.catalog import Catalog
from modelreg_server.domain.errors import RegistryError
from modelreg_server.domain.feed import ChangeFeed
from modelreg_server.domain.gates import PromotionGates
from modelreg_server.domain.lifecycle import Lifecycle
from modelreg_server.domain.pagination import PageTokenCodec
from modelreg_server.domain.resolve_cache import ModelScopedCache
from modelreg_server.domain.serving import Serving
from modelreg_server.domain.signing import Signing
from modelreg_server.domain.ssrf import SsrfGuard
from modelreg_server.domain.webhook_sender import WebhookSender
from modelreg_server.domain.webhook_worker import WebhookWorker
from modelreg_server.domain.webhooks import Webhooks
from modelreg_server.storage.db import Database, create_pool
from modelreg_server.storage.migrate import migrate

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    model_registry_service_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"].full_name,
    lifecycle_service_pb2.DESCRIPTOR.services_by_name["LifecycleService"].full_name,
    lifecycle_service_pb2.DESCRIPTOR.services_by_name["ServingService"].full_name,
    access_service_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    governance_service_pb2.DESCRIPTOR.services_by_name["GovernanceService"].full_name,
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    signing_service_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name,
)


def _server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_connection_age_ms", settings.max_connection_age_s * 1000),
        ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


BACKGROUND_POOL_SIZE = 3
"""Connections of the background pool (change feed, webhook pump, health watchdog), besides the request
pool of MODELREG_DB_POOL_SIZE and the change feed's LISTEN connection."""


async def open_database(settings: Settings) -> Database:
    """Connects and applies pending migrations."""
    db = Database(await create_pool(settings.database_url, max_size=settings.db_pool_size))
    async with db.pool.acquire() as conn:
        applied = await migrate(conn)
    for name in applied:
        log.info("applied migration %s", name)
    return db


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Listens in plaintext, or with TLS when a certificate is configured (mTLS with a client CA)."""
    if not settings.tls_cert:
        return server.add_insecure_port(settings.listen)
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    credentials = grpc.ssl_server_credentials(
        [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return server.add_secure_port(settings.listen, credentials)


async def _watch_database(db: Database, health_servicer: Any, names: Sequence[str], interval: float) -> None:
    """Health follows PostgreSQL: NOT_SERVING while it cannot be reached, SERVING again once it can."""
    serving = True  # the database answered the migrations a moment ago
    while True:
        await asyncio.sleep(interval)
        try:
            async with db.connection() as conn:
                await conn.fetchval("SELECT 1", timeout=interval)
            healthy = True
        except Exception as exc:
            healthy = False
            if serving:
                log.warning("database unreachable (%s): health NOT_SERVING", exc)
        if healthy != serving:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in names:
                await health_servicer.set(name, status)
            if healthy:
                log.info("database reachable again: health SERVING")
            serving = healthy


def _observe(cache: ModelScopedCache[object], feed: ChangeFeed, db: Database) -> None:
    telemetry.gauges.add("cache.hits", lambda: cache.stats.hits)
    telemetry.gauges.add("cache.misses", lambda: cache.stats.misses)
    telemetry.gauges.add("watchers", lambda: feed.watchers)
    telemetry.gauges.add("db.in_use", lambda: db.pool.get_size() - db.pool.get_idle_size())


async def serve(settings: Settings) -> int:
    """Runs until SIGTERM/SIGINT; returns the process exit code."""
    observability = telemetry.setup(settings.metrics_port)
    try:
        db = await open_database(settings)
    except RegistryError as exc:
        print(f"modelreg-server: {exc}", file=sys.stderr)
        return 2
    try:
        # Background work (change feed, webhook pump, health watchdog) has its own connections, so a burst
        # of requests that takes every pooled connection cannot stall it or flip health to NOT_SERVING.
        background = Database(
            await create_pool(settings.database_url, min_size=1, max_size=BACKGROUND_POOL_SIZE)
        )
    except RegistryError as exc:
        await db.close()
        print(f"modelreg-server: {exc}", file=sys.stderr)
        return 2
    tokens = PageTokenCodec(await db.fetch_secret("page_token"))
    server = grpc.aio.server(options=_server_options(settings))
    cache: ModelScopedCache[object] = ModelScopedCache()
    feed = ChangeFeed(background, settings.database_url, [cache])
    await feed.start()
    _observe(cache, feed, db)
    ssrf_guard = SsrfGuard(allow_private=settings.webhook_allow_private)
    webhook_worker = WebhookWorker(
        background, render_event, WebhookSender(ssrf_guard), max_attempts=settings.webhook_max_attempts
    )

    def committed(model_id: str, revision: int) -> None:
        # Read-your-writes on this replica: drop the model's entries now, then let the pump publish.
        cache.invalidate(model_id, revision)
        feed.wake()
        webhook_worker.wake()

    audit_log = AuditLog(db, tokens)
    access = AccessControl(db, audit_log)
    artifacts = await open_artifacts(settings, db)
    catalog = Catalog(db, tokens, on_commit=committed, artifacts=artifacts)
    model_registry_service_pb2_grpc.add_ModelRegistryServiceServicer_to_server(
        RegistryServicer(catalog, access), server
    )
    gates = PromotionGates(db, retention=timedelta(days=settings.retention_days))
    lifecycle = Lifecycle(db, tokens, on_commit=committed, guard=gates)
    lifecycle_service_pb2_grpc.add_LifecycleServiceServicer_to_server(
        LifecycleServicer(lifecycle, catalog, access), server
    )
    governance_service_pb2_grpc.add_GovernanceServiceServicer_to_server(
        GovernanceServicer(gates, Approvals(db, lifecycle, tokens, audit_log), access), server
    )
    lifecycle_service_pb2_grpc.add_ServingServiceServicer_to_server(
        ServingServicer(Serving(db, feed, cache), access, settings.watch_heartbeat_s), server
    )
    access_service_pb2_grpc.add_AccessServiceServicer_to_server(
        AccessServicer(access, audit_log, tokens), server
    )
    artifact_service_pb2_grpc.add_ArtifactServiceServicer_to_server(
        ArtifactServicer(artifacts, access), server
    )
    webhooks = Webhooks(db, tokens, ssrf_guard, render_event, on_change=webhook_worker.wake)
    webhook_service_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(webhooks, access), server)
    signing_service_pb2_grpc.add_SigningServiceServicer_to_server(
        SigningServicer(Signing(db, tokens, artifacts), access), server
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lacks aio
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = _bind(server, settings)
    except (RuntimeError, OSError) as exc:
        print(f"modelreg-server: cannot listen on {settings.listen}: {exc}", file=sys.stderr)
        await db.close()
        await background.close()
        return 2
    await server.start()
    await webhook_worker.start()
    for name in (*SERVICE_NAMES, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watchdog = asyncio.create_task(
        # "" (the process, for liveness) stays SERVING: restarting replicas cannot bring a database back.
        _watch_database(background, health_servicer, SERVICE_NAMES, settings.health_interval_s)
    )
    host = settings.listen.rsplit(":", 1)[0]
    print(f"modelreg-server listening on {host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    watchdog.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.shutdown_grace_s)
    await webhook_worker.stop()
    await feed.stop()
    await db.close()
    await background.close()
    observability.shutdown()
    if artifacts is not None:
        artifacts.close()
    return 0
