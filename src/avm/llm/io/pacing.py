"""Pacing: a model's rate limits held on our side, and admission by priority when they bite.

This module owns :class:`Pacer`, a wrapper with the :class:`~avm.llm.provider.ModelProvider`
shape that admits a request upstream only when all of these allow it:

- fewer than ``concurrency`` requests are in flight;
- the requests-per-minute bucket holds a request (``rpm``);
- the tokens-per-minute bucket holds the request's estimated tokens (``tpm``): its prompt
  (about four characters a token) plus ``max_tokens``, the way providers count it at
  admission. OpenAI's limiter stops there; Anthropic's adjusts to the tokens actually used
  when the request ends, and so does this bucket with ``tpm_refund``: an overestimate is
  refunded and an underestimate paid back by later requests;
- no ``Retry-After`` cool-down is running (a 429 that outlasted the provider's own retries
  stops admission for the time the server asked for).

Each bucket refills continuously at its per-minute rate and holds ``burst_s`` seconds of it, so
over any window of ``w`` seconds at most ``rate * (w + burst_s)`` is admitted: the configured
rate, with a short burst.

::

    complete(request) ──► capacity free and nobody queued? ──yes──► call upstream
                                   │ no
                                   ▼
            queue[priority] (0 interactive, 1 normal, 2 background; FIFO within each)
                                   │  on release, refill timer or cool-down end:
                                   ▼  the head of the most urgent non-empty queue goes first
                              call upstream

Admission is strictly by priority: an interactive request waiting for tokens is not overtaken
by a cheaper background one, so under saturation interactive work always goes next.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from avm.errors import RateLimited
from avm.llm.io.prefix import PREFIXES
from avm.llm.io.streams import DerivedStream, ReplyStream, stream_reply
from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest

__all__ = ["Pacer", "estimate_request_tokens"]

logger = logging.getLogger(__name__)

_PRIORITIES = 3
# Characters per token for admission estimates (the usual English rule of thumb).
_CHARS_PER_TOKEN = 4
# Framing tokens per message in chat formats.
_MESSAGE_TOKENS = 4


def estimate_request_tokens(request: ModelRequest) -> int:
    """Tokens a request may consume: its prompt, estimated, plus its ``max_tokens``."""
    prefix = PREFIXES.of(request)
    chars = 0
    messages = request.messages
    if prefix is not None:
        chars = prefix.chars
        messages = messages[prefix.count :]
    for message in messages:
        chars += len(message.content)
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    prompt = chars // _CHARS_PER_TOKEN + _MESSAGE_TOKENS * len(request.messages)
    return prompt + request.max_tokens


class _Bucket:
    """A token bucket: refills at ``rate`` per second, holds at most ``depth``."""

    __slots__ = ("depth", "level", "rate", "stamp")

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        # At least one whole request's worth must fit, or nothing could ever be admitted.
        self.depth = max(1.0, self.rate * burst_s)
        self.level = self.depth
        self.stamp = now

    def refill(self, now: float) -> None:
        level = self.level + (now - self.stamp) * self.rate
        self.level = level if level < self.depth else self.depth
        self.stamp = now

    def wait(self, need: float) -> float:
        """Seconds until ``need`` is available (a need beyond the depth waits for a full
        bucket, so one oversized request is slow but never stuck)."""
        need = min(need, self.depth)
        short = need - self.level
        return short / self.rate if short > 0 else 0.0


class _Waiter:
    __slots__ = ("cost", "future")

    def __init__(self, future: asyncio.Future[None], cost: int) -> None:
        self.future = future
        self.cost = cost


class Pacer:
    """Holds a model's rate limits and admits requests by priority.

    Args:
        inner: the provider (or wrapper) that does the calls.
        concurrency: requests in flight at once; None for no limit.
        rpm: requests per minute; None for no limit.
        tpm: tokens per minute (prompt estimate plus ``max_tokens`` at admission, trued up
            with the reported usage); None for no limit.
        burst_s: bucket depth, in seconds of rate.
        tpm_refund: true the tpm bucket up to the reply's reported usage (for providers whose
            own limiter does so, e.g. Anthropic); otherwise the admission estimate stands.
        clock: the event loop's clock by default; a test may pass another monotonic clock
            (timers still run on the loop).
        name: for log messages.
    """

    def __init__(
        self,
        inner: ModelProvider,
        *,
        concurrency: int | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        tpm_refund: bool = False,
        clock: Callable[[], float] | None = None,
        name: str = "",
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be positive, got {value}")
        if not burst_s > 0:
            raise ValueError(f"burst_s must be positive, got {burst_s}")
        self.inner = inner
        self.name = name
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self.burst_s = burst_s
        self.tpm_refund = tpm_refund
        self._clock = clock
        self._limit = concurrency if concurrency is not None else 1 << 62
        self._rpm: _Bucket | None = None
        self._tpm: _Bucket | None = None
        self._queues: tuple[collections.deque[_Waiter], ...] = tuple(
            collections.deque() for _ in range(_PRIORITIES)
        )
        self._queued = 0
        self._active = 0
        self._paused_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.admitted = 0
        self.delayed = 0

    def __repr__(self) -> str:
        return (
            f"Pacer({self.inner!r}, concurrency={self.concurrency}, rpm={self.rpm}, "
            f"tpm={self.tpm}, active={self._active}, queued={self._queued})"
        )

    @property
    def active(self) -> int:
        """Requests admitted and not finished."""
        return self._active

    @property
    def queued(self) -> int:
        """Requests waiting for admission (cancelled ones may linger until skipped)."""
        return self._queued

    # --- the wrapper -----------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        cost = estimate_request_tokens(request) if self.tpm is not None else 0
        if not self._queued and self._try_take(cost):
            self.admitted += 1
        else:
            await self._wait_turn(request.priority, cost)
        try:
            reply = await self.inner.complete(request)
        except RateLimited as exc:
            self._cool_down(exc.retry_after_s)
            raise
        finally:
            self._release()
        if cost and self.tpm_refund:
            self._true_up(cost, reply)
        return reply

    def stream(self, request: ModelRequest) -> ReplyStream:
        """Admission happens when the stream is first read; the slot is held until it ends."""
        cost = estimate_request_tokens(request) if self.tpm is not None else 0

        async def open_inner() -> ReplyStream:
            if not self._queued and self._try_take(cost):
                self.admitted += 1
            else:
                await self._wait_turn(request.priority, cost)
            return stream_reply(self.inner, request)

        def on_end(reply: ModelReply | None) -> None:
            self._release()
            if reply is not None and cost and self.tpm_refund:
                self._true_up(cost, reply)

        return DerivedStream(open_inner, on_end)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.inner.aclose()

    # --- admission -------------------------------------------------------------------------

    def _now(self) -> float:
        clock = self._clock
        # time.monotonic is the default event loop's clock; timers are armed by delay, so the
        # two never need to agree on more than that.
        return clock() if clock is not None else time.monotonic()

    def _delay(self, cost: int, now: float) -> float:
        """Seconds until a request of ``cost`` tokens could go (0: now), ignoring concurrency."""
        delay = 0.0
        if self._paused_until:
            delay = self._paused_until - now
            if delay <= 0:
                self._paused_until = 0.0
        bucket = self._rpm
        if bucket is None and self.rpm is not None:
            bucket = self._rpm = _Bucket(self.rpm, self.burst_s, now)
        if bucket is not None:
            bucket.refill(now)
            delay = max(delay, bucket.wait(1.0))
        bucket = self._tpm
        if bucket is None and self.tpm is not None:
            bucket = self._tpm = _Bucket(self.tpm, self.burst_s, now)
        if bucket is not None:
            bucket.refill(now)
            delay = max(delay, bucket.wait(cost))
        return delay

    def _try_take(self, cost: int) -> bool:
        if self._active >= self._limit:
            return False
        if self.rpm is not None or self.tpm is not None or self._paused_until:
            if self._delay(cost, self._now()) > 0:
                return False
            self._take(cost)
        self._active += 1
        return True

    def _take(self, cost: int) -> None:
        if self._rpm is not None:
            self._rpm.level -= 1.0
        if self._tpm is not None:
            # May go below zero for a request bigger than the bucket: later ones wait it out.
            self._tpm.level -= cost

    async def _wait_turn(self, priority: int, cost: int) -> None:
        queue = self._queues[min(max(priority, 0), _PRIORITIES - 1)]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(_Waiter(future, cost))
        self._queued += 1
        self.delayed += 1
        self._pump()
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                # Admitted just as the caller gave up: hand the slot on.
                self._release()
            raise
        self.admitted += 1

    def _release(self) -> None:
        self._active -= 1
        if self._queued:
            self._pump()

    def _pump(self) -> None:
        """Admit waiting requests, most urgent first, while capacity allows."""
        while self._queued:
            waiter = None
            for queue in self._queues:
                while queue and queue[0].future.done():  # cancelled while waiting
                    queue.popleft()
                    self._queued -= 1
                if queue:
                    waiter = queue[0]
                    break
            if waiter is None:
                return
            if self._active >= self._limit:
                return  # a release will pump again
            now = self._now()
            delay = self._delay(waiter.cost, now)
            if delay > 0:
                self._arm(now + delay)
                return
            self._take(waiter.cost)
            self._active += 1
            queue.popleft()
            self._queued -= 1
            waiter.future.set_result(None)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        loop = asyncio.get_running_loop()
        # A custom clock's time is converted into a delay on the loop's clock.
        delay = when - self._now()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, delay), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _cool_down(self, retry_after_s: float | None) -> None:
        if not retry_after_s:
            return
        until = self._now() + retry_after_s
        if until > self._paused_until:
            logger.info(
                "model %s: rate limited upstream, admission paused for %.1f s",
                self.name or self.inner,
                retry_after_s,
            )
            self._paused_until = until

    def _true_up(self, cost: int, reply: ModelReply) -> None:
        usage = reply.usage
        actual = usage.tokens_in + usage.tokens_out
        bucket = self._tpm
        if actual and bucket is not None:
            level = bucket.level + cost - actual
            bucket.level = level if level < bucket.depth else bucket.depth
