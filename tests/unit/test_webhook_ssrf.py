"""The webhook SSRF guard, signatures and backoff, without a network."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from modelreg_server.domain.ssrf import SsrfGuard, Target, UrlRejected, parse_url
from modelreg_server.domain.webhook_sender import sign
from modelreg_server.domain.webhook_worker import backoff_delay

STRICT = SsrfGuard(allow_private=False)
LENIENT = SsrfGuard(allow_private=True)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "::ffff:127.0.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "10.0.0.1",
        "172.16.5.5",
        "192.168.1.1",
        "fd00::1",
        "fc00::1",
        "100.64.0.1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
    ],
)
def test_internal_addresses_are_refused_by_default(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.1", "192.168.1.1", "fe80::1", "fd00::1"])
def test_allow_private_admits_loopback_private_and_link_local(address: str) -> None:
    assert LENIENT.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "224.0.0.1", "::ffff:0.0.0.0"],
)
def test_metadata_multicast_and_unspecified_stay_refused_even_when_private_is_allowed(address: str) -> None:
    assert LENIENT.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http:///path",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\r\nX-Injected: 1",
        "https://" + "a" * 2100 + ".com/",
    ],
)
def test_malformed_or_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UrlRejected):
        parse_url(url)


def test_url_parts_and_host_header() -> None:
    assert parse_url("https://Hooks.Example.com/a/b?x=1#frag") == Target(
        "https", "hooks.example.com", 443, "/a/b?x=1"
    )
    assert parse_url("http://[::1]:8080").host_header == "[::1]:8080"
    assert parse_url("http://example.com:80/").host_header == "example.com"


def test_literal_addresses_are_vetted_without_dns() -> None:
    with pytest.raises(UrlRejected, match="loopback"):
        STRICT.resolve(parse_url("http://127.0.0.1:8080/"))
    assert LENIENT.resolve(parse_url("http://127.0.0.1:8080/")) == [ipaddress.ip_address("127.0.0.1")]


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"eventId":"h:1"}'
    expected = hmac.new(b"k" * 24, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k" * 24, 1700000000, body) == f"sha256={expected}"


def test_backoff_doubles_with_bounded_jitter_and_a_cap() -> None:
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)):
        delay = backoff_delay(attempt, 1.0, 3600.0)
        assert base <= delay <= base * 1.25
    assert 60.0 <= backoff_delay(40, 1.0, 60.0) <= 75.0
