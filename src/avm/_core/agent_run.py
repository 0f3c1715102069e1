"""AgentRun: the coroutine an agent's asyncio task runs, and the task's done callback.

An agent's task first runs the VM's start-up for it (record or restore, a run slot), then the
agent's own coroutine. Written as an ``async def`` wrapper that awaits the agent, that would
keep a suspended wrapper frame (~310 bytes) plus a bound-method done callback (64 bytes) for
as long as the agent lives, which for a parked agent is most of its life. AgentRun is a small
object that drives the two coroutines in turn through the coroutine protocol (``send``,
``throw``, ``close``) and is itself the done callback, so a resident agent costs one
five-slot object for all of it.

What the wrapper did around the agent, AgentRun does the same way: the agent's return value
is its outcome (state DONE); an ``Exception`` it raises is its outcome (state FAILED, logged),
and the task then ends normally; ``BaseException`` (a cancellation) goes through to the task.
An error in the start-up is the VM failing around the agent: it ends the task with that
exception for the done callback to report.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from avm._core.coroutines import thrown
from avm._core.process import AgentProcess
from avm._core.scheduler import Scheduler
from avm._core.states import AgentState

__all__ = ["AgentRun"]

log = logging.getLogger(__name__)

# What a started agent's process keeps of its spawn arguments: never written to.
NO_KWARGS: dict[str, Any] = {}


class AgentRun(Coroutine[Any, Any, None]):
    """Drive ``start_up``, then the agent's coroutine; call ``on_done`` when the task ends."""

    __slots__ = ("_agent_started", "_inner", "_on_done", "_proc", "_scheduler")

    def __init__(
        self,
        proc: AgentProcess,
        scheduler: Scheduler,
        start_up: Coroutine[Any, Any, None],
        on_done: Callable[[AgentProcess, asyncio.Task[None]], None],
    ) -> None:
        self._proc = proc
        self._scheduler = scheduler
        self._inner: Coroutine[Any, Any, Any] | Generator[Any, Any, Any] = start_up
        self._agent_started = False
        self._on_done = on_done

    @property
    def agent(self) -> Coroutine[Any, Any, Any] | Generator[Any, Any, Any] | None:
        """The agent's own coroutine once it has started (before: None)."""
        return self._inner if self._agent_started else None

    def __call__(self, task: asyncio.Task[None]) -> None:
        """The task's done callback."""
        self._on_done(self._proc, task)

    def send(self, value: Any) -> Any:
        # The task calls this for every step of the agent: the common case is one call in.
        try:
            return self._inner.send(value)
        except StopIteration as stop:
            return self._returned(stop.value)
        except Exception as exc:
            return self._raised(exc)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = thrown(typ, val, tb)
        try:
            return self._inner.throw(exc)
        except StopIteration as stop:
            return self._returned(stop.value)
        except Exception as error:
            return self._raised(error)

    def close(self) -> None:
        self._inner.close()

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError("an AgentRun is run by its task, not awaited")

    def _returned(self, value: Any) -> Any:
        if self._agent_started:
            self._ended(value)
            raise StopIteration
        # Start-up is over and the agent holds a run slot: start its own coroutine.
        return self._start_agent()

    def _raised(self, exc: Exception) -> Any:
        if not self._agent_started:
            raise exc  # the VM failed around the agent; the done callback reports it
        self._failed(exc)
        raise StopIteration

    def _start_agent(self) -> Any:
        proc = self._proc
        assert proc.context is not None
        self._agent_started = True
        try:
            agent = proc.definition.fn(proc.context, **proc.kwargs)
            proc.kwargs = NO_KWARGS  # they are the agent's locals now (and in its record)
            inner = agent if isinstance(agent, Coroutine) else agent.__await__()
            self._inner = inner
            return inner.send(None)
        except StopIteration as stop:
            self._ended(stop.value)
        except Exception as exc:
            self._failed(exc)
        raise StopIteration

    def _ended(self, outcome: Any) -> None:
        proc = self._proc
        proc.outcome = outcome
        self._scheduler.move(proc, AgentState.DONE)

    def _failed(self, exc: Exception) -> None:
        proc = self._proc
        proc.outcome = exc
        self._scheduler.move(proc, AgentState.FAILED)
        log.warning("agent %s failed: %s: %s", proc.id, type(exc).__name__, exc)
