"""Failures stay where they happen: a bad agent never stops the others or the VM."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import avm
from avm import AgentState, Context

BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores


async def test_a_failing_agent_does_not_stop_the_others(vm: avm.VM) -> None:
    @vm.agent
    async def worker(ctx: Context, n: int) -> int:
        await ctx.kv_store("n", n)
        if n % 3 == 0:
            raise ValueError(f"agent bug {n}")
        return n

    handles = [vm.spawn(worker, n=n) for n in range(30)]
    outcomes: list[Any] = []
    for handle in handles:
        try:
            outcomes.append(await handle.result())
        except avm.AgentFailed as exc:
            outcomes.append((type(exc.__cause__).__name__, exc.agent_id == handle.id))
    assert outcomes == [("ValueError", True) if n % 3 == 0 else n for n in range(30)]
    stats = vm.stats()
    assert stats.agents["failed"] == 10
    assert stats.agents["done"] == 20
    assert vm.running


async def test_errors_name_agent_step_and_instruction(vm: avm.VM) -> None:
    @vm.agent
    async def agent(ctx: Context) -> None:
        await ctx.kv_store("ok", 1)
        await ctx.wait(-5)

    with pytest.raises(avm.AgentFailed) as failed:
        await vm.spawn(agent, agent_id="bad-args").result()
    assert str(failed.value.__cause__) == (
        "agent 'bad-args', step 1, WAIT: argument 'delay_s' must not be negative"
    )


async def test_capabilities_are_enforced(vm: avm.VM) -> None:
    @vm.tool("news")
    async def news(q: Any) -> str:
        return "headline"

    @vm.tool("exchange", kind="write")
    async def exchange(order: Any) -> str:
        return "filled"

    vm.prompts.add("analyst", "x")
    vm.prompts.add("admin", "y")

    @vm.agent(tools=["news"], models=[], prompts=["analyst"])
    async def limited(ctx: Context) -> list[str]:
        denied = []
        for attempt in (
            lambda: ctx.write_to_tool("exchange", {"buy": 1}),
            lambda: ctx.run_model("default", "hi"),
            lambda: ctx.load_prompt("admin"),
        ):
            try:
                await attempt()
            except avm.CapabilityDenied as exc:
                denied.append(str(exc))
        await ctx.read_from_tool("news")  # granted
        tools = await ctx.get_tools_list()
        return [*denied, ",".join(t.name for t in tools)]

    result = await vm.spawn(limited).result()
    assert "tool 'exchange' was not granted to this agent (news)" in result[0]
    assert "model 'default' was not granted to this agent (none)" in result[1]
    assert "prompt 'admin' was not granted to this agent (analyst)" in result[2]
    assert result[3] == "news"


async def test_tool_cannot_be_used_the_wrong_way(vm: avm.VM) -> None:
    @vm.tool("feed")
    async def feed(q: Any) -> str:
        return "data"

    @vm.agent
    async def agent(ctx: Context) -> None:
        await ctx.write_to_tool("feed", "x")

    with pytest.raises(avm.AgentFailed, match="tool 'feed' cannot be written to"):
        await vm.spawn(agent).result()


async def test_kill_and_unknown_agents(vm: avm.VM) -> None:
    @vm.agent
    async def forever(ctx: Context) -> None:
        await ctx.receive()

    handle = vm.spawn(forever)
    never_started = vm.spawn(forever)
    never_started.kill()  # cancelled before its task first ran
    await asyncio.sleep(0)
    handle.kill()
    for h in (handle, never_started):
        with pytest.raises(avm.AgentKilled):
            await h.result()
        assert h.state is AgentState.KILLED
    assert vm.stats().agents["killed"] == 2
    with pytest.raises(avm.UnknownAgent, match="no agent with id 'ghost'"):
        vm.top_up("ghost", 10)


async def test_spawn_checks(vm: avm.VM) -> None:
    @vm.agent
    async def agent(ctx: Context, payload: Any = None) -> None:
        await ctx.receive()

    vm.spawn(agent, agent_id="same")
    with pytest.raises(avm.AgentExists):
        vm.spawn(agent, agent_id="same")
    with pytest.raises(avm.AvmError, match="spawn arguments of type dict cannot be stored"):
        vm.spawn(agent, payload=object())
    with pytest.raises(avm.AvmError, match="must be an async function"):
        vm.agent(lambda ctx: None)  # type: ignore[arg-type]


async def test_vm_must_be_started(make_vm: Any) -> None:
    vm = make_vm()

    @vm.agent
    async def agent(ctx: Context) -> None:
        return None

    with pytest.raises(avm.VMStateError, match="not started"):
        vm.spawn(agent)


async def test_unknown_vm_option(make_vm: Any) -> None:
    with pytest.raises(avm.AvmError, match="unknown VM option"):
        make_vm(max_runing=3)
