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

The families live in sibling modules; :data:`HOSTS` maps every opcode to its host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from avm._core.isa import Op
    from avm._core.process import AgentProcess
    from avm._core.runtime import Runtime

__all__ = ["Host", "NeedsGas", "flat", "free", "passthrough"]


class NeedsGas(Exception):
    def __init__(self, mgas: int) -> None:
        super().__init__(mgas)
        self.mgas = mgas


class Host(NamedTuple):
    prepare: Callable[[Runtime, AgentProcess, tuple[Any, ...]], Any]
    reserve: Callable[[Runtime, AgentProcess, Any], int]
    perform: Callable[[Runtime, AgentProcess, Any, int], Awaitable[tuple[Any, int]]]


def passthrough(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> Any:
    return args


def free(rt: Runtime, proc: AgentProcess, prepared: Any) -> int:
    return 0


def flat(price_of: Callable[[Runtime], int]) -> Callable[[Runtime, AgentProcess, Any], int]:
    def reserve(rt: Runtime, proc: AgentProcess, prepared: Any) -> int:
        return price_of(rt)

    return reserve


def hosts() -> dict[Op, Host]:
    from avm._core.host import models, state, swarm, time, tools

    table: dict[Op, Host] = {}
    for module in (time, models, swarm, state, tools):
        table.update(module.HOSTS)
    return table
