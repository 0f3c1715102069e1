"""AnthropicProvider against the fake Anthropic server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from avm.errors import ModelError, ProviderUnavailable, RateLimited
from avm.llm.io.batch_lane import BatchAPI, BatchLane
from avm.llm.io.streams import StreamingProvider
from avm.llm.provider import ModelProvider
from avm.llm.providers.anthropic import AnthropicProvider, anthropic_factory
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, ToolSpec
from avm.testing.fake_anthropic import FakeAnthropicServer
from avm.testing.fake_openai import FakeReply, FakeToolCall, count_tokens

SECRET = "sk-ant-test-SECRET-0123456789"
SYSTEM = "You are a careful analyst. " * 300  # ~2,000 tokens: long enough to be cached
WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(text: str = "hello", **fields: object) -> ModelRequest:
    return ModelRequest(
        model="claude-test",
        messages=(Message("system", SYSTEM), Message("user", text)),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def server() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer(api_key=SECRET) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeAnthropicServer) -> AsyncIterator[AnthropicProvider]:
    p = AnthropicProvider(server.base_url, api_key=SECRET, max_retries=2, backoff_base_s=0.01)
    yield p
    await p.aclose()


def test_it_is_a_streaming_batch_capable_provider() -> None:
    p = AnthropicProvider("http://127.0.0.1:1", api_key=SECRET)
    assert isinstance(p, ModelProvider)
    assert isinstance(p, StreamingProvider)
    assert isinstance(p, BatchAPI)
    assert SECRET not in repr(p)


async def test_complete_returns_text_and_usage(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    reply = await provider.complete(ask("what is 2+2?"))
    assert reply.text == "echo: what is 2+2?"
    assert reply.model == "claude-test"
    assert reply.finish_reason == "stop"
    assert reply.usage.tokens_out == count_tokens("echo: what is 2+2?")
    assert reply.usage.tokens_in > count_tokens(SYSTEM)


async def test_request_has_the_messages_shape(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    request = ModelRequest(
        model="claude-test",
        messages=(
            Message("system", "rules"),
            Message("user", "weather in Paris?"),
            Message(
                "assistant",
                "let me look",
                tool_calls=(
                    ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),
                    ToolCall("toolu_2", "get_weather", '{"city":"Lyon"}'),
                ),
            ),
            Message("tool", "sunny", tool_call_id="toolu_1"),
            Message("tool", "rain", tool_call_id="toolu_2"),
            Message("user", "so?"),
        ),
        max_tokens=50,
        temperature=0.3,
        stop=("\n\n",),
        tools=(WEATHER,),
    )
    reply = await provider.complete(request)
    assert reply.text == "echo: so?"

    body = server.requests[-1]
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.3
    assert "top_p" not in body
    assert body["stop_sequences"] == ["\n\n"]
    assert body["system"] == [
        {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER.parameters,
        }
    ]
    user, assistant, results, last = body["messages"]
    assert user == {"role": "user", "content": "weather in Paris?"}
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "let me look"},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"},
        ],
    }
    assert last == {"role": "user", "content": "so?"}


async def test_top_p_is_sent_instead_of_temperature(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    await provider.complete(ask(top_p=0.5, temperature=0.7))
    body = server.requests[-1]
    assert body["top_p"] == 0.5
    assert "temperature" not in body


async def test_tool_use_round_trip(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.script(FakeReply("checking", (FakeToolCall("get_weather", {"city": "Paris"}),)))
    first = await provider.complete(ask("weather?", tools=(WEATHER,)))
    assert first.finish_reason == "tool_calls"
    assert first.text == "checking"
    (call,) = first.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}

    follow_up = ModelRequest(
        model="claude-test",
        messages=(
            Message("user", "weather?"),
            Message("assistant", first.text, tool_calls=first.tool_calls),
            Message("tool", "sunny", tool_call_id=call.id),
        ),
        tools=(WEATHER,),
    )
    second = await provider.complete(follow_up)
    assert second.text == "echo: sunny"


async def test_shared_prefix_is_cached_by_the_provider(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    first = await provider.complete(ask("first", tools=(WEATHER,)))
    second = await provider.complete(ask("second", tools=(WEATHER,)))
    assert first.usage.cache_write_tokens > 1000
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens == first.usage.cache_write_tokens
    assert second.usage.cache_write_tokens == 0
    # tokens_in counts every prompt token, cached or not.
    assert abs(second.usage.tokens_in - first.usage.tokens_in) <= 2
    body = server.requests[-1]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in body["tools"][-1]


async def test_tools_carry_the_mark_when_there_is_no_system_prompt(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    request = ModelRequest(model="claude-test", messages=(Message("user", "hi"),), tools=(WEATHER,))
    await provider.complete(request)
    assert server.requests[-1]["tools"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_prompt_caching_can_be_turned_off(server: FakeAnthropicServer) -> None:
    p = AnthropicProvider(server.base_url, api_key=SECRET, prompt_caching=False)
    try:
        reply = await p.complete(ask())
    finally:
        await p.aclose()
    assert "cache_control" not in server.requests[-1]["system"][0]
    assert reply.usage.cache_write_tokens == 0


async def test_stream_deltas_add_up_to_the_reply(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    text = "tell me a story about a very small robot"
    full = await provider.complete(ask(text))
    stream = provider.stream(ask(text))
    deltas = [d async for d in stream]
    assert len(deltas) > 1
    assert "".join(deltas) == full.text
    assert stream.reply is not None
    assert stream.reply.text == full.text
    assert stream.reply.usage.tokens_out == full.usage.tokens_out
    assert stream.reply.usage.tokens_in == full.usage.tokens_in
    assert stream.reply.finish_reason == "stop"
    assert server.requests[-1]["stream"] is True


async def test_stream_assembles_tool_calls(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    args = {"city": "a name long enough to be split over several deltas"}
    server.script(FakeToolCall("get_weather", args))
    stream = provider.stream(ask(tools=(WEATHER,)))
    assert [d async for d in stream] == []
    assert stream.reply is not None
    assert stream.reply.finish_reason == "tool_calls"
    (call,) = stream.reply.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == args


async def test_overloaded_is_retried_then_succeeds(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.fail_next(2, status=529, message="Overloaded")
    reply = await provider.complete(ask())
    assert reply.text == "echo: hello"
    assert server.message_count == 3


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, RateLimited), (529, ProviderUnavailable), (500, ProviderUnavailable), (400, ModelError)],
)
async def test_errors_are_translated(
    server: FakeAnthropicServer,
    provider: AnthropicProvider,
    status: int,
    expected: type[ModelError],
) -> None:
    server.fail_next(5, status=status, message=f"failure with key {SECRET}", retry_after_s=0.01)
    with pytest.raises(expected) as caught:
        await provider.complete(ask())
    assert type(caught.value) is expected
    assert str(status) in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_wrong_key_is_a_model_error_without_the_key(server: FakeAnthropicServer) -> None:
    p = AnthropicProvider(server.base_url, api_key="sk-ant-wrong-key")
    try:
        with pytest.raises(ModelError, match="401") as caught:
            await p.complete(ask())
    finally:
        await p.aclose()
    assert "sk-ant-wrong-key" not in str(caught.value)


async def test_stream_errors_are_translated(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.fail_next(3, status=529)
    with pytest.raises(ProviderUnavailable, match="529"):
        async for _ in provider.stream(ask()):
            pass


async def test_message_batches_end_to_end(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    server.batch_latency_s = 0.05
    server.script("first answer")
    server.fail_next(1, status=529)  # the second line meets it (failures are checked first)
    requests = [ask(f"doc {i}") for i in range(4)]
    requests[1], requests[0] = requests[0], requests[1]
    results = await provider.run_batch(requests, poll_s=0.02)
    assert len(server.batches) == 1
    (batch,) = server.batches.values()
    assert batch.status == "ended"
    assert isinstance(results[0], ProviderUnavailable)
    assert isinstance(results[1], ModelReply)
    assert results[1].text == "first answer"
    assert [r.text for r in results[2:] if isinstance(r, ModelReply)] == [
        "echo: doc 2",
        "echo: doc 3",
    ]
    assert server.message_count == 0


async def test_batch_lane_over_anthropic(
    server: FakeAnthropicServer, provider: AnthropicProvider
) -> None:
    lane = BatchLane(provider, max_batch=10, max_wait_s=0.05, poll_s=0.02)
    replies = await asyncio.gather(
        *(lane.complete(ask(f"q{i}", deferrable=True)) for i in range(5))
    )
    assert [r.text for r in replies] == [f"echo: q{i}" for i in range(5)]
    assert len(server.batches) == 1
    assert server.message_count == 0


def test_factory_reads_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from avm.config import ModelConfig
    from avm.errors import ConfigError

    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        anthropic_factory(ModelConfig(provider="anthropic", model="claude"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    provider = anthropic_factory(ModelConfig(provider="anthropic", model="claude"))
    assert provider.base_url == "https://api.anthropic.com"


async def test_module_entry_point_serves_until_terminated() -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "avm.testing.fake_anthropic",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        p = AnthropicProvider(base_url)
        try:
            assert (await p.complete(ask("ping"))).text == "echo: ping"
        finally:
            await p.aclose()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)
    assert proc.returncode == 0
