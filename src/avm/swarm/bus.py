"""The in-process swarm: topics, direct delivery, and replies collected per task.

Delivery is durable when the bus has a :class:`MessageLog`: a message is recorded for its
recipient before it enters the mailbox, and marked consumed when the recipient takes it, both in
the same batch as the journal entries of the instructions involved. A recovered VM puts the
unconsumed messages back, and a message re-sent after a crash (same id) is recognised and not
delivered twice.

A *task id* names something an agent (or the host) sent that others may answer: a broadcast, a
fetch, a request. Replies do not go through the answering agent's mailbox; they are collected in
a reply slot for the task, so a sender can wait for the first reply or for k of n, with a
timeout, even if some replies arrived before it started waiting. Reply slots are created on first
use and bounded in number: the oldest slots nobody waited for are forgotten first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from avm._core.timers import Timer, TimerService
from avm.errors import NotFound, SwarmError, SwarmTimeout
from avm.swarm.mailbox import Envelope, Mailbox

__all__ = ["MessageLog", "SwarmBus", "task_owner"]

_MAX_REPLY_SLOTS = 100_000
HOST = "@host"


class MessageLog(Protocol):
    def delivered(self, agent_id: str, envelope: Envelope) -> bool:
        """Record a delivery; False if the agent already had this message (a re-send)."""
        ...

    def consumed(self, agent_id: str, envelope: Envelope) -> None: ...


def task_owner(task_id: str) -> str:
    """Task ids are ``owner:step`` or ``owner:request_id``; replies belong to the owner."""
    return task_id.partition(":")[0]


class _ReplySlot:
    __slots__ = ("k", "replies", "waiter")

    def __init__(self) -> None:
        self.replies: list[Envelope] = []
        self.waiter: asyncio.Future[None] | None = None
        self.k = 1


class SwarmBus:
    def __init__(
        self,
        timers: TimerService,
        mailbox_of: Callable[[str], Mailbox | None],
        log: MessageLog | None = None,
    ) -> None:
        self._timers = timers
        self._mailbox_of = mailbox_of  # None: no such live agent
        self._log = log
        self._topics: dict[str, set[str]] = {}
        self._slots: OrderedDict[str, _ReplySlot] = OrderedDict()
        self._owned: dict[str, set[str]] = {}  # owner -> task ids of its slots
        self.delivered = 0

    # -- topics ------------------------------------------------------------------------------

    def join(self, topic: str, agent_id: str) -> int:
        members = self._topics.setdefault(topic, set())
        members.add(agent_id)
        return len(members)

    def members(self, topic: str) -> frozenset[str]:
        return frozenset(self._topics.get(topic, ()))

    def leave_all(self, agent_id: str, topics: list[str]) -> None:
        for topic in topics:
            members = self._topics.get(topic)
            if members is not None:
                members.discard(agent_id)
                if not members:
                    del self._topics[topic]

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    # -- delivery ----------------------------------------------------------------------------

    async def send(self, to: str, envelope: Envelope) -> None:
        """Deliver to one agent's mailbox, waiting while it is full."""
        mailbox = self._mailbox_of(to)
        if mailbox is None:
            raise NotFound(f"no running agent {to!r} to send to")
        if self._log is not None and not self._log.delivered(to, envelope):
            return
        try:
            await mailbox.put(envelope)
        except ConnectionResetError:
            raise SwarmError(f"agent {to!r} finished before it took the message") from None
        self.delivered += 1

    async def broadcast(self, topic: str, envelope: Envelope) -> int:
        """Deliver to every member of ``topic`` but the sender; return how many got it."""
        count = 0
        for member in sorted(self._topics.get(topic, ())):
            if member == envelope.sender:
                continue
            mailbox = self._mailbox_of(member)
            if mailbox is None:
                continue
            if self._log is not None and not self._log.delivered(member, envelope):
                continue
            try:
                await mailbox.put(envelope)
            except ConnectionResetError:
                continue  # the member finished while we waited; others still get it
            count += 1
        self.delivered += count
        return count

    # -- replies -----------------------------------------------------------------------------

    def _slot(self, task_id: str) -> _ReplySlot:
        slot = self._slots.get(task_id)
        if slot is None:
            slot = self._slots[task_id] = _ReplySlot()
            self._owned.setdefault(task_owner(task_id), set()).add(task_id)
            while len(self._slots) > _MAX_REPLY_SLOTS:
                oldest, old = next(iter(self._slots.items()))
                if old.waiter is not None:
                    break  # never evict a slot someone waits on
                self._drop(oldest)
        return slot

    def _drop(self, task_id: str) -> None:
        if self._slots.pop(task_id, None) is None:
            return
        owner = task_owner(task_id)
        owned = self._owned.get(owner)
        if owned is not None:
            owned.discard(task_id)
            if not owned:
                del self._owned[owner]

    def reply(self, envelope: Envelope, *, persist: bool = True) -> None:
        assert envelope.reply_to is not None
        owner = task_owner(envelope.reply_to)
        log = self._log if persist and owner != HOST else None
        if log is not None and not log.delivered(owner, envelope):
            return
        slot = self._slot(envelope.reply_to)
        slot.replies.append(envelope)
        if slot.waiter is not None and not slot.waiter.done() and len(slot.replies) >= slot.k:
            slot.waiter.set_result(None)

    async def wait_replies(self, task_id: str, k: int, timeout_s: float | None) -> list[Envelope]:
        """Wait for ``k`` replies to ``task_id``; raise SwarmTimeout with how many came."""
        taken = self.replies_ready(task_id, k)
        if taken is not None:
            return taken
        slot, waiter, timer = self.arm_replies(task_id, k, timeout_s)
        try:
            await waiter
        except _Expired:
            raise self.replies_timeout(task_id, slot, k, timeout_s) from None
        finally:
            self.disarm_replies(slot, timer)
        return self.take_replies(task_id, slot, k)

    # The wait for replies in parts, for a waiting instruction that parks on the future itself
    # (see avm._core.interpreter): ready → arm → (the waiter completes) → disarm → take.

    def replies_ready(self, task_id: str, k: int) -> list[Envelope] | None:
        """The first ``k`` replies to ``task_id``, taken, if they have all come; else None."""
        slot = self._slot(task_id)
        if len(slot.replies) < k:
            return None
        return self.take_replies(task_id, slot, k)

    def arm_replies(
        self, task_id: str, k: int, timeout_s: float | None
    ) -> tuple[_ReplySlot, asyncio.Future[None], Timer | None]:
        """Wait for ``k`` replies: the slot, the future they complete, and the timeout's timer.

        The future fails with the bus's expiry exception at the timeout; pass it to
        :meth:`replies_timeout`.
        """
        slot = self._slot(task_id)
        if slot.waiter is not None:
            raise SwarmError(f"someone is already waiting for replies to task {task_id!r}")
        slot.k = k
        waiter = slot.waiter = asyncio.get_running_loop().create_future()
        timer = None
        if timeout_s is not None:
            timer = self._timers.call_at(self._timers.now() + timeout_s, partial(_expire, waiter))
        return slot, waiter, timer

    @staticmethod
    def disarm_replies(slot: _ReplySlot, timer: Timer | None) -> None:
        slot.waiter = None
        if timer is not None:
            timer.cancel()

    @staticmethod
    def replies_timeout(
        task_id: str, slot: _ReplySlot, k: int, timeout_s: float | None
    ) -> SwarmTimeout:
        got = len(slot.replies)
        return SwarmTimeout(f"task {task_id!r}: {got} of {k} replies within {timeout_s} s")

    def take_replies(self, task_id: str, slot: _ReplySlot, k: int) -> list[Envelope]:
        """Take the first ``k`` replies of ``slot`` (they have come) and forget the slot."""
        self._drop(task_id)
        taken = slot.replies[:k]
        if self._log is not None:
            owner = task_owner(task_id)
            if owner != HOST:
                for reply in taken:
                    self._log.consumed(owner, reply)
        return taken

    def forget(self, task_id: str) -> None:
        self._drop(task_id)

    def forget_owner(self, owner: str) -> None:
        """Drop every reply slot of ``owner``'s tasks (replies it has not taken are still in
        the durable inbox, from which a restore delivers them again)."""
        for task_id in tuple(self._owned.get(owner, ())):
            self._drop(task_id)

    # Receiving, in parts, for a waiting instruction that parks on the getter itself (see
    # avm._core.interpreter): ready → arm → (the getter completes) → disarm → take.

    def receive_ready(
        self, owner: str, mailbox: Mailbox, timeout_s: float | None
    ) -> Envelope | None:
        """The next message, taken, if one is there; None if the receive must wait.

        Raises SwarmTimeout when there is none and ``timeout_s`` allows no wait.
        """
        envelope = mailbox.get_nowait()
        if envelope is not None:
            if self._log is not None:
                self._log.consumed(owner, envelope)
            return envelope
        if timeout_s is not None and timeout_s <= 0:
            raise SwarmTimeout("no message waiting")
        return None

    def arm_receive(
        self, mailbox: Mailbox, timeout_s: float | None
    ) -> tuple[asyncio.Future[None], Timer | None]:
        """The future the next message completes, and the timer that expires it.

        The future fails with the bus's expiry exception at the timeout; pass it to
        :meth:`receive_timeout`.
        """
        getter = mailbox.arm_getter()
        timer = None
        if timeout_s is not None:
            timer = self._timers.call_at(self._timers.now() + timeout_s, partial(_expire, getter))
        return getter, timer

    @staticmethod
    def disarm_receive(mailbox: Mailbox, timer: Timer | None) -> None:
        mailbox.disarm_getter()
        if timer is not None:
            timer.cancel()

    @staticmethod
    def receive_timeout(timeout_s: float | None) -> SwarmTimeout:
        return SwarmTimeout(f"no message within {timeout_s} s")

    def take(self, owner: str, mailbox: Mailbox) -> Envelope:
        """Take the message whose arrival completed the getter."""
        envelope = mailbox.get_nowait()
        assert envelope is not None
        if self._log is not None:
            self._log.consumed(owner, envelope)
        return envelope

    @staticmethod
    def expired(exc: BaseException) -> bool:
        """True if ``exc`` is what an armed wait's future fails with at its timeout."""
        return isinstance(exc, _Expired)


class _Expired(Exception):
    pass


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(_Expired())
