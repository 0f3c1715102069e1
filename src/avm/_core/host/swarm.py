"""Swarm messaging: SWARM_CONNECT, SWARM_FETCH, SWARM_BROADCAST, SWARM_WAIT (a wait host).

Task ids are derived from (agent, step) or (agent, request id), never from a counter or clock,
so that the same agent code names the same tasks when it is replayed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from avm._core.gas import to_mgas
from avm._core.host import Host, Parking, WaitHost, flat, free, passthrough
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


def _arm_wait(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int, parking: Parking
) -> tuple[Any, int] | None:
    task_id, k, timeout_s = args
    bus = rt.bus
    if task_id is not None:
        taken = arm_replies(rt, task_id, k or 1, timeout_s, parking)
        return None if taken is None else (taken, 0)
    mailbox = mailbox_of(rt, proc)
    envelope = bus.receive_ready(proc.id, mailbox, timeout_s)
    if envelope is not None:
        return envelope, 0
    parking.future, parking.timer = bus.arm_receive(mailbox, timeout_s)
    parking.target = mailbox
    return None


def _finish_wait(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking
) -> tuple[Any, int]:
    task_id, k, _ = args
    if task_id is not None:
        return replies_arrived(rt, task_id, k or 1, parking), 0
    bus = rt.bus
    mailbox = parking.target
    bus.disarm_receive(mailbox, parking.timer)
    return bus.take(proc.id, mailbox), 0


def _interrupt_wait(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking, exc: BaseException
) -> BaseException:
    task_id, k, timeout_s = args
    if task_id is not None:
        return replies_interrupted(rt, task_id, k or 1, timeout_s, parking, exc)
    bus = rt.bus
    bus.disarm_receive(parking.target, parking.timer)
    return bus.receive_timeout(timeout_s) if bus.expired(exc) else exc


# Waiting for replies to a task, in the parts a WaitHost performs (SWARM_WAIT with a task id,
# WAIT_FOR_RESPONSE); ``parking.target`` is the task's reply slot.


def arm_replies(
    rt: Runtime, task_id: str, k: int, timeout_s: float | None, parking: Parking
) -> list[Envelope] | None:
    """The ``k`` replies, taken, if they have come; else arm the wait for them (None)."""
    bus = rt.bus
    taken = bus.replies_ready(task_id, k)
    if taken is None:
        parking.target, parking.future, parking.timer = bus.arm_replies(task_id, k, timeout_s)
    return taken


def replies_arrived(rt: Runtime, task_id: str, k: int, parking: Parking) -> list[Envelope]:
    bus = rt.bus
    slot = parking.target
    bus.disarm_replies(slot, parking.timer)
    return bus.take_replies(task_id, slot, k)


def replies_interrupted(
    rt: Runtime,
    task_id: str,
    k: int,
    timeout_s: float | None,
    parking: Parking,
    exc: BaseException,
) -> BaseException:
    bus = rt.bus
    slot = parking.target
    bus.disarm_replies(slot, parking.timer)
    if bus.expired(exc):
        return bus.replies_timeout(task_id, slot, k, timeout_s)
    return exc


HOSTS = {
    Op.SWARM_CONNECT: Host(
        passthrough, flat(lambda rt: to_mgas(rt.prices.swarm_connect)), _connect
    ),
    Op.SWARM_FETCH: Host(_prepare_fetch, _reserve_fetch, _fetch),
    Op.SWARM_BROADCAST: Host(passthrough, lambda rt, proc, args: 0, _broadcast),
    Op.SWARM_WAIT: WaitHost(free, _arm_wait, _finish_wait, _interrupt_wait),
}
