"""The state-store protocol: journal, KV, execution state and agent records behind one interface.

Writes are synchronous calls that join the current batch; ``sync()`` waits until everything
written so far is durable. A backend commits a batch in one transaction, so a KV write and the
journal entry of the instruction that made it become durable together (group commit). Reads are
coroutines, so a networked backend can implement them without blocking the loop.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from avm._core.journal import JournalEntry
from avm.config import Durability

__all__ = ["AgentRecord", "StateStore"]


class AgentRecord(msgspec.Struct, kw_only=True):
    """What the VM persists about an agent so it can be found again after a restart."""

    agent_id: str
    definition: str
    args: bytes
    priority: int
    budget: int | None  # milligas; None means unlimited
    spent: int
    status: str
    created: float


class StateStore(Protocol):
    durability: Durability

    def kv_put(self, agent_id: str, key: str, value: bytes) -> None: ...

    def kv_delete(self, agent_id: str, key: str) -> None: ...

    async def kv_get(self, agent_id: str, key: str) -> bytes | None: ...

    def state_put(self, agent_id: str, state: bytes | None) -> None: ...

    async def state_get(self, agent_id: str) -> bytes | None: ...

    def journal_append(self, entry: JournalEntry) -> None: ...

    async def journal_head(self, agent_id: str) -> tuple[int, bytes] | None:
        """The last step number and hash of an agent's chain, or None if it has none."""
        ...

    async def journal_entries(self, agent_id: str) -> list[JournalEntry]: ...

    def agent_put(self, record: AgentRecord) -> None: ...

    def agent_update(
        self, agent_id: str, *, status: str, spent: int, budget: int | None
    ) -> None: ...

    async def agent_get(self, agent_id: str) -> AgentRecord | None: ...

    async def sync(self) -> None:
        """Return once every write made so far is durable (at once in relaxed mode)."""
        ...

    async def aclose(self) -> None: ...
