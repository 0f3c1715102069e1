"""Run slots: priority classes first, round-robin inside a class, live state counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import avm
from avm import AgentState, Context, Priority
from avm.testing import MockClock


async def _hold_slot_until_all_queue(vm: avm.VM) -> avm.AgentHandle:
    """Spawn an agent that keeps the only run slot (no instructions) while the others queue."""

    @vm.agent(name="hog")
    async def hog(ctx: Context) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    return vm.spawn(hog)


async def test_interactive_runs_before_background(make_vm: Callable[..., avm.VM]) -> None:
    order: list[str] = []
    async with make_vm(max_running=1, durability="relaxed") as vm:

        @vm.agent
        async def worker(ctx: Context, tag: str) -> None:
            for i in range(3):
                order.append(f"{tag}{i}")
                await ctx.kv_fetch("k")

        hog = await _hold_slot_until_all_queue(vm)
        handles = [vm.spawn(worker, tag=f"b{n}", priority="background") for n in range(2)]
        handles += [vm.spawn(worker, tag=f"i{n}", priority="interactive") for n in range(2)]
        await hog.result()
        for handle in handles:
            await handle.result()

    assert order == [
        "i00", "i10", "i01", "i11", "i02", "i12",
        "b00", "b10", "b01", "b11", "b02", "b12",
    ]  # fmt: skip


async def test_round_robin_inside_a_class(make_vm: Callable[..., avm.VM]) -> None:
    order: list[str] = []
    async with make_vm(max_running=1, durability="relaxed") as vm:

        @vm.agent
        async def worker(ctx: Context, tag: str) -> None:
            for i in range(3):
                order.append(f"{tag}{i}")
                await ctx.kv_fetch("k")

        hog = await _hold_slot_until_all_queue(vm)
        handles = [vm.spawn(worker, tag=t) for t in "abc"]
        await hog.result()
        for handle in handles:
            await handle.result()
    assert order == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]


async def test_run_slots_cap_concurrent_agents(make_vm: Callable[..., avm.VM]) -> None:
    running = peak = 0
    async with make_vm(max_running=3, durability="relaxed") as vm:

        @vm.agent
        async def worker(ctx: Context) -> None:
            nonlocal running, peak
            for _ in range(5):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0)  # agent code that yields without an instruction
                running -= 1
                await ctx.kv_fetch("k")

        await asyncio.gather(*(vm.spawn(worker).result() for _ in range(20)))
    assert peak == 3


async def test_stats_by_state_and_reason(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock()
    async with make_vm(clock=clock) as vm:

        @vm.agent
        async def sleeper(ctx: Context) -> None:
            await ctx.wait(10)

        @vm.agent
        async def listener(ctx: Context) -> None:
            await ctx.receive()

        sleepers = [vm.spawn(sleeper) for _ in range(4)]
        listeners = [vm.spawn(listener) for _ in range(2)]
        for _ in range(50):
            await asyncio.sleep(0)
        stats = vm.stats()
        assert stats.agents["waiting"] == 6
        assert stats.waiting["timer"] == 4
        assert stats.waiting["message"] == 2
        assert stats.run_slots == 0

        clock.advance(10.0)
        for handle in sleepers:
            await handle.result()
        for handle in listeners:
            await handle.post("wake up")
            await handle.result()
        clock.advance(1.0)  # rates cover whole seconds only
        stats = vm.stats()
        assert stats.agents["done"] == 6
        assert stats.instructions == 6
        assert stats.instructions_per_s > 0


async def test_priority_parse() -> None:
    assert Priority.parse("Interactive") is Priority.INTERACTIVE
    with pytest.raises(ValueError, match="interactive, normal, background"):
        Priority.parse("urgent")
    assert AgentState.DONE.finished
    assert not AgentState.OUT_OF_GAS.finished
