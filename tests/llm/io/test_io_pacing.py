"""Pacer: rate limits held at the fake server, priorities under saturation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from avm.errors import RateLimited
from avm.llm.io.pacing import Pacer, estimate_request_tokens
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelReply, ModelRequest
from avm.testing.fake_openai import FakeOpenAIServer


def ask(text: str = "hello", **fields: Any) -> ModelRequest:
    fields.setdefault("model", "fake-gpt")
    return ModelRequest(messages=(Message("user", text),), **fields)


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_rpm_is_held_at_the_server(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    # 1200 rpm is 20 requests a second; a 0.1 s burst allows two at once.
    pacer = Pacer(provider, rpm=1200, burst_s=0.1)
    replies = await asyncio.gather(*(pacer.complete(ask(f"q{i}")) for i in range(30)))
    assert len(replies) == 30
    arrivals = list(server.arrivals)
    assert len(arrivals) == 30
    # Over any window of w seconds: at most rate * w + burst.
    assert most_in_any_window(arrivals, 0.5) <= 20 * 0.5 + 2
    assert most_in_any_window(arrivals, 1.0) <= 20 * 1.0 + 2
    # And it paced: 28 requests beyond the burst at 20/s take at least 1.4 s. (Only a lower
    # bound: a loaded machine can stretch the run, never shorten it.)
    assert max(arrivals) - min(arrivals) >= 1.4 - 0.1


async def test_tpm_is_held_at_the_server(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    request = ask("x" * 40, max_tokens=90)
    cost = estimate_request_tokens(request)
    assert 95 < cost < 120
    # 60,000 tpm is 1,000 tokens a second, about nine requests of this size.
    pacer = Pacer(provider, tpm=60_000, burst_s=0.25)
    await asyncio.gather(*(pacer.complete(ask("x" * 40, max_tokens=90 + i % 2)) for i in range(24)))
    arrivals = list(server.arrivals)
    for window in (0.5, 1.0):
        tokens = most_in_any_window(arrivals, window) * cost
        assert tokens <= 1000 * window + 250 + cost
    assert max(arrivals) - min(arrivals) >= (24 * cost - 250) / 1000 - 0.15


async def test_interactive_is_served_next_under_saturation(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.05
    pacer = Pacer(provider, concurrency=1)
    background = [asyncio.create_task(pacer.complete(ask(f"bg{i}", priority=2))) for i in range(5)]
    await asyncio.sleep(0.01)  # bg0 is in flight, bg1..bg4 queue behind it
    assert pacer.active == 1
    assert pacer.queued == 4
    normal = asyncio.create_task(pacer.complete(ask("normal", priority=1)))
    interactive = asyncio.create_task(pacer.complete(ask("interactive", priority=0)))
    await asyncio.gather(*background, normal, interactive)

    order = [body["messages"][-1]["content"] for body in server.requests]
    assert order == ["bg0", "interactive", "normal", "bg1", "bg2", "bg3", "bg4"]


class _Counting:
    """A provider wrapper that records how many calls overlap."""

    def __init__(self, inner: OpenAICompatProvider) -> None:
        self.inner = inner
        self.now = 0
        self.peak = 0

    async def complete(self, request: ModelRequest) -> ModelReply:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.inner.complete(request)
        finally:
            self.now -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_concurrency_limit(server: FakeOpenAIServer, provider: OpenAICompatProvider) -> None:
    server.latency_s = 0.02
    counting = _Counting(provider)
    pacer = Pacer(counting, concurrency=3)
    await asyncio.gather(*(pacer.complete(ask(f"q{i}")) for i in range(20)))
    assert counting.peak == 3
    assert server.completion_count == 20
    assert pacer.active == 0


async def test_a_cancelled_waiter_does_not_hold_a_slot(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.05
    pacer = Pacer(provider, concurrency=1)
    first = asyncio.create_task(pacer.complete(ask("first")))
    second = asyncio.create_task(pacer.complete(ask("second")))
    third = asyncio.create_task(pacer.complete(ask("third")))
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.gather(first, third, return_exceptions=True)
    assert second.cancelled()
    assert [b["messages"][-1]["content"] for b in server.requests] == ["first", "third"]
    assert pacer.active == 0


async def test_retry_after_pauses_admission(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    pacer = Pacer(provider, concurrency=4)
    server.fail_next(1, status=429, retry_after_s=0.3)
    with pytest.raises(RateLimited):
        await pacer.complete(ask("first"))
    await pacer.complete(ask("second"))
    arrivals = list(server.arrivals)
    assert arrivals[1] - arrivals[0] >= 0.29


async def test_streams_hold_their_slot_until_they_end(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    pacer = Pacer(provider, concurrency=1)
    stream = pacer.stream(ask("a long enough story to be streamed in parts"))
    deltas = []
    async for delta in stream:
        deltas.append(delta)
        assert pacer.active == 1
    assert pacer.active == 0
    assert stream.reply is not None
    assert "".join(deltas) == stream.reply.text


def test_bad_limits_are_refused(provider: OpenAICompatProvider) -> None:
    with pytest.raises(ValueError, match="rpm"):
        Pacer(provider, rpm=0)
    with pytest.raises(ValueError, match="concurrency"):
        Pacer(provider, concurrency=0)
