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
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, NoReturn

from avm._core.coroutines import thrown
from avm._core.gas import to_gas
from avm._core.host import Host, NeedsGas, WaitHost, free, hosts, passthrough
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
from avm._core.timers import Timer
from avm.errors import InstructionError, NotAvailable

__all__ = ["WaitingInstruction", "execute", "instruction"]

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
        "op",
        "perform",
        "prepare",
        "reserve",
        "synced",
        "validate",
        "waits",
        "waits_on",
    )

    def __init__(self, spec: InstructionSpec) -> None:
        host = _HOSTS.get(spec.op)
        if host is None:
            if spec.available:
                raise RuntimeError(f"{spec.op} is marked available but has no host function")
            host = _UNAVAILABLE  # never reached: the pipeline refuses the opcode first
        self.op = spec.op
        self.available = spec.available
        self.name = spec.op.value  # Enum.value is a Python-level property: read it once here
        self.digest = args_digester(self.name)
        self.validate = _validator(spec)
        self.reserve: Callable[[Runtime, AgentProcess, Any], int] = host.reserve
        self.waits: WaitHost | None = None
        if isinstance(host, WaitHost):
            if spec.waits_on is None:
                raise RuntimeError(f"{spec.op} has a wait host but waits on nothing")
            self.waits = host
            host = Host(passthrough, host.reserve, _not_performed)
        self.prepare: Callable[[Runtime, AgentProcess, tuple[Any, ...]], Any] = host.prepare
        self.perform: Callable[[Runtime, AgentProcess, Any, int], Awaitable[tuple[Any, int]]] = (
            host.perform
        )
        self.waits_on = spec.waits_on
        self.is_read = spec.effect is Effect.READ
        self.synced = spec.effect is Effect.STATE or spec.effect is Effect.EXTERNAL
        if self.waits is not None and self.synced:
            # A waiting instruction's end (_complete) does not wait for a durable journal.
            raise RuntimeError(f"{spec.op} has a wait host but its entry must be synced")


async def _not_performed(rt: Runtime, proc: AgentProcess, prepared: Any, step: int) -> Any:
    raise NotAvailable("this instruction is not available")


_HOSTS = hosts()
_UNAVAILABLE = Host(passthrough, free, _not_performed)
_PLANS = {op: _Plan(spec) for op, spec in INSTRUCTIONS.items()}


def instruction(
    rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...]
) -> Coroutine[Any, Any, Any]:
    """What an agent awaits to run one instruction: a waiting instruction parks frameless.

    This is what ``ctx`` methods return. Awaiting it is the same as awaiting :func:`execute`,
    but a waiting instruction (:class:`WaitingInstruction`) keeps no coroutine frame of the
    pipeline alive while the agent is parked in it.
    """
    plan = _PLANS[op]
    if plan.waits is not None:
        return WaitingInstruction(rt, proc, plan, args)
    return execute(rt, proc, op, args)


async def execute(rt: Runtime, proc: AgentProcess, op: Op, args: tuple[Any, ...]) -> Any:
    """Run one instruction for ``proc`` and return its result."""
    if proc.replay is not None or proc.resume_state is not None:
        return replay(rt, proc, op, args)
    plan = _PLANS[op]
    if plan.waits is not None:
        return await WaitingInstruction(rt, proc, plan, args)
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
                need = plan.reserve(rt, proc, prepared)
                if not gas.reserve(need):
                    # Nothing is held while halted: a kill then releases nothing.
                    await _park_out_of_gas(rt, proc, need)
                    continue
                reserved = need
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
        _journal_error(rt, proc, step, plan, args, err)
        await _resume(rt, proc, suspended=False)
        raise
    except BaseException:
        gas.release(reserved)
        raise
    _journal_ok(rt, proc, step, plan, args, encoded, cost)
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


def _journal_ok(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    plan: _Plan,
    args: tuple[Any, ...],
    encoded: bytes,
    cost: int,
) -> None:
    clock = rt.timers.clock
    rt.instructions.record(clock.monotonic())
    wall = clock.wall()
    if cost:
        rt.ledger.charge(plan.op, cost, wall)
    _journal(rt, proc, step, plan, args, _OK, encoded, cost, wall)


def _journal_error(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    plan: _Plan,
    args: tuple[Any, ...],
    err: InstructionError,
) -> None:
    err.locate(proc.id, plan.op, step)
    error = {"error": type(err).__name__, "message": err.message}
    wall = rt.timers.clock.wall()
    _journal(rt, proc, step, plan, args, _ERROR, encode_value(error), 0, wall)


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


# -- waiting instructions ----------------------------------------------------------------------

_PARKED: Any = object()  # what _enter returns once the wait is armed
_TIMER = WaitReason.TIMER


class WaitingInstruction(Generator[Any, Any, Any], Coroutine[Any, Any, Any]):
    """A waiting instruction in progress (WAIT, SCHEDULE_TASK, WAIT_FOR_RESPONSE, SWARM_WAIT).

    An agent spends most of its life parked in one of these, so the pipeline runs around the
    wait, not through it::

        send ─► _enter (a coroutine, gone when it returns): replay · step · recovery gate ·
          │       slot · validate · reserve gas ─► host.arm
          │                    │ result at once            │ armed: future set
          │                    ▼                           ▼
          │                _complete ◄── host.finish ◄── PARKED: the task awaits ``future``
          │                    │        (host.interrupt      through this object alone
          │                    ▼         on a throw/close)
          └─ StopIteration ◄── settle · journal · resume

    While the agent is parked, its coroutine awaits this object and this object holds the
    future: no frame of the pipeline, the host function or the bus is alive, only these slots
    (the host's arm fills ``future``, ``timer`` and ``target``). The parts before and after the
    wait run in the agent's task exactly where :func:`execute` runs them, so gas, journal
    entries and their order, timeouts and cancellation are the same; the parts that may suspend
    (the recovery gate, an out-of-gas park, taking a run slot back) run as short-lived
    coroutines this object drives.

    It is a coroutine to asyncio (``create_task`` and ``gather`` accept it), and passivation
    finds the wait with :meth:`parked`.
    """

    __slots__ = (
        "_args",
        "_inner",
        "_plan",
        "_proc",
        "_reserved",
        "_rt",
        "_step",
        "future",
        "target",
        "timer",
    )

    future: asyncio.Future[Any] | None
    timer: Timer | None
    target: Any

    def __init__(self, rt: Runtime, proc: AgentProcess, plan: _Plan, args: tuple[Any, ...]) -> None:
        self._rt = rt
        self._proc = proc
        self._plan = plan
        self._args = args
        self._step = _NOT_STARTED
        self._reserved = 0
        self._inner: Coroutine[Any, Any, Any] | None = None
        self.future = None
        self.timer = None
        self.target = None

    def __await__(self) -> Generator[Any, Any, Any]:
        return self

    def __iter__(self) -> Generator[Any, Any, Any]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        inner = self._inner
        if inner is not None:
            return self._drive(inner.send, value)
        future = self.future
        if future is not None:
            if not future.done():  # resumed before its future completed: keep waiting
                future._asyncio_future_blocking = True
                return future
            inner = self._inner = self._woken(None)
            return self._drive(inner.send, None)
        if self._step != _NOT_STARTED:
            raise RuntimeError(f"{self._plan.name} was already awaited")
        self._step = _ENDED
        inner = self._inner = _enter(self)
        return self._drive(inner.send, None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = thrown(typ, val, tb)
        inner = self._inner
        if inner is not None:
            return self._drive(inner.throw, exc)
        if self.future is not None:
            inner = self._inner = self._woken(exc)
            return self._drive(inner.send, None)
        self._step = _ENDED
        raise exc

    def close(self) -> None:
        inner = self._inner
        self._inner = None
        self._step = _ENDED
        if inner is not None:
            inner.close()
        elif self.future is not None:
            self.future = None
            waits = self._plan.waits
            assert waits is not None
            waits.interrupt(self._rt, self._proc, self._args, self, GeneratorExit())
            self._proc.gas.release(self._reserved)

    def parked(self) -> tuple[bool, float | None, str | None] | None:
        """The wait the agent is parked in: (a timer?, its deadline, the task whose replies it
        waits for); None unless it is parked on a future that has not completed."""
        future = self.future
        if future is None or future.done() or self._inner is not None:
            return None
        timer = self.timer
        deadline = None if timer is None else timer.deadline
        if self._plan.waits_on is _TIMER:
            return True, deadline, None
        task_id = self._args[0]
        return False, deadline, None if task_id is None else str(task_id)

    def _drive(self, step: Callable[[Any], Any], value: Any) -> Any:
        """Advance the inner coroutine; park on the future when it has armed the wait."""
        try:
            yielded = step(value)
        except StopIteration as stop:
            self._inner = None
            if stop.value is not _PARKED:
                raise
            future = self.future
            assert future is not None
            future._asyncio_future_blocking = True
            return future
        except BaseException:
            self._inner = None
            raise
        return yielded

    def _woken(self, exc: BaseException | None) -> Coroutine[Any, Any, Any]:
        """The rest of the pipeline once the wait ended: with ``exc`` if it was thrown into."""
        self.future = None
        rt, proc, plan, args = self._rt, self._proc, self._plan, self._args
        waits = plan.waits
        assert waits is not None
        reserved = self._reserved
        try:
            if exc is None:
                result, cost = waits.finish(rt, proc, args, self)
            else:
                raise waits.interrupt(rt, proc, args, self, exc)
        except InstructionError as err:
            proc.gas.release(reserved)
            return _failed(rt, proc, self._step, plan, args, err)
        except BaseException:
            proc.gas.release(reserved)
            raise
        return _complete(rt, proc, self._step, plan, args, reserved, result, cost)


_NOT_STARTED = -1
_ENDED = -2  # started (the real step is set once the agent has one) or over


async def _enter(w: WaitingInstruction) -> Any:
    """The pipeline up to the armed wait: the result if there was nothing to wait for, else
    _PARKED with the wait armed in ``w``."""
    rt, proc, plan, args = w._rt, w._proc, w._plan, w._args
    if proc.replay is not None or proc.resume_state is not None:
        return replay(rt, proc, plan.op, args)
    waits = plan.waits
    assert waits is not None
    step = proc.step
    proc.step = step + 1
    w._step = step
    if rt.recovery.closed or proc.recovered_step == step:
        await _wait_for_recovery(rt, proc)
    scheduler = rt.scheduler
    if proc.holds_slot:
        proc.holds_slot = False
        scheduler.release()
    gas = proc.gas
    reserved = 0
    try:
        if not plan.available:
            raise NotAvailable(f"{plan.op} is not available yet in this version of AVM")
        plan.validate(args)
        # An unlimited budget needs no reservation: nothing can be refused.
        while gas.budget is not None:
            need = waits.reserve(rt, proc, args)
            if gas.reserve(need):
                reserved = need
                break
            await _park_out_of_gas(rt, proc, need)
        scheduler.move(proc, _WAITING, plan.waits_on)
        done = waits.arm(rt, proc, args, step, w)
    except InstructionError as err:
        gas.release(reserved)
        return await _failed(rt, proc, step, plan, args, err)
    except BaseException:
        gas.release(reserved)
        raise
    if done is None:
        w._reserved = reserved
        return _PARKED
    result, cost = done
    return await _complete(rt, proc, step, plan, args, reserved, result, cost)


async def _complete(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    plan: _Plan,
    args: tuple[Any, ...],
    reserved: int,
    result: Any,
    cost: int,
) -> Any:
    """A waiting instruction's end: settle, journal, take a run slot back, return."""
    proc.gas.settle(reserved, cost)
    try:
        encoded = _NIL if result is None else encode_value(result)
    except InstructionError as err:
        return await _failed(rt, proc, step, plan, args, err)
    _journal_ok(rt, proc, step, plan, args, encoded, cost)
    await _resume(rt, proc, suspended=False)
    return result


async def _failed(
    rt: Runtime,
    proc: AgentProcess,
    step: int,
    plan: _Plan,
    args: tuple[Any, ...],
    err: InstructionError,
) -> NoReturn:
    """A waiting instruction's failure: journal it, take a run slot back, raise."""
    _journal_error(rt, proc, step, plan, args, err)
    await _resume(rt, proc, suspended=False)
    raise err
