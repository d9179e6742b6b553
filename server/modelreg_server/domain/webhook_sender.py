"""One signed webhook POST, with the stdlib's http.client (blocking: call it in a thread).

Headers of every request:

- `Content-Type: application/json`
- `X-Modelreg-Event-Id: {webhook id}:{revision}`: the idempotency key; every attempt, redelivery and
  replay of an event to a webhook carries the same one, so receivers drop repeats by it.
- `X-Modelreg-Webhook: webhooks/{webhook id}`
- `X-Modelreg-Timestamp`: Unix seconds when the attempt was signed; receivers should refuse stale ones
  (e.g. older than 5 minutes) to stop replays of captured requests.
- `X-Modelreg-Signature: sha256={hex}`: HMAC-SHA256 with the webhook's secret over
  `{timestamp}.{body}` (the timestamp's ASCII digits, a dot, the raw body bytes).
- `X-Modelreg-Attempt`: 1 for the first attempt, counting up with retries.

The connection goes to an address the SSRF guard vetted just before, never to a fresh DNS answer; HTTPS
still verifies the certificate against the URL's host name. Redirects are not followed: a 3xx is a failure.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import socket
import ssl
import time
from dataclasses import dataclass

from modelreg_server.domain.ssrf import IPAddress, SsrfGuard, Target, UrlRejected, parse_url

USER_AGENT = "modelreg-webhooks/1"
MAX_ERROR_LENGTH = 500


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Modelreg-Signature value."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: an HTTP status (0 when none) and an error text ("" on success)."""

    status_code: int
    error: str

    @property
    def ok(self) -> bool:
        """Whether the receiver accepted the event (2xx)."""
        return 200 <= self.status_code < 300


class _PinnedHTTP(http.client.HTTPConnection):
    """Plain HTTP to a fixed address; Host names the URL's host."""

    def __init__(self, target: Target, address: IPAddress, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = str(address)

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to a fixed address, verifying the certificate for the URL's host (SNI included)."""

    def __init__(self, target: Target, address: IPAddress, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = str(address)
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


class WebhookSender:
    """Vets, signs and sends."""

    def __init__(self, guard: SsrfGuard, *, timeout: float = 10.0) -> None:
        self._guard = guard
        self._timeout = timeout
        self._tls = ssl.create_default_context()

    def post(self, url: str, secret: str, event_id: str, webhook: str, body: bytes, attempt: int) -> Outcome:
        """Sends one attempt; never raises for network or HTTP failures."""
        try:
            target = parse_url(url)
            addresses = self._guard.resolve(target)
        except UrlRejected as exc:
            return Outcome(0, f"blocked: {exc}"[:MAX_ERROR_LENGTH])
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Modelreg-Event-Id": event_id,
            "X-Modelreg-Webhook": webhook,
            "X-Modelreg-Timestamp": str(timestamp),
            "X-Modelreg-Signature": sign(secret, timestamp, body),
            "X-Modelreg-Attempt": str(attempt),
        }
        try:
            conn = self._connect(target, addresses)
        except OSError as exc:
            return Outcome(0, f"connect failed: {exc}"[:MAX_ERROR_LENGTH])
        try:
            conn.request("POST", target.path, body=body, headers=headers)
            response = conn.getresponse()
            status = response.status
            response.read(64 * 1024)  # drained so the receiver sees a clean close; content is not kept
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(0, f"request failed: {type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH])
        finally:
            conn.close()
        if 200 <= status < 300:
            return Outcome(status, "")
        return Outcome(status, f"receiver answered HTTP {status}")

    def _connect(self, target: Target, addresses: list[IPAddress]) -> http.client.HTTPConnection:
        """Connects to the first vetted address that accepts; raises the last OSError otherwise."""
        last: OSError | None = None
        for address in addresses:
            conn: http.client.HTTPConnection = (
                _PinnedHTTPS(target, address, self._timeout, self._tls)
                if target.scheme == "https"
                else _PinnedHTTP(target, address, self._timeout)
            )
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                last = exc
                continue
            return conn
        assert last is not None
        raise last
