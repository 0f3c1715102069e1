"""Host functions: what each instruction does once the pipeline has admitted it.

Every instruction is three functions, kept together in a :class:`Host`:

- ``prepare(rt, proc, args)`` checks capabilities and existence and turns the validated
  arguments into whatever ``reserve`` and ``perform`` need (encoded values, resolved peers);
- ``reserve(rt, proc, prepared)`` returns an upper bound of the cost in milligas, or the exact
  cost where it is known up front;
- ``perform(rt, proc, prepared, step)`` does the work, waiting as needed, and returns the result
  with its actual cost. It raises :class:`NeedsGas` when it finds mid-way that the agent cannot
  pay (a SQL statement that ran past what the budget covers); the pipeline then parks the
  agent until a top-up and performs again.

A *waiting* instruction (WAIT, SCHEDULE_TASK, WAIT_FOR_RESPONSE, SWARM_WAIT) has a
:class:`WaitHost` instead, which performs in parts around one future, so that the pipeline can
park the agent on that future with no coroutine frame of its own, the host's or the bus's
kept alive (an agent parked in ``receive`` is the common state of a fleet, and each of those
frames cost every such agent ~300 bytes):

- ``arm(rt, proc, args, step, parking)`` either returns ``(result, cost)`` at once (a message
  already there, a deadline already past) or arms the wait: it sets ``parking.future`` (what the
  agent parks on), ``parking.timer`` (its timeout, if any) and ``parking.target`` (what
  ``finish`` needs: the mailbox, the reply slot, the result to return), and returns None;
- ``finish(rt, proc, args, parking)`` runs once the future has completed, in the agent's task,
  and returns ``(result, cost)``;
- ``interrupt(rt, proc, args, parking, exc)`` runs instead when ``exc`` was thrown into the
  wait (its timeout's expiry, a cancellation, a close): it undoes the arming and returns the
  exception to raise (a timeout's :class:`~avm.errors.SwarmTimeout`, or ``exc`` itself).

Waiting instructions take their validated arguments as they are (no ``prepare``), and neither
part may raise :class:`NeedsGas`: a wait costs what it reserved.

The families live in sibling modules; :data:`HOSTS` maps every opcode to its host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from avm._core.isa import Op
    from avm._core.process import AgentProcess
    from avm._core.runtime import Runtime
    from avm._core.timers import Timer

__all__ = ["Host", "NeedsGas", "Parking", "WaitHost", "flat", "free", "passthrough"]


class NeedsGas(Exception):
    def __init__(self, mgas: int) -> None:
        super().__init__(mgas)
        self.mgas = mgas


class Host(NamedTuple):
    prepare: Callable[[Runtime, AgentProcess, tuple[Any, ...]], Any]
    reserve: Callable[[Runtime, AgentProcess, Any], int]
    perform: Callable[[Runtime, AgentProcess, Any, int], Awaitable[tuple[Any, int]]]


class Parking(Protocol):
    """Where a :class:`WaitHost` leaves what an armed wait needs (the instruction in progress)."""

    future: asyncio.Future[Any] | None
    timer: Timer | None
    target: Any


class WaitHost(NamedTuple):
    reserve: Callable[[Runtime, AgentProcess, Any], int]
    arm: Callable[[Runtime, AgentProcess, tuple[Any, ...], int, Parking], tuple[Any, int] | None]
    finish: Callable[[Runtime, AgentProcess, tuple[Any, ...], Parking], tuple[Any, int]]
    interrupt: Callable[
        [Runtime, AgentProcess, tuple[Any, ...], Parking, BaseException], BaseException
    ]


def passthrough(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> Any:
    return args


def free(rt: Runtime, proc: AgentProcess, prepared: Any) -> int:
    return 0


def flat(price_of: Callable[[Runtime], int]) -> Callable[[Runtime, AgentProcess, Any], int]:
    def reserve(rt: Runtime, proc: AgentProcess, prepared: Any) -> int:
        return price_of(rt)

    return reserve


def hosts() -> dict[Op, Host | WaitHost]:
    from avm._core.host import models, state, swarm, time, tools

    table: dict[Op, Host | WaitHost] = {}
    for module in (time, models, swarm, state, tools):
        table.update(module.HOSTS)
    return table
