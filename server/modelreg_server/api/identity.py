"""Who is calling: authenticates every call and keeps the caller for the handler, keyed by the call's
context object (a context variable would not do: grpc.aio may step a streaming handler from other tasks)."""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.records import Caller

REQUEST_ID_HEADER = "x-request-id"
_CALLERS: dict[int, Caller] = {}


class Guarded(Protocol):
    """A servicer whose calls are authenticated."""

    access: AccessControl


async def authenticate(
    access: AccessControl, context: grpc.aio.ServicerContext[Any, Any], action: str
) -> Caller:
    """Checks the bearer token (or the client certificate) and records the caller for this call."""
    token = ""
    request_id = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer":
                token = credential.strip()
        elif key == REQUEST_ID_HEADER and isinstance(value, str):
            request_id = value[:128]
    if token:
        identity = await access.authenticate_token(token)
    else:
        common_names = list((context.auth_context() or {}).get("x509_common_name") or [])
        if not common_names:
            raise errors.Unauthenticated(
                "missing credentials: send 'authorization: Bearer <token>' metadata", "UNAUTHENTICATED"
            )
        identity = await access.authenticate_principal(common_names[0].decode())
    current = Caller(identity.principal_id, request_id, context.peer() or "", action, identity.roles)
    _CALLERS[id(context)] = current
    return current


def forget(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Drops the caller of a finished call."""
    _CALLERS.pop(id(context), None)


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The authenticated caller of the current call."""
    return _CALLERS[id(context)]
