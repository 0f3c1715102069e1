"""Swarm messaging: SWARM_CONNECT, SWARM_FETCH, SWARM_BROADCAST, SWARM_WAIT.

Task ids are derived from (agent, step) or (agent, request id), never from a counter or clock,
so that the same agent code names the same tasks when it is replayed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from avm._core.gas import to_mgas
from avm._core.host import Host, flat, passthrough
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime
from avm.errors import NotFound
from avm.swarm.mailbox import Envelope, Mailbox


def mailbox_of(rt: Runtime, proc: AgentProcess) -> Mailbox:
    if proc.mailbox is None:
        proc.mailbox = Mailbox(rt.config.mailbox_capacity)
    return proc.mailbox


async def _connect(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    swarm_id = args[0]
    if proc.topics is None:
        proc.topics = []
    if swarm_id not in proc.topics:
        proc.topics.append(swarm_id)
    # Durable with this instruction's entry: an agent recovered from a checkpoint taken after
    # this step re-joins without replaying it (see avm._core.recovery).
    rt.store.swarm_join(proc.id, swarm_id, step)
    return rt.bus.join(swarm_id, proc.id), to_mgas(rt.prices.swarm_connect)


class _Fetch(NamedTuple):
    envelope: Envelope
    peers: list[str]
    timeout_s: float | None


def _prepare_fetch(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...]) -> _Fetch:
    data_type, request_id, to, query, timeout_s = args
    if to is not None:
        peers = [to]
    else:
        peers = sorted(rt.bus.members(data_type) - {proc.id})
        if not peers:
            raise NotFound(f"no agent in swarm {data_type!r} to ask")
    task_id = f"{proc.id}:{request_id}"
    return _Fetch(Envelope(task_id, proc.id, data_type, query, "request"), peers, timeout_s)


def _reserve_fetch(rt: Runtime, proc: AgentProcess, fetch: _Fetch) -> int:
    return to_mgas(rt.prices.swarm_fetch_per_peer * len(fetch.peers))


async def _fetch(rt: Runtime, proc: AgentProcess, fetch: _Fetch, step: int) -> Any:
    bus = rt.bus
    for peer in fetch.peers:
        await bus.send(peer, fetch.envelope)
    replies = await bus.wait_replies(fetch.envelope.id, 1, fetch.timeout_s)
    return replies[0].data, _reserve_fetch(rt, proc, fetch)


async def _broadcast(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    message, data, reply_to = args
    task_id = f"{proc.id}:{step}"
    if reply_to is not None:
        rt.bus.reply(Envelope(task_id, proc.id, message, data, "reply", reply_to))
    else:
        await rt.bus.broadcast(message, Envelope(task_id, proc.id, message, data))
    return task_id, 0


async def _wait(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    task_id, k, timeout_s = args
    if task_id is None:
        return await rt.bus.receive(proc.id, mailbox_of(rt, proc), timeout_s), 0
    return await rt.bus.wait_replies(task_id, k or 1, timeout_s), 0


HOSTS = {
    Op.SWARM_CONNECT: Host(
        passthrough, flat(lambda rt: to_mgas(rt.prices.swarm_connect)), _connect
    ),
    Op.SWARM_FETCH: Host(_prepare_fetch, _reserve_fetch, _fetch),
    Op.SWARM_BROADCAST: Host(passthrough, lambda rt, proc, args: 0, _broadcast),
    Op.SWARM_WAIT: Host(passthrough, lambda rt, proc, args: 0, _wait),
}
