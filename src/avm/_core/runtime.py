"""The parts of a running VM that instructions use, bundled for the interpreter and host code.

The VM builds one :class:`Runtime` when it starts; host functions receive it instead of the VM,
so they see the engine's parts (store, swarm, timers, linker...) but not its public surface.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from avm._core.gas import GasLedger
from avm._core.metrics import RateMeter
from avm._core.process import AgentProcess
from avm._core.recovery import RecoveryGate
from avm._core.scheduler import Scheduler
from avm._core.timers import TimerService
from avm.config import GasPrices, VMConfig
from avm.keys.manager import KeyManager
from avm.llm.linker import ModelLinker
from avm.llm.prompts import PromptLibrary
from avm.memory.refs import ContentRef
from avm.memory.store import ContentStore
from avm.storage.agent_sql import AgentDatabases
from avm.storage.base import StateStore
from avm.swarm.bus import SwarmBus
from avm.tools.registry import ToolRegistry

__all__ = ["Runtime"]


@dataclass(slots=True)
class Runtime:
    config: VMConfig
    prices: GasPrices
    store: StateStore
    sql: AgentDatabases
    scheduler: Scheduler
    timers: TimerService
    bus: SwarmBus
    tools: ToolRegistry
    prompts: PromptLibrary
    models: ModelLinker
    ledger: GasLedger
    processes: dict[str, AgentProcess]
    instructions: RateMeter
    model_requests: RateMeter
    recovery: RecoveryGate
    keys: KeyManager | None = None  # secrets and their redactor, when the VM has any
    memory: ContentStore | None = None  # the VM's content store (conversations live in it)
    # Makes an agent hold a ref of the content store until it is deleted (see VM.hold).
    hold: Callable[[str, ContentRef], None] | None = None
    # Content refs this process has queued in the state store's blob table (chat_state).
    durable_refs: set[bytes] = field(default_factory=set)
    # REDUCE_MODEL_CALL's user aggregations, by name: values -> aggregate (may be async)
    reducers: dict[str, Callable[[list[Any]], Any]] = field(default_factory=dict)

    def keeper(self, agent_id: str) -> Callable[[ContentRef], None] | None:
        """What makes ``agent_id`` hold the content its conversations store, if anything."""
        hold = self.hold
        return None if hold is None else functools.partial(hold, agent_id)
