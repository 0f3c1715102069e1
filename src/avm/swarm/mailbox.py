"""Messages and the bounded mailbox every agent receives them in.

A mailbox never drops: when it is full, a sender waits until the owner takes a message
(backpressure), in the order senders arrived. Only the owning agent reads its mailbox, so there
is at most one getter. Mailboxes are created on first use, so the many agents that never receive
a message pay nothing for one, and a mailbox's queues on first message: an agent parked on an
empty mailbox keeps only the mailbox object (an empty ``deque`` alone is ~760 bytes, because
CPython allocates its first 64-slot block up front).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

__all__ = ["Envelope", "Mailbox"]


class Envelope(msgspec.Struct, frozen=True):
    """A message as an agent receives it.

    ``id`` is the task id replies answer; ``topic`` the swarm it was broadcast to (or the
    request's data type); ``kind`` is ``message``, ``request`` or ``reply``.
    """

    id: str
    sender: str
    topic: str
    data: Any = None
    kind: str = "message"
    reply_to: str | None = None


class Mailbox:
    __slots__ = ("_capacity", "_getter", "_items", "_putters")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        # Both queues are created on first need (see the module docstring); the items queue
        # goes again once it is empty, so a parked agent holds none.
        self._items: deque[Envelope] | None = None
        self._getter: asyncio.Future[None] | None = None
        # Senders wait here only when the mailbox is full.
        self._putters: deque[asyncio.Future[None]] | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items else 0

    @property
    def full(self) -> bool:
        return len(self) >= self._capacity

    @property
    def blocked_senders(self) -> int:
        return len(self._putters) if self._putters else 0

    async def put(self, envelope: Envelope) -> None:
        """Deliver, waiting while the mailbox is full (or other senders are already waiting)."""
        if self._putters or len(self) >= self._capacity:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._putters is None:
                self._putters = deque()
            self._putters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._wake_putter()  # pass our turn on
                else:
                    self._putters.remove(future)
                raise
        self._append(envelope)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def restore(self, envelope: Envelope) -> None:
        """Put back a message recovered from the store, regardless of capacity (never drop)."""
        self._append(envelope)

    def _append(self, envelope: Envelope) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(envelope)

    def get_nowait(self) -> Envelope | None:
        items = self._items
        if not items:
            return None
        envelope = items.popleft()
        if not items:
            self._items = None
        self._wake_putter()
        return envelope

    def arm_getter(self) -> asyncio.Future[None]:
        """A future resolved when a message arrives (the owner then takes it with get_nowait)."""
        self._getter = asyncio.get_running_loop().create_future()
        return self._getter

    def disarm_getter(self) -> None:
        self._getter = None

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters and len(self) < self._capacity:
            future = putters.popleft()
            if not future.done():
                future.set_result(None)
                return

    def close(self) -> None:
        """Fail every waiting sender: the owner is gone."""
        for future in self._putters or ():
            if not future.done():
                future.set_exception(ConnectionResetError("mailbox closed"))
        self._putters = None
        self._items = None
