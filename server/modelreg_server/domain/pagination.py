"""AIP-158 pagination: signed, opaque page tokens and page size rules.

A token is urlsafe base64 (unpadded) of::

    version (1 byte) | binding fingerprint (4 bytes) | JSON payload | HMAC-SHA256 tag (16 bytes)

The tag covers the full SHA-256 of the binding (the request's parent, filter and order_by as built
by the caller), so a token only decodes for the request that produced it. The fingerprint exists only
to tell "different request" apart from "corrupted token" in error messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

MAX_TOKEN_LENGTH = 2048

_VERSION = 1
_FINGERPRINT_SIZE = 4
_TAG_SIZE = 16
_HEADER_SIZE = 1 + _FINGERPRINT_SIZE
_DOMAIN = b"modelreg/page-token\x00"
_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_INVALID = "page_token is invalid or corrupted"


class PageTokenError(Exception):
    """A page token that cannot be accepted: malformed, tampered with, or from another request."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PageSizeError(Exception):
    """A page size that is not allowed (negative)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PageTokenCodec:
    """Encodes keyset positions into page tokens signed with `secret` and decodes them back."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("page token secret must not be empty")
        self._secret = secret

    def encode(self, values: Sequence[object], binding: str) -> str:
        """Returns a token for `values` (None, bool, int, float, str or aware datetime) bound to `binding`.

        Raises TypeError for unsupported values and ValueError for naive datetimes or when the token
        would exceed MAX_TOKEN_LENGTH.
        """
        payload = json.dumps(
            [_encode_value(value) for value in values], separators=(",", ":"), ensure_ascii=False
        )
        digest = _binding_digest(binding)
        body = bytes([_VERSION]) + digest[:_FINGERPRINT_SIZE] + payload.encode("utf-8", "surrogatepass")
        raw = body + self._tag(digest, body)
        token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError(f"page token would be {len(token)} characters, maximum {MAX_TOKEN_LENGTH}")
        return token

    def decode(self, token: str, binding: str) -> list[object]:
        """Returns the values `token` was encoded with; raises PageTokenError if it is not valid here."""
        if not token:
            raise PageTokenError("page_token is empty")
        if len(token) > MAX_TOKEN_LENGTH:
            raise PageTokenError(f"page_token is too long (maximum {MAX_TOKEN_LENGTH} characters)")
        raw = _decode_base64(token)
        if len(raw) < _HEADER_SIZE + _TAG_SIZE or raw[0] != _VERSION:
            raise PageTokenError(_INVALID)
        body, tag = raw[:-_TAG_SIZE], raw[-_TAG_SIZE:]
        digest = _binding_digest(binding)
        if body[1:_HEADER_SIZE] != digest[:_FINGERPRINT_SIZE]:
            raise PageTokenError(
                "page_token was issued for a different request; parent, filter and order_by "
                "must stay the same between pages"
            )
        if not hmac.compare_digest(tag, self._tag(digest, body)):
            raise PageTokenError(_INVALID)
        try:
            items = json.loads(body[_HEADER_SIZE:].decode("utf-8", "surrogatepass"))
            if not isinstance(items, list):
                raise TypeError("payload is not a list")
            return [_decode_value(item) for item in items]
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise PageTokenError(_INVALID) from None

    def _tag(self, binding_digest: bytes, body: bytes) -> bytes:
        mac = hmac.new(self._secret, _DOMAIN + binding_digest + body, hashlib.sha256)
        return mac.digest()[:_TAG_SIZE]


def resolve_page_size(page_size: int, default: int = 50, maximum: int = 1000) -> int:
    """Applies AIP-158 page size rules: 0 means `default`, values above `maximum` are coerced down."""
    if page_size < 0:
        raise PageSizeError(f"page_size must not be negative, got {page_size}")
    if page_size == 0:
        return min(default, maximum)
    return min(page_size, maximum)


def _binding_digest(binding: str) -> bytes:
    return hashlib.sha256(binding.encode("utf-8", "surrogatepass")).digest()


def _decode_base64(token: str) -> bytes:
    if not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise PageTokenError(_INVALID)
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise PageTokenError(_INVALID) from None


def _encode_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if offset is None:
            raise ValueError("datetime values in page tokens must be timezone-aware")
        # Wall time plus offset (not UTC) so instants near datetime.min/max still round-trip.
        local = (value.replace(tzinfo=None) - _EPOCH) // _MICROSECOND
        return {"t": [local, offset // _MICROSECOND]}
    raise TypeError(f"cannot store {type(value).__name__} in a page token")


def _decode_value(item: object) -> object:
    if item is None or isinstance(item, bool | int | float | str):
        return item
    if isinstance(item, dict) and set(item) == {"t"}:
        local, offset = item["t"]
        if not isinstance(local, int) or not isinstance(offset, int):
            raise TypeError("malformed datetime")
        tz = timezone(timedelta(microseconds=offset))
        return (_EPOCH + timedelta(microseconds=local)).replace(tzinfo=tz)
    raise TypeError("unsupported value in page token")
