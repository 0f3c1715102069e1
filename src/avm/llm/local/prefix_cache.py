"""Prompt prefixes kept in the KV cache so that many requests evaluate them once.

Agents of one fleet usually open with the same system prompt. The engine evaluates such a
prefix once into a sequence of its own (a *prefix sequence*), then copies it into each request's
sequence with ``llama_memory_seq_cp``. With llama.cpp's unified KV cache the copy does not move
data: it tags the prefix's cells as belonging to the new sequence too, so the prefix occupies
cache memory once however many requests share it.

This module owns the bookkeeping: which token prefixes are cached (an LRU keyed by the token
tuple), which llama.cpp sequence id holds each, whether it is evaluated yet, and which entries
may be evicted. It never calls llama.cpp; the engine does, and frees an evicted entry's cells.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["PrefixCache", "PrefixEntry"]

W = TypeVar("W")


class PrefixEntry(Generic[W]):
    """One cached prefix: its tokens, its sequence id, and requests waiting for it.

    ``evaluated`` counts the prefix tokens already in the KV cache; the entry is ``ready`` when
    all are. Until then, requests that want it wait in ``waiters`` rather than evaluating the
    same tokens again. ``users`` counts the live requests whose sequences start from it: their
    KV cells *are* its cells, so it cannot be evicted (its cells freed from the budget) while
    any remains.
    """

    __slots__ = ("evaluated", "hits", "seq_id", "tokens", "users", "waiters")

    def __init__(self, tokens: tuple[int, ...], seq_id: int) -> None:
        self.tokens = tokens
        self.seq_id = seq_id
        self.evaluated = 0
        self.hits = 0
        self.users = 0
        self.waiters: list[W] = []

    @property
    def ready(self) -> bool:
        return self.evaluated >= len(self.tokens)

    @property
    def evictable(self) -> bool:
        return self.ready and self.users == 0

    def __repr__(self) -> str:
        state = "ready" if self.ready else f"{self.evaluated}/{len(self.tokens)}"
        return f"PrefixEntry(seq={self.seq_id}, tokens={len(self.tokens)}, {state})"


class PrefixCache(Generic[W]):
    """An LRU of :class:`PrefixEntry`, one llama.cpp sequence id each.

    Args:
        seq_ids: the sequence ids reserved for prefixes; their number is the capacity.
    """

    def __init__(self, seq_ids: range) -> None:
        self._free = list(reversed(seq_ids))
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry[W]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[PrefixEntry[W]]:
        return iter(self._entries.values())

    @property
    def tokens_held(self) -> int:
        """KV cells the cached prefixes occupy (each once, however many requests share it)."""
        return sum(len(entry.tokens) for entry in self._entries.values())

    def get(self, tokens: tuple[int, ...]) -> PrefixEntry[W] | None:
        """The entry for exactly these tokens, marked most recently used; None if absent."""
        entry = self._entries.get(tokens)
        if entry is not None:
            self._entries.move_to_end(tokens)
        return entry

    def create(
        self, tokens: tuple[int, ...]
    ) -> tuple[PrefixEntry[W] | None, PrefixEntry[W] | None]:
        """A new, not yet evaluated entry, and the entry evicted to make room for it.

        Returns ``(None, None)`` when every slot holds an entry that cannot be evicted yet.
        The caller must free the evicted entry's cells.
        """
        evicted = None
        if not self._free:
            evicted = self.evict_one()
            if evicted is None:
                return None, None
        entry: PrefixEntry[W] = PrefixEntry(tokens, self._free.pop())
        self._entries[tokens] = entry
        return entry, evicted

    def evict_one(self) -> PrefixEntry[W] | None:
        """Drop the least recently used evictable entry and return it (None if none is)."""
        for key, entry in self._entries.items():
            if entry.evictable:
                del self._entries[key]
                self._free.append(entry.seq_id)
                return entry
        return None

    def discard(self, entry: PrefixEntry[W]) -> None:
        """Forget an entry whatever its state (its evaluation failed or was abandoned)."""
        if self._entries.get(entry.tokens) is entry:
            del self._entries[entry.tokens]
            self._free.append(entry.seq_id)

    def clear(self) -> list[PrefixEntry[W]]:
        """Forget every entry; returns them so the caller can free their cells."""
        entries = list(self._entries.values())
        for entry in entries:
            self._free.append(entry.seq_id)
        self._entries.clear()
        return entries
