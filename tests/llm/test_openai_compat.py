"""OpenAICompatProvider against the fake server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from avm.errors import ModelError, ModelTimeout, ProviderUnavailable, RateLimited
from avm.llm.provider import ModelProvider
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelReply, ModelRequest, ToolCall, ToolSpec
from avm.testing.fake_openai import FakeOpenAIServer, FakeToolCall, count_tokens

SECRET = "sk-test-SECRET-0123456789abcdef"


def ask(
    text: str = "hello", *, max_tokens: int = 256, tools: tuple[ToolSpec, ...] = ()
) -> ModelRequest:
    return ModelRequest(
        model="fake-gpt",
        messages=(Message(role="system", content="be brief"), Message(role="user", content=text)),
        max_tokens=max_tokens,
        tools=tools,
    )


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=SECRET) as srv:
        yield srv


@pytest.fixture
async def provider(server: FakeOpenAIServer) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(
        server.base_url, api_key=SECRET, timeout_s=5.0, max_retries=2, backoff_base_s=0.01
    )
    yield p
    await p.aclose()


def test_it_is_a_model_provider() -> None:
    assert isinstance(OpenAICompatProvider("http://127.0.0.1:1/v1"), ModelProvider)


def test_repr_hides_the_key() -> None:
    assert SECRET not in repr(OpenAICompatProvider("http://x/v1", api_key=SECRET))


async def test_complete_returns_text_and_usage(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    reply = await provider.complete(ask("what is 2+2?"))

    assert reply.text == "echo: what is 2+2?"
    assert reply.model == "fake-gpt"
    assert reply.finish_reason == "stop"
    assert reply.tool_calls == ()
    assert reply.usage.tokens_out == count_tokens("echo: what is 2+2?")
    # Two messages: at least their content plus some framing per message.
    assert reply.usage.tokens_in > count_tokens("be brief") + count_tokens("what is 2+2?")
    assert server.completion_count == 1


async def test_request_is_encoded_in_the_openai_shape(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    tool = ToolSpec(
        name="get_weather",
        description="Weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
    request = ModelRequest(
        model="fake-gpt",
        messages=(
            Message(role="user", content="weather in Paris?"),
            Message(
                role="assistant",
                tool_calls=(
                    ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
                ),
            ),
            Message(role="tool", content="sunny", tool_call_id="call_1"),
        ),
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        stop=("\n\n",),
        tools=(tool,),
    )
    await provider.complete(request)

    body = server.requests[-1]
    assert body["model"] == "fake-gpt"
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n\n"]
    assert "stream" not in body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    user, assistant, tool_msg = body["messages"]
    assert user == {"role": "user", "content": "weather in Paris?"}
    assert assistant["role"] == "assistant"
    assert assistant.get("content") is None
    assert assistant["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert tool_msg == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


async def test_empty_content_is_still_sent(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    await provider.complete(ModelRequest(model="m", messages=(Message(role="user"),)))
    assert server.requests[-1]["messages"] == [{"role": "user", "content": ""}]


async def test_tool_call_round_trip(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.script(FakeToolCall("get_weather", {"city": "Paris"}))
    tools = (ToolSpec(name="get_weather", description="Weather for a city"),)
    first = await provider.complete(ask("weather in Paris?", tools=tools))

    assert first.finish_reason == "tool_calls"
    assert first.text == ""
    (call,) = first.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id

    follow_up = ModelRequest(
        model="fake-gpt",
        messages=(
            Message(role="user", content="weather in Paris?"),
            Message(role="assistant", tool_calls=first.tool_calls),
            Message(role="tool", content="sunny, 21C", tool_call_id=call.id),
            Message(role="user", content="so?"),
        ),
        tools=tools,
    )
    second = await provider.complete(follow_up)
    assert second.text == "echo: so?"
    sent = server.requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2]["tool_call_id"] == call.id


async def test_stream_deltas_add_up_to_the_reply(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    text = "tell me a story about a very small robot"
    full = await provider.complete(ask(text))

    stream = provider.stream(ask(text))
    deltas = [delta async for delta in stream]

    assert len(deltas) > 1
    assert "".join(deltas) == full.text
    assert stream.reply is not None
    assert stream.reply.text == full.text
    assert stream.reply.usage == full.usage
    assert stream.reply.usage.tokens_out > 0
    assert stream.reply.finish_reason == "stop"
    assert server.requests[-1]["stream"] is True
    assert server.requests[-1]["stream_options"] == {"include_usage": True}


async def test_stream_assembles_tool_calls(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    args = {"query": "something long enough to be split over chunks"}
    server.script(FakeToolCall("search", args), FakeToolCall("x", {}))
    stream = provider.stream(ask())
    assert [d async for d in stream] == []
    assert stream.reply is not None
    assert stream.reply.finish_reason == "tool_calls"
    (call,) = stream.reply.tool_calls
    assert call.name == "search"
    assert json.loads(call.arguments) == args


async def test_stream_left_early_frees_its_connection(server: FakeOpenAIServer) -> None:
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, max_connections=1)
    try:
        for _ in range(3):
            async with provider.stream(ask("x" * 200)) as stream:
                async for _delta in stream:
                    break
            assert stream.reply is None
        # With a pool of one, this would hang if a stream had kept its connection.
        reply = await asyncio.wait_for(provider.complete(ask()), timeout=5)
        assert reply.text == "echo: hello"
    finally:
        await provider.aclose()


async def test_stream_errors_are_translated(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(3, status=503)
    with pytest.raises(ProviderUnavailable, match="503"):
        async for _ in provider.stream(ask()):
            pass
    assert server.completion_count == 3


async def test_429_with_retry_after_is_waited_out_then_succeeds(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(2, status=429, retry_after_s=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await provider.complete(ask())
    elapsed = loop.time() - start

    assert reply.text == "echo: hello"
    assert server.completion_count == 3
    # Two waits of Retry-After (0.2 s each), not the 0.01 s backoff base.
    assert elapsed >= 0.38


async def test_429_forever_raises_rate_limited(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(10, status=429, retry_after_s=0.01, message="Slow down, tier 1")
    with pytest.raises(RateLimited) as caught:
        await provider.complete(ask())

    assert server.completion_count == 3  # one call and max_retries=2 retries
    assert caught.value.retry_after_s == pytest.approx(0.01)
    message = str(caught.value)
    assert "429" in message
    assert server.base_url in message
    assert "fake-gpt" in message
    assert "Slow down, tier 1" in message


async def test_retry_after_beyond_the_backoff_cap_fails_at_once(
    server: FakeOpenAIServer,
) -> None:
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, backoff_max_s=5.0)
    try:
        server.fail_next(5, status=429, retry_after_s=60)
        with pytest.raises(RateLimited) as caught:
            await asyncio.wait_for(provider.complete(ask()), timeout=5)
    finally:
        await provider.aclose()
    assert caught.value.retry_after_s == 60
    assert server.completion_count == 1


async def test_server_error_is_retried_then_succeeds(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(1, status=502)
    server.fail_next(1, status=504)
    reply = await provider.complete(ask())
    assert reply.text == "echo: hello"
    assert server.completion_count == 3


async def test_500_forever_raises_provider_unavailable(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(10, status=500, message="The server had an error")
    with pytest.raises(ProviderUnavailable) as caught:
        await provider.complete(ask())
    assert server.completion_count == 3
    assert "500" in str(caught.value)
    assert "The server had an error" in str(caught.value)
    assert "3 attempts" in str(caught.value)


async def test_no_retries_when_max_retries_is_zero(server: FakeOpenAIServer) -> None:
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, max_retries=0)
    try:
        server.fail_next(1, status=503)
        with pytest.raises(ProviderUnavailable):
            await provider.complete(ask())
    finally:
        await provider.aclose()
    assert server.completion_count == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_raises_provider_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    provider = OpenAICompatProvider(url, api_key=SECRET, backoff_base_s=0.01)
    try:
        with pytest.raises(ProviderUnavailable) as caught:
            await provider.complete(ask())
    finally:
        await provider.aclose()
    assert url in str(caught.value)
    assert "cannot connect" in str(caught.value)


async def test_slow_server_raises_model_timeout(
    server: FakeOpenAIServer,
) -> None:
    server.latency_s = 2.0
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, timeout_s=0.2)
    try:
        with pytest.raises(ModelTimeout, match=r"no answer within 0\.2 s"):
            await provider.complete(ask())
    finally:
        await provider.aclose()
    assert server.completion_count == 1  # timeouts are not retried by default


async def test_timeouts_are_retried_when_asked(server: FakeOpenAIServer) -> None:
    server.latency_s = 2.0
    provider = OpenAICompatProvider(
        server.base_url,
        api_key=SECRET,
        timeout_s=0.1,
        retry_on_timeout=True,
        max_retries=2,
        backoff_base_s=0.01,
    )
    try:
        with pytest.raises(ModelTimeout):
            await provider.complete(ask())
    finally:
        await provider.aclose()
    assert server.completion_count == 3


async def test_stream_stall_raises_model_timeout(server: FakeOpenAIServer) -> None:
    server.latency_s = 2.0
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, timeout_s=0.2)
    try:
        with pytest.raises(ModelTimeout):
            async for _ in provider.stream(ask()):
                pass
    finally:
        await provider.aclose()


async def test_other_4xx_is_a_plain_model_error_and_not_retried(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(1, status=400, message="Invalid 'max_tokens': must be positive")
    with pytest.raises(ModelError) as caught:
        await provider.complete(ask())
    assert type(caught.value) is ModelError
    assert "400" in str(caught.value)
    assert "Invalid 'max_tokens'" in str(caught.value)
    assert server.completion_count == 1


async def test_malformed_reply_is_a_model_error(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(1, status=200, body=b'{"choices": "not a list"')
    with pytest.raises(ModelError, match="malformed reply"):
        await provider.complete(ask())
    server.fail_next(1, status=200, body=b'{"choices": []}')
    with pytest.raises(ModelError, match="no choices"):
        await provider.complete(ask())


async def test_non_json_error_body_is_quoted_and_trimmed(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(1, status=418, body=b"<html>" + b"x" * 5000 + b"</html>")
    with pytest.raises(ModelError) as caught:
        await provider.complete(ask())
    message = str(caught.value)
    assert "418" in message
    assert "<html>xxx" in message
    assert len(message) < 600


async def test_max_tokens_truncation_shows_in_usage(
    provider: OpenAICompatProvider, server: FakeOpenAIServer
) -> None:
    server.responder = lambda _body: "lorem ipsum dolor sit amet " * 40
    reply = await provider.complete(ask(max_tokens=10))
    assert reply.finish_reason == "length"
    assert reply.usage.tokens_out == 10
    assert len(reply.text.encode()) <= 40
    assert ("lorem ipsum dolor sit amet " * 40).startswith(reply.text)


async def test_cached_tokens_are_decoded() -> None:
    async with FakeOpenAIServer(prompt_cache=True, cache_min_tokens=128) as srv:
        provider = OpenAICompatProvider(srv.base_url)
        try:
            system = Message(role="system", content="rules " * 400)
            for question in ("first", "second"):
                request = ModelRequest(
                    model="m", messages=(system, Message(role="user", content=question))
                )
                reply = await provider.complete(request)
        finally:
            await provider.aclose()
    assert reply.usage.cached_tokens > 0
    assert reply.usage.cached_tokens <= reply.usage.tokens_in


async def test_many_concurrent_calls_share_a_small_pool(server: FakeOpenAIServer) -> None:
    server.latency_s = 0.01
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, max_connections=4)
    try:
        replies = await asyncio.gather(*(provider.complete(ask(f"q{i}")) for i in range(100)))
    finally:
        await provider.aclose()
    assert [r.text for r in replies] == [f"echo: q{i}" for i in range(100)]
    assert server.completion_count == 100


async def test_closed_provider_refuses_calls(provider: OpenAICompatProvider) -> None:
    await provider.aclose()
    with pytest.raises(ModelError, match="closed"):
        await provider.complete(ask())


# --- the api key never leaks into an error ---------------------------------------------------


async def wrong_key(server: FakeOpenAIServer) -> ModelReply:
    # The fake, like real providers, quotes the rejected key in its 401 body.
    server.api_key = "sk-the-right-one"
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET)
    try:
        return await provider.complete(ask())
    finally:
        await provider.aclose()


async def fail_with(server: FakeOpenAIServer, status: int, message: str) -> ModelReply:
    server.fail_next(10, status=status, message=message)
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, backoff_base_s=0.001)
    try:
        return await provider.complete(ask())
    finally:
        await provider.aclose()


async def refused(_server: FakeOpenAIServer) -> ModelReply:
    provider = OpenAICompatProvider(
        f"http://127.0.0.1:{closed_port()}/v1", api_key=SECRET, backoff_base_s=0.001
    )
    try:
        return await provider.complete(ask())
    finally:
        await provider.aclose()


async def too_slow(server: FakeOpenAIServer) -> ModelReply:
    server.latency_s = 1.0
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET, timeout_s=0.1)
    try:
        return await provider.complete(ask())
    finally:
        await provider.aclose()


async def garbled(server: FakeOpenAIServer) -> ModelReply:
    server.fail_next(1, status=200, body=f'{{"echo": "{SECRET}"'.encode())
    provider = OpenAICompatProvider(server.base_url, api_key=SECRET)
    try:
        return await provider.complete(ask())
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (wrong_key, ModelError),
        (lambda s: fail_with(s, 429, f"limit for key {SECRET}"), RateLimited),
        (lambda s: fail_with(s, 500, f"crash handling {SECRET}"), ProviderUnavailable),
        (lambda s: fail_with(s, 403, f"key {SECRET} lacks access"), ModelError),
        (refused, ProviderUnavailable),
        (too_slow, ModelTimeout),
        (garbled, ModelError),
    ],
    ids=["401", "429", "500", "403", "refused", "timeout", "malformed"],
)
async def test_api_key_never_appears_in_errors(
    server: FakeOpenAIServer,
    scenario: Callable[[FakeOpenAIServer], Awaitable[ModelReply]],
    expected: type[ModelError],
) -> None:
    with pytest.raises(expected) as caught:
        await scenario(server)
    error: BaseException | None = caught.value
    while error is not None:
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        error = error.__cause__ or error.__context__
