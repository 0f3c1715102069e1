"""The shared prefix: encoded once, spliced in as bytes, identical on the wire; request keys."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.llm.io.keys import is_cacheable, request_key
from avm.llm.io.prefix import PREFIXES, PrefixTable
from avm.llm.providers.anthropic import AnthropicProvider
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest, ToolCall, ToolSpec

TOOL = ToolSpec(
    "search", "find things", {"type": "object", "properties": {"q": {"type": "string"}}}
)

texts = st.text(min_size=1, max_size=40)
messages = st.lists(
    st.one_of(
        st.builds(Message, st.just("user"), texts),
        st.builds(Message, st.just("assistant"), texts),
        st.builds(Message, st.just("system"), texts),
        st.builds(
            Message,
            st.just("assistant"),
            st.just(""),
            st.tuples(st.builds(ToolCall, st.just("c1"), st.just("search"), st.just('{"q":"x"}'))),
        ),
    ),
    min_size=1,
    max_size=6,
)


def naive_openai(request: ModelRequest) -> dict[str, Any]:
    """The body as a plain dict encoder would write it, without any prefix reuse."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content or None}
        if m.tool_calls:
            item["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        elif not m.content:
            item["content"] = ""
        out.append(item)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": out,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": msgspec.to_builtins(t)} for t in request.tools
        ]
    return body


@settings(max_examples=100, deadline=None)
@given(system=st.lists(texts, max_size=3), rest=messages, tools=st.booleans())
def test_openai_body_with_a_spliced_prefix_is_the_plain_body(
    system: list[str], rest: list[Message], tools: bool
) -> None:
    provider = OpenAICompatProvider("http://127.0.0.1:1/v1")
    request = ModelRequest(
        model="m",
        messages=(*(Message("system", t) for t in system), *rest),
        tools=(TOOL,) if tools else (),
    )
    for _ in range(2):  # the second time comes from the cached prefix
        assert json.loads(provider.encode(request)) == naive_openai(request)


def test_anthropic_body_reuses_the_prefix_bytes() -> None:
    provider = AnthropicProvider("http://127.0.0.1:1")
    system = Message("system", "shared rules " * 100)
    first = ModelRequest(model="m", messages=(system, Message("user", "a")), tools=(TOOL,))
    second = ModelRequest(model="m", messages=(system, Message("user", "b")), tools=(TOOL,))
    a = json.loads(provider.encode(first))
    b = json.loads(provider.encode(second))
    assert a["system"] == b["system"]
    assert a["tools"] == b["tools"]
    assert a["messages"] == [{"role": "user", "content": "a"}]
    prefix = PREFIXES.of(first)
    assert prefix is not None
    assert prefix is PREFIXES.of(second)
    assert prefix.encoded_bytes > len(system.content)  # the Anthropic form, held once


def test_prefix_is_found_by_value_and_bounded() -> None:
    table = PrefixTable(max_entries=2)
    tools = (TOOL,)
    a = table.of(
        ModelRequest(model="m", messages=(Message("system", "x" * 10), Message("user", "q")))
    )
    b = table.of(
        ModelRequest(model="m", messages=(Message("system", "x" * 10), Message("user", "r")))
    )
    assert a is not None
    assert a is b  # equal text, distinct string objects
    assert a.count == 1
    assert table.of(ModelRequest(model="m", messages=(Message("user", "q"),))) is None
    c = table.of(ModelRequest(model="m", messages=(Message("user", "q"),), tools=tools))
    assert c is not None
    assert c.count == 0
    table.of(ModelRequest(model="m", messages=(Message("system", "y"), Message("user", "q"))))
    assert len(table) == 2


def test_only_system_messages_share_everything_but_the_last() -> None:
    table = PrefixTable()
    prefix = table.of(
        ModelRequest(model="m", messages=(Message("system", "a"), Message("system", "b")))
    )
    assert prefix is not None
    assert prefix.texts == ("a",)


def ask(text: str, **fields: Any) -> ModelRequest:
    fields.setdefault("model", "m")
    return ModelRequest(messages=(Message("system", "rules"), Message("user", text)), **fields)


def test_request_key_covers_content_not_routing() -> None:
    base = request_key(ask("q"))
    assert request_key(ask("q")) == base
    assert request_key(ask("q", priority=0, deferrable=True, cache=True)) == base
    for changed in (
        ask("q2"),
        ask("q", model="n"),
        ask("q", max_tokens=9),
        ask("q", temperature=0.5),
        ask("q", top_p=0.5),
        ask("q", stop=("x",)),
        ask("q", tools=(TOOL,)),
        ModelRequest(model="m", messages=(Message("system", "rules!"), Message("user", "q"))),
        ModelRequest(model="m", messages=(Message("user", "rules"), Message("user", "q"))),
    ):
        assert request_key(changed) != base
    assert len(base) == 16


def test_cacheable() -> None:
    assert is_cacheable(ask("q"))
    assert not is_cacheable(ask("q", temperature=0.2))
    assert is_cacheable(ask("q", temperature=0.2, cache=True))
    assert not is_cacheable(ask("q", cache=False))


def test_the_table_is_bounded_by_size_too() -> None:
    table = PrefixTable(max_chars=250)
    for i in range(5):
        table.of(
            ModelRequest(
                model="m", messages=(Message("system", str(i) * 100), Message("user", "q"))
            )
        )
    assert len(table) == 2
