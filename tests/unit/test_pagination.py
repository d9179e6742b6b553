"""Tests for signed page tokens and page size rules."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelreg_server.domain.pagination import (
    MAX_TOKEN_LENGTH,
    PageSizeError,
    PageTokenCodec,
    PageTokenError,
    resolve_page_size,
)

CODEC = PageTokenCodec(b"test-secret")
BINDING = 'parent=models/a|filter=labels.team = "nlp"|order_by=create_time desc'

_OFFSETS = st.integers(-(24 * 3600 - 1) * 10**6, (24 * 3600 - 1) * 10**6).map(
    lambda us: timezone(timedelta(microseconds=us))
)
_TIMEZONES = st.one_of(st.just(UTC), _OFFSETS, st.timezones())
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.datetimes(timezones=_TIMEZONES),
)


def raw_bytes(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def to_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def same(a: object, b: object) -> bool:
    """Equal in type and value; datetimes in wall time and offset, floats also in sign of zero.

    Datetimes are not compared with `==`: PEP 495 makes inter-zone comparisons of times in a DST fold
    or gap unequal even when they denote the same instant.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a.utcoffset() == b.utcoffset() and a.replace(tzinfo=None) == b.replace(tzinfo=None)
    return a == b


def test_round_trip_simple() -> None:
    when = datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=UTC)
    values: list[object] = [None, True, False, 0, -7, 2**64 + 1, 1.5, "a/b", "日本語", when, "00000000-id"]
    token = CODEC.encode(values, BINDING)
    decoded = CODEC.decode(token, BINDING)
    assert all(same(a, b) for a, b in zip(values, decoded, strict=True))
    assert "=" not in token
    assert "+" not in token and "/" not in token


def test_special_floats_round_trip() -> None:
    decoded = CODEC.decode(CODEC.encode([math.inf, -math.inf, math.nan, -0.0], BINDING), BINDING)
    assert decoded[:2] == [math.inf, -math.inf]
    assert isinstance(decoded[2], float) and math.isnan(decoded[2])
    assert same(decoded[3], -0.0)


def test_extreme_datetimes_round_trip() -> None:
    east = timezone(timedelta(hours=23, minutes=59))
    west = timezone(timedelta(hours=-23, minutes=-59))
    values: list[object] = [
        datetime.min.replace(tzinfo=east),
        datetime.max.replace(tzinfo=west),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=1, microseconds=7))),
    ]
    decoded = CODEC.decode(CODEC.encode(values, BINDING), BINDING)
    assert all(same(a, b) for a, b in zip(values, decoded, strict=True))


@settings(max_examples=300)
@given(st.lists(VALUES, max_size=6), st.text(max_size=50))
def test_round_trip_property(values: list[object], binding: str) -> None:
    token = CODEC.encode(values, binding)
    assert len(token) <= MAX_TOKEN_LENGTH
    decoded = CODEC.decode(token, binding)
    assert len(decoded) == len(values)
    assert all(same(a, b) for a, b in zip(values, decoded, strict=True))


@settings(max_examples=300)
@given(st.lists(VALUES, max_size=4), st.data())
def test_tampered_bytes_are_rejected(values: list[object], data: st.DataObject) -> None:
    raw = bytearray(raw_bytes(CODEC.encode(values, BINDING)))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(PageTokenError):
        CODEC.decode(to_token(bytes(raw)), BINDING)


@settings(max_examples=300)
@given(st.lists(VALUES, max_size=4), st.data())
def test_tampered_characters_are_rejected_or_harmless(values: list[object], data: st.DataObject) -> None:
    token = CODEC.encode(values, BINDING)
    index = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.characters())
    tampered = token[:index] + replacement + token[index + 1 :]
    try:
        decoded = CODEC.decode(tampered, BINDING)
    except PageTokenError:
        return
    # Only the unused low bits of the final base64 character may change without detection.
    assert raw_bytes(tampered) == raw_bytes(token)
    assert all(same(a, b) for a, b in zip(values, decoded, strict=True))


@given(st.text(max_size=3000))
def test_garbage_tokens_are_rejected(token: str) -> None:
    with pytest.raises(PageTokenError):
        CODEC.decode(token, BINDING)


def test_different_binding_is_rejected_with_clear_message() -> None:
    token = CODEC.encode([1, "x"], BINDING)
    with pytest.raises(PageTokenError) as info:
        CODEC.decode(token, BINDING + " ")
    assert "different request" in info.value.message


def test_other_secret_is_rejected() -> None:
    token = PageTokenCodec(b"other").encode([1], BINDING)
    with pytest.raises(PageTokenError) as info:
        CODEC.decode(token, BINDING)
    assert "invalid" in info.value.message


@pytest.mark.parametrize("token", ["", "!!!!", "a", "abc=", "a" * (MAX_TOKEN_LENGTH + 1), "éé", "AAAA"])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(PageTokenError):
        CODEC.decode(token, BINDING)


def test_encode_rejects_unsupported_values() -> None:
    with pytest.raises(ValueError):
        CODEC.encode([datetime(2024, 1, 1)], BINDING)
    with pytest.raises(TypeError):
        CODEC.encode([b"bytes"], BINDING)
    with pytest.raises(ValueError):
        CODEC.encode(["x" * MAX_TOKEN_LENGTH], BINDING)
    with pytest.raises(ValueError):
        PageTokenCodec(b"")


@pytest.mark.parametrize(
    ("size", "expected"), [(0, 50), (1, 1), (50, 50), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)]
)
def test_resolve_page_size(size: int, expected: int) -> None:
    assert resolve_page_size(size) == expected


def test_resolve_page_size_custom_and_negative() -> None:
    assert resolve_page_size(0, default=10, maximum=100) == 10
    assert resolve_page_size(500, default=10, maximum=100) == 100
    with pytest.raises(PageSizeError) as info:
        resolve_page_size(-1)
    assert "negative" in info.value.message
