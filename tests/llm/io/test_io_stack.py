"""IOManager and build_stack: wrappers composed per model, end to end over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

import avm
from avm.config import ModelConfig
from avm.errors import ConfigError
from avm.llm.io import IOManager, IOPolicy, build_stack
from avm.llm.io.batch_lane import BatchLane
from avm.llm.io.breaker import CircuitBreaker
from avm.llm.io.pacing import Pacer
from avm.llm.provider import ModelProvider
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest
from avm.testing.fake_openai import FakeOpenAIServer


def ask(text: str = "hello", model: str = "fake-gpt", **fields: object) -> ModelRequest:
    return ModelRequest(
        model=model,
        messages=(Message("system", "rules"), Message("user", text)),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=lambda body: f"backup {body['model']}") as srv:
        yield srv


@pytest.fixture
def manager_for(
    server: FakeOpenAIServer, backup: FakeOpenAIServer
) -> Callable[[dict[str, IOPolicy]], IOManager]:
    configs = {
        "main": ModelConfig(provider="openai", model="fake-gpt", base_url=server.base_url),
        "alias": ModelConfig(provider="openai", model="fake-gpt", base_url=server.base_url),
        "spare": ModelConfig(provider="openai", model="spare-gpt", base_url=backup.base_url),
    }
    providers: dict[str | None, ModelProvider] = {}

    def provider_of(name: str) -> ModelProvider:
        config = configs[name]
        if config.base_url not in providers:
            providers[config.base_url] = OpenAICompatProvider(config.base_url or "", max_retries=0)
        return providers[config.base_url]

    def make(policies: dict[str, IOPolicy]) -> IOManager:
        return IOManager(
            configs.__getitem__, provider_of, policy_of=lambda n: policies.get(n, IOPolicy())
        )

    return make


async def test_default_stack_caches_coalesces_and_batches(
    server: FakeOpenAIServer, manager_for: Callable[[dict[str, IOPolicy]], IOManager]
) -> None:
    server.latency_s = 0.05
    io = manager_for({"main": IOPolicy(batch_max_wait_s=0.05, batch_poll_s=0.01)})
    model = io.provider("main")
    assert io.provider("main") is model
    replies = await asyncio.gather(*(model.complete(ask()) for _ in range(10)))
    assert {r.text for r in replies} == {"echo: hello"}
    await model.complete(ask())
    assert server.completion_count == 1
    deferred = await model.complete(ask("later", deferrable=True))
    assert deferred.text == "echo: later"
    assert len(server.batches) == 1
    stats = io.stats()["main"]
    assert stats["breaker"] == "closed"
    assert stats["cache_hits"] == 1
    assert stats["coalesced"] == 9
    assert stats["batches"] == 1
    await io.aclose()


async def test_fallback_by_model_name(
    server: FakeOpenAIServer,
    backup: FakeOpenAIServer,
    manager_for: Callable[[dict[str, IOPolicy]], IOManager],
) -> None:
    io = manager_for({"main": IOPolicy(fallback="spare", breaker_failures=2, cache=False)})
    model = io.provider("main")
    server.fail_next(100, status=503)
    for _ in range(4):
        assert (await model.complete(ask())).text == "backup spare-gpt"
    assert server.completion_count == 2  # open after two failures
    assert io.stats()["main"]["breaker"] == "open"
    assert io.stats()["main"]["fallback_calls"] == 4
    await io.aclose()


async def test_models_on_one_upstream_share_a_pacer(
    manager_for: Callable[[dict[str, IOPolicy]], IOManager],
) -> None:
    policy = IOPolicy(concurrency=2)
    io = manager_for({"main": policy, "alias": policy})

    def pacer_of(provider: ModelProvider) -> Pacer:
        layer: object = provider
        while not isinstance(layer, Pacer):
            is_breaker = isinstance(layer, CircuitBreaker)
            layer = layer.primary if is_breaker else layer.inner  # type: ignore[attr-defined]
        return layer

    shared = pacer_of(io.provider("main"))
    assert shared is pacer_of(io.provider("alias"))
    assert shared.concurrency == 2
    await io.aclose()


async def test_a_model_cannot_fall_back_on_itself(
    manager_for: Callable[[dict[str, IOPolicy]], IOManager],
) -> None:
    io = manager_for({"main": IOPolicy(fallback="main")})
    with pytest.raises(ConfigError, match="itself"):
        io.provider("main")


async def test_streaming_through_the_whole_stack(
    server: FakeOpenAIServer, manager_for: Callable[[dict[str, IOPolicy]], IOManager]
) -> None:
    io = manager_for({"main": IOPolicy(concurrency=1, rpm=6000)})
    model = io.provider("main")
    assert isinstance(model, CircuitBreaker)
    text = "a story long enough to arrive in several chunks"
    stream = model.stream(ask(text))
    deltas = [d async for d in stream]
    assert len(deltas) > 1
    assert "".join(deltas) == "echo: " + text
    again = model.stream(ask(text))
    assert [d async for d in again] == ["echo: " + text]  # from the cache
    assert server.completion_count == 1
    await io.aclose()


def test_build_stack_leaves_out_what_the_policy_does_not_ask_for() -> None:
    provider = OpenAICompatProvider("http://127.0.0.1:1/v1")
    bare = build_stack(provider, IOPolicy(cache=False, coalesce=False, batch=False))
    assert bare.primary is provider
    full = build_stack(provider, IOPolicy(rpm=60))
    layers = []
    layer: object = full.primary
    while layer is not provider:
        layers.append(type(layer).__name__)
        layer = layer.inner  # type: ignore[attr-defined]
    assert layers == ["ResponseCache", "Coalescer", "BatchLane", "Pacer"]
    assert not isinstance(bare.primary, BatchLane)


def test_policy_from_a_config_with_the_fields() -> None:
    @dataclass
    class Config:
        model: str = "m"
        rpm: float = 500
        concurrency: int = 8
        fallback: str = "spare"

    policy = IOPolicy.from_config(Config(), cache_ttl_s=5.0)
    assert (policy.rpm, policy.concurrency, policy.fallback) == (500, 8, "spare")
    assert policy.cache_ttl_s == 5.0
    assert IOPolicy.from_config(ModelConfig(provider="openai", model="x")) == IOPolicy()
    with pytest.raises(ConfigError, match="rpm"):
        IOPolicy(rpm=0)
    with pytest.raises(ConfigError):
        IOPolicy.from_config(Config(), concurrency="many")


async def test_agents_run_models_through_the_stack(
    server: FakeOpenAIServer, make_vm: Callable[..., avm.VM]
) -> None:
    server.latency_s = 0.02
    vm = make_vm(durability="relaxed")
    config = ModelConfig(provider="openai", model="fake-gpt", base_url=server.base_url)
    stack = build_stack(OpenAICompatProvider(server.base_url), IOPolicy(concurrency=4))
    vm.models.add("default", config, provider=stack)
    vm.prompts.add("rules", "be brief")

    @vm.agent
    async def asker(ctx: avm.Context, i: int) -> str:
        rules = await ctx.load_prompt("rules")
        reply = await ctx.run_model("default", [rules, f"question {i % 3}"])
        return reply.text

    async with vm:
        handles = [vm.spawn(asker, i=i) for i in range(12)]
        answers = [await h.result() for h in handles]
    assert answers == [f"echo: question {i % 3}" for i in range(12)]
    assert server.completion_count == 3  # three distinct questions


async def test_an_unencodable_request_is_a_model_error(server: FakeOpenAIServer) -> None:
    from avm.errors import ModelError
    from avm.llm.types import ToolSpec

    provider = OpenAICompatProvider(server.base_url)
    odd = ToolSpec("odd", "a schema that is not JSON", {"type": "object", "default": object()})
    try:
        with pytest.raises(ModelError, match="cannot encode the request's tools"):
            await build_stack(provider).complete(ask(tools=(odd,)))
        with pytest.raises(ModelError, match="cannot encode"):
            await provider.complete(ask(tools=(odd,)))
        reply = await provider.complete(ask())  # the pool is still usable
    finally:
        await provider.aclose()
    assert reply.text == "echo: hello"
    assert server.completion_count == 1
