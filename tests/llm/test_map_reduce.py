"""LOAD_MODEL, MAP_MODEL_CALL and REDUCE_MODEL_CALL through a real VM and real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import avm
from avm import Context
from avm.testing import FakeOpenAIServer


async def test_map_keeps_order_and_reports_failures_per_item(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url, price_in=1, price_out=1)

        @vm.agent
        async def mapper(ctx: Context) -> list[Any]:
            return await ctx.map_model_call("default", [f"item {i}" for i in range(10)])

        items = await vm.spawn(mapper).result()
        assert [item.text for item in items] == [f"echo: item {i}" for i in range(10)]
        assert all(item.ok for item in items)
        usage = vm.ledger.by_model()["default"]
        assert usage.calls == 10
        # gas: 1 per item, plus the tokens at their prices
        assert vm.ledger.by_instruction()["MAP_MODEL_CALL"] == pytest.approx(
            10 + usage.tokens_in + usage.tokens_out
        )

        server.fail_next(1, status=400)  # one item refused by the provider; the rest answer

        @vm.agent
        async def partial(ctx: Context) -> list[Any]:
            return await ctx.map_model_call("default", ["a", "b", "c"])

        items = await vm.spawn(partial).result()
        assert [item.ok for item in items].count(False) == 1
        failed = next(item for item in items if not item.ok)
        assert failed.error.startswith("ModelError")


async def test_reduce_aggregations(make_vm: Callable[..., avm.VM]) -> None:
    async with FakeOpenAIServer() as server, make_vm() as vm:
        vm.model("default", "openai:fake-gpt", base_url=server.base_url)

        @vm.reducer("longest")
        def longest(values: list[Any]) -> str:
            return max(values, key=len)

        @vm.agent
        async def reducer(ctx: Context) -> dict[str, Any]:
            votes = ["BUY", "HOLD", "BUY", " BUY", "SELL"]
            mapped = await ctx.map_model_call("default", ["x", "yy"])
            return {
                "vote": await ctx.reduce_model_call("vote", votes),
                "count": await ctx.reduce_model_call("count", votes),
                "concat": await ctx.reduce_model_call("concat", mapped),
                "longest": await ctx.reduce_model_call("longest", ["a", "abc", "ab"]),
                "summary": await ctx.reduce_model_call("summarize", ["up 5%", "down 2%"]),
            }

        out = await vm.spawn(reducer).result()
        assert out["vote"] == {"winner": "BUY", "counts": {"BUY": 3, "HOLD": 1, "SELL": 1}}
        assert out["count"] == 5
        assert out["concat"] == "echo: x\necho: yy"
        assert out["longest"] == "abc"
        assert out["summary"].startswith("echo: Summarize these results")

        @vm.agent
        async def unknown(ctx: Context) -> None:
            await ctx.reduce_model_call("median", [1, 2])

        with pytest.raises(avm.AgentFailed, match="unknown aggregation 'median'"):
            await vm.spawn(unknown).result()


async def test_load_model_warms_the_local_model(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm() as vm:
        vm.model("small", "local:smollm2-135m-instruct")

        @vm.agent
        async def loader(ctx: Context) -> Any:
            return await ctx.load_model("small")

        info = await vm.spawn(loader).result()
        assert info.local
        assert 50 < info.size_mb < 200  # the SmolLM2-135M GGUF
        assert vm.ledger.by_instruction()["LOAD_MODEL"] == pytest.approx(
            0.1 * info.size_mb, rel=1e-3
        )
