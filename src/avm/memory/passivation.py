"""What stays in RAM of an idle agent: a passivation record of a few hundred bytes.

An agent that waits on a message, a timer or a response does not need its coroutine, its
mailbox or its conversation in RAM. The VM can drop all of that and keep one
:class:`PassivatedAgent`: who it is, what code it runs (the content-addressed image), how far its
journal goes (replay up to there re-creates the coroutine), what wakes it, and one ref to its
saved memory (a link list: conversation, scratch state), which keeps that content alive through
garbage collection while the content itself goes to the cold tier.

The record is a msgspec struct (``gc=False``, ``array_like``): no ``__dict__``, no cyclic-GC
header, and it encodes to a short msgpack array, so a table of them can itself be spilled to
disk. A million of them fit in a few hundred MB (``bench/memory.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from avm._core.states import WaitReason
from avm.memory.refs import ContentRef

__all__ = ["PassivatedAgent", "roots_of"]

_encoder = msgspec.msgpack.Encoder()


class PassivatedAgent(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An idle agent, reduced to what re-activating it needs.

    ``image`` is the content-addressed image the agent runs (None for a Python agent; then
    ``definition`` names its registered definition). ``journal_pos`` is the step of the
    instruction it waits in: the first step with no journal entry yet. ``wake`` says what ends
    the wait: a deadline (monotonic seconds) for a timer, a task or request id for a response, a
    topic for a subscription; ``None`` for "any message". ``memory`` is a *held* ref (a link
    list of the content the agent holds): release it with ``store.decref`` once the agent is
    active again and holds that content itself.

    The VM's own records fill the rest: ``deadline`` is when the wait ends by itself (a timer,
    or a message wait's timeout; in RAM on the VM's timer clock, in the state store as wall-clock
    seconds, like a timer's ``wake``); ``priority``, ``budget`` and ``spent`` (milligas) answer for
    the agent while it is out of RAM; ``topics`` and ``schedules`` are the swarm memberships
    and schedule grids it had, which replay from a checkpoint would not re-create.
    """

    agent_id: str
    image: ContentRef | None
    journal_pos: int
    wait: WaitReason
    wake: str | float | None = None
    memory: ContentRef | None = None
    deadline: float | None = None
    priority: int = 1
    budget: int | None = None
    spent: int = 0
    topics: tuple[str, ...] = ()
    schedules: dict[str, tuple[float, float, int]] | None = None
    definition: str = ""

    def encode(self) -> bytes:
        """The record as msgpack (an array of its fields)."""
        return _encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> PassivatedAgent:
        """A record from :meth:`encode`'s bytes."""
        return msgspec.msgpack.decode(data, type=cls)


def roots_of(records: Iterable[PassivatedAgent]) -> Iterator[ContentRef]:
    """The content refs a set of passivated agents keeps alive (GC roots)."""
    for record in records:
        if record.image is not None:
            yield record.image
        if record.memory is not None:
            yield record.memory
