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

Every agent runs this code for every instruction, so it is written for speed: what the
instruction table says about an opcode is resolved once into a :class:`_Plan` (host functions,
effect flags, a validator specialised to the opcode's parameters); agents with an unlimited
budget skip the reservation; and the journal entry is hashed without intermediate objects.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from avm._core.gas import to_gas
from avm._core.host import Host, NeedsGas, free, hosts, passthrough
from avm._core.isa import INSTRUCTIONS, Effect, InstructionSpec, Op, Param
from avm._core.journal import (
    PAYLOAD_THRESHOLD,
    EntryFlag,
    EntryStatus,
    JournalEntry,
    args_digester,
    blob_key,
    chain_hash,
    encode_value,
    payload_ref,
)
from avm._core.process import AgentProcess
from avm._core.replay import replay
from avm._core.runtime import Runtime
from avm._core.states import AgentState, WaitReason
from avm.errors import InstructionError, NotAvailable

__all__ = ["execute"]

log = logging.getLogger(__name__)

_OK = EntryStatus.OK
_ERROR = EntryStatus.ERROR
_AFTER_CRASH = int(EntryFlag.AFTER_CRASH)
_NIL = encode_value(None)  # what most state instructions return, encoded once
_RUNNING = AgentState.RUNNING
_WAITING = AgentState.WAITING
_READY = AgentState.READY
_STORAGE = WaitReason.STORAGE
# Instructions an agent may complete in a row without passing through the event loop (see
# _resume): a millisecond or two of work, like a BEAM process's reduction budget.
_YIELD_EVERY = 100

Validator = Callable[[tuple[Any, ...]], None]


def _validator(spec: InstructionSpec) -> Validator:
    """A check of ``spec``'s arguments that settles the common case in a few type lookups.

    A value whose exact type is one the parameter names (never a bool standing in for a
    number) only runs the parameter's value check; anything else (a subclass, a wrong type,
    a missing argument, a failed check) goes to ``spec.validate``, which accepts it or raises
    the full explanation. So the fast path accepts only what ``spec.validate`` accepts.
    """
    arity = len(spec.params)
    fields = tuple((index, *_exact(param)) for index, param in enumerate(spec.params))
    slow = spec.validate

    def validate(args: tuple[Any, ...]) -> None:
        if len(args) != arity:
            slow(args)
            return
        # Indexing, not zip(): zip's strict keyword alone costs more than the whole check.
        for index, exact, check, optional in fields:
            value = args[index]
            if value is None:
                if optional:
                    continue
            elif (exact is None or type(value) in exact) and (
                check is None or check(value) is None
            ):
                continue
            slow(args)
            return

    return validate


def _exact(
    param: Param,
) -> tuple[frozenset[type] | None, Callable[[Any], str | None] | None, bool]:
    if object in param.types:
        return None, param.check, param.optional  # any value but None
    # Exact types only: a bool's type is bool, so it passes only where bool itself is named.
    return frozenset(param.types), param.check, param.optional


class _Plan:
    """One opcode, resolved from the instruction table and the host table at import time."""

    __slots__ = (
        "available",
        "digest",
        "is_read",
        "name",
        "perform",
        "prepare",
        "reserve",
        "synced",
        "validate",
        "waits_on",
    )

    def __init__(self, spec: InstructionSpec) -> None:
        host = _HOSTS.get(spec.op)
        if host is None:
            if spec.available:
                raise RuntimeError(f"{spec.op} is marked available but has no host function")
            host = _UNAVAILABLE  # never reached: the pipeline refuses the opcode first
        self.available = spec.available
        self.name = spec.op.value  # Enum.value is a Python-level property: read it once here
        self.digest = args_digester(self.name)
        self.validate = _validator(spec)
        self.prepare: Callable[[Runtime, AgentProcess, tuple[Any, ...]], Any] = host.prepare
        self.reserve: Callable[[Runtime, AgentProcess, Any], int] = host.reserve
        self.perform: Callable[[Runtime, AgentProcess, Any, int], Awaitable[tuple[Any, int]]] = (
            host.perform
        )
        self.waits_on = spec.waits_on
        self.is_read = spec.effect is Effect.READ
        self.synced = spec.effect is Effect.STATE or spec.effect is Effect.EXTERNAL


async def _not_performed(rt: Runtime, proc: AgentProcess, prepared: Any, step: int) -> Any:
    raise NotAvailable("this instruction is not available")


_HOSTS = hosts()
_UNAVAILABLE = Host(passthrough, free, _not_performed)
_PLANS = {op: _Plan(spec) for op, spec in INSTRUCTIONS.items()}


async def execute(rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...]) -> Any:
    """Run one instruction for ``proc`` and return its result."""
    if proc.replay is not None or proc.resume_state is not None:
        return replay(rt, proc, op, args)
    plan = _PLANS[op]
    step = proc.step
    proc.step = step + 1
    if rt.recovery.closed or proc.recovered_step == step:
        await _wait_for_recovery(rt, proc)
    scheduler = rt.scheduler
    waits_on = plan.waits_on
    if waits_on is not None and proc.holds_slot:
        proc.holds_slot = False
        scheduler.release()
    gas = proc.gas
    reserved = 0
    try:
        if not plan.available:
            raise NotAvailable(f"{op} is not available yet in this version of AVM")
        plan.validate(args)
        prepared = plan.prepare(rt, proc, args)
        while True:
            # An unlimited budget needs no reservation: nothing can be refused.
            if gas.budget is not None:
                reserved = plan.reserve(rt, proc, prepared)
                if not gas.reserve(reserved):
                    await _park_out_of_gas(rt, proc, reserved)
                    continue
            if waits_on is not None:
                scheduler.move(proc, _WAITING, waits_on)
            try:
                result, cost = await plan.perform(rt, proc, prepared, step)
            except NeedsGas as need:
                gas.release(reserved)
                reserved = 0
                await _park_out_of_gas(rt, proc, need.mgas)
                continue
            if (
                cost > reserved
                and plan.is_read
                and gas.budget is not None
                and not gas.covers(cost - reserved)
            ):
                gas.release(reserved)
                reserved = 0
                await _park_out_of_gas(rt, proc, cost)
                continue
            break
        gas.settle(reserved, cost)
        reserved = 0
        encoded = _NIL if result is None else encode_value(result)
    except InstructionError as err:
        gas.release(reserved)
        err.locate(proc.id, op, step)
        error = {"error": type(err).__name__, "message": err.message}
        wall = rt.timers.clock.wall()
        _journal(rt, proc, step, plan, args, _ERROR, encode_value(error), 0, wall)
        await _resume(rt, proc, suspended=False)
        raise
    except BaseException:
        gas.release(reserved)
        raise
    clock = rt.timers.clock
    rt.instructions.record(clock.monotonic())
    wall = clock.wall()
    if cost:
        rt.ledger.charge(op, cost, wall)
    _journal(rt, proc, step, plan, args, _OK, encoded, cost, wall)
    store = rt.store
    if plan.synced and store.durability == "durable":
        if proc.holds_slot:
            proc.holds_slot = False
            scheduler.release()
        if proc.wait_reason is not _STORAGE or proc.state is not _WAITING:
            scheduler.move(proc, _WAITING, _STORAGE)
        await store.sync()
        # _resume's common case inline, as it follows every durable write.
        scheduler.unyielded = 0
        if scheduler.try_acquire():
            proc.holds_slot = True
            scheduler.move(proc, _RUNNING)
        else:
            await _resume(rt, proc, suspended=True)
    else:
        await _resume(rt, proc, suspended=False)
    return result


def _journal(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    plan: _Plan,
    args: tuple[Any, ...],
    status: EntryStatus,
    result: bytes,
    mgas: int,
    wall: float,
) -> None:
    name = plan.name
    digest = plan.digest(args)
    store = rt.store
    if len(result) > PAYLOAD_THRESHOLD:
        # Stored once by content, in this entry's batch; the entry (and its hash) holds the ref.
        key = blob_key(result)
        store.put_blobs(((key, result),))
        result = payload_ref(key)
    prev = proc.chain_head
    flags = proc.flags
    if step == proc.recovered_step:
        flags |= _AFTER_CRASH
        proc.recovered_step = None
    proc.flags = 0
    agent_id = proc.id
    entry_hash = chain_hash(prev, agent_id, step, name, digest, status, result, mgas, wall, flags)
    entry = JournalEntry(
        agent_id, step, name, digest, status, result, mgas, wall, prev, entry_hash, flags
    )
    store.journal_append(entry)
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


async def _wait_for_recovery(rt: Runtime, proc: AgentProcess) -> None:
    """Hold a live instruction back until every recovering agent has replayed.

    That is any instruction while some agent still replays, and a recovered agent's first live
    one. It waits without a run slot: a recovered agent holds one here (replay never gives one
    up), and keeping it would deadlock as soon as more agents recover than there are slots,
    since the ones still queued for a slot could never replay and open the gate.

    The agent whose replay opens the gate still passes through the event loop once, behind the
    agents that were waiting for it: their first live instructions were due first. Going ahead
    of them, it could for instance broadcast to a swarm that another agent's first live
    instruction was about to join. (Memberships made before the crash need no such care:
    recovery restores them from the store before any agent replays.)
    """
    _give_up_slot(rt, proc)
    rt.scheduler.move(proc, _READY)
    if rt.recovery.closed:
        await rt.recovery.wait()
    else:
        await _pass_through_loop()
    await _resume(rt, proc, suspended=True)


def _give_up_slot(rt: Runtime, proc: AgentProcess) -> None:
    if proc.holds_slot:
        proc.holds_slot = False
        rt.scheduler.release()


@types.coroutine
def _pass_through_loop() -> Generator[None, None, None]:
    """``asyncio.sleep(0)`` without its two coroutine frames: a bare yield reschedules the task."""
    yield


async def _resume(rt: Runtime, proc: AgentProcess, *, suspended: bool) -> None:
    """Make sure the agent holds a run slot before it goes back to its own code.

    An agent that kept its slot through the instruction still passes through the event loop
    once, so agents that became ready meanwhile can queue; it then yields the slot if an agent
    of the same or a more urgent class is waiting (round-robin inside a class).

    An agent that gave its slot up for an instruction that may wait takes one back at once if
    one is free, without passing through the loop: the instructions an agent issues between
    two suspensions commit in one batch (the store commits only where no agent is between two
    instructions), and agents written to checkpoint after each message they receive rely on
    the receive and the save landing together. Such an instruction can complete without
    waiting, though (storage in relaxed mode, a message already in the mailbox), so after
    ``_YIELD_EVERY`` of them in a row the agent passes through the loop anyway: an agent looping
    over them must not keep the loop from everything else.
    """
    scheduler = rt.scheduler
    if proc.holds_slot:
        await _pass_through_loop()
        scheduler.unyielded = 0
        if not scheduler.should_yield(proc.priority):
            return
        proc.holds_slot = False
        scheduler.release()
    elif suspended:
        scheduler.unyielded = 0
    else:
        unyielded = scheduler.unyielded + 1
        if unyielded >= _YIELD_EVERY:
            await _pass_through_loop()
            unyielded = 0
        scheduler.unyielded = unyielded
    if not scheduler.try_acquire():
        scheduler.move(proc, _READY)
        await scheduler.acquire(proc.priority)
    proc.holds_slot = True
    if proc.state is not _RUNNING or proc.wait_reason is not None:
        scheduler.move(proc, _RUNNING)
