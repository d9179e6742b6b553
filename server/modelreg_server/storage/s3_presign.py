"""AWS Signature Version 4 presigned URLs that also sign request headers.

minio's presigner signs the Host header only. A direct upload must bind more to the URL: the object's
SHA-256 (`x-amz-checksum-sha256`, which S3 checks against the bytes) and `If-None-Match: *` (S3 refuses to
replace an object). A client that drops or changes a signed header gets 403 SignatureDoesNotMatch.
The algorithm is the one of the AWS "Authenticating Requests: Using Query Parameters" reference.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRY = timedelta(days=7)


@dataclass(frozen=True)
class Credentials:
    """An access key pair and the region requests are signed for."""

    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _quote(text: str, *, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, day: str, region: str, service: str = "s3") -> bytes:
    """The day's derived key: HMAC chain over date, region, service and `aws4_request`."""
    return _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), service), "aws4_request")


def presign(
    method: str,
    base_url: str,
    bucket: str,
    key: str,
    credentials: Credentials,
    *,
    expires: timedelta,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> str:
    """A URL for `method` on `bucket/key` at `base_url` (`http(s)://host[:port]`, path-style), valid for
    `expires`, that only works when sent with exactly `headers` (their names are case-insensitive)."""
    if not timedelta(seconds=1) <= expires <= MAX_EXPIRY:
        raise ValueError(f"expiry must be between 1 second and 7 days, not {expires}")
    base = urllib.parse.urlsplit(base_url)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{credentials.region}/s3/aws4_request"
    signed = {
        "host": base.netloc,
        **{name.lower(): " ".join(value.split()) for name, value in (headers or {}).items()},
    }
    names = sorted(signed)
    parameters = {
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{credentials.access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(int(expires.total_seconds())),
        "X-Amz-SignedHeaders": ";".join(names),
        **(query or {}),
    }
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(parameters.items()))
    path = f"/{_quote(bucket)}/{_quote(key, safe='-_.~/')}"
    canonical_request = "\n".join(
        [
            method,
            path,
            canonical_query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            UNSIGNED_PAYLOAD,
        ]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    signature = hmac.new(
        signing_key(credentials.secret_key, day, credentials.region), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    return f"{base.scheme}://{base.netloc}{path}?{canonical_query}&X-Amz-Signature={signature}"
