"""The I/O policy of one model: limits, cache, coalescing, fallback and batching settings.

This module owns :class:`IOPolicy`, the settings :mod:`avm.llm.io.stack` builds a model's
wrappers from. Its fields are meant to live on :class:`avm.config.ModelConfig` under the same
names; :meth:`IOPolicy.from_config` reads whichever of them a config has, so a config without
them gets the defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec

from avm.errors import ConfigError

__all__ = ["IOPolicy"]


class IOPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How calls to one model are paced, cached, shared, failed over and batched.

    Limits (None: no limit):
        rpm: requests per minute admitted upstream.
        tpm: tokens per minute (prompt estimate plus ``max_tokens``, trued up with usage).
        concurrency: requests in flight at once.
        burst_s: depth of the rpm/tpm buckets, in seconds of rate.
        tpm_refund: true the tpm bucket up to reported usage after each call (for providers
            whose limiter does, like Anthropic; OpenAI counts the admission estimate).

    Cache and coalescing (both apply to temperature-0 requests unless a request says
    otherwise):
        cache: keep replies and answer repeats from memory.
        cache_ttl_s: how long a cached reply is valid (None: until evicted).
        cache_size: how many replies are kept.
        coalesce: identical concurrent requests share one upstream call.

    Failover:
        fallback: name of another configured model that answers when this one fails.
        breaker_failures: consecutive service failures that open the circuit.
        breaker_cooldown_s: how long it stays open before a probe.

    Batch lane (for ``deferrable`` requests, on providers with a batch API):
        batch: send deferrable requests through the batch API.
        batch_max_size: requests per batch.
        batch_max_wait_s: how long a batch collects requests.
        batch_poll_s: how often a submitted batch is polled.
    """

    rpm: float | None = None
    tpm: float | None = None
    concurrency: int | None = None
    burst_s: float = 1.0
    tpm_refund: bool = False
    cache: bool = True
    cache_ttl_s: float | None = 3600.0
    cache_size: int = 10_000
    coalesce: bool = True
    fallback: str | None = None
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    batch: bool = True
    batch_max_size: int = 1000
    batch_max_wait_s: float = 60.0
    batch_poll_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.burst_s > 0:
            raise ConfigError(f"burst_s must be positive, got {self.burst_s!r}")
        if self.cache_ttl_s is not None and not self.cache_ttl_s > 0:
            raise ConfigError(f"cache_ttl_s must be positive or None, got {self.cache_ttl_s!r}")
        if self.cache_size < 1 or self.batch_max_size < 1 or self.breaker_failures < 1:
            raise ConfigError("cache_size, batch_max_size and breaker_failures must be >= 1")
        if self.breaker_cooldown_s < 0 or self.batch_max_wait_s < 0:
            raise ConfigError("breaker_cooldown_s and batch_max_wait_s must not be negative")
        if not self.batch_poll_s > 0:
            raise ConfigError(f"batch_poll_s must be positive, got {self.batch_poll_s!r}")

    @classmethod
    def from_config(cls, config: object, **overrides: Any) -> IOPolicy:
        """The policy named by ``config``'s fields of the same names, then ``overrides``."""
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            if hasattr(config, name):
                values[name] = getattr(config, name)
        values.update(overrides)
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"model I/O policy: {exc}") from None
