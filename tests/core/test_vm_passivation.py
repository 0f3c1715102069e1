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


async def spawn_and_passivate_on_timer(
    vm: avm.VM, clock: MockClock, agent: avm.AgentDefinition, agent_id: str
) -> avm.AgentHandle:
    """Spawn ``agent``, let it park on a timer, and move the clock until it is passivated."""
    handle = vm.spawn(agent, agent_id=agent_id)
    await wait_until(lambda: handle.wait_reason is avm.WaitReason.TIMER)
    clock.advance(2 * AFTER_S)
    await passivated(vm, handle)
    return handle


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


async def journal_unpassivated(
    make_vm: Callable[..., avm.VM], tmp_path: Path, agent_id: str, messages: list[str]
) -> list[tuple[Any, ...]]:
    """The journal a receiver leaves when it is never passivated, given the same messages."""
    async with make(make_vm, passivate=False, state_dir=tmp_path / "plain") as plain:
        agent = plain.agent(name="receiver")(receiver)
        other = plain.spawn(agent, agent_id=agent_id, rounds=len(messages))
        await wait_until(lambda: other.wait_reason is avm.WaitReason.MESSAGE)
        for message in messages:
            await other.post(message)
        assert await other.result() == messages
    return journal_of(agent_id, tmp_path / "plain")


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
        passive = journal_of("r", tmp_path / "state")
        assert passive == await journal_unpassivated(make_vm, tmp_path, "r", ["one", "two"])
        assert len(passive) == 5
        assert all(row[-1] == 0 for row in passive)  # no AFTER_CRASH flags


async def test_a_timer_wakes_a_passivated_agent_at_its_own_deadline(
    make_vm: Callable[..., avm.VM],
) -> None:
    clock = MockClock()  # moved by hand: real store I/O must not let time jump meanwhile
    async with make(make_vm, clock=clock) as vm:
        agent = vm.agent(name="sleeper")(sleeper)
        handle = await spawn_and_passivate_on_timer(vm, clock, agent, "s")
        assert handle.wait_reason is avm.WaitReason.TIMER
        clock.advance(100.0 - 2 * AFTER_S)  # the deadline: it comes back and waits again...
        assert not handle.passivated
        await wait_until(lambda: handle.state is avm.AgentState.WAITING and bool(tasks_of("s")))
        clock.advance(0.0)  # ...until the deadline it had, which has come: no new 100 s
        before, after = await handle.result()
    assert after - before == pytest.approx(100.0)


async def ticker(ctx: Context) -> list[tuple[int, float]]:
    seen = []
    async for tick in ctx.schedule_task("tick", interval_s=100.0, count=3):
        seen.append((tick, await ctx.now()))
    return seen


async def test_an_agent_between_ticks_of_a_recurring_task_is_passivated(
    make_vm: Callable[..., avm.VM],
) -> None:
    clock = MockClock()
    async with make(make_vm, clock=clock) as vm:
        agent = vm.agent(name="ticker")(ticker)
        # Parked inside the async generator's instruction:
        handle = await spawn_and_passivate_on_timer(vm, clock, agent, "t")
        step = handle.step
        clock.advance(100.0 - 2 * AFTER_S)  # tick 1 wakes it; it passivates again after
        await wait_until(
            lambda: handle.step > step and handle.state is avm.AgentState.WAITING,
            what="waiting for tick 2",
        )
        clock.advance(2 * AFTER_S)
        await passivated(vm, handle)
        clock.advance(100.0 - 2 * AFTER_S)
        ticks = await handle.result()
    start = ticks[0][1]
    assert [(tick, at - start) for tick, at in ticks] == [(0, 0.0), (1, 100.0), (2, 200.0)]


async def asker(ctx: Context) -> Any:
    """Asks the "questions" swarm and waits for the answer (WAIT_FOR_RESPONSE)."""
    task_id = await ctx.swarm_broadcast("questions", "what is 6 x 7?")
    return await ctx.wait_for_response(task_id)


async def answerer(ctx: Context) -> str:
    """Takes a question, then waits for the host's go-ahead before it replies."""
    await ctx.swarm_connect("questions")
    question = await ctx.receive()
    await ctx.receive()
    await ctx.reply(question, 42)
    return str(question.data)


async def test_a_reply_wakes_an_agent_waiting_for_a_response(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make(make_vm) as vm:
        answering = vm.spawn(vm.agent(name="answerer")(answerer), agent_id="b")
        await wait_until(lambda: answering.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn(vm.agent(name="asker")(asker), agent_id="a")
        await passivated(vm, asking, answering)
        assert vm.stats().passivated == 2
        await answering.post("go")
        assert await answering.result() == "what is 6 x 7?"
        assert await asking.result() == 42


async def test_an_agent_waiting_in_a_fetch_stays_in_ram(make_vm: Callable[..., avm.VM]) -> None:
    # Waking it would re-issue the fetch to the swarm's members of then: the answerer may have
    # replied and left by that time, and the fetch would find nobody to ask.
    async def fetcher(ctx: Context) -> Any:
        return await ctx.swarm_fetch("questions", "q1", query="what is 6 x 7?")

    async with make(make_vm) as vm:
        answering = vm.spawn(vm.agent(name="answerer")(answerer), agent_id="b")
        await wait_until(lambda: answering.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn(vm.agent(name="fetcher")(fetcher), agent_id="a")
        await wait_until(lambda: asking.wait_reason is avm.WaitReason.MESSAGE)
        # An agent idle no longer than the fetcher is passivated; the fetcher stays.
        idle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="c", rounds=1)
        await passivated(vm, answering, idle)
        assert asking.wait_reason is avm.WaitReason.MESSAGE
        assert not asking.passivated
        assert tasks_of("a")
        await answering.post("go")
        assert await answering.result() == "what is 6 x 7?"
        assert await asking.result() == 42
        await idle.post("x")
        assert await idle.result() == ["x"]


async def test_a_reply_to_another_task_is_not_doubled_by_waking(
    make_vm: Callable[..., avm.VM],
) -> None:
    # The asker has two questions out; the answer to the first arrives while it waits on the
    # second, passivated. Waking must not count that answer twice.
    async def two_asks(ctx: Context) -> Any:
        first = await ctx.swarm_broadcast("fast", "first?")
        second = await ctx.swarm_broadcast("slow", "second?")
        await ctx.wait_for_response(second)
        try:
            await ctx.swarm_wait(first, k=2, timeout_s=0.2)
        except avm.SwarmTimeout as exc:
            return str(exc)
        return "two replies from one answerer"

    async def topic_answerer(ctx: Context, topic: str, hold: bool) -> str:
        await ctx.swarm_connect(topic)
        question = await ctx.receive()
        if hold:
            await ctx.receive()  # the host's go-ahead
        await ctx.reply(question, topic)
        return topic

    async with make(make_vm) as vm:
        definition = vm.agent(name="answerer")(topic_answerer)
        fast = vm.spawn(definition, agent_id="f", topic="fast", hold=False)
        slow = vm.spawn(definition, agent_id="s", topic="slow", hold=True)
        await wait_until(lambda: fast.wait_reason is slow.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn(vm.agent(name="asker")(two_asks), agent_id="a")
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


# -- restarts: passivated agents stay out of RAM -------------------------------------------------


def restarted_clock(at: float, *, autojump: bool = False) -> MockClock:
    """A fresh clock ``at`` seconds after the first VM's clock started (in wall time too)."""
    return MockClock(start=at, wall_start=1_700_000_000.0 + at, autojump=autojump)


async def test_a_restart_keeps_passivated_agents_out_of_ram_until_a_message_wakes_each(
    make_vm: Callable[..., avm.VM], backend: str, tmp_path: Path, state_sql: Any
) -> None:
    agents = 5
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        handles = [vm.spawn("receiver", agent_id=f"r{i}", rounds=2) for i in range(agents)]
        await passivated(vm, *handles)
    assert len(await state_sql("SELECT agent_id FROM passivated")) == agents
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        stats = vm.stats()
        assert (stats.passivated, stats.resident) == (agents, 0)
        assert stats.waiting["message"] == agents
        assert not any(tasks_of(f"r{i}") for i in range(agents))
        assert all(vm.handle(f"r{i}").passivated for i in range(agents))
        assert vm.handle("r0").step == 2  # its record answers: no replay was needed for that
        for i in range(agents):
            await vm.handle(f"r{i}").post(f"one {i}")
        for i in range(agents):
            await vm.handle(f"r{i}").post(f"two {i}")
        for i in range(agents):
            assert await vm.handle(f"r{i}").result() == [f"one {i}", f"two {i}"]
        assert vm.stats().passivated == 0
    assert await state_sql("SELECT agent_id FROM passivated") == []
    if backend == "sqlite":
        passive = journal_of("r0", tmp_path / "state")
        assert passive == await journal_unpassivated(make_vm, tmp_path, "r0", ["one 0", "two 0"])
        assert all(row[-1] == 0 for row in passive)  # no AFTER_CRASH flags


async def test_a_reply_wakes_an_agent_passivated_before_a_restart(
    make_vm: Callable[..., avm.VM],
) -> None:
    def define(vm: avm.VM) -> None:
        vm.agent(name="asker")(asker)
        vm.agent(name="answerer")(answerer)

    async with make(make_vm) as vm:
        define(vm)
        answering = vm.spawn("answerer", agent_id="b")
        await wait_until(lambda: answering.wait_reason is avm.WaitReason.MESSAGE)
        asking = vm.spawn("asker", agent_id="a")
        await passivated(vm, asking, answering)
    async with make(make_vm) as vm:
        define(vm)
        await vm.recovered()
        assert vm.stats().passivated == 2
        assert not tasks_of("a")
        assert not tasks_of("b")
        await vm.handle("b").post("go")
        assert await vm.handle("b").result() == "what is 6 x 7?"
        assert await vm.handle("a").result() == 42


async def test_a_deadline_reached_after_a_restart_wakes_the_agent_then(
    make_vm: Callable[..., avm.VM],
) -> None:
    clock = MockClock()
    async with make(make_vm, clock=clock) as vm:
        agent = vm.agent(name="sleeper")(sleeper)
        await spawn_and_passivate_on_timer(vm, clock, agent, "s")
    clock = restarted_clock(80.0)  # 20 s before the deadline the agent had
    async with make(make_vm, clock=clock) as vm:
        vm.agent(name="sleeper")(sleeper)
        await vm.recovered()
        assert vm.handle("s").passivated
        assert not tasks_of("s")
        assert vm.stats().waiting["timer"] == 1
        clock.advance(20.0)  # the deadline: it comes back and re-issues its WAIT...
        await wait_until(
            lambda: vm.handle("s").state is avm.AgentState.WAITING and bool(tasks_of("s"))
        )
        clock.advance(0.0)  # ...which ends at the deadline it had, which has come
        before, after = await vm.handle("s").result()
    assert after - before == pytest.approx(100.0)  # its own deadline, not a fresh 100 s


async def test_a_deadline_passed_while_no_vm_ran_wakes_the_agent_at_start(
    make_vm: Callable[..., avm.VM],
) -> None:
    clock = MockClock()
    async with make(make_vm, clock=clock) as vm:
        agent = vm.agent(name="sleeper")(sleeper)
        await spawn_and_passivate_on_timer(vm, clock, agent, "s")
    clock = restarted_clock(250.0)
    async with make(make_vm, clock=clock) as vm:
        vm.agent(name="sleeper")(sleeper)
        await vm.recovered()
        # No time passes from here on: the timers due are those due at start.
        clock.advance(0.0)
        assert not vm.handle("s").passivated
        await wait_until(
            lambda: vm.handle("s").state is avm.AgentState.WAITING and bool(tasks_of("s"))
        )
        clock.advance(0.0)
        before, after = await vm.handle("s").result()
    assert after - before == pytest.approx(250.0)  # woken as the VM started, not 100 s later


async def test_an_agent_woken_before_a_restart_is_restored_not_passivated(
    make_vm: Callable[..., avm.VM], state_sql: Any
) -> None:
    clock = MockClock()  # never advanced: nothing passivates unless asked to
    async with make(make_vm, clock=clock) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="w", rounds=2)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        assert vm.passivate("w")
        await passivated(vm, handle)
        await handle.post("one")  # wakes it: it takes the message and waits for the next
        await wait_until(lambda: handle.step >= 4 and handle.wait_reason is avm.WaitReason.MESSAGE)
        assert not handle.passivated
    assert await state_sql("SELECT agent_id FROM passivated") == []
    async with make(make_vm, clock=MockClock()) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        assert not vm.handle("w").passivated
        assert tasks_of("w")
        assert vm.stats().passivated == 0
        await vm.handle("w").post("two")
        assert await vm.handle("w").result() == ["one", "two"]


async def test_a_top_up_of_a_passivated_agent_survives_a_restart(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make(make_vm) as vm:
        handle = vm.spawn(vm.agent(name="receiver", budget=100.0)(receiver), agent_id="t", rounds=1)
        await passivated(vm, handle)
        handle.top_up(50.0)
        budget = handle.gas_budget
    assert budget is not None
    assert budget > 100.0
    async with make(make_vm) as vm:
        vm.agent(name="receiver", budget=100.0)(receiver)
        await vm.recovered()
        assert vm.handle("t").passivated
        assert vm.handle("t").gas_budget == budget
        await vm.handle("t").post("x")
        assert await vm.handle("t").result() == ["x"]


async def test_a_stale_or_unreadable_record_is_dropped_and_the_agent_restored(
    make_vm: Callable[..., avm.VM], state_sql: Any
) -> None:
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        handles = [vm.spawn("receiver", agent_id=f"r{i}", rounds=1) for i in range(2)]
        await passivated(vm, *handles)
    await state_sql(
        "UPDATE passivated SET record = ? WHERE agent_id = ?", b"\xc1 not msgpack", "r0"
    )
    await state_sql("UPDATE agents SET first_step = 99 WHERE agent_id = ?", "r1")
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        assert vm.stats().passivated == 0
        assert not vm.handle("r0").passivated
        await vm.handle("r0").post("x")
        assert await vm.handle("r0").result() == ["x"]
    assert await state_sql("SELECT agent_id FROM passivated") == []


async def test_a_passivated_agent_whose_definition_comes_late_is_revived_then(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make(make_vm) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="late", rounds=1)
        await passivated(vm, handle)
    async with make(make_vm) as vm:
        await vm.recovered()
        with pytest.raises(avm.UnknownAgent):
            vm.handle("late")
        vm.agent(name="receiver")(receiver)
        assert vm.handle("late").passivated
        assert not tasks_of("late")
        await vm.handle("late").post("x")
        assert await vm.handle("late").result() == ["x"]


async def test_held_content_of_a_passivated_agent_across_a_restart(
    make_vm: Callable[..., avm.VM],
) -> None:
    async def holder(ctx: Context, text: str) -> str:
        await ctx.kv_store("started", True)
        envelope = await ctx.receive()
        return f"{text}/{envelope.data}"

    async with make(make_vm, clock=MockClock()) as vm:  # passivated when the test says
        handle = vm.spawn(vm.agent(name="holder")(holder), agent_id="h", text="t")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        ref = vm.hold("h", b"only h holds this" * 100)
        other = vm.hold("h", b"and this" * 100)
        assert vm.passivate("h")
        await passivated(vm, handle)
    async with make(make_vm) as vm:
        vm.agent(name="holder")(holder)
        await vm.recovered()
        assert set(vm.held("h")) == {ref, other}
        vm.collect()  # the record is a root: its content stays while the agent is away
        assert vm.memory is not None
        assert ref in vm.memory
        await vm.handle("h").post("x")
        assert await vm.handle("h").result() == "t/x"
        assert set(vm.held("h")) == {ref, other}
        assert vm.memory.holds(ref) == 1  # held again, once
        await vm.delete("h")
        assert vm.memory.holds(ref) == 0


async def test_a_lost_held_list_does_not_stop_a_passivated_agent_after_a_restart(
    make_vm: Callable[..., avm.VM], tmp_path: Path
) -> None:
    async with make(make_vm, clock=MockClock()) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="r", rounds=1)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        vm.hold("r", b"gone with the crash" * 100)
        assert vm.passivate("r")
        await passivated(vm, handle)
    with sqlite3.connect(tmp_path / "state" / "content.db") as db:
        db.execute("DELETE FROM content")  # the cold tier lost what the state store kept
    db.close()
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        assert vm.handle("r").passivated
        assert vm.held("r") == ()
        await vm.handle("r").post("x")
        assert await vm.handle("r").result() == ["x"]
        assert vm.held("r") == ()


async def test_a_top_up_keeps_a_passivated_agents_deadline(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock()
    async with make(make_vm, clock=clock) as vm:
        agent = vm.agent(name="sleeper", budget=100.0)(sleeper)
        handle = await spawn_and_passivate_on_timer(vm, clock, agent, "s")
        handle.top_up(10.0)  # replaces the record the deadline was armed for
        clock.advance(100.0 - 2 * AFTER_S)
        assert not handle.passivated
        await wait_until(lambda: handle.state is avm.AgentState.WAITING and bool(tasks_of("s")))
        clock.advance(0.0)
        before, after = await handle.result()
    assert after - before == pytest.approx(100.0)


async def test_content_held_while_passivated_joins_the_record(
    make_vm: Callable[..., avm.VM],
) -> None:
    async with make(make_vm, clock=MockClock()) as vm:
        handle = vm.spawn(vm.agent(name="receiver")(receiver), agent_id="r", rounds=1)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)
        first = vm.hold("r", b"held before" * 100)
        assert vm.passivate("r")
        await passivated(vm, handle)
        later = vm.hold("r", b"held while away" * 100)
        assert vm.hold("r", b"held while away" * 100) == later
        assert set(vm.held("r")) == {first, later}
        assert vm.memory is not None
        assert vm.memory.holds(later) == 1
    async with make(make_vm) as vm:
        vm.agent(name="receiver")(receiver)
        await vm.recovered()
        assert set(vm.held("r")) == {first, later}  # it was in the saved record
        vm.collect()
        assert vm.memory is not None
        assert later in vm.memory
        await vm.handle("r").post("x")
        assert await vm.handle("r").result() == ["x"]
        assert set(vm.held("r")) == {first, later}
        assert vm.memory.holds(later) == 1
        await vm.delete("r")
        assert vm.memory.holds(later) == 0
