"""An agent as the VM holds it: definition, identity, gas, position in its life, mailbox.

:class:`AgentDefinition` is the code and its defaults (what ``@vm.agent`` makes);
:class:`AgentProcess` is one running instance of it, kept deliberately small (``__slots__``,
lazily created mailbox and schedules) because a VM holds a great many of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avm._core.gas import GasAccount
from avm._core.journal import GENESIS, JournalEntry
from avm._core.states import AgentState, Priority, WaitReason
from avm.errors import CapabilityDenied

if TYPE_CHECKING:
    from avm._core.context import Context
    from avm.swarm.mailbox import Mailbox

__all__ = ["AgentDefinition", "AgentFunction", "AgentProcess", "Capabilities"]

AgentFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an agent was granted. ``None`` grants everything registered in the VM."""

    tools: frozenset[str] | None = None
    models: frozenset[str] | None = None
    prompts: frozenset[str] | None = None

    @staticmethod
    def _check(kind: str, name: str, granted: frozenset[str] | None) -> None:
        if granted is not None and name not in granted:
            allowed = ", ".join(sorted(granted)) or "none"
            raise CapabilityDenied(f"{kind} {name!r} was not granted to this agent ({allowed})")

    def check_tool(self, name: str) -> None:
        self._check("tool", name, self.tools)

    def check_model(self, name: str) -> None:
        self._check("model", name, self.models)

    def check_prompt(self, name: str) -> None:
        self._check("prompt", name, self.prompts)


@dataclass(frozen=True, slots=True)
class AgentDefinition:
    """Agent code and the defaults every instance of it starts with."""

    name: str
    fn: AgentFunction
    budget: float | None
    priority: Priority
    capabilities: Capabilities

    async def __call__(self, ctx: Context, /, **kwargs: Any) -> Any:
        return await self.fn(ctx, **kwargs)


class AgentProcess:
    __slots__ = (
        "chain_head",
        "context",
        "definition",
        "flags",
        "gas",
        "holds_slot",
        "id",
        "kwargs",
        "mailbox",
        "outcome",
        "priority",
        "recovered_step",
        "replay",
        "resume_state",
        "schedules",
        "state",
        "step",
        "task",
        "top_up_waiter",
        "topics",
        "wait_reason",
    )

    def __init__(
        self,
        agent_id: str,
        definition: AgentDefinition,
        kwargs: dict[str, Any],
        priority: Priority,
        budget_mgas: int | None,
    ) -> None:
        self.id = agent_id
        self.definition = definition
        self.kwargs = kwargs
        self.priority = priority
        self.gas = GasAccount(budget_mgas)
        self.state = AgentState.READY
        self.wait_reason: WaitReason | None = None
        self.step = 0
        self.holds_slot = False
        self.chain_head = GENESIS
        self.task: asyncio.Task[None] | None = None
        self.mailbox: Mailbox | None = None
        self.topics: list[str] | None = None
        self.schedules: dict[str, tuple[float, float, int]] | None = None
        self.top_up_waiter: asyncio.Future[None] | None = None
        self.outcome: Any = None
        self.context: Context | None = None
        # Recovery: journal entries still to replay, the checkpointed state the first
        # LOAD_EXECUTION_STATE returns, the step that may have been in flight at the crash, and
        # flags for the journal entry being made.
        self.replay: deque[JournalEntry] | None = None
        self.resume_state: bytes | None = None
        self.recovered_step: int | None = None
        self.flags = 0
