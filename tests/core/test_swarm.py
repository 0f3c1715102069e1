"""Swarm messaging: bounded mailboxes with backpressure, broadcast, request/response, k of n."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import avm
from avm import Context, WaitReason
from avm.swarm.mailbox import Envelope, Mailbox
from avm.testing import MockClock, wait_until

BACKENDS = ("sqlite", "postgres")  # run each VM test on both state stores


async def settle(n: int = 100) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_mailbox_backpressures_and_never_drops() -> None:
    box = Mailbox(capacity=2)
    senders = [asyncio.ensure_future(box.put(Envelope(str(i), "s", "t", i))) for i in range(5)]
    await settle()
    assert len(box) == 2
    assert box.blocked_senders == 3
    received = []
    while len(received) < 5:
        envelope = box.get_nowait()
        if envelope is None:
            await settle(5)
            continue
        received.append(envelope.data)
    await asyncio.gather(*senders)
    assert received == [0, 1, 2, 3, 4]  # nothing dropped, order kept


async def test_full_mailbox_blocks_the_sending_agent(make_vm: Callable[..., avm.VM]) -> None:
    clock = MockClock()
    async with make_vm(mailbox_capacity=2, clock=clock) as vm:

        @vm.agent
        async def slow_reader(ctx: Context) -> list[Any]:
            await ctx.swarm_connect("feed")
            await ctx.wait(60)  # not reading yet: the mailbox fills up
            return [(await ctx.receive()).data for _ in range(6)]

        @vm.agent
        async def producer(ctx: Context) -> int:
            for i in range(6):
                await ctx.swarm_broadcast("feed", i)
            return 6

        reader = vm.spawn(slow_reader)
        await wait_until(lambda: reader.wait_reason is WaitReason.TIMER)
        producing = vm.spawn(producer)
        await wait_until(lambda: producing.wait_reason is WaitReason.MESSAGE)
        await asyncio.sleep(0.05)
        assert producing.step == 3  # steps 0 and 1 delivered; step 2 waits on the full mailbox
        clock.advance(60)
        assert await reader.result() == [0, 1, 2, 3, 4, 5]  # nothing dropped, order kept
        assert await producing.result() == 6


async def test_broadcast_reaches_members_but_not_sender(vm: avm.VM) -> None:
    @vm.agent
    async def member(ctx: Context) -> Any:
        await ctx.swarm_connect("room")
        envelope = await ctx.receive()
        return envelope.sender, envelope.topic, envelope.data

    @vm.agent
    async def speaker(ctx: Context) -> str:
        await ctx.swarm_connect("room")
        return await ctx.swarm_broadcast("room", {"hello": 1})

    members = [vm.spawn(member) for _ in range(3)]
    await wait_until(lambda: all(m.wait_reason is WaitReason.MESSAGE for m in members))
    task_id = await vm.spawn(speaker).result()
    assert task_id == "speaker-1:1"
    for handle in members:
        assert await handle.result() == ("speaker-1", "room", {"hello": 1})


async def test_request_response_from_the_host(vm: avm.VM) -> None:
    @vm.agent
    async def server(ctx: Context) -> None:
        while True:
            request = await ctx.receive()
            if request.data == "stop":
                await ctx.reply(request, "bye")
                return
            await ctx.reply(request, {"status": "watching", "asked": request.data})

    handle = vm.spawn(server)
    assert await handle.send("status?") == {"status": "watching", "asked": "status?"}
    assert await handle.send("stop") == "bye"
    await handle.result()


async def test_request_to_a_silent_agent_times_out(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm(clock=MockClock(autojump=True)) as vm:

        @vm.agent
        async def mute(ctx: Context) -> None:
            await ctx.wait(10_000)

        handle = vm.spawn(mute)
        with pytest.raises(avm.SwarmTimeout, match=r"0 of 1 replies within 5 s"):
            await handle.send("anyone?", timeout_s=5)


async def test_swarm_wait_k_of_n(vm: avm.VM) -> None:
    @vm.agent
    async def voter(ctx: Context, vote: str) -> None:
        await ctx.swarm_connect("voters")
        question = await ctx.receive()
        await ctx.reply(question, vote)

    @vm.agent
    async def chair(ctx: Context) -> list[str]:
        task = await ctx.swarm_broadcast("voters", "approve?")
        replies = await ctx.swarm_wait(task, k=3, timeout_s=5)
        return sorted(r.data for r in replies)

    voters = [vm.spawn(voter, vote=vote) for vote in ("yes", "no", "yes", "yes", "no")]
    await wait_until(lambda: all(v.wait_reason is WaitReason.MESSAGE for v in voters))
    votes = await vm.spawn(chair).result()
    assert len(votes) == 3
    assert set(votes) <= {"yes", "no"}


async def test_swarm_wait_reports_partial_replies(make_vm: Callable[..., avm.VM]) -> None:
    async with make_vm(clock=MockClock(autojump=True)) as vm:

        @vm.agent
        async def voter(ctx: Context) -> None:
            await ctx.swarm_connect("voters")
            await ctx.reply(await ctx.receive(), "yes")

        @vm.agent
        async def chair(ctx: Context) -> str:
            task = await ctx.swarm_broadcast("voters", "approve?")
            try:
                await ctx.swarm_wait(task, k=3, timeout_s=10)
            except avm.SwarmTimeout as exc:
                return str(exc)
            return "quorum"

        voters = [vm.spawn(voter) for _ in range(2)]
        await wait_until(lambda: all(v.wait_reason is WaitReason.MESSAGE for v in voters))
        assert "2 of 3 replies within 10 s" in await vm.spawn(chair).result()


async def test_swarm_fetch_asks_a_peer(vm: avm.VM) -> None:
    @vm.agent
    async def oracle(ctx: Context) -> None:
        await ctx.swarm_connect("price")
        request = await ctx.receive()
        await ctx.reply(request, {"token": request.data, "usd": 3000})

    @vm.agent
    async def trader(ctx: Context) -> Any:
        return await ctx.swarm_fetch("price", "q1", query="ETH", timeout_s=5)

    answering = vm.spawn(oracle)
    await wait_until(lambda: answering.wait_reason is WaitReason.MESSAGE)
    assert await vm.spawn(trader).result() == {"token": "ETH", "usd": 3000}
    assert vm.ledger.by_instruction()["SWARM_FETCH"] == 5.0  # 5 gas per peer asked


async def test_swarm_fetch_with_no_peer_is_not_found(vm: avm.VM) -> None:
    @vm.agent
    async def trader(ctx: Context) -> Any:
        return await ctx.swarm_fetch("price", "q1")

    with pytest.raises(avm.AgentFailed, match="no agent in swarm 'price' to ask"):
        await vm.spawn(trader).result()


async def test_sending_to_unknown_agent(vm: avm.VM) -> None:
    with pytest.raises(avm.NotFound, match="no running agent 'ghost'"):
        await vm.post("ghost", 1)
