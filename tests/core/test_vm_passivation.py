"""Passivation: idle agents leave RAM, come back on their event, and cannot tell.

Time is a MockClock that jumps to the next deadline whenever the loop is idle, so a 30-second
passivation threshold and a 100-second WAIT take milliseconds and land on exact instants.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

import avm
from avm import Context
from avm.testing import MockClock, wait_until

BACKENDS = ("sqlite", "postgres")
AFTER_S = 30.0


def make(make_vm: Callable[..., avm.VM], *, passivate: bool = True, **options: Any) -> avm.VM:
    options.setdefault("clock", MockClock(autojump=True))
    return make_vm(passivate_after=AFTER_S if passivate else None, **options)


def tasks_of(agent_id: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == agent_id and not t.done()]


async def passivated(vm: avm.VM, *handles: avm.AgentHandle) -> None:
    await wait_until(lambda: all(h.passivated for h in handles), what="agents passivated")
    await wait_until(lambda: not any(tasks_of(h.id) for h in handles), what="tasks gone")


def journal_of(agent_id: str, state_dir: Path) -> list[tuple[Any, ...]]:
    """An agent's journal without wall times (and message ids, which name the host run)."""
    with sqlite3.connect(state_dir / "state.db") as db:
        rows = db.execute(
            "SELECT step, op, args_digest, status, result, gas, flags FROM journal "
            "WHERE agent_id = ? ORDER BY step",
            (agent_id,),
        ).fetchall()
    out = []
    for step, op, digest, status, result, gas, flags in rows:
        value = msgspec.msgpack.decode(result)
        if isinstance(value, dict):
            value.pop("id", None)
        out.append((step, op, digest, status, value, gas, flags))
    return out


async def receiver(ctx: Context, rounds: int) -> list[Any]:
    await ctx.kv_store("started", True)
    got = []
    for _ in range(rounds):
        envelope = await ctx.receive()
        got.append(envelope.data)
        await ctx.kv_store("seen", len(got))
    return got


async def sleeper(ctx: Context) -> list[float]:
    before = await ctx.now()
    await ctx.wait(100.0)
    after = await ctx.now()
    return [before, after]


async def test_an_agent_waiting_on_a_message_is_passivated_and_woken_by_one(
    make_vm: Callable[..., avm.VM], backend: str, tmp_path: Path
) -> None:
    async with make(make_vm) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="r", rounds=2)
        await passivated(vm, handle)
        stats = vm.stats()
        assert (stats.passivated, stats.resident) == (1, 0)
        assert stats.agents["waiting"] == 1
        assert stats.waiting["message"] == 1
        assert handle.state is avm.AgentState.WAITING
        assert handle.wait_reason is avm.WaitReason.MESSAGE
        step = handle.step
        await handle.post("one")
        await wait_until(lambda: handle.step > step, what="the message consumed")
        await passivated(vm, handle)  # idle again on the second receive
        await handle.post("two")
        assert await handle.result() == ["one", "two"]
        assert vm.stats().passivated == 0
    if backend == "sqlite":
        # The same agent, never passivated, leaves the same journal (bar wall times).
        async with make(make_vm, passivate=False, state_dir=tmp_path / "plain") as plain:
            other = plain.spawn(plain.agent(name="receiver")(receiver), agent_id="r", rounds=2)
            await wait_until(lambda: other.wait_reason is avm.WaitReason.MESSAGE)
            await other.post("one")
            await other.post("two")
            assert await other.result() == ["one", "two"]
        passive = journal_of("r", tmp_path / "state")
        assert passive == journal_of("r", tmp_path / "plain")
        assert len(passive) == 5
        assert all(row[-1] == 0 for row in passive)  # no AFTER_CRASH flags


async def test_a_timer_wakes_a_passivated_agent_at_its_own_deadline(
    make_vm: Callable[..., avm.VM],
) -> None:
    clock = MockClock()  # moved by hand: real store I/O must not let time jump meanwhile
    async with make(make_vm, clock=clock) as vm:
        handle = vm.spawn(vm.agent(name="sleeper")(sleeper), agent_id="s")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.TIMER)
        clock.advance(2 * AFTER_S)
        await passivated(vm, handle)
        assert handle.wait_reason is avm.WaitReason.TIMER
        clock.advance(100.0 - 2 * AFTER_S)  # the deadline: it comes back and waits again...
        assert not handle.passivated
        await wait_until(lambda: handle.state is avm.AgentState.WAITING and bool(tasks_of("s")))
        clock.advance(0.0)  # ...until the deadline it had, which has come: no new 100 s
        before, after = await handle.result()
    assert after - before == pytest.approx(100.0)


async def test_a_reply_wakes_an_agent_waiting_for_a_response(
    make_vm: Callable[..., avm.VM],
) -> None:
    async def asker(ctx: Context) -> Any:
        task_id = await ctx.swarm_broadcast("questions", "what is 6 x 7?")
        return await ctx.wait_for_response(task_id)

    async def answerer(ctx: Context) -> str:
        await ctx.swarm_connect("questions")
        question = await ctx.receive()
        await ctx.receive()  # the host's go-ahead
        await ctx.reply(question, 42)
        return str(question.data)

    async with make(make_vm) as vm:
        answering = vm.spawn(vm.agent(name="answerer")(answerer), agent_id="b")
        await wait_until(lambda: answering.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn(vm.agent(name="asker")(asker), agent_id="a")
        await passivated(vm, asking, answering)
        assert vm.stats().passivated == 2
        await answering.post("go")
        assert await answering.result() == "what is 6 x 7?"
        assert await asking.result() == 42


async def test_a_reply_to_another_task_is_not_doubled_by_waking(
    make_vm: Callable[..., avm.VM],
) -> None:
    # The asker has two questions out; the answer to the first arrives while it waits on the
    # second, passivated. Waking must not count that answer twice.
    async def asker(ctx: Context) -> Any:
        first = await ctx.swarm_broadcast("fast", "first?")
        second = await ctx.swarm_broadcast("slow", "second?")
        await ctx.wait_for_response(second)
        try:
            await ctx.swarm_wait(first, k=2, timeout_s=0.2)
        except avm.SwarmTimeout as exc:
            return str(exc)
        return "two replies from one answerer"

    async def answerer(ctx: Context, topic: str, hold: bool) -> str:
        await ctx.swarm_connect(topic)
        question = await ctx.receive()
        if hold:
            await ctx.receive()  # the host's go-ahead
        await ctx.reply(question, topic)
        return topic

    async with make(make_vm) as vm:
        definition = vm.agent(name="answerer")(answerer)
        fast = vm.spawn(definition, agent_id="f", topic="fast", hold=False)
        slow = vm.spawn(definition, agent_id="s", topic="slow", hold=True)
        await wait_until(lambda: fast.wait_reason is slow.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn(vm.agent(name="asker")(asker), agent_id="a")
        assert await fast.result() == "fast"
        await wait_until(lambda: asking.step >= 3)  # waiting for the second answer
        await passivated(vm, asking)
        await slow.post("go")
        assert await slow.result() == "slow"
        assert "1 of 2 replies" in await asking.result()


async def test_a_burst_of_messages_to_passivated_agents_loses_nothing(
    make_vm: Callable[..., avm.VM],
) -> None:
    agents, messages = 40, 5
    async with make(make_vm, mailbox_capacity=2) as vm:
        definition = vm.agent(name="receiver")(receiver)
        handles = [vm.spawn(definition, agent_id=f"r{i}", rounds=messages) for i in range(agents)]
        await passivated(vm, *handles)
        assert vm.stats().passivated == agents
        posts: list[Awaitable[None]] = [
            h.post(i * 100 + n) for n in range(messages) for i, h in enumerate(handles)
        ]
        await asyncio.gather(*posts)
        results = await asyncio.gather(*(h.result() for h in handles))
    assert results == [[i * 100 + n for n in range(messages)] for i in range(agents)]


async def test_passivated_agents_survive_a_restart(make_vm: Callable[..., avm.VM]) -> None:
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        handles = [vm.spawn("receiver", agent_id=f"r{i}", rounds=2) for i in range(3)]
        await passivated(vm, *handles)
        await handles[0].post("early")  # wakes r0, which takes it and waits again
        await wait_until(lambda: handles[0].step >= 4)
        await passivated(vm, handles[0])
        vm.passivate("r1")  # already passivated: still true
    # The host goes away with every agent passivated; the next one resumes them all.
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        for i in range(3):
            await vm.handle(f"r{i}").post(f"late {i}")
        await vm.handle("r1").post("more")
        await vm.handle("r2").post("more")
        assert await vm.handle("r0").result() == ["early", "late 0"]
        assert await vm.handle("r1").result() == ["late 1", "more"]
        assert await vm.handle("r2").result() == ["late 2", "more"]


async def test_killing_a_passivated_agent(make_vm: Callable[..., avm.VM]) -> None:
    async with make(make_vm) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="k", rounds=1)
        await passivated(vm, handle)
        handle.kill()
        with pytest.raises(avm.AgentKilled):
            await handle.result()
        stats = vm.stats()
        assert (stats.passivated, stats.resident, stats.agents["killed"]) == (0, 0, 1)


async def test_busy_agents_are_not_passivated(make_vm: Callable[..., avm.VM]) -> None:
    async def worker(ctx: Context) -> int:
        for i in range(50):
            await ctx.kv_store("i", i)
        return 50

    async with make(make_vm) as vm:
        handle = vm.spawn(vm.agent(name="worker")(worker), agent_id="w")
        assert await handle.result() == 50
        assert vm.passivate_idle() == 0
        assert vm.stats().passivated == 0
