"""Which content each agent holds: one hold per agent and piece of content, in order.

The VM takes a hold in the content store the first time an agent stores a piece of content
(``vm.hold``, a conversation's messages) and releases them all when the agent is deleted; an
agent re-run after a crash or a passivation stores the same content again and must not take a
second hold. This table remembers, per agent, the refs it holds, in the order it took them.

A fleet has as many rows as resident agents, so a row is kept small: a tuple while the agent
holds few refs (a membership test over a handful of pointers is as fast as a hash lookup, and
a tuple of 9 refs costs 112 bytes against 184 for a list, which over-allocates as it grows,
and ~370 for a dict), re-made with each ref added; and a dict used as an ordered set once it
holds more than :data:`SMALL`, so that an agent with a long conversation still adds a hold in
constant time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from avm.memory.refs import ContentRef

__all__ = ["SMALL", "HoldTable"]

SMALL = 16
"""Most refs a row keeps as a tuple; a longer row is a dict (an ordered set)."""

_Row = tuple[ContentRef, ...] | dict[ContentRef, None]


class HoldTable:
    """agent id -> the refs it holds, each once, in the order taken."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}

    def __len__(self) -> int:
        """How many agents hold something."""
        return len(self._rows)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._rows

    def has(self, agent_id: str, ref: ContentRef) -> bool:
        """True if ``agent_id`` holds ``ref``."""
        row = self._rows.get(agent_id)
        return row is not None and ref in row

    def add(self, agent_id: str, ref: ContentRef) -> bool:
        """Record that ``agent_id`` holds ``ref``; False if it already did (take no hold)."""
        row = self._rows.get(agent_id)
        if row is None:
            self._rows[agent_id] = (ref,)
            return True
        if ref in row:
            return False
        if isinstance(row, dict):
            row[ref] = None
        elif len(row) < SMALL:
            self._rows[agent_id] = (*row, ref)
        else:
            grown = dict.fromkeys(row)
            grown[ref] = None
            self._rows[agent_id] = grown
        return True

    def refs(self, agent_id: str) -> tuple[ContentRef, ...]:
        """What ``agent_id`` holds, in order (empty if nothing)."""
        return tuple(self._rows.get(agent_id, ()))

    def pop(self, agent_id: str) -> tuple[ContentRef, ...]:
        """Forget ``agent_id``'s row; the refs it held (the caller releases or moves them)."""
        return tuple(self._rows.pop(agent_id, ()))

    def restore(self, agent_id: str, refs: Iterable[ContentRef]) -> list[ContentRef]:
        """Add ``refs`` to ``agent_id``'s row without taking holds for them; those that were
        not in it yet (a passivated agent's holds coming back with it)."""
        return [ref for ref in refs if self.add(agent_id, ref)]

    def agents(self) -> Iterator[str]:
        return iter(self._rows)

    def clear(self) -> None:
        self._rows.clear()
