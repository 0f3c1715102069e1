"""Recovery: unfinished agents resume from their journal, performing nothing twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import avm
from avm import Context
from avm._core.journal import EntryFlag
from avm.testing import FakeOpenAIServer, MockClock, wait_until

StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # the conftest's state_sql fixture
BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores


async def journal(state_sql: StateSql, agent_id: str) -> list[tuple[Any, ...]]:
    return await state_sql(
        "SELECT step, op, status, flags FROM journal WHERE agent_id = ? ORDER BY step", agent_id
    )


def build(vm: avm.VM, server: FakeOpenAIServer, writes: Counter[str]) -> avm.AgentDefinition:
    vm.model("default", "openai:fake-gpt", base_url=server.base_url)

    @vm.tool("orders", kind="write")
    async def orders(data: Any, *, invocation: avm.ToolInvocation) -> str:
        writes[invocation.idempotency_key] += 1
        return "ok"

    @vm.agent(name="worker")
    async def worker(ctx: Context, rounds: int) -> int:
        total = 0
        for i in range(rounds):
            reply = await ctx.run_model("default", f"round {i} of {ctx.agent_id}")
            await ctx.write_to_tool("orders", {"round": i, "said": reply.text})
            count = (await ctx.kv_fetch("count")) or 0
            await ctx.kv_store("count", count + 1)
            await ctx.sql_execute("CREATE TABLE IF NOT EXISTS r (i INTEGER)")
            await ctx.sql_execute("INSERT INTO r VALUES (?)", (i,))
            total += 1
            if i == 1:
                message = await ctx.receive()  # the host stops while the agent waits here
                total += message.data
        return total

    return worker


async def test_restart_resumes_without_repeating_effects(
    make_vm: Callable[..., avm.VM], fake_server: FakeOpenAIServer, state_sql: StateSql
) -> None:
    writes: Counter[str] = Counter()
    async with make_vm() as vm:
        worker = build(vm, fake_server, writes)
        handle = vm.spawn(worker, agent_id="w", rounds=4)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    assert fake_server.completion_count == 2

    async with make_vm() as vm:
        build(vm, fake_server, writes)
        handle = vm.handle("w")  # recovered on start
        await handle.post(100)
        assert await handle.result() == 104
        stats = vm.stats()
    assert fake_server.completion_count == 4  # rounds 0 and 1 were not called again
    assert set(writes.values()) == {1}
    assert len(writes) == 4
    ((count,),) = await state_sql("SELECT value FROM kv WHERE agent_id = 'w'")
    ((status,),) = await state_sql("SELECT status FROM agents WHERE agent_id = 'w'")
    assert count == b"\x04"  # msgpack 4: four increments, none lost or doubled
    assert status == "done"
    assert stats.agents["done"] == 1


async def test_recovered_gas_matches_the_journal(
    make_vm: Callable[..., avm.VM], fake_server: FakeOpenAIServer
) -> None:
    writes: Counter[str] = Counter()
    async with make_vm() as vm:
        worker = build(vm, fake_server, writes)
        handle = vm.spawn(worker, agent_id="w", rounds=3, budget=10_000)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        spent_before = handle.gas_spent
    async with make_vm() as vm:
        build(vm, fake_server, writes)
        handle = vm.handle("w")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        assert handle.gas_spent == spent_before
        assert handle.gas_budget == 10_000
        handle.kill()


async def test_divergence_halts_with_a_clear_error(
    make_vm: Callable[..., avm.VM], state_sql: StateSql
) -> None:
    async with make_vm() as vm:

        @vm.agent(name="flip")
        async def first(ctx: Context) -> None:
            await ctx.kv_store("a", 1)
            await ctx.kv_store("b", 2)
            await ctx.receive()

        handle = vm.spawn(first, agent_id="f")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)

    async with make_vm() as vm:

        @vm.agent(name="flip")
        async def changed(ctx: Context) -> None:
            await ctx.kv_store("a", 1)
            await ctx.kv_fetch("b")  # the code changed: step 1 was a KV_STORE
            await ctx.receive()

        with pytest.raises(avm.AgentFailed) as failed:
            await vm.handle("f").result()
    cause = failed.value.__cause__
    assert isinstance(cause, avm.ReplayDivergence)
    assert str(cause) == (
        "agent 'f', step 1, KV_FETCH: journal has KV_STORE at this step, but the agent now "
        "issued KV_FETCH; agent code must be deterministic between instructions"
    )
    assert [row[1] for row in await journal(state_sql, "f")] == ["KV_STORE", "KV_STORE"]


async def test_same_instruction_different_arguments_diverges(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make_vm() as vm:

        @vm.agent(name="a")
        async def first(ctx: Context) -> None:
            await ctx.kv_store("k", "original")
            await ctx.receive()

        handle = vm.spawn(first, agent_id="a")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)

    async with make_vm() as vm:

        @vm.agent(name="a")
        async def second(ctx: Context) -> None:
            await ctx.kv_store("k", "edited")
            await ctx.receive()

        with pytest.raises(avm.AgentFailed, match="different arguments"):
            await vm.handle("a").result()


async def test_checkpoint_bounds_replay(
    make_vm: Callable[..., avm.VM], state_sql: StateSql
) -> None:
    # The checkpoint pattern: load at the top, save as the last instruction of each round.
    async def looper(ctx: Context) -> int:
        state = await ctx.load_execution_state() or {"i": 0}
        while state["i"] < 6:
            if state["i"] == 3:
                await ctx.receive()
            await ctx.kv_store(f"k{state['i']}", state["i"])
            state["i"] += 1
            await ctx.save_execution_state(state)
        return int(state["i"])

    async with make_vm() as vm:
        handle = vm.spawn(vm.agent(name="looper")(looper), agent_id="L")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)

    # History before the checkpoint is not needed for recovery: delete it to prove it.
    await state_sql("DELETE FROM journal WHERE agent_id = 'L' AND step < 6")
    async with make_vm() as vm:
        vm.agent(name="looper")(looper)
        handle = vm.handle("L")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        await handle.post("go on")
        assert await handle.result() == 6
    steps = await journal(state_sql, "L")
    assert [s[0] for s in steps] == list(range(6, 14))
    assert steps[1][1:] == ("SWARM_WAIT", 0, EntryFlag.AFTER_CRASH)


async def test_checkpoint_requires_load_first(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm() as vm:

        @vm.agent(name="c")
        async def first(ctx: Context) -> None:
            await ctx.save_execution_state({"n": 1})
            await ctx.receive()

        handle = vm.spawn(first, agent_id="c")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)

    async with make_vm() as vm:
        vm.agent(name="c")(first)
        with pytest.raises(avm.AgentFailed, match="first instruction must be LOAD_EXECUTION_STATE"):
            await vm.handle("c").result()


async def test_messages_survive_a_restart_exactly_once(make_vm: Callable[..., avm.VM]) -> None:
    def define(vm: avm.VM) -> tuple[avm.AgentDefinition, avm.AgentDefinition]:
        @vm.agent(name="collector")
        async def collector(ctx: Context) -> list[Any]:
            await ctx.swarm_connect("feed")
            first = await ctx.receive()
            await ctx.wait(0.01)
            second = await ctx.receive()
            return [first.data, second.data]

        @vm.agent(name="speaker")
        async def speaker(ctx: Context) -> None:
            await ctx.swarm_broadcast("feed", "one")
            await ctx.swarm_broadcast("feed", "two")

        return collector, speaker

    # Time stands still in the first VM: the collector stays in its wait between the messages.
    async with make_vm(clock=MockClock()) as vm:
        collector, speaker = define(vm)
        receiving = vm.spawn(collector, agent_id="col")
        await wait_until(lambda: receiving.wait_reason is avm.WaitReason.MESSAGE)
        await vm.spawn(speaker, agent_id="spk").result()
        # Stop while the collector has taken "one" and "two" is still in its mailbox.
        await wait_until(lambda: receiving.wait_reason is avm.WaitReason.TIMER)

    async with make_vm() as vm:
        define(vm)
        assert await vm.handle("col").result() == ["one", "two"]


async def test_in_flight_sql_write_is_not_applied_twice(
    make_vm: Callable[..., avm.VM], state_sql: StateSql
) -> None:
    async def writer(ctx: Context) -> int:
        await ctx.sql_execute("CREATE TABLE t (v INTEGER)")
        await ctx.sql_execute("INSERT INTO t VALUES (7)")
        await ctx.receive()
        rows = await ctx.sql_fetch("SELECT count(*) FROM t")
        return int(rows[0][0])

    async with make_vm() as vm:
        handle = vm.spawn(vm.agent(name="writer")(writer), agent_id="sw")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    # A crash after the INSERT committed in the agent's own database but before its journal
    # entry did looks like this: the journal ends before step 1.
    await state_sql("DELETE FROM journal WHERE agent_id = 'sw' AND step >= 1")

    async with make_vm() as vm:
        vm.agent(name="writer")(writer)
        handle = vm.handle("sw")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        await handle.post("go")
        assert await handle.result() == 1  # the INSERT was not applied a second time
    flags = {step: f for step, _, _, f in await journal(state_sql, "sw")}
    assert flags[1] == EntryFlag.AFTER_CRASH | EntryFlag.DEDUPLICATED
    assert flags[2] == EntryFlag.NONE


async def test_unknown_definition_stays_stopped(
    make_vm: Callable[..., avm.VM], caplog: pytest.LogCaptureFixture, state_sql: StateSql
) -> None:
    async with make_vm() as vm:

        @vm.agent(name="ghost")
        async def ghost(ctx: Context) -> None:
            await ctx.receive()

        vm.spawn(ghost, agent_id="g")
    caplog.set_level("INFO")
    async with make_vm() as vm:
        with pytest.raises(avm.UnknownAgent):
            vm.handle("g")
    assert "1 unfinished agents wait for their definitions: ghost" in caplog.text
    assert await state_sql("SELECT status FROM agents") == [("stopped",)]


async def test_time_and_randomness_are_journaled(make_vm: Callable[..., avm.VM]) -> None:
    seen: list[tuple[float, float]] = []

    async def sampler(ctx: Context) -> None:
        seen.append((await ctx.now(), await ctx.random()))
        await ctx.receive()

    async with make_vm() as vm:
        handle = vm.spawn(vm.agent(name="sampler")(sampler), agent_id="s")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
    async with make_vm() as vm:
        vm.agent(name="sampler")(sampler)
        handle = vm.handle("s")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        handle.kill()
    assert len(seen) == 2
    assert seen[0] == seen[1]
