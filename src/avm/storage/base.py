"""The state-store protocol: journal, KV, execution state and agent records behind one interface.

Writes are synchronous calls that join the current batch; ``sync()`` waits until everything
written so far is durable. A backend commits a batch in one transaction, so a KV write and the
journal entry of the instruction that made it become durable together (group commit). Reads are
coroutines, so a networked backend can implement them without blocking the loop.

Blobs are payloads stored once by content: ``put_blobs`` joins the current batch like any
write, so a journal entry (or execution state) that refers to a blob never becomes durable
without it, and storing a blob that is already there costs nothing. Anything in the VM that
wants a checkpoint or result to hold a reference instead of bytes uses the same two calls
(see ``avm._core.journal`` for the reference format).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import msgspec

from avm._core.journal import JournalEntry
from avm.config import Durability

__all__ = ["AgentRecord", "StateStore", "statement_runs"]


def statement_runs(
    statements: Sequence[tuple[str, tuple[Any, ...]]],
) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Queued ``(sql, params)`` statements as runs of the same statement, in queue order: what
    a store sends as one ``executemany`` each."""
    for sql, run in itertools.groupby(statements, key=lambda statement: statement[0]):
        yield sql, [params for _, params in run]


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
    first_step: int = 0  # where the current incarnation's journal begins


class StateStore(Protocol):
    durability: Durability

    def kv_put(self, agent_id: str, key: str, value: bytes) -> None: ...

    def kv_delete(self, agent_id: str, key: str) -> None: ...

    async def kv_get(self, agent_id: str, key: str) -> bytes | None: ...

    def state_put(self, agent_id: str, state: bytes | None) -> None: ...

    async def state_get(self, agent_id: str) -> bytes | None: ...

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        """Store ``(key, data)`` pairs, key = the 32-byte BLAKE3 of data, with the next commit.

        Idempotent: a key already stored (or queued) is skipped. The caller computes the keys;
        readers check them (``avm._core.journal.resolve_payload``, ``avm verify``).
        """
        ...

    async def get_blob(self, key: bytes) -> bytes | None:
        """The blob stored under ``key`` (queued ones included), or None."""
        ...

    def journal_append(self, entry: JournalEntry) -> None: ...

    async def journal_head(self, agent_id: str) -> tuple[int, bytes] | None:
        """The last step number and hash of an agent's chain, or None if it has none."""
        ...

    async def journal_entries(self, agent_id: str, from_step: int = 0) -> list[JournalEntry]: ...

    async def journal_gas(self, agent_id: str, from_step: int) -> int:
        """Milligas charged to an agent from ``from_step`` on (its current incarnation)."""
        ...

    async def last_checkpoint(self, agent_id: str, from_step: int) -> int | None:
        """The step of the agent's latest SAVE/RESET_EXECUTION_STATE at or after ``from_step``."""
        ...

    def inbox_put(self, agent_id: str, message_id: str, envelope: bytes) -> bool:
        """Record a message delivered to an agent; False if it already had that message."""
        ...

    def inbox_consume(self, agent_id: str, message_id: str) -> None: ...

    async def inbox_pending(self, agent_id: str) -> list[bytes]:
        """Messages delivered to an agent and not yet consumed, in delivery order."""
        ...

    def swarm_join(self, agent_id: str, topic: str, step: int) -> None:
        """Record that an agent joined a swarm at ``step`` (with that instruction's batch)."""
        ...

    async def swarm_topics(self, agent_id: str, from_step: int) -> list[str]:
        """The swarms an agent joined at or after ``from_step`` (its current incarnation)."""
        ...

    def agent_put(self, record: AgentRecord) -> None: ...

    def agent_update(
        self, agent_id: str, *, status: str, spent: int, budget: int | None
    ) -> None: ...

    async def agent_get(self, agent_id: str) -> AgentRecord | None: ...

    async def agents_unfinished(self) -> list[AgentRecord]:
        """Agents whose last incarnation was running, out of gas, or stopped with the VM,
        except those with a passivation record (see :meth:`passivated_agents`)."""
        ...

    def passivated_put(self, agent_id: str, record: bytes) -> None:
        """Record (or replace) an agent's passivation record, with the current batch.

        ``record`` is an encoded :class:`~avm.memory.PassivatedAgent` whose times are wall-clock
        seconds. While it is there, a restarted VM registers the agent as passivated instead
        of restoring it into RAM.
        """
        ...

    def passivated_delete(self, agent_id: str) -> None:
        """Drop an agent's passivation record (it was activated), with the current batch."""
        ...

    async def passivated_agents(self) -> list[tuple[str, bytes, int]]:
        """``(agent_id, record, first_step)`` of every unfinished agent with a passivation record.

        ``first_step`` is where the agent's current incarnation begins, so the caller can
        tell a record left by an earlier incarnation (stale) from a current one.
        """
        ...

    async def sync(self) -> None:
        """Return once every write made so far is durable (at once in relaxed mode)."""
        ...

    async def aclose(self) -> None: ...
