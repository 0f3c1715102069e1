"""Waiting instructions park with no frames: what a parked agent's task holds, and that the
pipeline around the wait (gas, journal, timeouts, kill) is the one every instruction takes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import CoroutineType
from typing import Any

import pytest

import avm
from avm import Context, WaitReason
from avm._core.agent_run import AgentRun
from avm._core.interpreter import WaitingInstruction
from avm._core.runtime import Runtime
from avm.errors import SwarmTimeout
from avm.testing import MockClock, wait_until

BACKENDS = ("sqlite", "postgres")


def chain(agent_id: str) -> list[Any]:
    """What the agent's task awaits, outermost first, down to the future it is parked on."""
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == agent_id and not t.done()]
    links: list[Any] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        links.append(awaited)
        if isinstance(awaited, AgentRun):
            awaited = awaited.agent
        elif isinstance(awaited, CoroutineType):
            awaited = awaited.cr_await
        elif isinstance(awaited, WaitingInstruction):
            awaited = awaited.future
        else:
            break
    return links


def runtime(vm: avm.VM) -> Runtime:
    rt = vm._rt
    assert rt is not None
    return rt


async def waiter(ctx: Context, how: str) -> Any:
    if how == "receive":
        return (await ctx.receive()).data
    if how == "receive_timeout":
        return (await ctx.receive(timeout_s=60)).data
    if how == "response":
        return await ctx.wait_for_response(f"{ctx.agent_id}:answer", timeout_s=60)
    if how == "k_of_n":
        replies = await ctx.swarm_wait(f"{ctx.agent_id}:answer", k=2, timeout_s=60)
        return [reply.data for reply in replies]
    assert how == "wait"
    await ctx.wait(60)
    return "slept"


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("receive", WaitReason.MESSAGE),
        ("receive_timeout", WaitReason.MESSAGE),
        ("response", WaitReason.MESSAGE),
        ("k_of_n", WaitReason.MESSAGE),
        ("wait", WaitReason.TIMER),
    ],
)
async def test_a_parked_agent_awaits_its_future_through_no_pipeline_frame(
    make_vm: Callable[..., avm.VM], how: str, reason: WaitReason
) -> None:
    async with make_vm(clock=MockClock()) as vm:
        handle = vm.spawn(vm.agent(name="waiter")(waiter), agent_id="w", how=how)
        await wait_until(lambda: handle.wait_reason is reason)
        links = chain("w")
        # The VM's driver, the agent's function, then the instruction object and the future:
        # nothing else.
        assert isinstance(links[0], AgentRun)
        assert links[1].cr_code.co_name == "waiter"
        assert len(links) == 4
        instruction, future = links[2:]
        assert isinstance(instruction, WaitingInstruction)
        assert isinstance(future, asyncio.Future)
        assert not future.done()
        timed = how != "receive"
        assert (instruction.timer is not None) is timed
        parked = instruction.parked()
        assert parked is not None
        sleeping, deadline, task_id = parked
        assert sleeping is (reason is WaitReason.TIMER)
        assert (deadline is not None) is timed
        assert task_id == ("w:answer" if how in ("response", "k_of_n") else None)
        handle.kill()


async def test_a_killed_parked_agent_leaves_no_timer_getter_or_reserved_gas(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    async with make_vm(clock=MockClock()) as vm:
        agent = vm.agent(name="waiter")(waiter)
        receiving = vm.spawn(agent, agent_id="r", how="receive_timeout", budget=10)
        answering = vm.spawn(agent, agent_id="a", how="response", budget=10)
        sleeping = vm.spawn(agent, agent_id="s", how="wait", budget=10)
        handles = (receiving, answering, sleeping)
        await wait_until(lambda: all(h.wait_reason is not None for h in handles))
        rt = runtime(vm)
        mailbox = vm._process("r").mailbox
        assert mailbox is not None
        for handle in handles:
            handle.kill()
        for handle in handles:
            with pytest.raises(avm.AgentKilled):
                await handle.result()
        assert rt.timers.next_deadline() is None  # every wait's timer was cancelled
        assert mailbox._getter is None
        assert all(vm._process(h.id).gas.reserved == 0 for h in handles)
        assert all(h.gas_spent == 0 for h in handles)
        # A reply after the kill finds no waiter to wake; the waiter-slot was given up.
        rt.bus.reply(avm.Envelope("x:1", "x", "t", 1, "reply", "a:answer"), persist=False)
    store = await open_state()
    for handle in handles:
        entries = await store.journal_entries(handle.id)
        assert entries == []  # the interrupted instruction was never journaled


async def test_waits_journal_in_order_with_results_errors_and_no_gas(
    make_vm: Callable[..., avm.VM], open_state: Callable[[], Any]
) -> None:
    clock = MockClock()
    async with make_vm(clock=clock) as vm:

        @vm.agent(name="busy")
        async def busy(ctx: Context) -> list[Any]:
            got: list[Any] = [(await ctx.receive()).data]  # parks, then a message comes
            got.append((await ctx.receive()).data)  # already there: no wait
            try:
                await ctx.receive(timeout_s=5)
            except SwarmTimeout as err:
                got.append(str(err))
            await ctx.wait(3)
            got.extend([tick async for tick in ctx.schedule_task("t", 2, count=2)])
            return got

        handle = vm.spawn(busy, agent_id="b", budget=1)
        await wait_until(lambda: handle.wait_reason is WaitReason.MESSAGE)
        await vm.post("b", "first")
        await vm.post("b", "second")
        await wait_until(lambda: handle.step == 3)  # in the receive that times out
        clock.advance(5)
        await wait_until(lambda: handle.wait_reason is WaitReason.TIMER)
        clock.advance(3)
        await wait_until(lambda: handle.step == 6 and handle.wait_reason is WaitReason.TIMER)
        clock.advance(2)
        result = await handle.result()
        assert handle.gas_spent == 0
    assert result[:3] == ["first", "second", "agent 'b', step 2, SWARM_WAIT: no message within 5 s"]
    assert result[3:] == [0, 1]
    store = await open_state()
    entries = await store.journal_entries("b")
    assert [(e.step, e.op, int(e.status)) for e in entries] == [
        (0, "SWARM_WAIT", 0),
        (1, "SWARM_WAIT", 0),
        (2, "SWARM_WAIT", 1),
        (3, "WAIT", 0),
        (4, "SCHEDULE_TASK", 0),
        (5, "SCHEDULE_TASK", 0),
    ]
    assert all(e.gas == 0 for e in entries)


async def test_an_instruction_object_is_awaited_once(vm: avm.VM) -> None:
    @vm.agent(name="twice")
    async def twice(ctx: Context) -> str:
        sleep = ctx.wait(0)
        assert asyncio.iscoroutine(sleep)  # asyncio takes it for a coroutine
        await sleep
        with pytest.raises(RuntimeError, match="WAIT was already awaited"):
            await sleep
        unused = ctx.receive()
        unused.close()  # never started: closing it does nothing
        return "ok"

    assert await vm.spawn(twice).result() == "ok"
