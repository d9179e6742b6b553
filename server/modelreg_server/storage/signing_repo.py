"""SQL for signing keys and version signatures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from modelreg_server.domain import errors
from modelreg_server.storage.db import Connection


@dataclass(frozen=True)
class SigningKeyRow:
    """A registered public key."""

    key_id: str
    public_key_pem: str
    fingerprint: str
    algorithm: str
    description: str
    creator: str
    create_time: datetime
    revoke_time: datetime | None
    revoker: str
    revoke_reason: str

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoke_time is not None


@dataclass(frozen=True)
class SignatureRow:
    """A signature attached to a version."""

    model_id: str
    version: int
    key_id: str
    bundle: bytes
    verified: bool
    verify_message: str
    verify_time: datetime
    create_time: datetime
    creator: str


_KEY_COLUMNS = (
    "key_id, public_key_pem, fingerprint, algorithm, description, creator, create_time, revoke_time, "
    "revoker, revoke_reason"
)
_SIGNATURE_COLUMNS = (
    "model_id, version, key_id, bundle, verified, verify_message, verify_time, create_time, creator"
)


def _key(r: asyncpg.Record) -> SigningKeyRow:
    return SigningKeyRow(
        key_id=r["key_id"],
        public_key_pem=r["public_key_pem"],
        fingerprint=r["fingerprint"],
        algorithm=r["algorithm"],
        description=r["description"],
        creator=r["creator"],
        create_time=r["create_time"],
        revoke_time=r["revoke_time"],
        revoker=r["revoker"],
        revoke_reason=r["revoke_reason"],
    )


def _signature(r: asyncpg.Record) -> SignatureRow:
    return SignatureRow(
        model_id=r["model_id"],
        version=r["version"],
        key_id=r["key_id"],
        bundle=bytes(r["bundle"]),
        verified=r["verified"],
        verify_message=r["verify_message"],
        verify_time=r["verify_time"],
        create_time=r["create_time"],
        creator=r["creator"],
    )


# --- keys ------------------------------------------------------------------------------------------------


async def insert_key(
    conn: Connection,
    key_id: str,
    *,
    public_key_pem: str,
    fingerprint: str,
    algorithm: str,
    description: str,
    creator: str,
) -> SigningKeyRow:
    """Registers a key; ALREADY_EXISTS when the id, or the same key under another id, is taken."""
    try:
        # A savepoint, so the transaction can still look up the key that holds the fingerprint.
        async with conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO signing_keys "
                "(key_id, public_key_pem, fingerprint, algorithm, description, creator) "
                f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_KEY_COLUMNS}",
                key_id,
                public_key_pem,
                fingerprint,
                algorithm,
                description,
                creator,
            )
    except asyncpg.UniqueViolationError as exc:
        name = f"signingKeys/{key_id}"
        if exc.constraint_name == "signing_keys_pkey":
            raise errors.AlreadyExists(
                f"{name} already exists (key ids are never reused, even after revocation)",
                "SIGNING_KEY_ALREADY_EXISTS",
                {"signing_key": name},
            ) from exc
        owner = await conn.fetchval("SELECT key_id FROM signing_keys WHERE fingerprint = $1", fingerprint)
        raise errors.AlreadyExists(
            f"this public key is registered already, as signingKeys/{owner}",
            "SIGNING_KEY_ALREADY_EXISTS",
            {"signing_key": f"signingKeys/{owner}", "fingerprint": fingerprint},
        ) from exc
    assert row is not None
    return _key(row)


async def get_key(
    conn: Connection, key_id: str, *, lock: Literal["share", "update"] | None = None
) -> SigningKeyRow | None:
    """A key by id, optionally locked (FOR SHARE while a signature by it is written, FOR UPDATE to revoke)."""
    suffix = {None: "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE key_id = $1{suffix}", key_id)
    return _key(row) if row else None


async def list_keys(conn: Connection, after: str | None, limit: int) -> list[SigningKeyRow]:
    """Keys by id, after `after`."""
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE ($1::text IS NULL OR key_id > $1) "
        "ORDER BY key_id LIMIT $2",
        after,
        limit,
    )
    return [_key(r) for r in rows]


async def revoke_key(conn: Connection, key_id: str, revoker: str, reason: str) -> SigningKeyRow:
    """Revokes a key (lock it first); its signatures are not touched here (see `unverify_signatures_by`)."""
    row = await conn.fetchrow(
        "UPDATE signing_keys SET revoke_time = clock_timestamp(), revoker = $2, revoke_reason = $3 "
        f"WHERE key_id = $1 RETURNING {_KEY_COLUMNS}",
        key_id,
        revoker,
        reason,
    )
    assert row is not None
    return _key(row)


# --- signatures ------------------------------------------------------------------------------------------


async def upsert_signature(
    conn: Connection, model_id: str, version: int, key_id: str, bundle: bytes, creator: str
) -> tuple[SignatureRow, bool]:
    """Stores a verified signature, replacing one by the same key; returns it and whether one was replaced."""
    row = await conn.fetchrow(
        "INSERT INTO version_signatures AS s (model_id, version, key_id, bundle, verified, creator) "
        "VALUES ($1, $2, $3, $4, true, $5) "
        "ON CONFLICT (model_id, version, key_id) DO UPDATE SET bundle = EXCLUDED.bundle, verified = true, "
        "verify_message = '', verify_time = clock_timestamp(), create_time = clock_timestamp(), "
        "creator = EXCLUDED.creator "
        f"RETURNING {_SIGNATURE_COLUMNS}, (xmax <> 0) AS replaced",
        model_id,
        version,
        key_id,
        bundle,
        creator,
    )
    assert row is not None
    return _signature(row), bool(row["replaced"])


async def list_signatures(
    conn: Connection, model_id: str, version: int, after: str | None = None, limit: int | None = None
) -> list[SignatureRow]:
    """A version's signatures by key id, after `after`; all of them without a limit."""
    rows = await conn.fetch(
        f"SELECT {_SIGNATURE_COLUMNS} FROM version_signatures "
        "WHERE model_id = $1 AND version = $2 AND ($3::text IS NULL OR key_id > $3) ORDER BY key_id LIMIT $4",
        model_id,
        version,
        after,
        limit,
    )
    return [_signature(r) for r in rows]


async def set_verification(
    conn: Connection, signature: SignatureRow, verified: bool, message: str
) -> SignatureRow | None:
    """Records the outcome of verifying `signature` now; None when it is gone or its bundle was replaced
    since it was read."""
    row = await conn.fetchrow(
        "UPDATE version_signatures SET verified = $5, verify_message = $6, verify_time = clock_timestamp() "
        "WHERE model_id = $1 AND version = $2 AND key_id = $3 AND bundle = $4 "
        f"RETURNING {_SIGNATURE_COLUMNS}",
        signature.model_id,
        signature.version,
        signature.key_id,
        signature.bundle,
        verified,
        message,
    )
    return _signature(row) if row else None


async def unverify_signatures_by(conn: Connection, key_id: str, message: str) -> int:
    """Marks every verified signature by a key unverified; returns how many."""
    status = await conn.execute(
        "UPDATE version_signatures SET verified = false, verify_message = $2, "
        "verify_time = clock_timestamp() WHERE key_id = $1 AND verified",
        key_id,
        message,
    )
    return int(status.split()[-1])
