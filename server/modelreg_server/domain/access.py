"""Authentication (bearer tokens, client certificates) and authorization (roles on scopes).

Tokens look like `mr_<token id hex>_<secret>`: the id finds the row, the secret (256 random bits) is
checked against its stored sha256. Verified tokens are cached for a few seconds; a revocation on this
replica takes effect at once, on other replicas within the cache TTL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from modelreg_server.domain import audit, errors
from modelreg_server.domain.audit import AuditLog
from modelreg_server.domain.permissions import GLOBAL_ONLY, ROLE_PERMISSIONS, Permission, Role
from modelreg_server.domain.records import Caller
from modelreg_server.storage import access_repo
from modelreg_server.storage.access_repo import BindingRow, PrincipalRow, TokenRow
from modelreg_server.storage.db import Connection, Database

TOKEN_PREFIX = "mr_"
SERVICE_ACCOUNT = 2
# What the implied global viewer binding grants, checked before walking the caller's bindings.
_IMPLIED = ROLE_PERMISSIONS[Role.VIEWER]


@dataclass(frozen=True)
class Identity:
    """An authenticated principal and its bindings."""

    principal_id: str
    roles: tuple[tuple[int, str], ...]


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _unauthenticated(message: str) -> errors.Unauthenticated:
    return errors.Unauthenticated(message, "UNAUTHENTICATED")


# Label keys and values as models carry them (and as role_bindings' CHECK constraint accepts them).
_LABEL_SCOPE_RE = re.compile(r"labels\.[A-Za-z][A-Za-z0-9_.-]{0,62}=.{0,256}", re.DOTALL)


def parse_scope(scope: str) -> str:
    """Validates a binding scope: '', `models/{m}` or `labels.{key}={value}`."""
    from modelreg_server.domain.names import MODEL_ID_RE

    if scope == "" or (scope.startswith("models/") and MODEL_ID_RE.fullmatch(scope[7:])):
        return scope
    if _LABEL_SCOPE_RE.fullmatch(scope):
        return scope
    raise errors.invalid("role_binding.scope", "use '' (global), 'models/{model}' or 'labels.{key}={value}'")


class AccessControl:
    """Principals, tokens, bindings; authenticate and authorize calls."""

    def __init__(self, db: Database, audit_log: AuditLog, *, cache_ttl: float = 5.0) -> None:
        self._db = db
        self.audit = audit_log
        self._ttl = cache_ttl
        self._cache: dict[bytes, tuple[float, Identity]] = {}

    # --- authentication ----------------------------------------------------------------------------

    async def authenticate_token(self, token: str) -> Identity:
        """The identity a bearer token stands for; UNAUTHENTICATED when invalid, expired or revoked."""
        key = _hash(token)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        token_id, secret = self._split(token)
        async with self._db.connection() as conn:
            row = await access_repo.get_token(conn, token_id)
            if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
                raise _unauthenticated("invalid token")
            if row.revoke_time is not None:
                raise _unauthenticated("token revoked")
            if row.expire_time is not None and row.expire_time <= datetime.now(UTC):
                raise _unauthenticated("token expired")
            identity = await self._identity(conn, row.principal_id)
        if row.expire_time is None or (row.expire_time - datetime.now(UTC)).total_seconds() > self._ttl:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (now + self._ttl, identity)
        return identity

    async def authenticate_principal(self, principal_id: str) -> Identity:
        """The identity of a principal named by a verified client certificate."""
        async with self._db.connection() as conn:
            return await self._identity(conn, principal_id)

    @staticmethod
    def _split(token: str) -> tuple[uuid.UUID, str]:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise _unauthenticated("malformed token")
        token_hex, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
        try:
            return uuid.UUID(hex=token_hex), secret
        except ValueError:
            raise _unauthenticated("malformed token") from None

    async def _identity(self, conn: Connection, principal_id: str) -> Identity:
        principal = await access_repo.get_principal(conn, principal_id)
        if principal is None or principal.disabled:
            raise _unauthenticated(f"principal {principal_id!r} is unknown or disabled")
        bindings = await access_repo.list_bindings(conn, principal_id)
        return Identity(principal_id, tuple((b.role, b.scope) for b in bindings))

    def forget_cached(self) -> None:
        """Drops cached identities (after revocations and binding changes on this replica)."""
        self._cache.clear()

    # --- authorization -----------------------------------------------------------------------------

    async def allowed(
        self,
        caller: Caller,
        permission: Permission,
        model_id: str | None = None,
        labels: dict[str, str] | None = None,
        *,
        any_scope: bool = False,
    ) -> bool:
        """Whether a binding of the caller grants `permission` (on `model_id`, if given). With `any_scope`
        a binding on any scope will do (blobs belong to no model until a version references them)."""
        if permission in _IMPLIED:
            return True  # every authenticated caller holds the viewer role globally (read, resolve, watch)
        label_scopes: list[str] = []
        for role, scope in ((int(Role.VIEWER), ""), *caller.roles):
            if permission not in ROLE_PERMISSIONS[Role(role)]:
                continue
            if scope == "" or any_scope:
                return True
            if permission in GLOBAL_ONLY or model_id is None:
                continue
            if scope == f"models/{model_id}":
                return True
            if scope.startswith("labels."):
                label_scopes.append(scope[len("labels.") :])
        if not label_scopes or model_id is None:
            return False
        if labels is None:
            async with self._db.connection() as conn:
                labels = await access_repo.model_scope_facts(conn, model_id) or {}
        return any(labels.get(k) == v for k, _, v in (s.partition("=") for s in label_scopes))

    async def require(
        self,
        caller: Caller,
        permission: Permission,
        resource: str,
        *,
        model_id: str | None = None,
        labels: dict[str, str] | None = None,
        any_scope: bool = False,
    ) -> None:
        """PERMISSION_DENIED naming the missing permission (and an audit event) unless allowed."""
        if await self.allowed(caller, permission, model_id, labels, any_scope=any_scope):
            return
        await self.audit.record_denied(caller, resource, permission.value)
        raise errors.PermissionDenied(
            f"{caller.principal} lacks permission {permission.value} on {resource or 'the registry'}",
            "PERMISSION_DENIED",
            {
                "permission": permission.value,
                "resource": resource,
                "principal": f"principals/{caller.principal}",
            },
        )

    async def test_permissions(
        self, caller: Caller, model_id: str | None, permissions: Iterable[Permission]
    ) -> list[Permission]:
        """The subset of `permissions` the caller holds."""
        return [p for p in permissions if await self.allowed(caller, p, model_id)]

    # --- administration ----------------------------------------------------------------------------

    async def create_principal(
        self, caller: Caller, principal_id: str, display_name: str, kind: int
    ) -> PrincipalRow:
        """Creates a principal (audited)."""

        async def work(conn: Connection) -> PrincipalRow:
            row = await access_repo.insert_principal(conn, principal_id, display_name, kind, caller.principal)
            await audit.record(conn, caller, f"principals/{principal_id}", after={"kind": kind})
            return row

        return await self._db.transact(work)

    async def get_principal(self, principal_id: str) -> PrincipalRow:
        """A principal or NOT_FOUND."""
        async with self._db.connection() as conn:
            row = await access_repo.get_principal(conn, principal_id)
        if row is None:
            name = f"principals/{principal_id}"
            raise errors.NotFound(f"{name} not found", "PRINCIPAL_NOT_FOUND", {"principal": name})
        return row

    async def list_principals(self, after: str | None, limit: int) -> list[PrincipalRow]:
        """Principals by id."""
        async with self._db.connection() as conn:
            return await access_repo.list_principals(conn, after, limit)

    async def create_token(
        self, caller: Caller, principal_id: str, description: str, expire_time: datetime | None
    ) -> tuple[TokenRow, str]:
        """A new token and its secret, which is not stored and cannot be shown again."""
        if expire_time is not None and expire_time <= datetime.now(UTC):
            raise errors.invalid("token.expire_time", "must be in the future")
        token_id = uuid.uuid4()
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        bearer = f"{TOKEN_PREFIX}{token_id.hex}_{secret}"

        async def work(conn: Connection) -> TokenRow:
            await self.get_principal(principal_id)
            row = await access_repo.insert_token(
                conn, token_id, principal_id, _hash(secret), description, caller.principal, expire_time
            )
            await audit.record(
                conn,
                caller,
                _token_name(row),
                after={"expire_time": expire_time.isoformat() if expire_time else None},
            )
            return row

        return await self._db.transact(work), bearer

    async def list_tokens(self, principal_id: str) -> list[TokenRow]:
        """A principal's tokens, without secrets."""
        await self.get_principal(principal_id)
        async with self._db.connection() as conn:
            return await access_repo.list_tokens(conn, principal_id)

    async def revoke_token(self, caller: Caller, principal_id: str, token_id: uuid.UUID) -> TokenRow:
        """Revokes a token; effective at once on this replica."""

        async def work(conn: Connection) -> TokenRow:
            row = await access_repo.revoke_token(conn, token_id)
            if row is None or row.principal_id != principal_id:
                name = f"principals/{principal_id}/tokens/{token_id.hex}"
                raise errors.NotFound(f"{name} not found", "TOKEN_NOT_FOUND", {"token": name})
            await audit.record(conn, caller, _token_name(row), after={"revoked": True})
            return row

        row = await self._db.transact(work)
        self.forget_cached()
        return row

    async def create_binding(self, caller: Caller, principal_id: str, role: Role, scope: str) -> BindingRow:
        """Grants a role (audited)."""

        async def work(conn: Connection) -> BindingRow:
            await self.get_principal(principal_id)
            row = await access_repo.insert_binding(
                conn, principal_id, int(role), parse_scope(scope), caller.principal
            )
            await audit.record(
                conn,
                caller,
                f"roleBindings/{row.binding_id}",
                after={"principal": principal_id, "role": role.name, "scope": scope},
            )
            return row

        row = await self._db.transact(work)
        self.forget_cached()
        return row

    async def delete_binding(self, caller: Caller, binding_id: uuid.UUID) -> None:
        """Removes a role binding (audited)."""

        async def work(conn: Connection) -> None:
            row = await access_repo.delete_binding(conn, binding_id)
            if row is None:
                name = f"roleBindings/{binding_id}"
                raise errors.NotFound(f"{name} not found", "ROLE_BINDING_NOT_FOUND", {"role_binding": name})
            await audit.record(
                conn,
                caller,
                f"roleBindings/{binding_id}",
                before={"principal": row.principal_id, "role": Role(row.role).name, "scope": row.scope},
            )

        await self._db.transact(work)
        self.forget_cached()

    async def list_bindings(self, principal_id: str | None) -> list[BindingRow]:
        """Bindings of one principal or all."""
        async with self._db.connection() as conn:
            return await access_repo.list_bindings(conn, principal_id)

    async def bootstrap_admin(self, principal_id: str, roles: Sequence[Role] = (Role.ADMIN,)) -> str:
        """Ensures an admin principal exists and returns a fresh token for it (the first-run command)."""
        system = Caller("system", action="BootstrapAdmin")
        async with self._db.connection() as conn:
            exists = await access_repo.get_principal(conn, principal_id) is not None
            held = {(b.role, b.scope) for b in await access_repo.list_bindings(conn, principal_id)}
        if not exists:
            await self.create_principal(system, principal_id, "bootstrap administrator", SERVICE_ACCOUNT)
        for role in roles:
            if (int(role), "") not in held:
                await self.create_binding(system, principal_id, role, "")
        _, bearer = await self.create_token(system, principal_id, "bootstrap-admin", None)
        return bearer


def _token_name(row: TokenRow) -> str:
    return f"principals/{row.principal_id}/tokens/{row.token_id.hex}"
