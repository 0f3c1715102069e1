"""How an agent's task starts and ends (AgentRun): outcomes, failures and kills at each stage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import avm
from avm import AgentState, Context
from avm.testing import wait_until


async def test_an_agent_that_never_suspends_is_done_with_its_value(vm: avm.VM) -> None:
    @vm.agent
    async def instant(ctx: Context, x: int) -> int:
        return x * 2

    handle = vm.spawn(instant, x=21)
    assert await handle.result() == 42
    assert handle.state is AgentState.DONE


async def test_an_agent_that_raises_before_suspending_has_failed(vm: avm.VM) -> None:
    @vm.agent
    async def broken(ctx: Context) -> None:
        raise LookupError("nothing here")

    handle = vm.spawn(broken)
    with pytest.raises(avm.AgentFailed) as failed:
        await handle.result()
    assert isinstance(failed.value.__cause__, LookupError)
    assert handle.state is AgentState.FAILED
    assert vm.stats().agents["failed"] == 1


async def test_an_agent_called_with_arguments_it_does_not_take_has_failed(vm: avm.VM) -> None:
    @vm.agent
    async def strict(ctx: Context, x: int) -> int:
        return x

    handle = vm.spawn(strict, y=1)
    with pytest.raises(avm.AgentFailed) as failed:
        await handle.result()
    assert isinstance(failed.value.__cause__, TypeError)


async def test_an_agent_that_raises_after_suspending_has_failed(vm: avm.VM) -> None:
    @vm.agent
    async def later(ctx: Context) -> None:
        await ctx.kv_store("k", 1)
        raise ValueError("after one instruction")

    with pytest.raises(avm.AgentFailed, match="after one instruction"):
        await vm.spawn(later).result()


async def test_an_agent_killed_while_it_waits_for_a_run_slot_never_runs(
    make_vm: Callable[..., avm.VM],
) -> None:
    started: list[str] = []
    async with make_vm(max_running=1) as vm:

        @vm.agent
        async def hog(ctx: Context) -> None:
            started.append(ctx.agent_id)
            await asyncio.sleep(3600)  # not an instruction: it keeps its run slot

        first = vm.spawn(hog, agent_id="first")
        await wait_until(lambda: started == ["first"], what="the first agent running")
        second = vm.spawn(hog, agent_id="second")
        await asyncio.sleep(0.01)
        assert second.state is AgentState.READY  # queued for the one slot
        second.kill()
        with pytest.raises(avm.AgentKilled):
            await second.result()
        first.kill()
        with pytest.raises(avm.AgentKilled):
            await first.result()
    assert started == ["first"]
