"""The instruction pipeline: the one path every effect of every agent takes.

::

    validate ─► prepare (capabilities) ─► reserve gas ─► perform ─► settle gas ─► journal ─► return
                                             │    ▲        │
                                   can't pay │    │ top-up  │ NeedsGas / a read costs
                                             ▼    │        │ more than the agent can pay
                                          OUT_OF_GAS ◄─────┘

Entering an instruction gives the agent's run slot back, and leaving takes one again (by
priority), so every instruction is a scheduling point. An agent that cannot pay is parked as
*out of gas*: nothing was performed, its journal is intact, and it continues from the same
instruction once ``vm.top_up`` covers it. A read whose actual cost exceeds what the agent can
pay is withheld and re-performed after the top-up, so a budget is never overspent.

State and external effects wait for their journal entry to be durable before returning (in
``durable`` mode); reads and waits do not, because any later durable entry commits them too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from avm._core.gas import to_gas
from avm._core.host import NeedsGas, hosts
from avm._core.isa import INSTRUCTIONS, Effect, Op
from avm._core.journal import (
    EntryFlag,
    EntryStatus,
    JournalEntry,
    chain_hash,
    digest_args,
    encode_value,
)
from avm._core.process import AgentProcess
from avm._core.replay import replay
from avm._core.runtime import Runtime
from avm._core.states import AgentState, WaitReason
from avm.errors import InstructionError, NotAvailable

__all__ = ["execute"]

log = logging.getLogger(__name__)

_HOSTS = hosts()
_SYNCED = frozenset({Effect.STATE, Effect.EXTERNAL})


async def execute(rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...]) -> Any:
    """Run one instruction for ``proc`` and return its result."""
    if proc.replay is not None or proc.resume_state is not None:
        return replay(rt, proc, op, args)
    if rt.recovery.closed:
        await rt.recovery.wait()
    spec = INSTRUCTIONS[op]
    step = proc.step
    proc.step = step + 1
    if spec.waits_on is not None:
        _give_up_slot(rt, proc)
    reserved = 0
    try:
        if not spec.available:
            raise NotAvailable(f"{op} is not available yet in this version of AVM")
        spec.validate(args)
        host = _HOSTS[op]
        prepared = host.prepare(rt, proc, args)
        while True:
            reserved = host.reserve(rt, proc, prepared)
            if not proc.gas.reserve(reserved):
                await _park_out_of_gas(rt, proc, reserved)
                continue
            if spec.waits_on is not None:
                rt.scheduler.move(proc, AgentState.WAITING, spec.waits_on)
            try:
                result, cost = await host.perform(rt, proc, prepared, step)
            except NeedsGas as need:
                proc.gas.release(reserved)
                reserved = 0
                await _park_out_of_gas(rt, proc, need.mgas)
                continue
            if (
                cost > reserved
                and spec.effect is Effect.READ
                and not proc.gas.covers(cost - reserved)
            ):
                proc.gas.release(reserved)
                reserved = 0
                await _park_out_of_gas(rt, proc, cost)
                continue
            break
        proc.gas.settle(reserved, cost)
        reserved = 0
        encoded = encode_value(result)
    except InstructionError as err:
        proc.gas.release(reserved)
        err.locate(proc.id, op, step)
        error = {"error": type(err).__name__, "message": err.message}
        _journal(rt, proc, step, op, args, EntryStatus.ERROR, encode_value(error), 0)
        await _resume(rt, proc)
        raise
    except BaseException:
        proc.gas.release(reserved)
        raise
    now = rt.timers.clock.monotonic()
    rt.instructions.record(now)
    if cost:
        rt.ledger.charge(op, cost, rt.timers.clock.wall())
    _journal(rt, proc, step, op, args, EntryStatus.OK, encoded, cost)
    if spec.effect in _SYNCED and rt.store.durability == "durable":
        _give_up_slot(rt, proc)
        rt.scheduler.move(proc, AgentState.WAITING, WaitReason.STORAGE)
        await rt.store.sync()
    await _resume(rt, proc)
    return result


def _journal(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    op: Op,
    args: tuple[Any, ...],
    status: EntryStatus,
    result: bytes,
    mgas: int,
) -> None:
    digest = digest_args(args)
    wall = rt.timers.clock.wall()
    prev = proc.chain_head
    flags = proc.flags
    if step == proc.recovered_step:
        flags |= EntryFlag.AFTER_CRASH
        proc.recovered_step = None
    proc.flags = 0
    entry_hash = chain_hash(
        prev, proc.id, step, op.value, digest, status, result, mgas, wall, flags
    )
    rt.store.journal_append(
        JournalEntry(
            proc.id, step, op.value, digest, status, result, mgas, wall, prev, entry_hash, flags
        )
    )
    proc.chain_head = entry_hash


async def _park_out_of_gas(rt: Runtime, proc: AgentProcess, needed: int) -> None:
    """Halt until the budget covers ``needed`` milligas; the agent resumes where it stopped."""
    log.info(
        "agent %s is out of gas: needs %.3f, has %.3f",
        proc.id,
        to_gas(needed),
        to_gas(proc.gas.available or 0),
    )
    _give_up_slot(rt, proc)
    rt.scheduler.move(proc, AgentState.OUT_OF_GAS, WaitReason.GAS)
    rt.store.agent_update(
        proc.id, status="out_of_gas", spent=proc.gas.spent, budget=proc.gas.budget
    )
    while not proc.gas.covers(needed):
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proc.top_up_waiter = waiter
        try:
            await waiter
        finally:
            proc.top_up_waiter = None
    rt.scheduler.move(proc, AgentState.RUNNING)
    rt.store.agent_update(proc.id, status="running", spent=proc.gas.spent, budget=proc.gas.budget)


def _give_up_slot(rt: Runtime, proc: AgentProcess) -> None:
    if proc.holds_slot:
        proc.holds_slot = False
        rt.scheduler.release()


async def _resume(rt: Runtime, proc: AgentProcess) -> None:
    """Make sure the agent holds a run slot before it goes back to its own code.

    An agent that kept its slot through the instruction still passes through the event loop
    once, so agents that became ready meanwhile can queue; it then yields the slot if an agent
    of the same or a more urgent class is waiting (round-robin inside a class). Without this,
    an agent issuing only instructions that never suspend would keep the slot until it ended.
    """
    scheduler = rt.scheduler
    if proc.holds_slot:
        await asyncio.sleep(0)
        if not scheduler.should_yield(proc.priority):
            return
        _give_up_slot(rt, proc)
    if not scheduler.try_acquire():
        scheduler.move(proc, AgentState.READY)
        await scheduler.acquire(proc.priority)
    proc.holds_slot = True
    if proc.state is not AgentState.RUNNING or proc.wait_reason is not None:
        scheduler.move(proc, AgentState.RUNNING)
