"""Who is calling. Until authentication lands every caller is `anonymous`."""

from __future__ import annotations

from typing import Any

import grpc

ANONYMOUS = "anonymous"


def caller(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The principal on whose behalf the call runs."""
    return ANONYMOUS
