"""Circuit breaking: stop calling a model that keeps failing, and answer from a fallback.

This module owns :class:`CircuitBreaker`, a wrapper with the
:class:`~avm.llm.provider.ModelProvider` shape around a primary model, optionally with a
fallback model on another provider. Only failures that say the *service* is unwell trip it:
:class:`~avm.errors.ProviderUnavailable`, :class:`~avm.errors.ModelTimeout` and
:class:`~avm.errors.RateLimited`, each arriving after the provider's own retries. Any other
answer, even a 4xx, shows the service is up and resets the count.

::

            K consecutive failures                 cool-down over: one probe call
    CLOSED ───────────────────────────► OPEN ──────────────────────────────► HALF_OPEN
      ▲                                  ▲                                      │
      │                                  └────────────── probe fails ───────────┤
      └──────────────────────────────────────────────── probe succeeds ─────────┘

While closed, a failed call is retried once on the fallback (if any) so the caller still gets
an answer. While open, calls go straight to the fallback, or fail at once with
:class:`~avm.errors.ProviderUnavailable` when there is none, instead of each waiting out
timeouts and retries. The fallback gets the same request with its own model name.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncGenerator, Callable

import msgspec

from avm.errors import ModelError, ModelTimeout, ProviderUnavailable, RateLimited
from avm.llm.io.streams import ReplyStream, stream_reply
from avm.llm.provider import ModelProvider
from avm.llm.types import ModelReply, ModelRequest

__all__ = ["BreakerState", "CircuitBreaker"]

logger = logging.getLogger(__name__)

_TRIPPING = (ProviderUnavailable, ModelTimeout, RateLimited)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Guards a primary model and fails over to a fallback.

    Args:
        primary: the model's own provider stack.
        fallback: another model's provider stack, tried when the primary fails or the circuit
            is open; None to fail fast instead.
        fallback_model: the fallback's own model name, put in the request it gets; None keeps
            the request's model.
        failure_threshold: consecutive service failures that open the circuit.
        cooldown_s: how long the circuit stays open before one probe call is let through.
        clock: seconds on a monotonic clock.
        name: the model's name, for messages.
    """

    def __init__(
        self,
        primary: ModelProvider,
        *,
        fallback: ModelProvider | None = None,
        fallback_model: str | None = None,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must not be negative, got {cooldown_s}")
        self.primary = primary
        self.fallback = fallback
        self.fallback_model = fallback_model
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.name = name
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self.fallback_calls = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.primary!r}, state={self.state.value})"

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose cool-down is over reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive service failures counted so far."""
        return self._failures

    # --- the wrapper -----------------------------------------------------------------------

    async def complete(self, request: ModelRequest) -> ModelReply:
        if self._state is BreakerState.CLOSED:
            probe = False
        else:
            probe = self._claim_probe()
            if not probe:
                return await self._fallback_or_fail(request, None)
        try:
            reply = await self.primary.complete(request)
        except _TRIPPING as exc:
            self._failed(probe, exc)
            if self.fallback is None:
                raise
            return await self._fallback_or_fail(request, exc)
        except ModelError:
            self._succeeded(probe)  # a request error: the service itself answered
            raise
        except BaseException:
            if probe:
                self._probing = False  # cancelled: let another call probe
            raise
        self._succeeded(probe)
        return reply

    def stream(self, request: ModelRequest) -> ReplyStream:
        """Streams fail over only before their first delta; after it, errors are raised."""
        return _FailoverStream(self, request)

    async def aclose(self) -> None:
        # The fallback is another model's stack: its owner closes it.
        await self.primary.aclose()

    # --- state -----------------------------------------------------------------------------

    def _claim_probe(self) -> bool:
        """In open or half-open state: whether this call may probe the primary."""
        if self._probing or self._clock() < self._open_until:
            return False
        self._state = BreakerState.HALF_OPEN
        self._probing = True
        return True

    def _failed(self, probe: bool, exc: ModelError) -> None:
        if probe:
            self._probing = False
            self._open(f"probe failed: {exc}")
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold:
            self._open(f"{self._failures} consecutive failures, last: {exc}")

    def _open(self, why: str) -> None:
        self._state = BreakerState.OPEN
        self._open_until = self._clock() + self.cooldown_s
        logger.warning(
            "model %s: circuit open for %.1f s (%s)",
            self.name or self.primary,
            self.cooldown_s,
            why,
        )

    def _succeeded(self, probe: bool) -> None:
        if probe:
            self._probing = False
            logger.info("model %s: probe succeeded, circuit closed", self.name or self.primary)
        self._state = BreakerState.CLOSED
        self._failures = 0

    def _fallback_request(self, request: ModelRequest) -> ModelRequest:
        if self.fallback_model is None or self.fallback_model == request.model:
            return request
        return msgspec.structs.replace(request, model=self.fallback_model)

    async def _fallback_or_fail(
        self, request: ModelRequest, cause: ModelError | None
    ) -> ModelReply:
        fallback = self.fallback
        if fallback is None:
            self.rejected += 1
            wait = max(0.0, self._open_until - self._clock())
            raise ProviderUnavailable(
                f"model {self.name or request.model!r}: circuit open after "
                f"{self.failure_threshold} consecutive failures; next probe in {wait:.1f} s"
            )
        self.fallback_calls += 1
        try:
            return await fallback.complete(self._fallback_request(request))
        except ModelError as exc:
            if cause is not None:
                raise exc from cause
            raise


class _FailoverStream(ReplyStream):
    def __init__(self, breaker: CircuitBreaker, request: ModelRequest) -> None:
        super().__init__()
        self._breaker = breaker
        self._request = request

    async def _run(self) -> AsyncGenerator[str, None]:
        breaker = self._breaker
        request = self._request
        if breaker._state is BreakerState.CLOSED:
            probe = False
        else:
            probe = breaker._claim_probe()
            if not probe:
                async for delta in self._from_fallback(None):
                    yield delta
                return
        inner = stream_reply(breaker.primary, request)
        started = False
        try:
            async with inner:
                async for delta in inner:
                    started = True
                    yield delta
        except _TRIPPING as exc:
            breaker._failed(probe, exc)
            if started or breaker.fallback is None:
                raise
            async for delta in self._from_fallback(exc):
                yield delta
            return
        except ModelError:
            breaker._succeeded(probe)
            raise
        except BaseException:
            if probe:
                breaker._probing = False
            raise
        breaker._succeeded(probe)
        self.reply = inner.reply

    async def _from_fallback(self, cause: ModelError | None) -> AsyncGenerator[str, None]:
        breaker = self._breaker
        if breaker.fallback is None:
            await breaker._fallback_or_fail(self._request, cause)  # raises
            return
        breaker.fallback_calls += 1
        inner = stream_reply(breaker.fallback, breaker._fallback_request(self._request))
        async with inner:
            async for delta in inner:
                yield delta
        self.reply = inner.reply
