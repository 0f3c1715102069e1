"""ResponseCache: repeated deterministic requests are answered without reaching the server."""

from __future__ import annotations

from typing import Any

import pytest

from avm.errors import ProviderUnavailable
from avm.llm.io.cache import ResponseCache
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest, Usage
from avm.testing.fake_openai import FakeOpenAIServer


def ask(text: str = "hello", **fields: Any) -> ModelRequest:
    fields.setdefault("model", "fake-gpt")
    return ModelRequest(messages=(Message("system", "be brief"), Message("user", text)), **fields)


async def test_second_identical_temperature_0_request_never_reaches_the_server(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    first = await cache.complete(ask())
    second = await cache.complete(ask())

    assert server.completion_count == 1
    assert second.text == first.text == "echo: hello"
    assert first.usage.tokens_in > 0
    # Nothing was consumed upstream for the hit, so it reports no usage (and costs no gas).
    assert second.usage == Usage()
    assert (cache.hits, cache.misses) == (1, 1)


async def test_routing_hints_do_not_change_the_key(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    await cache.complete(ask(priority=2))
    await cache.complete(ask(priority=0, deferrable=True))
    assert server.completion_count == 1


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 10},
        {"top_p": 0.5},
        {"stop": ("\n",)},
        {"model": "other"},
    ],
)
async def test_any_content_change_misses(
    server: FakeOpenAIServer, provider: OpenAICompatProvider, change: dict[str, Any]
) -> None:
    cache = ResponseCache(provider)
    await cache.complete(ask())
    await cache.complete(ask(**change))
    assert server.completion_count == 2


async def test_sampled_requests_are_not_cached_unless_asked(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    await cache.complete(ask(temperature=0.7))
    await cache.complete(ask(temperature=0.7))
    assert server.completion_count == 2
    await cache.complete(ask(temperature=0.7, cache=True))
    await cache.complete(ask(temperature=0.7, cache=True))
    assert server.completion_count == 3


async def test_a_request_can_opt_out(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    await cache.complete(ask(cache=False))
    await cache.complete(ask(cache=False))
    assert server.completion_count == 2
    assert len(cache) == 0


async def test_entries_expire_after_the_ttl(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    now = [100.0]
    cache = ResponseCache(provider, ttl_s=10.0, clock=lambda: now[0])
    await cache.complete(ask())
    now[0] += 9.0
    await cache.complete(ask())
    assert server.completion_count == 1
    now[0] += 2.0
    await cache.complete(ask())
    assert server.completion_count == 2


async def test_least_recently_used_entries_go_first(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider, max_entries=2)
    for text in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        await cache.complete(ask(text))
    assert len(cache) == 2
    await cache.complete(ask("a"))
    assert server.completion_count == 3
    await cache.complete(ask("b"))
    assert server.completion_count == 4


async def test_failures_are_not_cached(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    server.fail_next(1, status=503)
    with pytest.raises(ProviderUnavailable):
        await cache.complete(ask())
    reply = await cache.complete(ask())
    assert reply.text == "echo: hello"
    assert server.completion_count == 2


async def test_streams_fill_and_hit_the_cache(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    cache = ResponseCache(provider)
    text = "a story long enough to arrive in several chunks"
    stream = cache.stream(ask(text))
    deltas = [d async for d in stream]
    assert len(deltas) > 1
    assert stream.reply is not None
    assert stream.reply.text == "echo: " + text

    again = cache.stream(ask(text))
    assert [d async for d in again] == ["echo: " + text]
    assert again.reply is not None
    assert again.reply.usage == Usage()
    reply = await cache.complete(ask(text))
    assert reply.text == "echo: " + text
    assert server.completion_count == 1
