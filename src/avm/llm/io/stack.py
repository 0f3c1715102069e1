"""Composing a model's I/O wrappers from its policy: the I/O manager.

This module owns :func:`build_stack` (one provider wrapped per an :class:`IOPolicy`) and
:class:`IOManager` (the stacks of every configured model, built on first use and shared the way
the upstream limits are shared). A stack, outermost first::

    CircuitBreaker ─► ResponseCache ─► Coalescer ─► BatchLane ─► Pacer ─► provider
      failover to       repeats from     identical    deferrable   rpm, tpm,    HTTP,
      the fallback's    memory           in-flight    requests to  concurrency  retries
      stack                              calls share  the batch    by priority
                                         one          API

Why this order: a cache hit or a coalesced follower costs no upstream capacity, so both sit
outside the pacer; deferrable requests are paced by the batch API, not by the live limits, so
the lane sits outside the pacer too; the breaker wraps everything so that it judges the model's
health by what callers actually got, and fails over to the fallback model's own stack (without
*its* breaker, so fallbacks do not chain). Layers a policy does not ask for are left out, so an
unconfigured model pays only for the cache, the coalescer and the breaker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from avm.config import IOPolicy
from avm.errors import ConfigError
from avm.llm.io.batch_lane import BatchAPI, BatchLane
from avm.llm.io.breaker import CircuitBreaker
from avm.llm.io.cache import ResponseCache
from avm.llm.io.coalesce import Coalescer
from avm.llm.io.pacing import Pacer
from avm.llm.provider import ModelProvider

__all__ = ["IOManager", "build_stack"]

logger = logging.getLogger(__name__)


def _core_stack(
    provider: ModelProvider, policy: IOPolicy, *, name: str, pacer: Pacer | None
) -> ModelProvider:
    """Cache, coalescer, batch lane and pacer around ``provider`` (no breaker)."""
    stack: ModelProvider = provider
    if pacer is None and (
        policy.rpm is not None or policy.tpm is not None or policy.concurrency is not None
    ):
        pacer = Pacer(
            provider,
            concurrency=policy.concurrency,
            rpm=policy.rpm,
            tpm=policy.tpm,
            burst_s=policy.burst_s,
            tpm_refund=policy.tpm_refund,
            name=name,
        )
    if pacer is not None:
        stack = pacer
    if policy.batch and isinstance(provider, BatchAPI):
        stack = BatchLane(
            stack,
            batch_api=provider,
            max_batch=policy.batch_max_size,
            max_wait_s=policy.batch_max_wait_s,
            poll_s=policy.batch_poll_s,
        )
    if policy.coalesce:
        stack = Coalescer(stack)
    if policy.cache:
        stack = ResponseCache(stack, ttl_s=policy.cache_ttl_s, max_entries=policy.cache_size)
    return stack


def build_stack(
    provider: ModelProvider,
    policy: IOPolicy | None = None,
    *,
    name: str = "",
    fallback: ModelProvider | None = None,
    fallback_model: str | None = None,
) -> CircuitBreaker:
    """Wrap one provider per ``policy`` (defaults: cache, coalescing, breaker, batch lane).

    ``fallback`` is the stack to fail over to and ``fallback_model`` its model name; use
    :class:`IOManager` to have both resolved from configured model names.
    """
    policy = policy or IOPolicy()
    core = _core_stack(provider, policy, name=name, pacer=None)
    return CircuitBreaker(
        core,
        fallback=fallback,
        fallback_model=fallback_model,
        failure_threshold=policy.breaker_failures,
        cooldown_s=policy.breaker_cooldown_s,
        name=name,
    )


class _Model:
    __slots__ = ("core", "policy", "top")

    def __init__(self, policy: IOPolicy, core: ModelProvider) -> None:
        self.policy = policy
        self.core = core
        self.top: CircuitBreaker | None = None


class IOManager:
    """The wrapped providers of every model, by the names agents use.

    Args:
        config_of: the :class:`~avm.config.ModelConfig` of a model name (the linker's
            ``config``); raises for unknown names.
        provider_of: the raw provider of a model name (the linker's shared, per-endpoint
            provider).
        policy_of: the :class:`IOPolicy` of a model name; by default
            :meth:`IOPolicy.from_config` of its config.

    Models with the same provider, endpoint and upstream model share one :class:`Pacer`,
    because the provider enforces its limits per upstream model, whatever we call it.
    """

    def __init__(
        self,
        config_of: Callable[[str], Any],
        provider_of: Callable[[str], ModelProvider],
        *,
        policy_of: Callable[[str], IOPolicy] | None = None,
    ) -> None:
        self._config_of = config_of
        self._provider_of = provider_of
        self._policy_of = policy_of or (lambda name: IOPolicy.from_config(config_of(name)))
        self._models: dict[str, _Model] = {}
        self._pacers: dict[tuple[Any, ...], Pacer] = {}

    def provider(self, name: str) -> ModelProvider:
        """The full stack of model ``name``: what ``RUN_MODEL`` should call."""
        model = self._model(name)
        top = model.top
        if top is None:
            policy = model.policy
            fallback = fallback_model = None
            if policy.fallback is not None:
                if policy.fallback == name:
                    raise ConfigError(f"model {name!r} names itself as its fallback")
                fallback = self._model(policy.fallback).core
                fallback_model = getattr(self._config_of(policy.fallback), "model", None)
            top = model.top = CircuitBreaker(
                model.core,
                fallback=fallback,
                fallback_model=fallback_model,
                failure_threshold=policy.breaker_failures,
                cooldown_s=policy.breaker_cooldown_s,
                name=name,
            )
        return top

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is not None:
            return model
        config = self._config_of(name)
        policy = self._policy_of(name)
        raw = self._provider_of(name)
        pacer = None
        if policy.rpm is not None or policy.tpm is not None or policy.concurrency is not None:
            key = (
                getattr(config, "provider", None),
                getattr(config, "base_url", None),
                getattr(config, "model", name),
            )
            pacer = self._pacers.get(key)
            if pacer is None:
                pacer = self._pacers[key] = Pacer(
                    raw,
                    concurrency=policy.concurrency,
                    rpm=policy.rpm,
                    tpm=policy.tpm,
                    burst_s=policy.burst_s,
                    tpm_refund=policy.tpm_refund,
                    name=name,
                )
            elif (pacer.rpm, pacer.tpm, pacer.concurrency) != (
                policy.rpm,
                policy.tpm,
                policy.concurrency,
            ):
                logger.warning(
                    "model %s shares upstream limits with model %s; using the latter's",
                    name,
                    pacer.name,
                )
        model = self._models[name] = _Model(
            policy, _core_stack(raw, policy, name=name, pacer=pacer)
        )
        return model

    def forget(self, name: str) -> None:
        """Drop a model's stack (after its configuration changed); its next use rebuilds it."""
        self._models.pop(name, None)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per model: what its cache, coalescer, pacer, batch lane and breaker did so far."""
        out: dict[str, dict[str, Any]] = {}
        for name, model in self._models.items():
            row: dict[str, Any] = {}
            layer: Any = model.top or model.core
            while layer is not None:
                if isinstance(layer, CircuitBreaker):
                    row["breaker"] = layer.state.value
                    row["fallback_calls"] = layer.fallback_calls
                    layer = layer.primary
                    continue
                if isinstance(layer, ResponseCache):
                    row.update(cache_hits=layer.hits, cache_misses=layer.misses)
                    row["cache_entries"] = len(layer)
                elif isinstance(layer, Coalescer):
                    row.update(coalesced=layer.joined, upstream_calls=layer.calls)
                elif isinstance(layer, BatchLane):
                    row.update(batches=layer.batches, deferred=layer.deferred)
                    row["batch_waiting"] = layer.waiting
                elif isinstance(layer, Pacer):
                    row.update(active=layer.active, queued=layer.queued, delayed=layer.delayed)
                layer = getattr(layer, "inner", None)
            out[name] = row
        return out

    async def drain(self) -> None:
        """Submit every collected batch and wait for the submitted ones to finish."""
        for model in list(self._models.values()):
            layer: Any = model.core
            while layer is not None:
                if isinstance(layer, BatchLane):
                    await layer.drain()
                layer = getattr(layer, "inner", None)

    async def aclose(self) -> None:
        """Close every stack (and, through them, the raw providers, which tolerate it)."""
        models, self._models = list(self._models.values()), {}
        self._pacers.clear()
        for model in models:
            await (model.top or model.core).aclose()
