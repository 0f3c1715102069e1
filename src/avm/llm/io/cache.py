"""The response cache: a repeated deterministic request is answered without calling the model.

This module owns :class:`ResponseCache`, a wrapper with the
:class:`~avm.llm.provider.ModelProvider` shape. It keeps replies by
:func:`~avm.llm.io.keys.request_key` (BLAKE3 of the whole canonical request) in memory, least
recently used first out, each for at most ``ttl_s``. It applies to the requests
:func:`~avm.llm.io.keys.is_cacheable` admits: temperature 0 unless the request says otherwise.

A hit reports zero token usage, because nothing was consumed upstream: gas follows what the
provider bills, so the agent that paid for the original call is the only one charged.
Failures are never cached.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import msgspec

from avm.llm.io.keys import is_cacheable, request_key
from avm.llm.io.streams import DerivedStream, ReplyStream, WholeReplyStream, stream_reply
from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest, Usage

__all__ = ["ResponseCache"]

_FREE = Usage()


class _Entry(msgspec.Struct, gc=False):
    """A cached reply. Untracked by the cycle collector: it holds only replies and a float,
    and a cache holds thousands of them for as long as the process runs."""

    reply: ModelReply
    expires: float
    hit: ModelReply | None = None

    def served(self) -> ModelReply:
        hit = self.hit
        if hit is None:
            # Built on the first hit, not on every store: most entries are never hit.
            hit = self.hit = msgspec.structs.replace(self.reply, usage=_FREE)
        return hit


class ResponseCache:
    """Answers repeated cacheable requests from memory.

    Args:
        inner: the provider (or wrapper) that answers misses.
        ttl_s: how long a reply stays valid; None keeps it until evicted.
        max_entries: how many replies are kept; the least recently used goes first.
        clock: seconds on a monotonic clock (tests may pass their own).
    """

    def __init__(
        self,
        inner: ModelProvider,
        *,
        ttl_s: float | None = 3600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        self.inner = inner
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"ResponseCache({self.inner!r}, entries={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, request: ModelRequest) -> ModelReply | None:
        """The cached reply (with zero usage) for ``request``, or None."""
        if not is_cacheable(request):
            return None
        entry = self._entries.get(request_key(request))
        if entry is None:
            return None
        if self.ttl_s is not None and entry.expires <= self._clock():
            return None
        return entry.served()

    async def complete(self, request: ModelRequest) -> ModelReply:
        if not is_cacheable(request):
            return await self.inner.complete(request)
        key = request_key(request)
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            if self.ttl_s is None or entry.expires > self._clock():
                self.hits += 1
                entries.move_to_end(key)
                return entry.served()
            del entries[key]
        self.misses += 1
        reply = await self.inner.complete(request)
        self._store(key, reply)
        return reply

    def stream(self, request: ModelRequest) -> ReplyStream:
        """A hit streams as one delta; a miss streams from the inner provider and is stored."""
        if not is_cacheable(request):
            return stream_reply(self.inner, request)
        hit = self.lookup(request)
        if hit is not None:
            self.hits += 1
            return WholeReplyStream(lambda: _ready(hit))
        self.misses += 1
        key = request_key(request)

        async def open_inner() -> ReplyStream:
            return stream_reply(self.inner, request)

        def on_end(reply: ModelReply | None) -> None:
            if reply is not None:
                self._store(key, reply)

        return DerivedStream(open_inner, on_end)

    def _store(self, key: bytes, reply: ModelReply) -> None:
        expires = self._clock() + self.ttl_s if self.ttl_s is not None else 0.0
        entries = self._entries
        entries[key] = _Entry(reply, expires)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    async def aclose(self) -> None:
        self._entries.clear()
        await self.inner.aclose()


async def _ready(reply: ModelReply) -> ModelReply:
    return reply
