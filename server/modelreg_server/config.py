"""Server settings from flags and MODELREG_* environment variables (flags win)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/modelreg"


def _bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to run; documented in the README."""

    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "modelreg"
    s3_secure: bool = False
    # Base URL (`https://s3.example.com`) that presigned download URLs name, when clients reach S3 under
    # another address than the registry does; empty: the same endpoint.
    s3_public_endpoint: str = ""
    db_pool_size: int = 16
    # Long-lived streams (watches) are closed after this age so clients rebalance across replicas.
    max_connection_age_s: int = 1800
    shutdown_grace_s: float = 10.0
    # Interval of WatchAliases heartbeats (also the longest a quiet watcher waits to learn the revision).
    watch_heartbeat_s: float = 5.0
    # TLS: server certificate and key (PEM files); with a client CA, clients must present certificates
    # (mTLS) and a certificate's common name authenticates as the principal of that id.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Versions that held PRODUCTION or a protected alias, and their blobs, are kept this long after (0: off).
    retention_days: int = 365
    # Webhook targets may be loopback, private or link-local addresses (on-premises receivers, tests).
    webhook_allow_private: bool = False
    # Attempts per webhook delivery before it is FAILED (1 s, 2 s, 4 s … apart, capped at an hour).
    webhook_max_attempts: int = 12
    # Port of a Prometheus /metrics endpoint (0: none).
    metrics_port: int = 0
    # How often health re-checks PostgreSQL (NOT_SERVING while unreachable).
    health_interval_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Reads MODELREG_* variables; keyword overrides (from flags) that are not None win."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "listen": env.get("MODELREG_LISTEN", DEFAULT_LISTEN),
            "database_url": env.get("MODELREG_DATABASE_URL", DEFAULT_DATABASE_URL),
            "s3_endpoint": env.get("MODELREG_S3_ENDPOINT", ""),
            "s3_access_key": env.get("MODELREG_S3_ACCESS_KEY", ""),
            "s3_secret_key": env.get("MODELREG_S3_SECRET_KEY", ""),
            "s3_bucket": env.get("MODELREG_S3_BUCKET", "modelreg"),
            "s3_secure": _bool(env.get("MODELREG_S3_SECURE", "false")),
            "s3_public_endpoint": env.get("MODELREG_S3_PUBLIC_ENDPOINT", ""),
            "db_pool_size": int(env.get("MODELREG_DB_POOL_SIZE", "16")),
            "max_connection_age_s": int(env.get("MODELREG_MAX_CONNECTION_AGE_S", "1800")),
            "watch_heartbeat_s": float(env.get("MODELREG_WATCH_HEARTBEAT_S", "5")),
            "tls_cert": env.get("MODELREG_TLS_CERT", ""),
            "tls_key": env.get("MODELREG_TLS_KEY", ""),
            "tls_client_ca": env.get("MODELREG_TLS_CLIENT_CA", ""),
            "retention_days": int(env.get("MODELREG_RETENTION_DAYS", "365")),
            "webhook_allow_private": _bool(env.get("MODELREG_WEBHOOK_ALLOW_PRIVATE", "false")),
            "webhook_max_attempts": int(env.get("MODELREG_WEBHOOK_MAX_ATTEMPTS", "12")),
            "metrics_port": int(env.get("MODELREG_METRICS_PORT", "0")),
            "health_interval_s": float(env.get("MODELREG_HEALTH_INTERVAL_S", "2")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
