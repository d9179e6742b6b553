"""Who is calling. Until authentication lands every caller is `anonymous`."""

from __future__ import annotations

from typing import Any

import grpc

from modelreg_server.domain.records import Caller

ANONYMOUS = "anonymous"
REQUEST_ID_HEADER = "x-request-id"


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The principal on whose behalf the call runs, with the request id and peer for the record."""
    request_id = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            request_id = value[:128]
    return Caller(ANONYMOUS, request_id, context.peer() or "")
