"""Ordered SQL migrations, applied once each under an advisory lock so replicas can start together."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

from modelreg_server.storage.db import Connection

log = logging.getLogger(__name__)

# Arbitrary constant identifying the migration lock among the database's advisory locks.
_LOCK_KEY = 0x6D6F64656C726567  # "modelreg"


@dataclass(frozen=True)
class Migration:
    """One SQL file, `NNNN_name.sql`."""

    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the file, to detect a migration edited after it was applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The bundled migrations in order."""
    folder = resources.files("modelreg_server.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.number)
    return found


async def migrate(conn: Connection) -> list[str]:
    """Applies pending migrations; returns the names applied. Idempotent and safe to run concurrently."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   number integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT number, checksum FROM schema_migrations")
        done = {r["number"]: r["checksum"] for r in rows}
        for migration in load_migrations():
            if migration.number in done:
                if done[migration.number] != migration.checksum:
                    log.warning(
                        "migration %04d_%s changed after it was applied", migration.number, migration.name
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (number, name, checksum) VALUES ($1, $2, $3)",
                    migration.number,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(f"{migration.number:04d}_{migration.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
