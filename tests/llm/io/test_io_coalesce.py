"""Coalescer: identical concurrent requests share one upstream call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from avm.errors import ProviderUnavailable
from avm.llm.io.coalesce import Coalescer
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest, Usage
from avm.testing.fake_openai import FakeOpenAIServer


def ask(text: str = "hello", **fields: Any) -> ModelRequest:
    fields.setdefault("model", "fake-gpt")
    return ModelRequest(messages=(Message("system", "be brief"), Message("user", text)), **fields)


async def test_n_identical_concurrent_requests_make_one_upstream_call(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.1
    coalescer = Coalescer(provider)
    replies = await asyncio.gather(*(coalescer.complete(ask()) for _ in range(50)))

    assert server.completion_count == 1
    assert {r.text for r in replies} == {"echo: hello"}
    # The leader pays for the call; the 49 who rode along consumed nothing upstream.
    assert sum(1 for r in replies if r.usage != Usage()) == 1
    assert (coalescer.calls, coalescer.joined) == (1, 49)
    assert coalescer.in_flight == 0


async def test_different_or_sampled_requests_are_not_shared(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.05
    coalescer = Coalescer(provider)
    await asyncio.gather(
        coalescer.complete(ask("a")),
        coalescer.complete(ask("b")),
        coalescer.complete(ask("c", temperature=1.0)),
        coalescer.complete(ask("c", temperature=1.0)),
    )
    assert server.completion_count == 4


async def test_sequential_requests_each_call(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    coalescer = Coalescer(provider)
    await coalescer.complete(ask())
    await coalescer.complete(ask())
    assert server.completion_count == 2


async def test_every_follower_gets_its_own_copy_of_a_failure(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.fail_next(1, status=503)
    coalescer = Coalescer(provider)
    results = await asyncio.gather(
        *(coalescer.complete(ask()) for _ in range(5)), return_exceptions=True
    )
    assert server.completion_count == 1
    errors = [r for r in results if isinstance(r, ProviderUnavailable)]
    assert len(errors) == 5
    assert len({id(e) for e in errors}) == 5
    errors[1].locate("agent-2", "RUN_MODEL", 7)
    assert errors[2].agent_id is None


async def test_a_cancelled_leader_hands_over_to_a_follower(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.2
    coalescer = Coalescer(provider)
    leader = asyncio.create_task(coalescer.complete(ask()))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(coalescer.complete(ask()))
    await asyncio.sleep(0.05)
    leader.cancel()
    reply = await asyncio.wait_for(follower, timeout=5)
    assert reply.text == "echo: hello"
    assert reply.usage != Usage()  # it became the leader and made the call itself
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert server.completion_count == 2


async def test_a_cancelled_follower_leaves_the_others_alone(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    server.latency_s = 0.1
    coalescer = Coalescer(provider)
    tasks = [asyncio.create_task(coalescer.complete(ask())) for _ in range(3)]
    await asyncio.sleep(0.03)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [r.text for r in (done[0], done[2])] == ["echo: hello"] * 2  # type: ignore[union-attr]
    assert server.completion_count == 1
