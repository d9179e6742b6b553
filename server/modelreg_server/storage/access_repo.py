"""SQL for principals, tokens and role bindings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from modelreg_server.domain import errors
from modelreg_server.storage.db import Connection


@dataclass(frozen=True)
class PrincipalRow:
    """A stored principal."""

    principal_id: str
    display_name: str
    kind: int
    disabled: bool
    creator: str
    create_time: datetime


@dataclass(frozen=True)
class TokenRow:
    """A stored token (its secret only as a hash)."""

    token_id: uuid.UUID
    principal_id: str
    secret_hash: bytes
    description: str
    creator: str
    create_time: datetime
    expire_time: datetime | None
    revoke_time: datetime | None


@dataclass(frozen=True)
class BindingRow:
    """A stored role binding."""

    binding_id: uuid.UUID
    principal_id: str
    role: int
    scope: str
    creator: str
    create_time: datetime


def _principal(r: asyncpg.Record) -> PrincipalRow:
    return PrincipalRow(
        r["principal_id"], r["display_name"], r["kind"], r["disabled"], r["creator"], r["create_time"]
    )


def _token(r: asyncpg.Record) -> TokenRow:
    return TokenRow(
        r["token_id"],
        r["principal_id"],
        bytes(r["secret_hash"]),
        r["description"],
        r["creator"],
        r["create_time"],
        r["expire_time"],
        r["revoke_time"],
    )


def _binding(r: asyncpg.Record) -> BindingRow:
    return BindingRow(
        r["binding_id"], r["principal_id"], r["role"], r["scope"], r["creator"], r["create_time"]
    )


async def insert_principal(
    conn: Connection, principal_id: str, display_name: str, kind: int, creator: str
) -> PrincipalRow:
    """Creates a principal; ALREADY_EXISTS when the id is taken."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO principals (principal_id, display_name, kind, creator) "
            "VALUES ($1, $2, $3, $4) RETURNING *",
            principal_id,
            display_name,
            kind,
            creator,
        )
    except asyncpg.UniqueViolationError as exc:
        name = f"principals/{principal_id}"
        raise errors.AlreadyExists(
            f"{name} already exists", "PRINCIPAL_ALREADY_EXISTS", {"principal": name}
        ) from exc
    assert row is not None
    return _principal(row)


async def get_principal(conn: Connection, principal_id: str) -> PrincipalRow | None:
    """A principal by id."""
    row = await conn.fetchrow("SELECT * FROM principals WHERE principal_id = $1", principal_id)
    return _principal(row) if row else None


async def list_principals(conn: Connection, after: str | None, limit: int) -> list[PrincipalRow]:
    """Principals by id, after `after`."""
    rows = await conn.fetch(
        "SELECT * FROM principals WHERE ($1::text IS NULL OR principal_id > $1) "
        "ORDER BY principal_id LIMIT $2",
        after,
        limit,
    )
    return [_principal(r) for r in rows]


async def insert_token(
    conn: Connection,
    token_id: uuid.UUID,
    principal_id: str,
    secret_hash: bytes,
    description: str,
    creator: str,
    expire_time: datetime | None,
) -> TokenRow:
    """Stores a new token's hash."""
    row = await conn.fetchrow(
        "INSERT INTO tokens (token_id, principal_id, secret_hash, description, creator, expire_time) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        token_id,
        principal_id,
        secret_hash,
        description,
        creator,
        expire_time,
    )
    assert row is not None
    return _token(row)


async def get_token(conn: Connection, token_id: uuid.UUID) -> TokenRow | None:
    """A token by id."""
    row = await conn.fetchrow("SELECT * FROM tokens WHERE token_id = $1", token_id)
    return _token(row) if row else None


async def list_tokens(conn: Connection, principal_id: str) -> list[TokenRow]:
    """A principal's tokens, newest first."""
    rows = await conn.fetch(
        "SELECT * FROM tokens WHERE principal_id = $1 ORDER BY create_time DESC", principal_id
    )
    return [_token(r) for r in rows]


async def revoke_token(conn: Connection, token_id: uuid.UUID) -> TokenRow | None:
    """Marks a token revoked (idempotent: the first revoke time stays)."""
    row = await conn.fetchrow(
        "UPDATE tokens SET revoke_time = COALESCE(revoke_time, clock_timestamp()) "
        "WHERE token_id = $1 RETURNING *",
        token_id,
    )
    return _token(row) if row else None


async def insert_binding(
    conn: Connection, principal_id: str, role: int, scope: str, creator: str
) -> BindingRow:
    """Grants a role; ALREADY_EXISTS for a duplicate grant."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO role_bindings (principal_id, role, scope, creator) "
            "VALUES ($1, $2, $3, $4) RETURNING *",
            principal_id,
            role,
            scope,
            creator,
        )
    except asyncpg.UniqueViolationError as exc:
        raise errors.AlreadyExists(
            f"principals/{principal_id} already has that role on scope {scope!r}",
            "ROLE_BINDING_ALREADY_EXISTS",
        ) from exc
    assert row is not None
    return _binding(row)


async def delete_binding(conn: Connection, binding_id: uuid.UUID) -> BindingRow | None:
    """Removes a binding; returns what was removed."""
    row = await conn.fetchrow("DELETE FROM role_bindings WHERE binding_id = $1 RETURNING *", binding_id)
    return _binding(row) if row else None


async def list_bindings(conn: Connection, principal_id: str | None) -> list[BindingRow]:
    """Bindings of one principal, or all."""
    rows = await conn.fetch(
        "SELECT * FROM role_bindings WHERE ($1::text IS NULL OR principal_id = $1) "
        "ORDER BY principal_id, role, scope",
        principal_id,
    )
    return [_binding(r) for r in rows]


async def model_scope_facts(conn: Connection, model_id: str) -> dict[str, str] | None:
    """A model's labels, for label-scoped bindings (None when the model does not exist)."""
    labels: dict[str, str] | None = await conn.fetchval(
        "SELECT labels FROM models WHERE model_id = $1", model_id
    )
    return labels
