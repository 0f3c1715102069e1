"""The scheduler: run slots, priority classes, and what every agent is doing.

Agents are asyncio tasks, but only ``max_running`` of them may execute their own Python code at
once. An agent holds a *run slot* while it runs between instructions; every instruction gives the
slot back on entry and takes one again before returning. That makes each instruction a scheduling
point, the way a reduction is in BEAM: when slots are short, waiting agents are served strictly by
priority class (interactive before normal before background) and first-come-first-served inside a
class, so no agent of a class can starve another of the same class.

::

    agent code ──instruction──► release slot ──► perform (may wait: model, tool, timer...)
        ▲                                              │
        └──────────── acquire slot (by priority) ◄─────┘

The scheduler also keeps the count of agents in every state and wait reason, updated on each
transition, so stats never scan the agent table. A passivated agent (see
:mod:`avm._core.passivation`) still counts as waiting for its reason; ``passivated`` says how
many of the waiting agents are out of RAM.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from avm._core.states import AgentState, Priority, WaitReason

if TYPE_CHECKING:
    from avm._core.process import AgentProcess

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self._free = max_running
        self._queues: tuple[deque[asyncio.Future[None]], ...] = tuple(deque() for _ in Priority)
        self._queued = 0
        self.by_state = [0] * len(AgentState)
        self.by_reason = [0] * len(WaitReason)
        self.passivated = 0
        # Instructions completed since an agent last passed through the event loop; only one
        # agent runs at a time, so this is the running agent's count (see interpreter._resume).
        self.unyielded = 0

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self.max_running - self._free

    # -- run slots ---------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a free slot if one is free and nobody is queued for it."""
        if self._free > 0 and self._queued == 0:
            self._free -= 1
            return True
        return False

    async def acquire(self, priority: Priority) -> None:
        """Take a run slot, waiting behind agents of the same or a more urgent class."""
        if self._free > 0 and self._queued == 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[priority].append(future)
        self._queued += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                self._queues[priority].remove(future)
                self._queued -= 1
            raise

    def should_yield(self, priority: Priority) -> bool:
        """True if an agent of ``priority`` or a more urgent class is waiting for a slot."""
        if self._queued == 0:
            return False
        return any(self._queues[p] for p in range(priority + 1))

    def release(self) -> None:
        """Give a run slot back, handing it straight to the most urgent waiter."""
        if not self._queued:
            self._free += 1
            return
        for queue in self._queues:
            while queue:
                future = queue.popleft()
                self._queued -= 1
                if not future.done():
                    future.set_result(None)
                    return
        self._free += 1

    # -- state accounting --------------------------------------------------------------------

    def enter(self, proc: AgentProcess, state: AgentState) -> None:
        """Count a newly spawned agent."""
        proc.state = state
        self.by_state[state] += 1

    def move(self, proc: AgentProcess, state: AgentState, reason: WaitReason | None = None) -> None:
        """Move an agent to ``state`` (and wait ``reason``), keeping the counters right."""
        old_reason = proc.wait_reason
        if old_reason is not None:
            self.by_reason[old_reason] -= 1
        self.by_state[proc.state] -= 1
        self.by_state[state] += 1
        proc.state = state
        proc.wait_reason = reason
        if reason is not None:
            self.by_reason[reason] += 1

    def passivate(self) -> None:
        """A waiting agent left RAM: it stays counted as waiting, and as passivated."""
        self.passivated += 1

    def activate(self, reason: WaitReason) -> None:
        """A passivated agent waiting on ``reason`` is back: uncount it (``enter`` counts it)."""
        self.passivated -= 1
        self.by_state[AgentState.WAITING] -= 1
        self.by_reason[reason] -= 1

    def forget(self, proc: AgentProcess) -> None:
        """Uncount a finished agent the VM deleted."""
        self.by_state[proc.state] -= 1
