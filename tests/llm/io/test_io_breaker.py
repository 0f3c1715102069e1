"""CircuitBreaker: failover to a fallback model, open after K failures, half-open after a pause."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from avm.errors import ModelError, ProviderUnavailable
from avm.llm.io.breaker import BreakerState, CircuitBreaker
from avm.llm.providers.openai_compat import OpenAICompatProvider
from avm.llm.types import Message, ModelRequest
from avm.testing.fake_openai import FakeOpenAIServer


def ask(text: str = "hello") -> ModelRequest:
    return ModelRequest(model="primary-model", messages=(Message("user", text),))


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(responder=lambda body: f"backup {body['model']}") as srv:
        yield srv


@pytest.fixture
async def backup_provider(backup: FakeOpenAIServer) -> AsyncIterator[OpenAICompatProvider]:
    p = OpenAICompatProvider(backup.base_url, max_retries=0)
    yield p
    await p.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_failing_primary_is_answered_by_the_fallback_model(
    server: FakeOpenAIServer,
    provider: OpenAICompatProvider,
    backup: FakeOpenAIServer,
    backup_provider: OpenAICompatProvider,
) -> None:
    breaker = CircuitBreaker(provider, fallback=backup_provider, fallback_model="backup-model")
    server.fail_next(1, status=503)
    reply = await breaker.complete(ask())
    assert reply.text == "backup backup-model"
    assert server.completion_count == 1
    assert backup.requests[-1]["model"] == "backup-model"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 1
    # The primary is still tried first, and a success resets the count.
    assert (await breaker.complete(ask())).text == "echo: hello"
    assert breaker.failures == 0


async def test_opens_after_k_failures_and_stops_calling_the_primary(
    server: FakeOpenAIServer,
    provider: OpenAICompatProvider,
    backup: FakeOpenAIServer,
    backup_provider: OpenAICompatProvider,
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        provider,
        fallback=backup_provider,
        fallback_model="backup-model",
        failure_threshold=3,
        cooldown_s=10.0,
        clock=clock,
    )
    server.fail_next(100, status=500)
    for _ in range(3):
        assert (await breaker.complete(ask())).text == "backup backup-model"
    assert breaker.state is BreakerState.OPEN
    assert server.completion_count == 3

    for _ in range(5):
        assert (await breaker.complete(ask())).text == "backup backup-model"
    assert server.completion_count == 3  # open: the primary is left alone
    assert backup.completion_count == 8

    clock.now += 10.0
    assert breaker.state.value == "half_open"
    await breaker.complete(ask())  # the probe fails (the server still answers 500)
    assert server.completion_count == 4
    assert breaker.state is BreakerState.OPEN

    server.reset()
    clock.now += 10.0
    assert (await breaker.complete(ask())).text == "echo: hello"  # the probe succeeds
    assert breaker.state.value == "closed"
    assert (await breaker.complete(ask())).text == "echo: hello"
    assert server.completion_count == 2


async def test_without_a_fallback_an_open_circuit_fails_fast(
    server: FakeOpenAIServer, provider: OpenAICompatProvider
) -> None:
    clock = Clock()
    breaker = CircuitBreaker(provider, failure_threshold=2, cooldown_s=5.0, clock=clock)
    server.fail_next(2, status=502)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable, match="502"):
            await breaker.complete(ask())
    with pytest.raises(ProviderUnavailable, match="circuit open"):
        await breaker.complete(ask())
    assert server.completion_count == 2
    assert breaker.rejected == 1
    clock.now += 5.0
    assert (await breaker.complete(ask())).text == "echo: hello"


async def test_request_errors_do_not_trip_it(
    server: FakeOpenAIServer,
    provider: OpenAICompatProvider,
    backup_provider: OpenAICompatProvider,
) -> None:
    breaker = CircuitBreaker(provider, fallback=backup_provider, failure_threshold=1)
    server.fail_next(3, status=400, message="bad max_tokens")
    for _ in range(3):
        with pytest.raises(ModelError, match="bad max_tokens"):
            await breaker.complete(ask())
    assert breaker.state is BreakerState.CLOSED


async def test_fallback_failure_is_raised_with_the_primary_failure_as_cause(
    server: FakeOpenAIServer,
    provider: OpenAICompatProvider,
    backup: FakeOpenAIServer,
    backup_provider: OpenAICompatProvider,
) -> None:
    breaker = CircuitBreaker(provider, fallback=backup_provider)
    server.fail_next(1, status=503, message="primary down")
    backup.fail_next(1, status=504, message="backup down")
    with pytest.raises(ProviderUnavailable, match="backup down") as caught:
        await breaker.complete(ask())
    assert "primary down" in str(caught.value.__cause__)


async def test_streams_fail_over_before_the_first_delta(
    server: FakeOpenAIServer,
    provider: OpenAICompatProvider,
    backup_provider: OpenAICompatProvider,
) -> None:
    breaker = CircuitBreaker(provider, fallback=backup_provider, fallback_model="backup-model")
    server.fail_next(1, status=503)
    stream = breaker.stream(ask())
    text = "".join([d async for d in stream])
    assert text == "backup backup-model"
    assert stream.reply is not None
    assert stream.reply.text == text
    assert breaker.failures == 1
    stream = breaker.stream(ask("streamed from the primary"))
    assert "".join([d async for d in stream]) == "echo: streamed from the primary"
    assert breaker.failures == 0
