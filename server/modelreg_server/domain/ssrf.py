"""The SSRF guard for outbound webhook requests.

A webhook URL is chosen by a user but requested by the server, from inside the network: without a guard it
reaches loopback services, the cloud metadata endpoint or private hosts. The guard

- accepts only `http` and `https` URLs with a host and without credentials;
- resolves the host and refuses it if ANY address is loopback, link-local, private (RFC 1918, RFC 4193),
  shared (RFC 6598), multicast, unspecified, reserved or otherwise not globally routable. IPv4-mapped IPv6
  addresses are judged by their IPv4 address;
- with `allow_private` (MODELREG_WEBHOOK_ALLOW_PRIVATE, for on-premises receivers and tests) accepts
  loopback, private and link-local addresses too, but never multicast, unspecified or the cloud metadata
  endpoints.

It runs when a subscription is created or its URL changes, and again before every delivery, whose
connection then goes to the vetted address itself (see webhook_sender), so a DNS answer that changes
between check and use (DNS rebinding) cannot redirect a request. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048

# Instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba): refused even when private
# targets are allowed, since they hand out cloud credentials.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)


class UrlRejected(Exception):
    """A webhook URL the guard refuses; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Target:
    """A syntactically acceptable webhook URL, split for connecting."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        """The Host header: the host, bracketed if IPv6, with the port if not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    """Checks a URL's form (no DNS); raises UrlRejected."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRejected(f"longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UrlRejected("must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRejected(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRejected("only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise UrlRejected("must not contain credentials; authenticate with the signature instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRejected("must name a host")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


class SsrfGuard:
    """Vets webhook targets under one policy."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def refusal(self, address: IPAddress) -> str | None:
        """Why an address may not be a webhook target, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_unspecified:
            return "is unspecified"
        if address.is_multicast:
            return "is multicast"
        if address in _METADATA:
            return "is a cloud metadata endpoint"
        if address.is_global or self.allow_private:
            return None
        if address.is_loopback:
            return "is loopback"
        if address.is_link_local:
            return "is link-local"
        if address.is_private:
            return "is private"
        return "is not globally routable"

    def resolve(self, target: Target) -> list[IPAddress]:
        """The target's addresses, all vetted (blocking: DNS); raises UrlRejected."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(target.host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise UrlRejected(f"cannot resolve host {target.host!r}: {exc}") from None
            addresses = []
            for info in infos:
                # Drop an IPv6 zone ("fe80::1%eth0"); link-local is judged without it.
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if address not in addresses:
                    addresses.append(address)
        if not addresses:
            raise UrlRejected(f"host {target.host!r} has no addresses")
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise UrlRejected(f"host {target.host!r} resolves to {address}, which {reason}")
        return addresses

    async def vet(self, url: str) -> Target:
        """Checks form and addresses of a URL without blocking the event loop; raises UrlRejected."""
        target = parse_url(url)
        await asyncio.to_thread(self.resolve, target)
        return target
