"""Tests for the AIP-160 filter parser and the AIP-132 order_by parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelreg_server.domain.filtering import (
    MAX_COMPARISONS,
    MAX_DEPTH,
    And,
    Comparison,
    FilterError,
    Node,
    Not,
    Or,
    Value,
    parse_filter,
)
from modelreg_server.domain.ordering import OrderByError, OrderKey, parse_order_by


def cmp(path: str, op: str, kind: str, text: str) -> tuple[tuple[str, ...], str, str, str]:
    """A position-free view of a comparison, for structural assertions."""
    return (tuple(path.split(".")), op, kind, text)


def shape(node: Node | None) -> object:
    """Strips positions so trees can be compared structurally."""
    if node is None:
        return None
    if isinstance(node, Comparison):
        return (node.path, node.op, node.value.kind, node.value.text)
    if isinstance(node, And):
        return ("AND", *[shape(item) for item in node.items])
    if isinstance(node, Or):
        return ("OR", *[shape(item) for item in node.items])
    return ("NOT", shape(node.item))


def error_of(text: str) -> FilterError:
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    return info.value


A = cmp("a", "=", "number", "1")
B = cmp("b", "=", "number", "2")
C = cmp("c", "=", "number", "3")


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_filter_is_none(text: str) -> None:
    assert parse_filter(text) is None


def test_single_comparison_has_positions() -> None:
    node = parse_filter('  labels.team = "nlp"')
    assert node == Comparison(("labels", "team"), "=", Value("string", "nlp", 16), 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = 1 AND b = 2 OR c = 3", ("AND", A, ("OR", B, C))),
        ("a = 1 OR b = 2 AND c = 3", ("AND", ("OR", A, B), C)),
        ("a = 1 b = 2 OR c = 3", ("AND", A, ("OR", B, C))),
        ("a = 1 b = 2 AND c = 3", ("AND", A, B, C)),
        ("(a = 1 AND b = 2) OR c = 3", ("OR", ("AND", A, B), C)),
        ("NOT a = 1 OR b = 2", ("OR", ("NOT", A), B)),
        ("-a = 1 b = 2", ("AND", ("NOT", A), B)),
        ("NOT (a = 1 OR b = 2)", ("NOT", ("OR", A, B))),
        ("a=1 OR b=2 OR c=3", ("OR", A, B, C)),
        ("((a = 1))", A),
    ],
)
def test_precedence(text: str, expected: object) -> None:
    assert shape(parse_filter(text)) == expected


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">=", ":"])
def test_operators(op: str) -> None:
    assert shape(parse_filter(f"a{op}1")) == cmp("a", op, "number", "1")
    assert shape(parse_filter(f"a {op} 1")) == cmp("a", op, "number", "1")


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ('a = "x y"', "string", "x y"),
        ("a = 'x y'", "string", "x y"),
        (r'a = "q\"uo\\te\n"', "string", 'q"uo\\te\n'),
        (r"a = 'it\'s'", "string", "it's"),
        ("a = 42", "number", "42"),
        ("a = -4.5e-3", "number", "-4.5e-3"),
        ("a = +.5", "number", "+.5"),
        ("a = 1E10", "number", "1E10"),
        ("a = *", "star", "*"),
        ("a = STAGE_PRODUCTION", "word", "STAGE_PRODUCTION"),
        ("a = true", "word", "true"),
        ("a = abc*", "word", "abc*"),
        ("a = 1abc", "word", "1abc"),
        ('a = ""', "string", ""),
        ('a = "日本語 ✓ 🚀"', "string", "日本語 ✓ 🚀"),
        ("a = café", "word", "café"),
    ],
)
def test_values(text: str, kind: str, value: str) -> None:
    node = parse_filter(text)
    assert isinstance(node, Comparison)
    assert (node.value.kind, node.value.text, node.value.position) == (kind, value, 4)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("create_time > 1", ("create_time",)),
        ("metrics.val_auc > 1", ("metrics", "val_auc")),
        ("labels.team-name = 1", ("labels", "team-name")),
        ('labels."app.kubernetes.io/name" = 1', ("labels", "app.kubernetes.io/name")),
        ("labels.`a b` = 1", ("labels", "a b")),
        ('labels."ключ" = 1', ("labels", "ключ")),
        ("a.b.c = 1", ("a", "b", "c")),
        ("labels.2fa = 1", ("labels", "2fa")),
    ],
)
def test_paths(text: str, path: tuple[str, ...]) -> None:
    node = parse_filter(text)
    assert isinstance(node, Comparison)
    assert node.path == path


def test_has_key_shorthand() -> None:
    assert shape(parse_filter("labels:team")) == cmp("labels", ":", "word", "team")
    assert shape(parse_filter("metrics.auc:*")) == cmp("metrics.auc", ":", "star", "*")


def test_keywords_are_case_sensitive_identifiers_otherwise() -> None:
    assert shape(parse_filter("NOTE = 1 ORDER = 2")) == (
        "AND",
        cmp("NOTE", "=", "number", "1"),
        cmp("ORDER", "=", "number", "2"),
    )
    assert shape(parse_filter("a = 1 and = 2")) == ("AND", A, cmp("and", "=", "number", "2"))


def test_not_and_minus_forms() -> None:
    assert isinstance(parse_filter("NOT(a = 1)"), Not)
    assert shape(parse_filter("NOT NOT a = 1")) == ("NOT", ("NOT", A))
    assert shape(parse_filter("- a = 1")) == ("NOT", A)
    assert shape(parse_filter("a > -1")) == cmp("a", ">", "number", "-1")


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("a = 1 AND (b = 2))", "unexpected ')' at position 17", 17),
        ('a = "abc', "unterminated string at position 4", 4),
        ("a = 'abc\\", "unterminated string at position 4", 4),
        ("metrics.x >= ", "expected a value after '>=' at position 13", 13),
        ("a >= )", "expected a value after '>=' at position 5", 5),
        ("a = OR", "expected a value after '=' at position 4", 4),
        ("a == 1", "expected a value after '=' at position 3", 3),
        ("(a = 1", "unclosed '(' at position 0", 0),
        ("a = 1 AND", "unexpected end of filter at position 9", 9),
        ("AND a = 1", "unexpected 'AND' at position 0", 0),
        ("a = 1 OR OR b = 2", "unexpected 'OR' at position 9", 9),
        ("()", "unexpected ')' at position 1", 1),
        ("a", "after 'a' at position 1", 1),
        ("a b", "after 'a' at position 2", 2),
        ("labels. = 1", "expected a field name after '.' at position 7", 7),
        ('labels."" = 1', "empty field name at position 7", 7),
        ('a = "\\q"', "invalid escape sequence '\\\\q' at position 5", 5),
        ("1 = a", "unexpected '1' at position 0", 0),
        ("a = 1 # b", "unexpected '#' at position 6", 6),
        ("NOT", "unexpected end of filter at position 3", 3),
    ],
)
def test_error_messages_and_positions(text: str, message: str, position: int) -> None:
    error = error_of(text)
    assert message in error.message
    assert error.position == position
    assert str(error) == error.message


def test_too_long_filter_is_rejected() -> None:
    text = " AND ".join(["a = 1"] * 2000)[:10_000]
    assert "too long" in error_of(text).message


def test_longest_allowed_filter_is_accepted() -> None:
    text = 'a = "' + "x" * 4090 + '"'
    assert len(text) == 4096
    assert parse_filter(text) is not None


def test_comparison_limit() -> None:
    ok = " OR ".join([f"a = {i}" for i in range(MAX_COMPARISONS)])
    assert isinstance(parse_filter(ok), Or)
    error = error_of(ok + " OR b = 1")
    assert "too many comparisons" in error.message
    assert error.position == len(ok) + 4


def test_nesting_limit_parentheses() -> None:
    assert parse_filter("(" * MAX_DEPTH + "a = 1" + ")" * MAX_DEPTH) is not None
    error = error_of("(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1))
    assert "nested too deeply" in error.message
    assert error.position == MAX_DEPTH


def test_nesting_limit_counts_not() -> None:
    assert parse_filter("NOT " * MAX_DEPTH + "a = 1") is not None
    assert "nested too deeply" in error_of("NOT (" * 9 + "a = 1" + ")" * 9).message
    assert "nested too deeply" in error_of("-" * (MAX_DEPTH + 1) + "a = 1").message


def test_pathological_nesting_does_not_recurse() -> None:
    for text in ["(" * 4000, "NOT " * 1000, "-" * 4096, "(" * 2000 + ")" * 2000]:
        error_of(text)


TOKENS = [
    "a",
    "labels.team",
    'labels."x.y"',
    "metrics.auc",
    "=",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    ":",
    "AND",
    "OR",
    "NOT",
    "-",
    "(",
    ")",
    '"str"',
    "'s\\'q'",
    '"unterminated',
    "42",
    "-1.5e3",
    "*",
    "STAGE_PRODUCTION",
    ".",
    "\\",
    "`",
    "日本",
]


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_filter_error(text: str) -> None:
    try:
        parse_filter(text)
    except FilterError as error:
        assert 0 <= error.position <= len(text)
        assert f"position {error.position}" in error.message or "too long" in error.message


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.sampled_from([" ", ""]))
def test_token_soup_only_raises_filter_error(tokens: list[str], separator: str) -> None:
    text = separator.join(tokens)
    try:
        parse_filter(text)
    except FilterError as error:
        assert 0 <= error.position <= len(text)


@given(st.text(min_size=0, max_size=100))
def test_string_values_round_trip(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    node = parse_filter(f'name = "{escaped}"')
    assert isinstance(node, Comparison)
    assert node.value == Value("string", value, 7)


# --- order_by -------------------------------------------------------------------------------------

ALLOWED = {("create_time",), ("name",), ("version",)}


def allowed(path: tuple[str, ...]) -> bool:
    return path in ALLOWED or (len(path) == 2 and path[0] in ("metrics", "labels"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("   ", ()),
        ("name", (OrderKey(("name",), False),)),
        ("name desc", (OrderKey(("name",), True),)),
        ("name DESC", (OrderKey(("name",), True),)),
        ("name Asc", (OrderKey(("name",), False),)),
        (
            "metrics.auc desc, create_time",
            (OrderKey(("metrics", "auc"), True), OrderKey(("create_time",), False)),
        ),
        (
            ' labels."a.b,c"  desc ,version asc ',
            (OrderKey(("labels", "a.b,c"), True), OrderKey(("version",), False)),
        ),
    ],
)
def test_order_by(text: str, expected: tuple[OrderKey, ...]) -> None:
    assert parse_order_by(text, allowed) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("owner", "cannot order by 'owner'"),
        ("name, name desc", "appears more than once"),
        ("name,,version", "empty item"),
        ("name,", "empty item"),
        (",name", "empty item"),
        ("name desc desc", "unexpected 'desc'"),
        ("name sideways", "unexpected 'sideways'"),
        ("name; drop", "unexpected ';'"),
        ("metrics.", "expected a field name"),
        ('labels."x', "unterminated string"),
        ("name" + " " * 2000, "too long"),
    ],
)
def test_order_by_errors(text: str, message: str) -> None:
    with pytest.raises(OrderByError) as info:
        parse_order_by(text, allowed)
    assert message in info.value.message


@given(st.text(max_size=100))
def test_order_by_only_raises_order_by_error(text: str) -> None:
    try:
        keys = parse_order_by(text, allowed)
    except OrderByError:
        return
    assert all(allowed(key.path) for key in keys)
    assert len({key.path for key in keys}) == len(keys)
