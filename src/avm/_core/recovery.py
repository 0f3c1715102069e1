"""Recovery: rebuilding unfinished agents from their records, journals and inboxes.

When a VM starts on a state directory whose agents were running (the last host stopped, or was
killed), each one is rebuilt: its gas from the journal's own totals, its replay queue from the
entries after its latest checkpoint (payloads stored by hash read back and checked), its swarm
memberships from the store (a checkpoint may start replay after the SWARM_CONNECT that made
them), its mailbox and reply slots from the messages delivered to it and not yet consumed. It
then re-runs from its entry point (see :mod:`avm._core.replay`).

Live execution waits behind a gate until every recovering agent has replayed up to its live
frontier, so no agent acts on a swarm whose members have not re-joined it yet.

Agents the last host left passivated are not restored here: the VM registers them from their
passivation records (see :mod:`avm._core.passivation`), their swarm memberships included, and
they never hold the gate. One woken while the gate is closed replays without holding it, and
its first live instruction waits behind it like any other.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import msgspec

from avm._core.chat_state import load_chat_content
from avm._core.journal import GENESIS, EntryStatus, encode_value, ref_key, resolve_payload
from avm._core.process import AgentProcess
from avm.storage.base import AgentRecord
from avm.swarm.mailbox import Envelope, Mailbox

if TYPE_CHECKING:
    from avm._core.runtime import Runtime

__all__ = ["RecoveryGate", "restore"]

log = logging.getLogger(__name__)
_envelope = msgspec.msgpack.Decoder(Envelope)


class RecoveryGate:
    """Holds live instructions back while recovering agents replay."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def closed(self) -> bool:
        return not self._open.is_set()

    def expect(self, agent_id: str) -> None:
        self._pending.add(agent_id)
        self._open.clear()

    def done(self, agent_id: str) -> None:
        self._pending.discard(agent_id)
        if not self._pending:
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


async def restore(rt: Runtime, proc: AgentProcess, record: AgentRecord) -> None:
    """Load what ``proc`` needs to resume as it was when its last host stopped.

    Runs inside the agent's own task, before its code starts; the caller has already closed the
    recovery gate for it (``rt.recovery.expect``).
    """
    store = rt.store
    agent_id = record.agent_id
    proc.gas.spent = await store.journal_gas(agent_id, record.first_step)
    head = await store.journal_head(agent_id)
    proc.chain_head = GENESIS if head is None else head[1]
    frontier = record.first_step if head is None else max(head[0] + 1, record.first_step)
    checkpoint = await store.last_checkpoint(agent_id, record.first_step)
    start = record.first_step if checkpoint is None else checkpoint + 1
    if checkpoint is not None:
        state = await store.state_get(agent_id)
        if state is None:
            state = encode_value(None)
        else:
            where = f"agent {agent_id!r}'s execution state"
            state = await resolve_payload(state, store.get_blob, where)
            await load_chat_content(store, rt.memory, state)
        proc.resume_state = state
    entries = await store.journal_entries(agent_id, start)
    for index, entry in enumerate(entries):
        if ref_key(entry.result) is not None:
            where = f"agent {agent_id!r}'s {entry.op} entry at step {entry.step}"
            result = await resolve_payload(entry.result, store.get_blob, where)
            entries[index] = entry = msgspec.structs.replace(entry, result=result)
        if entry.op == "LOAD_EXECUTION_STATE" and entry.status is EntryStatus.OK:
            await load_chat_content(store, rt.memory, entry.result)
    topics = await store.swarm_topics(agent_id, record.first_step)
    if topics:
        proc.topics = topics
        for topic in topics:
            rt.bus.join(topic, agent_id)
    proc.step = start
    proc.replay = deque(entries) if entries else None
    proc.recovered_step = frontier
    for raw in await store.inbox_pending(agent_id):
        envelope = _envelope.decode(raw)
        if envelope.kind == "reply":
            rt.bus.reply(envelope, persist=False)
        else:
            if proc.mailbox is None:
                proc.mailbox = Mailbox(rt.config.mailbox_capacity)
            proc.mailbox.restore(envelope)
    if proc.replay is None and proc.resume_state is None:
        rt.recovery.done(agent_id)
    log.debug(
        "recovering %s: %d entries to replay from step %d, live from step %d",
        agent_id,
        len(entries),
        start,
        frontier,
    )
