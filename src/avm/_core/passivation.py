"""Passivation: agents idle on a message, timer or reply leave RAM and come back on demand.

An agent parked in an instruction costs its task, the chain of suspended coroutines between its
code and the future it awaits, its mailbox and whatever its frames hold. None of that is needed
to wake it: its journal already says how to rebuild it, which is what recovery does after a
crash. So an agent that has waited longer than ``VM(passivate_after=...)`` is reduced to one
:class:`~avm.memory.PassivatedAgent` and its task is cancelled; an event it waits for brings
it back by re-running it through :func:`avm._core.recovery.restore` and replay::

    WAITING ──idle > passivate_after──► passivated (a record; task cancelled, nothing journaled)
       ▲                                   │ a message / the awaited reply / its deadline
       └── replay up to the instruction ◄──┘ new task: restore (journal, inbox) + replay

Why this is invisible to the agent: only waits for a message, a reply or a timer are
passivated, each inside an instruction that has performed nothing irreversible before it: a
parked :class:`~avm._core.interpreter.WaitingInstruction` (receive, SWARM_WAIT,
WAIT_FOR_RESPONSE, WAIT, SCHEDULE_TASK; it reports its kind, deadline and task id). The
instruction never got a journal entry, so the re-run agent replays every entry it had and
issues it again, at the same step. Its deadline is kept (``TimerService.resume_at``), not
restarted. An agent waiting in a SWARM_FETCH stays in RAM: re-issuing the fetch would ask the
swarm's members again, and by then the one that answered may have left it.

Records are durable: each one is written to the state store (``passivated`` table) in the batch
of the moment it is made, and deleted in the batch of its activation, before anything the
woken agent writes. A VM that starts on a store holding records (after a clean stop or a kill)
registers those agents as passivated again (:meth:`Passivator.revive`) instead of restoring
them into RAM: no task, no replay, only the record, until a message, the awaited reply or the
deadline wakes them as above. Deadlines are stored as wall-clock times, so a deadline that
passed while no VM ran wakes its agent as soon as the VM starts.

What is guaranteed of a revived agent's held content (``memory``, a link list in the content
store's cold tier, ``content.db``): nothing an agent needs to run depends on it, since
activation rebuilds the agent from its journal, and replay stores again what the agent's code
stores. When the link list is still on disk, the agent takes holds again on the content it
names that the store still has (the store drops every hold of an earlier process when it
opens), and garbage collection keeps that content while the agent is away (records are GC
roots). When the link list is missing (the content store lost a write the state store kept),
the agent comes back exactly the same, only without those holds restored.

No message is lost or doubled: while an agent is passivated, and while it is being activated
until :func:`restore` has read its inbox, deliveries to it are only recorded in the durable
inbox (the message log returns "not delivered live"), and that read picks them all up; from the
read on, deliveries go live. The switch happens inside the read's return, with no suspension
between it and restore filling the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
from collections.abc import AsyncGenerator, Callable
from types import AsyncGeneratorType, CoroutineType
from typing import TYPE_CHECKING, Any, cast

import msgspec

from avm._core.agent_run import AgentRun
from avm._core.interpreter import WaitingInstruction
from avm._core.process import AgentProcess
from avm._core.states import AgentState, WaitReason
from avm.memory import ContentError, ContentRef, ContentStore, PassivatedAgent, Tier
from avm.memory.holds import HoldTable
from avm.storage.base import StateStore
from avm.swarm.bus import MessageLog
from avm.swarm.mailbox import Envelope, Mailbox

if TYPE_CHECKING:
    from avm._core.runtime import Runtime

__all__ = ["PASSIVATED", "Passivator"]

log = logging.getLogger(__name__)

#: The outcome a passivated agent's cancelled task leaves behind (not a kill).
PASSIVATED: Any = object()

# What a passivated agent waits for.
_SLEEP, _RECEIVE, _REPLIES = "sleep", "receive", "replies"


async def _one_item() -> AsyncGenerator[None, None]:
    yield None


# What a coroutine awaits while it iterates an async generator (``async for`` over
# ``ctx.schedule_task``): the step object of ``__anext__``, which hides its generator.
_ASYNC_GEN_STEP = type(_one_item().__anext__())
_IDLE_REASONS = (WaitReason.MESSAGE, WaitReason.TIMER)
# Sweep this many times per threshold: an agent passivates between 1 and 1.25 thresholds idle.
_SWEEPS_PER_THRESHOLD = 4


class _Wait:
    """Where a passivation candidate is suspended, read from its coroutine chain."""

    __slots__ = ("deadline", "kind", "task_id")

    def __init__(self, kind: str, deadline: float | None, task_id: str | None) -> None:
        self.kind = kind
        self.deadline = deadline
        self.task_id = task_id


def _suspension(task: asyncio.Task[Any]) -> _Wait | None:
    """The wait ``task`` is parked in, if it is one passivation may interrupt; else None.

    That is a :class:`WaitingInstruction` the agent's own coroutines await, directly or through
    async generators (``async for`` over ``ctx.schedule_task``), and nothing else: a chain
    through any other awaitable (a task, a gather, a SWARM_FETCH inside ``execute``) is not.
    """
    run = task.get_coro()
    coro: Any = run.agent if isinstance(run, AgentRun) else run
    while True:
        awaited = getattr(coro, "cr_await", None)
        if type(awaited) is _ASYNC_GEN_STEP:
            awaited = _generator_awaited(awaited)
        if isinstance(awaited, WaitingInstruction):  # parked with no frames: it says where
            parked = awaited.parked()
            if parked is None:
                return None
            sleeping, deadline, task_id = parked
            kind = _SLEEP if sleeping else _RECEIVE if task_id is None else _REPLIES
            return _Wait(kind, deadline, task_id)
        if not isinstance(awaited, CoroutineType):
            return None
        coro = awaited


def _generator_awaited(step: Any) -> Any:
    """What the async generator behind an ``__anext__`` step awaits (None if not suspended).

    The step object does not expose its generator, but the garbage collector's referents of
    it do; only a sweep's candidates are looked at, so the cost is no concern.
    """
    for referent in gc.get_referents(step):
        if isinstance(referent, AsyncGeneratorType):
            return referent.ag_await
    return None


class _InboxTap:
    """The state store as :func:`restore` sees it while activating one agent.

    Its inbox read switches the agent's deliveries to live as it returns: nothing can arrive
    between the read and restore filling the mailbox from it.
    """

    def __init__(self, store: StateStore, on_read: Callable[[], None]) -> None:
        self._store = store
        self._on_read = on_read

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def inbox_pending(self, agent_id: str) -> list[bytes]:
        pending = await self._store.inbox_pending(agent_id)
        self._on_read()
        return pending


class _Log:
    """The swarm's message log, holding deliveries to agents out of RAM in the inbox only."""

    def __init__(self, inner: MessageLog, passivator: Passivator) -> None:
        self._inner = inner
        self._passivator = passivator

    def delivered(self, agent_id: str, envelope: Envelope) -> bool:
        if not self._inner.delivered(agent_id, envelope):
            return False
        passivator = self._passivator
        if passivator.holds(agent_id):
            passivator.delivered_while_away(agent_id, envelope)
            return False  # recorded: the agent's restore reads it from the inbox
        return True

    def consumed(self, agent_id: str, envelope: Envelope) -> None:
        self._inner.consumed(agent_id, envelope)


class Passivator:
    """The VM's table of passivated agents, the sweep that fills it and the wake-ups.

    ``start`` starts an activated agent's task (the VM's ``_start_task``); ``held`` is the VM's
    table of content each agent holds, folded into one link list while the agent is away.
    """

    def __init__(
        self,
        after_s: float | None,
        *,
        processes: dict[str, AgentProcess],
        start: Callable[[AgentProcess, PassivatedAgent], None],
        make_process: Callable[[PassivatedAgent], AgentProcess],
        memory: ContentStore,
        held: HoldTable,
    ) -> None:
        self._rt_: Runtime | None = None
        self.after_s = after_s
        self._processes = processes
        self._start = start
        self._make_process = make_process
        self._memory = memory
        self._held = held
        self.records: dict[str, PassivatedAgent] = {}
        self._activating: set[str] = set()
        # Agents whose records came from the store at start: their holds died with the last
        # process, so activation takes them again.
        self._revived: set[str] = set()
        self._seen: dict[str, tuple[int, float]] = {}
        self._sweep_timer: Any = None
        self._closed = False
        self._activity: asyncio.Future[None] | None = None
        self.passivations = 0
        self.activations = 0
        self.delivered_away = 0
        # A mailbox to hand the bus for agents out of RAM: it is never put to, since the log
        # reports those deliveries as recorded only.
        self.away_mailbox = Mailbox(1)

    def wrap_log(self, inner: MessageLog) -> MessageLog:
        return _Log(inner, self)

    def bind(self, rt: Runtime) -> None:
        """Attach to the runtime built around the wrapped log, and start sweeping."""
        self._rt_ = rt
        if self.after_s is not None:
            self._arm()

    @property
    def _rt(self) -> Runtime:
        assert self._rt_ is not None, "Passivator.bind(rt) first"
        return self._rt_

    # -- state -----------------------------------------------------------------------------

    def holds(self, agent_id: str) -> bool:
        """True while deliveries to ``agent_id`` must go to its inbox only."""
        return agent_id in self.records or agent_id in self._activating

    async def activity(self) -> None:
        """Wait until some passivated agent is activated (for result() and join())."""
        if self._activity is None or self._activity.done():
            self._activity = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._activity)

    def _notify(self) -> None:
        if self._activity is not None and not self._activity.done():
            self._activity.set_result(None)

    # -- the sweep ---------------------------------------------------------------------------

    def _arm(self) -> None:
        assert self.after_s is not None
        timers = self._rt.timers
        self._sweep_timer = timers.call_at(
            timers.now() + self.after_s / _SWEEPS_PER_THRESHOLD, self._tick
        )

    def _tick(self) -> None:
        try:
            self.sweep()
        except Exception:  # a failed sweep must not stop the next ones
            log.exception("passivation sweep failed")
        if not self._closed:
            self._arm()

    def sweep(self) -> int:
        """Passivate every agent idle longer than the threshold; how many were."""
        if self._closed or self.after_s is None:
            return 0
        now = self._rt.timers.now()
        old, seen = self._seen, {}
        after = self.after_s
        demote: list[ContentRef] = []
        count = 0
        for proc in list(self._processes.values()):
            if proc.state is not AgentState.WAITING or proc.wait_reason not in _IDLE_REASONS:
                continue
            prev = old.get(proc.id)
            since = prev[1] if prev is not None and prev[0] == proc.step else now
            if now - since >= after and self.passivate(proc, demote):
                count += 1
                continue
            seen[proc.id] = (proc.step, since)
        self._seen = seen
        if demote:
            self._memory.demote(demote, Tier.COLD)
        if count:
            log.debug("passivated %d idle agents", count)
        return count

    def passivate(self, proc: AgentProcess, demote: list[ContentRef] | None = None) -> bool:
        """Drop ``proc``'s task and objects for a record, if it waits where that is safe."""
        task = proc.task
        reason = proc.wait_reason
        if (
            task is None
            or task.done()
            or proc.state is not AgentState.WAITING
            or reason not in _IDLE_REASONS
            or proc.replay is not None
            or (proc.mailbox is not None and proc.mailbox.blocked_senders)
        ):
            return False
        wait = _suspension(task)
        if wait is None:
            return False
        assert reason is not None
        rt = self._rt
        # Replies already in its slots are pending in the inbox: restore puts them back, so
        # the slots go, those of tasks it is not waiting on as well.
        rt.bus.forget_owner(proc.id)
        memory = None
        held = self._held.pop(proc.id)
        if held:
            # One held link list stands for the agent's holds; what only it holds goes to disk
            # (in one batch per sweep when the sweep passes ``demote``).
            memory = self._memory.put_links(held)
            cold = demote if demote is not None else []
            cold.append(memory)
            cold.extend(ref for ref in held if self._memory.holds(ref) == 1)
            if demote is None:
                self._memory.demote(cold, Tier.COLD)
        wake: str | float | None = wait.task_id
        if wait.kind is _SLEEP:
            wake = wait.deadline
        record = PassivatedAgent(
            proc.id,
            None,
            proc.step - 1,
            reason,
            wake,
            memory,
            wait.deadline,
            int(proc.priority),
            proc.gas.budget,
            proc.gas.spent,
            tuple(proc.topics) if proc.topics else (),
            proc.schedules,
            proc.definition.name,
        )
        self.records[proc.id] = record
        self._save(record)
        del self._processes[proc.id]
        rt.scheduler.passivate()
        proc.outcome = PASSIVATED
        task.cancel()
        if wait.deadline is not None:
            rt.timers.call_at(wait.deadline, lambda: self._deadline(record))
        self.passivations += 1
        return True

    # -- durable records -----------------------------------------------------------------------

    def _wall_shift(self) -> float:
        """What to add to a timer-clock time to make it a wall-clock time, now."""
        timers = self._rt.timers
        return timers.clock.wall() - timers.now()

    def _save(self, record: PassivatedAgent) -> None:
        """Write ``record`` to the state store, its times as wall-clock times."""
        stored = _shifted(record, self._wall_shift())
        self._rt.store.passivated_put(record.agent_id, stored.encode())

    def update(self, record: PassivatedAgent) -> None:
        """Replace a passivated agent's record (a top-up changed its budget), durably too."""
        self.records[record.agent_id] = record
        self._save(record)

    def hold(self, agent_id: str, ref: ContentRef) -> None:
        """A hold of ``ref`` for a passivated agent: a new link list in its record, saved.

        An agent passivated in this run keeps its holds while away (its record's list is held
        too); one revived from an earlier run takes them again when it wakes (:meth:`_rehold`),
        and meanwhile its record, a garbage-collection root, keeps the content.
        """
        record = self.records[agent_id]
        store = self._memory
        children: tuple[ContentRef, ...] = ()
        if record.memory is not None:
            # A list lost with an earlier run: start a new one.
            with contextlib.suppress(ContentError):
                children = store.read_links(record.memory)[0]
        if ref in children:
            return
        revived = agent_id in self._revived
        if not revived:
            store.incref(ref)
        memory = store.put_links((*children, ref), hold=not revived)
        if record.memory is not None and not revived:
            store.decref(record.memory)
        self.update(msgspec.structs.replace(record, memory=memory))
        cold = [memory]
        if store.holds(ref) <= (0 if revived else 1):  # what only this agent holds goes cold
            cold.append(ref)
        store.demote(cold, Tier.COLD)

    def load(self, data: bytes, first_step: int) -> PassivatedAgent | None:
        """A record read from the state store, its times back on the timer clock; None if it
        cannot be used (undecodable, or left by an earlier incarnation of the agent)."""
        try:
            record = PassivatedAgent.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring an unreadable passivation record: %s", exc)
            return None
        if first_step < 0 or record.journal_pos < first_step:
            return None
        return _shifted(record, -self._wall_shift())

    def revive(self, record: PassivatedAgent) -> None:
        """Register an agent passivated by an earlier VM run, without bringing it into RAM.

        It is counted as waiting and passivated, rejoins its swarms on the bus (so broadcasts
        reach its inbox), and its deadline is armed; a deadline already past fires at once.
        """
        rt = self._rt
        agent_id = record.agent_id
        self.records[agent_id] = record
        self._revived.add(agent_id)
        scheduler = rt.scheduler
        scheduler.by_state[AgentState.WAITING] += 1
        scheduler.by_reason[record.wait] += 1
        scheduler.passivate()
        for topic in record.topics:
            rt.bus.join(topic, agent_id)
        if record.deadline is not None:
            rt.timers.call_at(record.deadline, lambda: self._deadline(record))

    def dropped(self, agent_id: str) -> None:
        """Delete a record the store holds that :meth:`load` would not take."""
        self._rt.store.passivated_delete(agent_id)

    def _rehold(self, agent_id: str, memory: ContentRef) -> None:
        """Take again the holds a revived agent had on what its link list names, where the
        store still has that content (see the module docstring for what is guaranteed)."""
        store, held = self._memory, self._held
        try:
            children, _ = store.read_links(memory)
        except ContentError as exc:
            log.debug("agent %s's held content is gone (%s): replay re-creates it", agent_id, exc)
            return
        for ref in children:
            if held.has(agent_id, ref):
                continue
            try:
                store.incref(ref)
            except ContentError:
                continue
            held.add(agent_id, ref)

    # -- waking ------------------------------------------------------------------------------

    def delivered_while_away(self, agent_id: str, envelope: Envelope) -> None:
        self.delivered_away += 1
        record = self.records.get(agent_id)
        if record is None:
            return  # being activated: its restore reads the inbox
        if record.wait is WaitReason.MESSAGE:
            if record.wake is None:
                wakes = envelope.kind != "reply"
            else:
                wakes = envelope.kind == "reply" and envelope.reply_to == record.wake
            if wakes:
                self.activate(agent_id)

    def _deadline(self, record: PassivatedAgent) -> None:
        # The record may have been replaced since the timer was armed (a top-up, a hold), but
        # the wait it was armed for is the same one if the step and the deadline are.
        current = self.records.get(record.agent_id)
        if (
            current is not None
            and current.journal_pos == record.journal_pos
            and current.deadline == record.deadline
        ):
            self.activate(record.agent_id)

    def activate(self, agent_id: str) -> AgentProcess | None:
        """Bring a passivated agent back: a new process whose task restores and replays it."""
        record = self.records.pop(agent_id, None)
        if record is None:
            return None
        rt = self._rt
        proc = self._make_process(record)
        rt.scheduler.activate(record.wait)
        rt.scheduler.enter(proc, AgentState.READY)
        self._processes[agent_id] = proc
        self._activating.add(agent_id)
        # Before anything the woken agent writes: a restart after those writes must not find
        # the agent passivated where its journal has moved on.
        rt.store.passivated_delete(agent_id)
        if agent_id in self._revived:
            self._revived.discard(agent_id)
            if record.memory is not None:
                self._rehold(agent_id, record.memory)
        elif record.memory is not None:
            children, _ = self._memory.read_links(record.memory)
            self._held.restore(agent_id, children)
            self._memory.decref(record.memory)
        self._start(proc, record)
        if record.deadline is not None and proc.task is not None:
            rt.timers.resume_at(proc.task, proc, record.journal_pos, record.deadline)
        self.activations += 1
        self._notify()
        return proc

    def restoring(self, rt: Runtime, agent_id: str) -> Runtime:
        """The runtime :func:`restore` uses for an activation: its inbox read goes live."""

        def live() -> None:
            self._activating.discard(agent_id)

        tap = cast(StateStore, _InboxTap(rt.store, live))
        return dataclasses.replace(rt, store=tap)

    def ended(self, proc: AgentProcess) -> None:
        """An activated agent's task ended (however): it no longer waits for its inbox read."""
        self._activating.discard(proc.id)
        if proc.task is not None:
            self._rt.timers.forget_resume(proc.task)

    def close(self) -> None:
        """The VM stops: passivated agents stay as their store records say (passivated)."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self.records.clear()
        self._revived.clear()
        self._activating.clear()
        self._seen.clear()
        self._notify()


def _shifted(record: PassivatedAgent, by: float) -> PassivatedAgent:
    """``record`` with its deadline (and a timer's wake time) moved by ``by`` seconds."""
    if record.deadline is None and not isinstance(record.wake, float):
        return record
    deadline = None if record.deadline is None else record.deadline + by
    wake = record.wake + by if isinstance(record.wake, float) else record.wake
    return msgspec.structs.replace(record, deadline=deadline, wake=wake)
