"""A parser for the subset of AIP-160 filters the registry supports.

Grammar (AIP-160 precedence: OR binds tighter than AND; adjacent terms are ANDed)::

    expression := sequence ("AND" sequence)*
    sequence   := factor factor*
    factor     := term ("OR" term)*
    term       := ("NOT" | "-") term | "(" expression ")" | comparison
    comparison := path op value
    path       := IDENT ("." (KEY | quoted))*
    op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
    value      := quoted | number | "*" | word

Only `FilterError` ever escapes `parse_filter`, and recursion is bounded by the nesting limit.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal, TypeAlias

MAX_FILTER_LENGTH = 4096
MAX_COMPARISONS = 64
MAX_DEPTH = 16

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", ":")
KEYWORDS = frozenset({"AND", "OR", "NOT"})

_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT_CHARS = _IDENT_START | frozenset(string.digits)
_KEY_CHARS = _IDENT_CHARS | {"-"}
_OPERATOR_CHARS = frozenset("=<>!:")
_VALUE_STOP = _OPERATOR_CHARS | frozenset("()\"'")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "`": "`", "n": "\n", "r": "\r", "t": "\t"}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class FilterError(Exception):
    """A filter that cannot be parsed or compiled; `position` is a 0-based character offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Value:
    """A literal on the right-hand side of a comparison; `text` is unescaped for strings."""

    kind: Literal["string", "number", "word", "star"]
    text: str
    position: int


@dataclass(frozen=True)
class Comparison:
    """`path op value`, e.g. `labels.team = "nlp"`; `position` is where the path starts."""

    path: tuple[str, ...]
    op: str
    value: Value
    position: int


@dataclass(frozen=True)
class And:
    """Conjunction of two or more nodes."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Disjunction of two or more nodes."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """Negation of a node."""

    item: Node


Node: TypeAlias = Comparison | And | Or | Not


def parse_filter(text: str) -> Node | None:
    """Parses an AIP-160 filter; returns None when `text` is empty or only whitespace."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(
            f"filter is too long ({len(text)} characters, maximum {MAX_FILTER_LENGTH})", MAX_FILTER_LENGTH
        )
    parser = _Parser(text)
    parser.skip_space()
    if parser.at_end():
        return None
    node = parser.expression(0)
    parser.skip_space()
    if not parser.at_end():
        raise parser.unexpected()
    return node


def read_path(text: str, start: int) -> tuple[tuple[str, ...], int]:
    """Reads a dotted field path at `start`; returns its segments and the offset just past it.

    The first segment is an identifier; later segments may also contain `-` or be quoted with
    backquotes or double quotes (to include dots or other characters).
    """
    end = _scan(text, start, _IDENT_CHARS)
    if end == start or text[start] not in _IDENT_START:
        raise _unexpected_at(text, start)
    segments = [text[start:end]]
    pos = end
    while pos < len(text) and text[pos] == ".":
        seg_start = pos + 1
        if seg_start < len(text) and text[seg_start] in '`"':
            segment, pos = read_quoted(text, seg_start)
            if not segment:
                raise FilterError(f"empty field name at position {seg_start}", seg_start)
        else:
            pos = _scan(text, seg_start, _KEY_CHARS)
            if pos == seg_start:
                raise FilterError(f"expected a field name after '.' at position {seg_start}", seg_start)
            segment = text[seg_start:pos]
        segments.append(segment)
    return tuple(segments), pos


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Reads a string quoted by the character at `start`, handling backslash escapes.

    Returns the unescaped content and the offset just past the closing quote.
    """
    quote = text[start]
    chunks: list[str] = []
    pos = start + 1
    while pos < len(text):
        ch = text[pos]
        if ch == quote:
            return "".join(chunks), pos + 1
        if ch == "\\":
            if pos + 1 >= len(text):
                break
            escaped = _ESCAPES.get(text[pos + 1])
            if escaped is None:
                raise FilterError(f"invalid escape sequence {text[pos : pos + 2]!r} at position {pos}", pos)
            chunks.append(escaped)
            pos += 2
            continue
        chunks.append(ch)
        pos += 1
    raise FilterError(f"unterminated string at position {start}", start)


def _scan(text: str, pos: int, allowed: frozenset[str]) -> int:
    while pos < len(text) and text[pos] in allowed:
        pos += 1
    return pos


def _unexpected_at(text: str, pos: int) -> FilterError:
    if pos >= len(text):
        return FilterError(f"unexpected end of filter at position {pos}", pos)
    word_end = _scan(text, pos, _IDENT_CHARS)
    shown = text[pos:word_end] if text[pos:word_end] in KEYWORDS else text[pos]
    return FilterError(f"unexpected {shown!r} at position {pos}", pos)


def _missing_value(op: str, position: int) -> FilterError:
    return FilterError(f"expected a value after {op!r} at position {position}", position)


class _Parser:
    """Recursive descent over the raw text; depth is capped at MAX_DEPTH so recursion stays shallow."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.comparisons = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def unexpected(self) -> FilterError:
        return _unexpected_at(self.text, self.pos)

    def peek_word(self) -> str:
        return self.text[self.pos : _scan(self.text, self.pos, _IDENT_CHARS)]

    def expression(self, depth: int) -> Node:
        items = self.sequence(depth)
        while True:
            self.skip_space()
            if self.peek_word() != "AND":
                break
            self.pos += 3
            items.extend(self.sequence(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def sequence(self, depth: int) -> list[Node]:
        factors = [self.factor(depth)]
        while True:
            self.skip_space()
            if self.at_end() or self.text[self.pos] == ")" or self.peek_word() in ("AND", "OR"):
                return factors
            factors.append(self.factor(depth))

    def factor(self, depth: int) -> Node:
        terms = [self.term(depth)]
        while True:
            self.skip_space()
            if self.peek_word() != "OR":
                break
            self.pos += 2
            terms.append(self.term(depth))
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def term(self, depth: int) -> Node:
        self.skip_space()
        start = self.pos
        if self.at_end():
            raise self.unexpected()
        if self.text[start] == "-" or self.peek_word() == "NOT":
            self.pos += 1 if self.text[start] == "-" else 3
            return Not(self.term(self.enter(depth, start)))
        if self.text[start] == "(":
            self.pos += 1
            inner = self.expression(self.enter(depth, start))
            self.skip_space()
            if self.at_end():
                raise FilterError(f"unclosed '(' at position {start}", start)
            if self.text[self.pos] != ")":
                raise self.unexpected()
            self.pos += 1
            return inner
        return self.comparison()

    def enter(self, depth: int, position: int) -> int:
        if depth >= MAX_DEPTH:
            raise FilterError(
                f"filter is nested too deeply at position {position} (maximum depth {MAX_DEPTH})", position
            )
        return depth + 1

    def comparison(self) -> Comparison:
        start = self.pos
        if self.peek_word() in KEYWORDS:
            raise self.unexpected()
        path, self.pos = read_path(self.text, start)
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise FilterError(f"too many comparisons at position {start} (maximum {MAX_COMPARISONS})", start)
        shown_path = self.text[start : self.pos]
        self.skip_space()
        op = next((op for op in OPERATORS if self.text.startswith(op, self.pos)), None)
        if op is None:
            raise FilterError(
                f"expected a comparison operator (=, !=, <, <=, >, >=, :) after {shown_path!r} "
                f"at position {self.pos}",
                self.pos,
            )
        self.pos += len(op)
        self.skip_space()
        return Comparison(path, op, self.value(op), start)

    def value(self, op: str) -> Value:
        start = self.pos
        if self.at_end() or self.text[start] in _OPERATOR_CHARS or self.text[start] in "()":
            raise _missing_value(op, start)
        if self.text[start] in "\"'":
            content, self.pos = read_quoted(self.text, start)
            return Value("string", content, start)
        end = start
        while end < len(self.text) and not self.text[end].isspace() and self.text[end] not in _VALUE_STOP:
            end += 1
        word = self.text[start:end]
        if word in KEYWORDS:
            raise _missing_value(op, start)
        self.pos = end
        if word == "*":
            return Value("star", word, start)
        if _NUMBER.fullmatch(word):
            return Value("number", word, start)
        return Value("word", word, start)
