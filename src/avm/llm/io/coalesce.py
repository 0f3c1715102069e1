"""Request coalescing: identical requests in flight at the same time share one upstream call.

This module owns :class:`Coalescer`, a wrapper with the :class:`~avm.llm.provider.ModelProvider`
shape. When many agents ask the same deterministic question at once (a fleet started from one
template, a broadcast everyone summarises), the first caller, the *leader*, makes the call and
every identical request that arrives before it returns, a *follower*, waits for its answer.
Requests are identical when their :func:`~avm.llm.io.keys.request_key` is; only requests that
:func:`~avm.llm.io.keys.is_cacheable` admits are coalesced, since sampled requests each asked for
their own draw.

The leader's reply carries the call's token usage; followers get zero usage (they consumed
nothing upstream). Each follower gets its own copy of a failure, because the VM stamps an
error with the agent and step that saw it. If the leader is cancelled, its followers do not
inherit the cancellation: one of them takes over as the new leader.
"""

from __future__ import annotations

import asyncio
import copy

import msgspec

from avm.llm.io.keys import is_cacheable, request_key
from avm.llm.io.streams import ReplyStream, stream_reply
from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest, Usage

__all__ = ["Coalescer"]

_FREE = Usage()


class _LeaderGone(Exception):
    """The leader was cancelled before it had an answer; a follower should call itself."""


class _Flight:
    """One upstream call in progress and the followers waiting for it."""

    __slots__ = ("followers",)

    def __init__(self) -> None:
        self.followers: list[asyncio.Future[ModelReply]] | None = None

    def join(self) -> asyncio.Future[ModelReply]:
        # Each follower waits on its own future, so cancelling one cancels no one else.
        future: asyncio.Future[ModelReply] = asyncio.get_running_loop().create_future()
        if self.followers is None:
            self.followers = [future]
        else:
            self.followers.append(future)
        return future

    def succeed(self, reply: ModelReply) -> None:
        if not self.followers:
            return
        shared = msgspec.structs.replace(reply, usage=_FREE)
        for future in self.followers:
            if not future.done():
                future.set_result(shared)

    def fail(self, exc: BaseException) -> None:
        if not self.followers:
            return
        for future in self.followers:
            if future.done():
                continue
            if isinstance(exc, Exception):
                future.set_exception(_copy_error(exc))
            else:  # cancelled (or the loop is going down): let a follower lead instead
                future.set_exception(_LeaderGone())


def _copy_error(exc: Exception) -> Exception:
    try:
        clone = copy.copy(exc)
    except Exception:  # an exception type that cannot be copied: share it
        return exc
    clone.__cause__ = exc.__cause__
    return clone


class Coalescer:
    """Shares one upstream call among identical concurrent requests.

    Attributes ``calls`` (upstream calls made for coalescable requests) and ``joined``
    (requests that rode along on another's call) count what it did.
    """

    def __init__(self, inner: ModelProvider) -> None:
        self.inner = inner
        self._flights: dict[bytes, _Flight] = {}
        self.calls = 0
        self.joined = 0

    def __repr__(self) -> str:
        return f"Coalescer({self.inner!r}, in_flight={len(self._flights)})"

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def complete(self, request: ModelRequest) -> ModelReply:
        if not is_cacheable(request):
            return await self.inner.complete(request)
        key = request_key(request)
        flights = self._flights
        while True:
            flight = flights.get(key)
            if flight is None:
                break
            self.joined += 1
            try:
                return await flight.join()
            except _LeaderGone:
                self.joined -= 1
                continue  # the flight is gone; lead a new one, or join whoever did first
        flight = flights[key] = _Flight()
        self.calls += 1
        try:
            reply = await self.inner.complete(request)
        except BaseException as exc:
            if flights.get(key) is flight:
                del flights[key]
            flight.fail(exc)
            raise
        if flights.get(key) is flight:
            del flights[key]
        flight.succeed(reply)
        return reply

    def stream(self, request: ModelRequest) -> ReplyStream:
        """Streams are not coalesced: each caller reads its own deltas."""
        return stream_reply(self.inner, request)

    async def aclose(self) -> None:
        await self.inner.aclose()
