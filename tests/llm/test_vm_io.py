"""The I/O manager sits between every agent's RUN_MODEL and the provider (real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import avm
from avm import Context
from avm.testing import FakeOpenAIServer


async def test_identical_calls_share_one_request(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer(latency_s=0.05) as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)

        @vm.agent
        async def asker(ctx: Context) -> str:
            return (await ctx.run_model("default", "what moved the market?")).text

        replies = await asyncio.gather(*(vm.spawn(asker).result() for _ in range(50)))
        assert set(replies) == {"echo: what moved the market?"}
        assert server.completion_count == 1  # 50 agents, one upstream call (coalesced)
        # Afterwards the same question is answered from the cache; only the agent whose call
        # reached the provider was charged for tokens.
        assert await vm.spawn(asker).result() == "echo: what moved the market?"
        assert server.completion_count == 1
        assert vm.ledger.by_model()["default"].calls == 51
        assert vm.ledger.by_model()["default"].tokens_in > 0


async def test_cache_can_be_turned_off_per_call(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)

        @vm.agent
        async def asker(ctx: Context) -> None:
            await ctx.run_model("default", "fresh please", cache=False)

        for _ in range(3):
            await vm.spawn(asker).result()
        assert server.completion_count == 3


async def test_deferrable_calls_go_through_the_batch_api(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model(
            "default", "openai:fake-gpt", base_url=server.base_url,
            batch_max_wait_s=0.1, batch_poll_s=0.05,
        )  # fmt: skip

        @vm.agent
        async def summariser(ctx: Context, n: int) -> str:
            return (await ctx.run_model("default", f"summary {n}", deferrable=True)).text

        replies = await asyncio.gather(*(vm.spawn(summariser, n=n).result() for n in range(5)))
        assert replies == [f"echo: summary {n}" for n in range(5)]
        assert server.completion_count == 0  # nothing went through the online endpoint
        assert len(server.batch_requests) == 5


async def test_interactive_agents_are_served_first(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer(latency_s=0.02) as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url, concurrency=1)
        order: list[str] = []

        @vm.agent
        async def caller(ctx: Context, tag: str) -> None:
            await ctx.run_model("default", f"{tag} asks", cache=False)
            order.append(tag)

        background = [vm.spawn(caller, tag=f"b{i}", priority="background") for i in range(4)]
        await asyncio.sleep(0.01)  # the first background call is in flight, the rest queue
        urgent = vm.spawn(caller, tag="urgent", priority="interactive")
        for handle in [*background, urgent]:
            await handle.result()
        assert order.index("urgent") <= 1  # served right after the call already in flight
