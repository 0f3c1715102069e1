"""The expression language: references, interpolation, conditions - parsed, never eval'd."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avm.assembler.expressions import (
    ExpressionSyntaxError,
    Lookup,
    Ref,
    compile_condition,
    compile_value,
    parse_text,
    render_text,
)
from avm.llm.types import ModelReply, Usage

ENV: dict[str, Any] = {
    "token": "BTC",
    "tick": 2,
    "price": {"price": 101.5, "change_pct": -2.25, "tags": ["hot", "new"]},
    "reply": ModelReply(text="BUY conviction=5: listing", model="m", usage=Usage(10, 3)),
    "nothing": None,
}


def value(template: Any) -> Any:
    return compile_value(template)[0](ENV)


def test_parse_splits_text_and_references() -> None:
    assert parse_text("a ${b.c.0} $${d} $e") == ["a ", Ref("b", ("c", 0), 2), " ${d} $e"]
    assert parse_text("${ token }") == [Ref("token", (), 0)]


def test_a_whole_reference_keeps_its_type_and_text_interpolates() -> None:
    assert value("${price}") == ENV["price"]
    assert value("${price.tags.1}") == "new"
    assert value("${reply.usage.tokens_in}") == 10
    assert value("${token} at ${tick}: ${price.change_pct}% ${reply} ${nothing} ${price.tags}") == (
        'BTC at 2: -2.25% BUY conviction=5: listing null ["hot","new"]'
    )
    assert value({"k": ["${tick}", "x${tick}"], "n": 1}) == {"k": [2, "x2"], "n": 1}


def test_constants_are_copied_so_a_mutating_tool_cannot_change_them() -> None:
    evaluate, constant = compile_value({"list": [1]})
    assert constant
    first = evaluate({})
    first["list"].append(2)
    assert evaluate({}) == {"list": [1]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${missing}", "${missing}: 'missing' is not bound"),
        (
            "${price.nope}",
            "${price.nope}: ${price} has no key 'nope' (keys: price, change_pct, tags)",
        ),
        ("${price.tags.5}", "${price.tags.5}: ${price.tags} has 2 items, so no item 5"),
        (
            "${price.tags.x}",
            "${price.tags.x}: ${price.tags} is a list; index it with a number, not 'x'",
        ),
        (
            "${reply.__class__}",
            "${reply.__class__}: ${reply} is a ModelReply with fields text, "
            "model, usage, tool_calls, finish_reason",
        ),
        ("${tick.real}", "${tick.real}: ${tick} is a number, which has no fields"),
    ],
)
def test_lookups_fail_with_reasons_and_never_reach_python_attributes(
    text: str, message: str
) -> None:
    with pytest.raises(Lookup) as failed:
        value(text)
    assert str(failed.value) == message


@pytest.mark.parametrize(
    ("condition", "truth"),
    [
        ("${reply.text} startswith 'BUY'", True),
        ('${reply.text} endswith "listing"', True),
        ("'conviction' in ${reply.text}", True),
        ("${price.tags} contains 'hot'", True),
        ("'cold' not in ${price.tags}", True),
        ("${tick} >= 2 and ${price.price} < 100", False),
        ("${tick} == 3 or not ${nothing}", True),
        ("(${tick} > 1 or false) and ${token} == 'BTC'", True),
        ("${nothing} == null", True),
        ("${price.change_pct} < -2", True),
        ("1.5e1 == 15", True),
        ("${price.tags}", True),
    ],
)
def test_conditions(condition: str, truth: bool) -> None:
    assert compile_condition(condition)(ENV) is truth


@pytest.mark.parametrize(
    ("condition", "offset"),
    [
        ("${tick} ==", 10),
        ("${tick} = 2", 8),
        ("foo", 0),
        ("(${tick}", 8),
        ("'open", 0),
        ("${tick} not == 1", 12),
        ("", 0),
    ],
)
def test_condition_syntax_errors_say_where(condition: str, offset: int) -> None:
    with pytest.raises(ExpressionSyntaxError) as failed:
        compile_condition(condition)
    assert failed.value.offset == offset


def test_ordering_values_of_different_kinds_is_an_error_not_a_guess() -> None:
    with pytest.raises(Lookup, match="cannot order a string and a number with <"):
        compile_condition("${token} < 3")(ENV)


def syntax_error(parse: Callable[[str], object], text: str) -> ExpressionSyntaxError | None:
    try:
        parse(text)
    except ExpressionSyntaxError as exc:
        return exc
    return None


@given(st.text())
def test_parsing_any_text_either_succeeds_or_raises_a_syntax_error(text: str) -> None:
    for parse in (parse_text, compile_condition):
        error = syntax_error(parse, text)
        if error is not None:
            assert 0 <= error.offset <= len(text)
    if syntax_error(parse_text, text) is None:
        rendered = "".join(p if isinstance(p, str) else str(p) for p in parse_text(text))
        assert "${" in rendered or rendered == text.replace("$${", "${")


def test_render_text_is_stable() -> None:
    assert render_text({"b": 1, "a": [1.0, None]}) == '{"a":[1.0,null],"b":1}'
    assert render_text(True) == "true"
