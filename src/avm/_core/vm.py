"""The VM: one per process (or per shard), hosting many agents as green threads.

It owns the engine's parts (state store, per-agent SQL, scheduler, timers, swarm bus, tools,
prompts, model linker, gas ledger), spawns agents as asyncio tasks, and answers for them:
handles, top-ups, stats. Agents never see the VM; they see their :class:`Context`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import logging
import os
import resource
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import msgspec
import psutil

from avm._core.agent_run import NO_KWARGS, AgentRun
from avm._core.clock import Clock, SystemClock
from avm._core.context import Context
from avm._core.gas import GasAccount, GasLedger, to_gas, to_mgas
from avm._core.journal import decode_value, encode_value
from avm._core.metrics import RateMeter
from avm._core.passivation import PASSIVATED, Passivator
from avm._core.process import AgentDefinition, AgentFunction, AgentProcess, Capabilities
from avm._core.recovery import RecoveryGate, restore
from avm._core.runtime import Runtime
from avm._core.scheduler import Scheduler
from avm._core.states import AgentState, Priority, WaitReason
from avm._core.timers import TimerService
from avm.config import GasPrices, ModelConfig, VMConfig
from avm.errors import (
    AgentExists,
    AgentFailed,
    AgentKilled,
    AvmError,
    InvalidArgument,
    SwarmError,
    UnknownAgent,
    VMStateError,
)
from avm.keys.manager import KeyManager
from avm.llm.linker import ModelLinker
from avm.llm.prompts import PromptLibrary
from avm.memory import (
    Content,
    ContentError,
    ContentRef,
    ContentStore,
    GcReport,
    MemoryBudget,
    MemoryStats,
    PassivatedAgent,
    collect,
    roots_of,
)
from avm.memory.holds import HoldTable
from avm.storage import open_store
from avm.storage.agent_sql import AgentDatabases
from avm.storage.base import AgentRecord
from avm.swarm.bus import HOST, SwarmBus
from avm.swarm.durable import StoreMessageLog
from avm.swarm.mailbox import Envelope, Mailbox
from avm.tools.registry import ToolFunction, ToolKind, ToolRegistry

__all__ = ["VM", "AgentHandle", "VMStats"]

log = logging.getLogger(__name__)

Reducer = Callable[[list[Any]], Any]


# The context agent tasks' done callbacks run in: the VM's clean-up reads no context variable.
_DONE_CONTEXT = contextvars.Context()


class VMStats(msgspec.Struct, frozen=True):
    """A snapshot of what the VM is doing, for dashboards and ``vm.stats()``.

    ``memory`` is the content store's own snapshot: logical and stored bytes per tier, dedup and
    compression ratios, hits and misses per tier. ``resident`` agents are live ones in RAM;
    ``passivated`` ones wait out of RAM (counted in ``agents["waiting"]`` and ``waiting`` too).
    """

    agents: dict[str, int]
    waiting: dict[str, int]
    run_slots: int
    run_queue: int
    instructions: int
    instructions_per_s: float
    model_requests: int
    model_requests_per_s: float
    model_latency_ms: float
    gas_spent: float
    timers: int
    swarms: int
    messages_delivered: int
    journal_commits: int
    rss_bytes: int
    uptime_s: float
    memory: MemoryStats
    resident: int = 0
    passivated: int = 0


class AgentHandle:
    """The host's view of one agent: its state, gas, a way to talk to it and to wait for it.

    A handle names the agent, not one incarnation of it: it answers for the agent whether it is
    in RAM or passivated (then it reads the passivation record, and waking it is not needed).
    """

    __slots__ = ("_id", "_vm")

    def __init__(self, vm: VM, agent_id: str) -> None:
        self._vm = vm
        self._id = agent_id

    def __repr__(self) -> str:
        return f"<AgentHandle {self.id} {self.state.name.lower()}>"

    @property
    def id(self) -> str:
        return self._id

    @property
    def passivated(self) -> bool:
        """True while the agent waits out of RAM."""
        return self._vm._passive_record(self._id) is not None

    @property
    def state(self) -> AgentState:
        record = self._vm._passive_record(self._id)
        return AgentState.WAITING if record is not None else self._vm._process(self._id).state

    @property
    def wait_reason(self) -> WaitReason | None:
        record = self._vm._passive_record(self._id)
        return record.wait if record is not None else self._vm._process(self._id).wait_reason

    @property
    def step(self) -> int:
        record = self._vm._passive_record(self._id)
        return record.journal_pos + 1 if record is not None else self._vm._process(self._id).step

    @property
    def gas_spent(self) -> float:
        record = self._vm._passive_record(self._id)
        spent = record.spent if record is not None else self._vm._process(self._id).gas.spent
        return to_gas(spent)

    @property
    def gas_budget(self) -> float | None:
        record = self._vm._passive_record(self._id)
        budget = record.budget if record is not None else self._vm._process(self._id).gas.budget
        return None if budget is None else to_gas(budget)

    async def send(self, data: Any, *, timeout_s: float | None = 30.0) -> Any:
        """Send a request to the agent and return the data of its reply."""
        return await self._vm.request(self.id, data, timeout_s=timeout_s)

    async def post(self, data: Any, *, topic: str = "direct") -> None:
        """Put a one-way message in the agent's mailbox (waits while it is full)."""
        await self._vm.post(self.id, data, topic=topic)

    def top_up(self, gas: float) -> None:
        self._vm.top_up(self.id, gas)

    def kill(self) -> None:
        self._vm.kill(self.id)

    async def result(self) -> Any:
        """Wait for the agent to finish; return what its function returned.

        Raises :class:`AgentFailed` (with the agent's exception as ``__cause__``) or
        :class:`AgentKilled`. A passivated agent is waited for, not woken.
        """
        vm = self._vm
        while True:
            if vm._passive_record(self._id) is not None:
                await vm._passive_activity()
                continue
            proc = vm._process(self._id)
            if proc.task is not None and not proc.task.done():
                await asyncio.wait([proc.task])  # unlike awaiting it, never raises its cancellation
            if proc.outcome is PASSIVATED:
                continue  # passivated meanwhile: wait for the next incarnation
            break
        if proc.state is AgentState.DONE:
            return proc.outcome
        if proc.state is AgentState.FAILED:
            raise AgentFailed(proc.id, proc.outcome) from proc.outcome
        raise AgentKilled(proc.id)


class VM:
    """An agent virtual machine.

    ``VM()`` runs on embedded defaults: state in SQLite under ``./.avm``, the in-process swarm.
    Use it as ``async with vm:``; leaving the block stops every agent that is still running
    (their journal, KV, SQL and state stay on disk).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        config: VMConfig | None = None,
        clock: Clock | None = None,
        keys: KeyManager | None = None,
        **overrides: Any,
    ) -> None:
        config = config or VMConfig()
        if state_dir is not None:
            overrides["state_dir"] = os.fspath(state_dir)
        if overrides:
            try:
                config = msgspec.structs.replace(config, **overrides)
            except TypeError as exc:
                raise AvmError(f"unknown VM option: {exc}") from None
        self.config = config
        self.clock: Clock = clock or SystemClock()
        #: Secrets for tools, and the redactor that keeps their values out of results, model
        #: calls and the journal (see avm.keys); None runs without secrets.
        self.keys = keys
        self.tools = ToolRegistry()
        self.prompts = PromptLibrary()
        self.models = ModelLinker()
        self._definitions: dict[str, AgentDefinition] = {}
        self._reducers: dict[str, Reducer] = {}
        self._processes: dict[str, AgentProcess] = {}
        self._counters: dict[str, Iterator[int]] = {}
        self.ledger = GasLedger(self._accounts)
        #: Content-addressed memory (avm.memory): shared bytes held once, under the budget.
        self.memory: ContentStore | None = None
        self._rt: Runtime | None = None
        self._on_done: Callable[[AgentProcess, asyncio.Task[None]], None] = _not_started
        self._passivator: Passivator | None = None
        # What each agent holds in the content store (vm.hold), released when it is deleted.
        self._held = HoldTable()
        self._orphans: dict[str, list[AgentRecord]] = {}
        # Agents passivated by an earlier run whose definition is not registered yet.
        self._passive_orphans: dict[str, list[PassivatedAgent]] = {}
        self._started_at = 0.0
        self._stopping = False
        # Host message ids must not repeat across VM runs: the durable inbox dedupes by id.
        self._host_prefix = f"{HOST}:{secrets.token_hex(6)}"
        self._host_requests = itertools.count(1)

    # -- definitions ---------------------------------------------------------------------------

    @overload
    def agent(self, fn: AgentFunction, /) -> AgentDefinition: ...

    @overload
    def agent(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        budget: float | None = None,
        priority: Priority | str = Priority.NORMAL,
        tools: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        prompts: Iterable[str] | None = None,
    ) -> Callable[[AgentFunction], AgentDefinition]: ...

    def agent(
        self,
        fn: AgentFunction | None = None,
        /,
        *,
        name: str | None = None,
        budget: float | None = None,
        priority: Priority | str = Priority.NORMAL,
        tools: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        prompts: Iterable[str] | None = None,
    ) -> AgentDefinition | Callable[[AgentFunction], AgentDefinition]:
        """Register an agent function: ``async def agent(ctx, **kwargs)``.

        ``budget`` is the gas each instance starts with (None: the VM default, unlimited if
        that is None too); ``tools``/``models``/``prompts`` restrict what it may use.
        """

        def define(fn: AgentFunction) -> AgentDefinition:
            if isinstance(fn, AgentDefinition):  # the same agent code, registered in this VM
                fn = fn.fn
            if not asyncio.iscoroutinefunction(fn):
                raise AvmError(f"agent {fn!r} must be an async function")
            definition = AgentDefinition(
                name=name or fn.__name__,
                fn=fn,
                budget=budget if budget is not None else self.config.default_budget,
                priority=Priority.parse(priority),
                capabilities=Capabilities(
                    tools=None if tools is None else frozenset(tools),
                    models=None if models is None else frozenset(models),
                    prompts=None if prompts is None else frozenset(prompts),
                ),
            )
            self._definitions[definition.name] = definition
            known = definition.name
            if self._rt is not None and (known in self._orphans or known in self._passive_orphans):
                self._resume_orphans(self._rt, known)
            return definition

        return define(fn) if fn is not None else define

    def tool(
        self,
        name: str,
        *,
        kind: ToolKind = "read",
        description: str = "",
        parameters: dict[str, Any] | None = None,
    ) -> Callable[[ToolFunction], ToolFunction]:
        """Register an async function as a tool (``kind``: read, write or both)."""
        return self.tools.register(name, kind=kind, description=description, parameters=parameters)

    def reducer(self, name: str) -> Callable[[Reducer], Reducer]:
        """Register an aggregation for REDUCE_MODEL_CALL: ``fn(values) -> aggregate``."""

        def register(fn: Reducer) -> Reducer:
            self._reducers[name] = fn
            return fn

        return register

    def model(self, name: str, config: ModelConfig | str, **kwargs: Any) -> None:
        """Name a model agents can call, e.g. ``vm.model("default", "openai:gpt-4o-mini",
        base_url=...)``; extra keywords are :class:`ModelConfig` fields."""
        if isinstance(config, str):
            config = ModelConfig.parse(config, **kwargs)
        elif kwargs:
            config = msgspec.structs.replace(config, **kwargs)
        self.models.add(name, config)

    @property
    def definitions(self) -> dict[str, AgentDefinition]:
        return dict(self._definitions)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._rt is not None

    async def start(self) -> None:
        if self._rt is not None:
            raise VMStateError("the VM is already started")
        state_dir = Path(self.config.state_dir)
        _raise_open_file_limit(3 * self.config.sql_max_open + 256)
        store = await open_store(self.config.store, state_dir, self.config.durability)
        timers = TimerService(self.clock)
        memory = ContentStore(
            state_dir,
            budget=None if self.config.memory is None else MemoryBudget.of(self.config.memory),
            durability=self.config.durability,
        )
        passivator = Passivator(
            self.config.passivate_after,
            processes=self._processes,
            start=self._start_activated,
            make_process=self._passivated_process,
            memory=memory,
            held=self._held,
        )
        self._rt = Runtime(
            config=self.config,
            prices=self.config.prices,
            store=store,
            sql=AgentDatabases(
                state_dir / "sql",
                max_open=self.config.sql_max_open,
                max_steps=self.config.sql_max_steps,
            ),
            scheduler=Scheduler(self.config.max_running),
            timers=timers,
            bus=SwarmBus(timers, self._mailbox_of, passivator.wrap_log(StoreMessageLog(store))),
            tools=self.tools,
            prompts=self.prompts,
            models=self.models,
            ledger=self.ledger,
            processes=self._processes,
            instructions=RateMeter(),
            model_requests=RateMeter(),
            recovery=RecoveryGate(),
            keys=self.keys,
            memory=memory,
            hold=self._hold_ref,
            reducers=self._reducers,
        )
        if self.keys is not None:
            self.keys.definition_of = self._definition_of
        self.memory = memory
        self._passivator = passivator
        # One callable for every agent task's end, shared (see _start_task).
        self._on_done = functools.partial(self._finished, self._rt)
        passivator.bind(self._rt)
        self._started_at = self.clock.monotonic()
        log.info("VM started with state in %s", state_dir)
        if self.config.recover:
            await self._recover(self._rt)

    async def _recover(self, rt: Runtime) -> None:
        """Resume every agent the last host left unfinished.

        Agents the last host left passivated stay passivated: they are registered from their
        durable records, out of RAM, and woken on demand (see :mod:`avm._core.passivation`).
        The others are restored into RAM and replay. Agents whose definition is registered
        resume now; the others wait until one with their definition's name is registered
        (``vm.agent``), and stay stopped if none ever is.
        """
        passivator = self._away()
        for agent_id, data, first_step in await rt.store.passivated_agents():
            passive = passivator.load(data, first_step)
            if passive is None:
                # Not usable: drop it, and the agent is restored like any unfinished one.
                passivator.dropped(agent_id)
                continue
            self._passive_orphans.setdefault(passive.definition, []).append(passive)
        for record in await rt.store.agents_unfinished():
            self._orphans.setdefault(record.definition, []).append(record)
        for name in {*self._orphans, *self._passive_orphans}:
            if name in self._definitions:
                self._resume_orphans(rt, name)
        if self._orphans or self._passive_orphans:
            waiting = sum(len(records) for records in self._orphans.values()) + sum(
                len(records) for records in self._passive_orphans.values()
            )
            log.info(
                "%d unfinished agents wait for their definitions: %s",
                waiting,
                ", ".join(sorted({*self._orphans, *self._passive_orphans})),
            )

    def _resume_orphans(self, rt: Runtime, name: str) -> None:
        definition = self._definitions[name]
        passivator = self._away()
        for passive in self._passive_orphans.pop(name, []):
            passivator.revive(passive)
        for record in self._orphans.pop(name, []):
            proc = AgentProcess(
                record.agent_id,
                definition,
                decode_value(record.args),
                Priority(record.priority),
                record.budget,
            )
            proc.context = Context(rt, proc)
            rt.scheduler.enter(proc, AgentState.READY)
            self._processes[proc.id] = proc
            if record.first_step < 0:  # stopped before it ever ran: start it afresh
                self._start_task(rt, proc, fresh=True, args=record.args)
            else:
                rt.recovery.expect(proc.id)
                self._start_task(rt, proc, fresh=False, record=record)

    async def stop(self) -> None:
        """Stop every running agent and close the stores. Stopped agents keep their state."""
        rt = self._rt
        if rt is None:
            return
        self._stopping = True
        tasks = [
            p.task for p in self._processes.values() if p.task is not None and not p.task.done()
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._stopping = False
        self._passive_orphans.clear()
        if self._passivator is not None:
            # Passivated agents keep their records: the next start registers them passivated.
            self._passivator.close()
            self._passivator = None
        self._held.clear()
        rt.timers.close()
        await self.models.aclose()
        rt.sql.close()
        await rt.store.aclose()
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self._rt = None
        log.info("VM stopped")

    async def __aenter__(self) -> VM:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise VMStateError("the VM is not started: use 'async with vm:' or 'await vm.start()'")
        return self._rt

    # -- agents --------------------------------------------------------------------------------

    def spawn(
        self,
        definition: AgentDefinition | str,
        /,
        *,
        agent_id: str | None = None,
        budget: float | None = None,
        priority: Priority | str | None = None,
        **kwargs: Any,
    ) -> AgentHandle:
        """Start an agent; ``kwargs`` are passed to its function (and persisted with it)."""
        rt = self._runtime()
        if isinstance(definition, str):
            found = self._definitions.get(definition)
            if found is None:
                raise AvmError(f"no agent definition named {definition!r}")
            definition = found
        if agent_id is None:
            counter = self._counters.setdefault(definition.name, itertools.count(1))
            agent_id = f"{definition.name}-{next(counter)}"
            while agent_id in self._processes:
                agent_id = f"{definition.name}-{next(counter)}"
        existing = self._processes.get(agent_id)
        if (existing is not None and not existing.state.finished) or self._passive_record(
            agent_id
        ) is not None:
            raise AgentExists(agent_id)
        try:
            args = encode_value(kwargs, "spawn arguments")
        except InvalidArgument as exc:
            raise AvmError(f"agent {agent_id!r}: {exc}") from None
        budget = definition.budget if budget is None else budget
        budget_mgas = None if budget is None else to_mgas(budget)
        prio = definition.priority if priority is None else Priority.parse(priority)
        proc = AgentProcess(agent_id, definition, kwargs, prio, budget_mgas)
        proc.context = Context(rt, proc)
        rt.scheduler.enter(proc, AgentState.READY)
        self._processes[agent_id] = proc
        # Persisted at once, so an agent stopped before it first runs is still resumed; where
        # its journal starts is learnt when it does run (first_step -1 until then).
        self._record(rt, proc, args, first_step=-1)
        self._start_task(rt, proc, fresh=True, args=args)
        return AgentHandle(self, agent_id)

    def _record(self, rt: Runtime, proc: AgentProcess, args: bytes, *, first_step: int) -> None:
        rt.store.agent_put(
            AgentRecord(
                agent_id=proc.id,
                definition=proc.definition.name,
                args=args,
                priority=int(proc.priority),
                budget=proc.gas.budget,
                spent=proc.gas.spent,
                status="running",
                created=self.clock.wall(),
                first_step=first_step,
            )
        )

    def _start_task(
        self,
        rt: Runtime,
        proc: AgentProcess,
        *,
        fresh: bool,
        args: bytes = b"",
        record: AgentRecord | None = None,
        activation: PassivatedAgent | None = None,
    ) -> None:
        start_up = self._start_up(rt, proc, args if fresh else None, record, activation)
        run = AgentRun(proc, rt.scheduler, start_up, self._on_done)
        task = asyncio.get_running_loop().create_task(run, name=proc.id)
        # The run is also the done callback, called in one shared context rather than a copy
        # per task: every resident agent keeps its callback for as long as its task lives.
        task.add_done_callback(run, context=_DONE_CONTEXT)
        proc.task = task

    async def _start_up(
        self,
        rt: Runtime,
        proc: AgentProcess,
        fresh_args: bytes | None,
        record: AgentRecord | None,
        activation: PassivatedAgent | None,
    ) -> None:
        """What runs before the agent's own code: its first record, or its restored past."""
        if activation is not None:
            await self._reactivate(rt, proc)
        elif record is not None:
            await restore(rt, proc, record)
        elif fresh_args is not None:
            head = await rt.store.journal_head(proc.id)
            if head is not None:  # an agent id with history starts a new incarnation
                proc.step, proc.chain_head = head[0] + 1, head[1]
            self._record(rt, proc, fresh_args, first_step=proc.step)
        await rt.scheduler.acquire(proc.priority)
        proc.holds_slot = True
        rt.scheduler.move(proc, AgentState.RUNNING)

    def _start_activated(self, proc: AgentProcess, record: PassivatedAgent) -> None:
        self._start_task(self._runtime(), proc, fresh=False, activation=record)

    def _passivated_process(self, record: PassivatedAgent) -> AgentProcess:
        """A new process for a passivated agent; its task fills in the rest (_reactivate)."""
        name = record.definition
        definition = self._definitions.get(name)
        if definition is None:
            raise VMStateError(
                f"agent {record.agent_id!r} was passivated running definition {name!r}, "
                "which is no longer registered"
            )
        proc = AgentProcess(
            record.agent_id, definition, {}, Priority(record.priority), record.budget
        )
        proc.gas.spent = record.spent
        proc.topics = list(record.topics) if record.topics else None
        proc.schedules = record.schedules
        proc.context = Context(self._runtime(), proc)
        return proc

    async def _reactivate(self, rt: Runtime, proc: AgentProcess) -> None:
        """Rebuild a passivated agent the way recovery rebuilds one after a crash.

        Unlike a crash, nothing was in flight (the instruction it waited in had performed
        nothing irreversible), so its first live step is not flagged AFTER_CRASH and does not
        wait for the recovery gate.
        """
        record = await rt.store.agent_get(proc.id)
        if record is None:
            raise VMStateError(f"agent {proc.id!r} was passivated but has no record in the store")
        proc.kwargs = decode_value(record.args)
        assert self._passivator is not None
        await restore(self._passivator.restoring(rt, proc.id), proc, record)
        proc.recovered_step = None

    def _finished(self, rt: Runtime, proc: AgentProcess, task: asyncio.Task[None]) -> None:
        """Clean up after an agent's task, however it ended (even cancelled before it ran)."""
        if proc.holds_slot:
            proc.holds_slot = False
            rt.scheduler.release()
        if self._passivator is not None:
            self._passivator.ended(proc)
        if proc.outcome is PASSIVATED:
            # The agent lives on as its passivation record; this incarnation only goes away.
            proc.mailbox = None
            proc.context = None
            proc.kwargs = NO_KWARGS
            return
        rt.recovery.done(proc.id)  # an agent that ended while replaying no longer holds the gate
        if not task.cancelled() and task.exception() is not None:
            proc.outcome = task.exception()  # the VM failed around the agent (its store, say)
            rt.scheduler.move(proc, AgentState.FAILED)
            status = "failed"
        elif task.cancelled() or not proc.state.finished:
            rt.scheduler.move(proc, AgentState.KILLED)
            # Stopped with the VM, an agent is unfinished and can be resumed; killed, it is over.
            status = "stopped" if self._stopping else "killed"
        else:
            status = proc.state.name.lower()
        self._retire(rt, proc, status)

    def _retire(self, rt: Runtime, proc: AgentProcess, status: str) -> None:
        if proc.topics:
            rt.bus.leave_all(proc.id, proc.topics)
        if proc.mailbox is not None:
            proc.mailbox.close()
            proc.mailbox = None
        proc.schedules = None
        proc.kwargs = NO_KWARGS
        try:
            rt.store.agent_update(
                proc.id, status=status, spent=proc.gas.spent, budget=proc.gas.budget
            )
        except AvmError as exc:  # the store may already be closing
            log.debug("could not record final status of %s: %s", proc.id, exc)

    def _definition_of(self, agent_id: str) -> str | None:
        proc = self._processes.get(agent_id)
        return None if proc is None else proc.definition.name

    def _process(self, agent_id: str) -> AgentProcess:
        proc = self._processes.get(agent_id)
        if proc is None:
            raise UnknownAgent(agent_id)
        return proc

    def _mailbox_of(self, agent_id: str) -> Mailbox | None:
        proc = self._processes.get(agent_id)
        if proc is None or proc.state.finished:
            passivator = self._passivator
            if passivator is not None and agent_id in passivator.records:
                return passivator.away_mailbox  # the message log records it for the inbox
            return None
        if proc.mailbox is None:
            proc.mailbox = Mailbox(self.config.mailbox_capacity)
        return proc.mailbox

    def _accounts(self) -> Iterable[tuple[str, GasAccount]]:
        for agent_id, proc in self._processes.items():
            yield agent_id, proc.gas
        if self._passivator is not None:
            for agent_id, record in list(self._passivator.records.items()):
                account = GasAccount(record.budget)
                account.spent = record.spent
                yield agent_id, account

    def _passive_record(self, agent_id: str) -> PassivatedAgent | None:
        passivator = self._passivator
        return None if passivator is None else passivator.records.get(agent_id)

    async def _passive_activity(self) -> None:
        if self._passivator is None:
            raise VMStateError("the VM is not started: use 'async with vm:' or 'await vm.start()'")
        await self._passivator.activity()

    def handle(self, agent_id: str) -> AgentHandle:
        if self._passive_record(agent_id) is None:
            self._process(agent_id)  # raises UnknownAgent
        return AgentHandle(self, agent_id)

    def handles(self) -> list[AgentHandle]:
        ids = list(self._processes)
        if self._passivator is not None:
            ids.extend(self._passivator.records)
        return [AgentHandle(self, agent_id) for agent_id in ids]

    def top_up(self, agent_id: str, gas: float) -> None:
        """Add ``gas`` to an agent's budget; an agent halted out of gas resumes if it now can."""
        if not gas > 0:
            raise AvmError(f"top-up for agent {agent_id!r} must be positive, got {gas!r}")
        passive = self._passive_record(agent_id)
        if passive is not None and passive.budget is not None:
            assert self._passivator is not None
            budget = passive.budget + to_mgas(gas)
            self._passivator.update(msgspec.structs.replace(passive, budget=budget))
            self._runtime().store.agent_update(
                agent_id, status="running", spent=passive.spent, budget=budget
            )
            return
        if passive is not None:
            return  # an unlimited budget stays unlimited
        proc = self._process(agent_id)
        proc.gas.top_up(to_mgas(gas))
        rt = self._runtime()
        rt.store.agent_update(
            proc.id, status=_status(proc), spent=proc.gas.spent, budget=proc.gas.budget
        )
        waiter = proc.top_up_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recovered(self) -> None:
        """Wait until every agent resumed from the journal has replayed up to where it was."""
        await self._runtime().recovery.wait()

    def kill(self, agent_id: str) -> None:
        if self._passivator is not None and agent_id in self._passivator.records:
            # Back in RAM first, so it ends the way every killed agent does (status, swarms).
            self._passivator.activate(agent_id)
        proc = self._process(agent_id)
        if proc.task is not None and not proc.task.done():
            proc.task.cancel()

    async def join(self, timeout_s: float | None = None) -> None:
        """Wait until every agent spawned so far has finished (done, failed or killed)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            tasks = [
                p.task for p in self._processes.values() if p.task is not None and not p.task.done()
            ]
            passivator = self._passivator
            passive = 0 if passivator is None else len(passivator.records)
            if not tasks and not passive:
                return
            waiters: list[asyncio.Task[Any]] = []
            if tasks:
                waiters.append(loop.create_task(asyncio.wait(tasks)))
            if passivator is not None and passive:
                # A passivated agent comes back as a new task: look again when one does.
                waiters.append(loop.create_task(passivator.activity()))
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, pending = await asyncio.wait(
                waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if not done:
                unfinished = sum(1 for t in tasks if not t.done()) + passive
                raise TimeoutError(f"{unfinished} agents still running after {timeout_s} s")

    # -- messages from the host ----------------------------------------------------------------

    async def request(self, agent_id: str, data: Any, *, timeout_s: float | None = 30.0) -> Any:
        """Send a request to an agent's mailbox and wait for its reply (see ``ctx.reply``)."""
        rt = self._runtime()
        task_id = f"{self._host_prefix}:{next(self._host_requests)}"
        await rt.bus.send(agent_id, Envelope(task_id, HOST, "request", data, "request"))
        try:
            replies = await rt.bus.wait_replies(task_id, 1, timeout_s)
        except SwarmError as exc:
            exc.locate(agent_id, "request", self._process(agent_id).step)
            raise
        return replies[0].data

    async def post(self, agent_id: str, data: Any, *, topic: str = "direct") -> None:
        rt = self._runtime()
        task_id = f"{self._host_prefix}:{next(self._host_requests)}"
        await rt.bus.send(agent_id, Envelope(task_id, HOST, topic, data))

    async def publish(self, swarm_id: str, data: Any) -> int:
        """Broadcast from the host to every member of a swarm; returns how many received it."""
        rt = self._runtime()
        task_id = f"{self._host_prefix}:{next(self._host_requests)}"
        return await rt.bus.broadcast(swarm_id, Envelope(task_id, HOST, swarm_id, data))

    # -- observation ---------------------------------------------------------------------------

    @property
    def prices(self) -> GasPrices:
        return self.config.prices

    def stats(self) -> VMStats:
        rt = self._runtime()
        now = self.clock.monotonic()
        scheduler = rt.scheduler
        live = sum(scheduler.by_state[s] for s in AgentState if not s.finished)
        return VMStats(
            agents={s.name.lower(): scheduler.by_state[s] for s in AgentState},
            waiting={r.name.lower(): scheduler.by_reason[r] for r in WaitReason},
            run_slots=scheduler.running,
            run_queue=scheduler.queued,
            instructions=rt.instructions.total,
            instructions_per_s=rt.instructions.rate(now),
            model_requests=rt.model_requests.total,
            model_requests_per_s=rt.model_requests.rate(now),
            model_latency_ms=rt.model_requests.mean(now) * 1000,
            gas_spent=to_gas(self.ledger.total),
            timers=len(rt.timers),
            swarms=rt.bus.topic_count,
            messages_delivered=rt.bus.delivered + self._away().delivered_away,
            journal_commits=getattr(rt.store, "commits", 0),
            rss_bytes=psutil.Process().memory_info().rss,
            uptime_s=now - self._started_at,
            memory=self._content().stats(),
            resident=live - scheduler.passivated,
            passivated=scheduler.passivated,
        )

    def _content(self) -> ContentStore:
        if self.memory is None:
            raise VMStateError("the VM is not started: use 'async with vm:' or 'await vm.start()'")
        return self.memory

    def _away(self) -> Passivator:
        if self._passivator is None:
            raise VMStateError("the VM is not started: use 'async with vm:' or 'await vm.start()'")
        return self._passivator

    def agent_count(self, state: Literal["live", "all"] = "live") -> int:
        passive = 0 if self._passivator is None else len(self._passivator.records)
        if state == "all":
            return len(self._processes) + passive
        return sum(1 for p in self._processes.values() if not p.state.finished) + passive

    # -- passivation -----------------------------------------------------------------------------

    def passivate_idle(self) -> int:
        """Passivate now every agent idle longer than ``passivate_after``; how many were.

        The VM does this by itself a few times per threshold; this runs one sweep on demand.
        """
        self._runtime()
        return self._away().sweep()

    def passivate(self, agent_id: str) -> bool:
        """Passivate one waiting agent now, however long it has waited.

        False if it is not waiting where passivation is safe (a message, a timer or a reply
        inside an instruction, with nobody blocked sending to it).
        """
        self._runtime()
        passivator = self._away()
        if agent_id in passivator.records:
            return True
        return passivator.passivate(self._process(agent_id))

    # -- content agents hold, and deleting agents ------------------------------------------------

    def hold(self, agent_id: str, content: Content) -> ContentRef:
        """Store ``content`` in the VM's content store on behalf of an agent; its ref.

        The agent holds it until it is deleted (``vm.delete``), however many times its code
        (re-run after a crash or a passivation) stores the same content: one hold per agent and
        content. While the agent is passivated, what only it holds moves to the cold tier.
        """
        store = self._content()
        away = self._passive_record(agent_id) is not None
        if not away:
            self._process(agent_id)  # raises UnknownAgent
        ref = store.put(content, hold=False)
        if away:
            self._away().hold(agent_id, ref)
        else:
            self._hold_ref(agent_id, ref)
        return ref

    def _hold_ref(self, agent_id: str, ref: ContentRef) -> None:
        """One hold of ``ref`` for ``agent_id``, however often its code stores that content."""
        held = self._held
        if not held.has(agent_id, ref):
            self._content().incref(ref)
            held.add(agent_id, ref)

    def held(self, agent_id: str) -> tuple[ContentRef, ...]:
        """The refs ``agent_id`` holds (see :meth:`hold`)."""
        record = self._passive_record(agent_id)
        if record is not None and record.memory is not None:
            try:
                children, _ = self._content().read_links(record.memory)
            except ContentError:  # a record from an earlier run whose link list was lost
                return ()
            return children
        return self._held.refs(agent_id)

    async def delete(self, agent_id: str) -> None:
        """Kill the agent if it has not finished, then forget it and release its content.

        The content only it held becomes garbage (``vm.collect()`` reclaims it); content other
        agents hold stays. Its journal, state and records stay in the state store (history);
        the agent id can be spawned again as a new incarnation.
        """
        rt = self._runtime()
        if self._passive_record(agent_id) is not None:
            self._away().activate(agent_id)
        proc = self._process(agent_id)
        task = proc.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if self._processes.get(agent_id) is proc:
            del self._processes[agent_id]
            rt.scheduler.forget(proc)
        store = self._content()
        for ref in self._held.pop(agent_id):
            store.decref(ref)

    def collect(self) -> GcReport:
        """Reclaim content that no agent holds (see :mod:`avm.memory.gc`).

        Roots are the holds: content agents hold with :meth:`hold`, passivated agents' saved
        memory (rooted too, since a record from an earlier run holds nothing), and anything
        held through ``vm.memory`` directly. Content stored with ``hold=False`` and not held
        since is reclaimed.
        """
        self._runtime()
        return collect(self._content(), roots_of(list(self._away().records.values())))


def _not_started(proc: AgentProcess, task: asyncio.Task[None]) -> None:
    raise VMStateError("the VM is not started: use 'async with vm:' or 'await vm.start()'")


def _raise_open_file_limit(wanted: int) -> None:
    """Each open agent database holds up to three descriptors (file, WAL, shared memory)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _status(proc: AgentProcess) -> str:
    if proc.state is AgentState.OUT_OF_GAS:
        return "out_of_gas"
    return "running" if not proc.state.finished else proc.state.name.lower()
