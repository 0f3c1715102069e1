"""WAIT and SCHEDULE_TASK on the VM's single timer structure, driven by a mock clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import avm
from avm import Context
from avm.testing import MockClock


async def test_wait_uses_virtual_time(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock(autojump=True)
    woke: list[float] = []
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def sleeper(ctx: Context, delay: float) -> None:
            await ctx.wait(delay)
            woke.append(clock.monotonic())

        handles = [vm.spawn(sleeper, delay=d) for d in (300, 5, 3600)]
        for handle in handles:
            await handle.result()
    assert woke == [5, 300, 3600]


async def test_many_sleepers_share_one_timer_heap(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock()
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def sleeper(ctx: Context) -> None:
            await ctx.wait(10)

        handles = [vm.spawn(sleeper) for _ in range(500)]
        while vm.stats().waiting["timer"] < 500:
            await _tick()
        assert vm.stats().timers == 500
        clock.advance(10)
        for handle in handles:
            await handle.result()
        assert vm.stats().agents["done"] == 500


async def test_schedule_task_ticks_on_a_fixed_grid(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock(autojump=True)
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def ticker(ctx: Context) -> list[tuple[int, float]]:
            seen: list[tuple[int, float]] = []
            async for tick in ctx.schedule_task("tick", interval_s=300, count=4):
                seen.append((tick, clock.monotonic()))
                await ctx.wait(20)  # work inside a tick does not shift the grid
            return seen

        assert await vm.spawn(ticker).result() == [(0, 0), (1, 300), (2, 600), (3, 900)]


async def test_schedule_task_skips_missed_ticks(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock(autojump=True)
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def slow(ctx: Context) -> list[int]:
            ticks: list[int] = []
            async for tick in ctx.schedule_task("tick", interval_s=10, count=3):
                ticks.append(tick)
                if tick == 0:
                    await ctx.wait(35)  # falls behind by more than one interval
            return ticks

        assert await vm.spawn(slow).result() == [0, 3, 4]


async def test_wait_for_response(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock(autojump=True)
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def asker(ctx: Context) -> Any:
            await ctx.swarm_connect("askers")
            task = await ctx.swarm_broadcast("answerers", "what is 6*7?")
            return await ctx.wait_for_response(task, timeout_s=60)

        @vm.agent
        async def answerer(ctx: Context) -> None:
            await ctx.swarm_connect("answerers")
            question = await ctx.receive()
            await ctx.wait(5)
            await ctx.reply(question, 42)

        answering = vm.spawn(answerer)
        while vm.stats().waiting["message"] < 1:
            await _tick()
        assert await vm.spawn(asker).result() == 42
        await answering.result()


async def test_wait_for_response_times_out(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock(autojump=True)
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def asker(ctx: Context) -> str:
            try:
                await ctx.wait_for_response("nobody:1", timeout_s=30)
            except avm.SwarmTimeout as exc:
                return f"{clock.monotonic()}: {exc}"
            return "answered"

        message = await vm.spawn(asker).result()
        assert message.startswith("30.0: agent 'asker-1', step 0, WAIT_FOR_RESPONSE")
        assert "0 of 1 replies within 30 s" in message


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0)
