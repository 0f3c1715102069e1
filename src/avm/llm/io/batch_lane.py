"""The batch lane: deferrable model calls go through the provider's batch API.

This module owns :class:`BatchLane`, a wrapper with the :class:`~avm.llm.provider.ModelProvider`
shape, and the :class:`BatchAPI` protocol a provider implements to take part (OpenAI's Batch API
and Anthropic's Message Batches: typically half the price, answered within hours). A request
marked ``deferrable`` joins the lane's open batch; the batch is submitted when it holds
``max_batch`` requests or ``max_wait_s`` after its first request, whichever comes first; each
caller waits (as an agent waits on any model call, so a parked agent costs next to nothing) and
gets its own reply, or its own error, when the batch is over. Other requests pass straight
through to ``inner``.

::

    deferrable ──► open batch ──(full, or max_wait_s)──► run_batch(): upload, create, poll,
                                                          download ──► each caller's future

A caller that gives up before its batch is submitted is taken out of it; after submission its
result is dropped when it arrives.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, runtime_checkable

from avm.errors import ModelError, ProviderUnavailable
from avm.llm.io.streams import ReplyStream, stream_reply
from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest

__all__ = ["BatchAPI", "BatchLane"]

logger = logging.getLogger(__name__)


@runtime_checkable
class BatchAPI(Protocol):
    """A provider's batch endpoint: many requests in, one reply or error per request out."""

    async def run_batch(
        self, requests: Sequence[ModelRequest], *, poll_s: float = 30.0
    ) -> list[ModelReply | ModelError]:
        """Submit ``requests`` as one batch, wait until it is over, return results in order.

        Raises only :class:`ModelError` subclasses, when the batch as a whole failed.
        """
        ...


class _Pending:
    __slots__ = ("future", "request")

    def __init__(self, request: ModelRequest, future: asyncio.Future[ModelReply]) -> None:
        self.request = request
        self.future = future


class BatchLane:
    """Collects deferrable requests into batches for ``batch_api``.

    Args:
        inner: answers requests that are not deferrable (and deferrable ones when
            ``batch_api`` is None).
        batch_api: the batch endpoint; by default ``inner`` itself if it has ``run_batch``.
        max_batch: requests per batch; a full batch is submitted at once.
        max_wait_s: how long a batch collects requests after its first one.
        poll_s: how often a submitted batch's status is polled.
    """

    def __init__(
        self,
        inner: ModelProvider,
        *,
        batch_api: BatchAPI | None = None,
        max_batch: int = 1000,
        max_wait_s: float = 60.0,
        poll_s: float = 30.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0 or poll_s <= 0:
            raise ValueError("max_wait_s must not be negative and poll_s must be positive")
        if batch_api is None and isinstance(inner, BatchAPI):
            batch_api = inner
        self.inner = inner
        self.batch_api = batch_api
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.poll_s = poll_s
        self._open: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.deferred = 0

    def __repr__(self) -> str:
        return f"BatchLane({self.inner!r}, open={len(self._open)}, running={len(self._running)})"

    @property
    def waiting(self) -> int:
        """Requests in the batch being collected."""
        return len(self._open)

    @property
    def in_flight(self) -> int:
        """Batches submitted and not over yet."""
        return len(self._running)

    def complete(self, request: ModelRequest) -> Coroutine[Any, Any, ModelReply]:
        # A plain method handing back the inner call's coroutine: a live request (almost all
        # of them) passes this layer without a coroutine frame of its own.
        if not request.deferrable or self.batch_api is None:
            return self.inner.complete(request)
        return self._defer(request)

    async def _defer(self, request: ModelRequest) -> ModelReply:
        if self._closed:
            raise ModelError("the batch lane was closed")
        loop = asyncio.get_running_loop()
        pending = _Pending(request, loop.create_future())
        self._open.append(pending)
        self.deferred += 1
        if len(self._open) >= self.max_batch:
            self._submit()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._submit)
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending in self._open:
                self._open.remove(pending)
            raise

    def stream(self, request: ModelRequest) -> ReplyStream:
        """Streams are answered live: a batch has nothing to stream."""
        return stream_reply(self.inner, request)

    def flush(self) -> None:
        """Submit the batch being collected now, without waiting for it to fill."""
        if self._open:
            self._submit()

    async def drain(self) -> None:
        """Submit what is collected and wait until every submitted batch is over."""
        self.flush()
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def aclose(self) -> None:
        """Fail waiting callers, stop polling, close ``inner``."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._open = self._open, []
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(ModelError("the batch lane was closed"))
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self.inner.aclose()

    # --- batches ---------------------------------------------------------------------------

    def _submit(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [p for p in self._open if not p.future.done()]
        self._open = []
        if not batch:
            return
        self.batches += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        api = self.batch_api
        assert api is not None
        try:
            results = await api.run_batch([p.request for p in batch], poll_s=self.poll_s)
        except ModelError as exc:
            logger.warning("a batch of %d requests failed: %s", len(batch), exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(copy.copy(exc))
            return
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(ModelError("the batch lane was closed"))
            raise
        except Exception as exc:  # a third-party batch API that did not translate its errors
            logger.exception("a batch of %d requests failed", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        ProviderUnavailable(f"batch failed: {type(exc).__name__}: {exc}")
                    )
            return
        if len(results) != len(batch):
            error = ModelError(f"the batch API returned {len(results)} results for {len(batch)}")
            results = [error] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue  # the caller gave up
            if isinstance(result, ModelError):
                pending.future.set_exception(copy.copy(result))
            else:
                pending.future.set_result(result)
