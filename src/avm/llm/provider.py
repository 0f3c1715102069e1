"""The protocol every model backend implements.

A provider owns its authenticated client and connection pool, turns a :class:`ModelRequest` into
one call to its service, and translates that service's failures into :mod:`avm.errors`
(``RateLimited``, ``ModelTimeout``, ``ProviderUnavailable``, ``ModelError``). Cross-cutting
behaviour (retries, pacing, caching, metering) wraps a provider and keeps this same shape.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from avm.llm.types import ModelReply, ModelRequest

__all__ = ["ModelProvider"]


@runtime_checkable
class ModelProvider(Protocol):
    """A backend that answers completion requests."""

    async def complete(self, request: ModelRequest) -> ModelReply:
        """Answer one request; raise only :class:`avm.errors.ModelError` subclasses."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...
