"""The instruction pipeline's fast paths behave exactly like the slow ones they stand in for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import avm
from avm import Context
from avm._core.interpreter import _validator
from avm._core.isa import INSTRUCTIONS
from avm._core.journal import chain_hash, digest_args
from avm.errors import InvalidArgument
from avm.testing import wait_until

BACKENDS = ("sqlite", "postgres")

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=False, min_value=-2, max_value=2),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@given(st.sampled_from(sorted(INSTRUCTIONS)), st.lists(_values, max_size=6))
def test_fast_validator_agrees_with_the_spec(op: avm.Op, args: list[Any]) -> None:
    spec = INSTRUCTIONS[op]
    fast = _validator(spec)
    assert _outcome(fast, tuple(args)) == _outcome(spec.validate, tuple(args))


def _outcome(validate: Callable[[tuple[Any, ...]], None], args: tuple[Any, ...]) -> str | None:
    """None if ``args`` are accepted, else the error message."""
    try:
        validate(args)
    except InvalidArgument as exc:
        return str(exc)
    return None


@given(
    prev=st.binary(min_size=32, max_size=32),
    agent_id=st.text(max_size=20),
    step=st.integers(min_value=0, max_value=2**40),
    op=st.sampled_from([op.value for op in INSTRUCTIONS]),
    status=st.integers(min_value=0, max_value=1),
    result=st.binary(max_size=200),
    gas=st.integers(min_value=0, max_value=2**40),
    wall=st.floats(allow_nan=False, allow_infinity=False),
    flags=st.integers(min_value=0, max_value=3),
    args=st.lists(
        st.one_of(st.none(), st.integers(-(2**63), 2**63), st.text(max_size=5)), max_size=4
    ),
)
def test_chain_hash_is_blake3_over_the_documented_fields(
    prev: bytes,
    agent_id: str,
    step: int,
    op: str,
    status: int,
    result: bytes,
    gas: int,
    wall: float,
    flags: int,
    args: list[Any],
) -> None:
    import blake3
    import msgspec

    encode = msgspec.msgpack.encode
    digest = digest_args(tuple(args))
    assert digest == blake3.blake3(encode(tuple(args))).digest(16)
    reference = blake3.blake3(prev)
    reference.update(encode((agent_id, step, op, digest, status, gas, wall, flags)))
    reference.update(result)
    entry = chain_hash(prev, agent_id, step, op, digest, status, result, gas, wall, flags)
    assert entry == reference.digest()


async def test_recovery_with_more_agents_than_run_slots(make_vm: Callable[..., avm.VM]) -> None:
    # Each recovered agent's first live instruction waits for every other agent to replay; it
    # must not hold its run slot meanwhile, or the agents still queued for one never replay.
    async def parked(ctx: Context) -> int:
        await ctx.kv_store("a", 1)
        await ctx.kv_store("b", 2)
        return int((await ctx.receive()).data)

    async with make_vm(max_running=2) as vm:
        handles = [vm.spawn(vm.agent(name="parked")(parked)) for _ in range(8)]
        await wait_until(lambda: all(h.wait_reason is avm.WaitReason.MESSAGE for h in handles))
    async with make_vm(max_running=2) as vm:
        vm.agent(name="parked")(parked)
        await asyncio.wait_for(vm.recovered(), timeout=30)
        for handle in vm.handles():
            await handle.post(7)
        assert [await handle.result() for handle in vm.handles()] == [7] * 8


async def test_an_agent_never_waiting_still_lets_the_loop_run(
    make_vm: Callable[..., avm.VM],
) -> None:
    # In relaxed mode a KV_STORE completes without waiting; a loop of them must still give the
    # event loop (timers, I/O, other agents) a turn now and then.
    progress = 0
    seen: list[int] = []

    async def writer(ctx: Context) -> None:
        nonlocal progress
        for i in range(500):
            await ctx.kv_store("k", i)
            progress = i + 1

    async def watcher() -> None:
        while progress < 500:
            seen.append(progress)
            await asyncio.sleep(0)

    async with make_vm(durability="relaxed") as vm:
        watching = asyncio.ensure_future(watcher())
        await vm.spawn(vm.agent(name="writer")(writer)).result()
        await watching
    assert any(0 < p < 500 for p in seen)


async def test_the_agent_opening_the_gate_goes_after_those_waiting_for_it(
    make_vm: Callable[..., avm.VM],
) -> None:
    # Both agents resume from a checkpoint, so their first live instructions come at once:
    # the member joins its swarm again, waiting at the gate; the sender, recovered last, opens
    # the gate and broadcasts. The broadcast must wait for the join, or nobody receives it.
    async def member(ctx: Context) -> Any:
        resumed = await ctx.load_execution_state()
        await ctx.swarm_connect("t")
        if not resumed:
            await ctx.save_execution_state(True)
            await ctx.wait(3600)  # the host stops here
        return (await ctx.receive()).data

    async def sender(ctx: Context) -> None:
        resumed = await ctx.load_execution_state()
        if not resumed:
            await ctx.save_execution_state(True)
            await ctx.wait(3600)  # the host stops here
        await ctx.swarm_broadcast("t", "hello")

    async with make_vm() as vm:
        handles = [
            vm.spawn(vm.agent(name=name)(fn), agent_id=name)
            for name, fn in (("member", member), ("sender", sender))
        ]
        await wait_until(lambda: all(h.wait_reason is avm.WaitReason.TIMER for h in handles))
    async with make_vm() as vm:
        vm.agent(name="member")(member)
        vm.agent(name="sender")(sender)
        assert await asyncio.wait_for(vm.handle("member").result(), timeout=30) == "hello"
