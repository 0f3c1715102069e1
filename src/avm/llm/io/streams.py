"""Streamed replies, as every provider and wrapper hands them out.

This module owns :class:`ReplyStream` (text deltas as they arrive, then the whole
:class:`~avm.llm.types.ModelReply` in ``reply``), the :class:`StreamingProvider` protocol (a
:class:`~avm.llm.provider.ModelProvider` that can also stream), and :func:`stream_reply`, which
streams from any provider, falling back to one delta holding the whole text for those that
cannot. Wrappers pass streams through with :class:`DerivedStream`, which lets them act when the
stream starts and ends (admission, caching, failover) without re-implementing iteration.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest

__all__ = [
    "DerivedStream",
    "ReplyStream",
    "StreamingProvider",
    "WholeReplyStream",
    "stream_reply",
]


class ReplyStream(AsyncIterator[str]):
    """The text deltas of one reply, then the complete reply in :attr:`reply`.

    ``async for delta in stream`` yields text as it arrives; once iteration ends normally,
    :attr:`reply` holds the whole :class:`ModelReply` (text, tool calls, usage, finish reason).
    Use ``async with`` when a loop may stop early, so the connection is released at once.
    Subclasses implement :meth:`_run`; iterate a stream once.
    """

    def __init__(self) -> None:
        self.reply: ModelReply | None = None
        """The complete reply, set when the stream has ended normally; None before."""
        self._agen: AsyncGenerator[str, None] | None = None

    def _run(self) -> AsyncGenerator[str, None]:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        agen = self._agen
        if agen is None:
            agen = self._agen = self._run()
        return await agen.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        if self._agen is not None:
            await self._agen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@runtime_checkable
class StreamingProvider(ModelProvider, Protocol):
    """A provider that can also stream a reply."""

    def stream(self, request: ModelRequest) -> ReplyStream:
        """The reply to ``request`` as a :class:`ReplyStream`; errors as for ``complete``."""
        ...


class WholeReplyStream(ReplyStream):
    """A stream of one delta: the whole reply of an awaitable (a provider that cannot stream,
    a cache hit)."""

    def __init__(self, reply: Callable[[], Awaitable[ModelReply]]) -> None:
        super().__init__()
        self._get = reply

    async def _run(self) -> AsyncGenerator[str, None]:
        reply = await self._get()
        if reply.text:
            yield reply.text
        self.reply = reply


class DerivedStream(ReplyStream):
    """A stream passed through a wrapper.

    ``open`` makes the inner stream (it may wait first, e.g. for admission); ``on_end`` gets
    the inner stream's reply, or None when the stream failed or was left early, and may return
    a replacement reply. ``on_end`` always runs exactly once if ``open`` succeeded.
    """

    def __init__(
        self,
        open: Callable[[], Awaitable[ReplyStream]],
        on_end: Callable[[ModelReply | None], ModelReply | None] | None = None,
    ) -> None:
        super().__init__()
        self._open = open
        self._on_end = on_end

    async def _run(self) -> AsyncGenerator[str, None]:
        inner = await self._open()
        reply: ModelReply | None = None
        try:
            async with inner:
                async for delta in inner:
                    yield delta
            reply = inner.reply
        finally:
            if self._on_end is not None:
                replaced = self._on_end(reply)
                if replaced is not None:
                    reply = replaced
        self.reply = reply


def stream_reply(provider: ModelProvider, request: ModelRequest) -> ReplyStream:
    """Stream ``request`` from ``provider``: natively when it can, else as one whole delta."""
    if isinstance(provider, StreamingProvider):
        return provider.stream(request)
    return WholeReplyStream(lambda: provider.complete(request))
