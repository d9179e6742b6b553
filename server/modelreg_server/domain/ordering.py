"""A parser for AIP-132 `order_by`: `field [asc|desc], field [asc|desc], ...`."""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from modelreg_server.domain.filtering import FilterError, read_path

MAX_ORDER_BY_LENGTH = 1024
MAX_ORDER_KEYS = 8

_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_")


class OrderByError(Exception):
    """An `order_by` string that is malformed or names a field that cannot be sorted on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class OrderKey:
    """One sort key: a dotted field path and its direction."""

    path: tuple[str, ...]
    descending: bool


def parse_order_by(text: str, allowed: Callable[[tuple[str, ...]], bool]) -> tuple[OrderKey, ...]:
    """Parses `text` into sort keys; empty text gives no keys.

    `allowed` says whether a path may be sorted on. Raises OrderByError on syntax errors, unknown
    or repeated fields, and empty items.
    """
    if len(text) > MAX_ORDER_BY_LENGTH:
        raise OrderByError(f"order_by is too long ({len(text)} characters, maximum {MAX_ORDER_BY_LENGTH})")
    if not text.strip():
        return ()
    keys: list[OrderKey] = []
    pos = 0
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text) or text[pos] == ",":
            raise OrderByError(f"empty item in order_by at position {pos}")
        key, pos = _read_key(text, pos, allowed)
        if any(existing.path == key.path for existing in keys):
            raise OrderByError(f"order_by field {_dotted(key.path)!r} appears more than once")
        keys.append(key)
        if len(keys) > MAX_ORDER_KEYS:
            raise OrderByError(f"order_by has more than {MAX_ORDER_KEYS} fields")
        if pos >= len(text):
            return tuple(keys)
        pos += 1  # _read_key stops only at the end or at a comma


def _read_key(text: str, start: int, allowed: Callable[[tuple[str, ...]], bool]) -> tuple[OrderKey, int]:
    try:
        path, pos = read_path(text, start)
    except FilterError as exc:
        raise OrderByError(f"invalid order_by: {exc.message}") from None
    if not allowed(path):
        raise OrderByError(f"cannot order by {text[start:pos]!r}: unknown or unsortable field")
    after_path = pos
    pos = _skip_space(text, pos)
    descending = False
    word_end = _scan_word(text, pos)
    direction = text[pos:word_end].lower()
    if direction in ("asc", "desc") and pos > after_path:
        descending = direction == "desc"
        pos = _skip_space(text, word_end)
    if pos < len(text) and text[pos] != ",":
        shown = text[pos : max(_scan_word(text, pos), pos + 1)]
        raise OrderByError(
            f"unexpected {shown!r} at position {pos} in order_by; expected 'asc', 'desc' or ','"
        )
    return OrderKey(path, descending), pos


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _scan_word(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WORD_CHARS:
        pos += 1
    return pos


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)
