"""The identity of a model request: the BLAKE3 key that the response cache and coalescing share.

This module owns :func:`request_key` and :func:`is_cacheable`. A key covers everything that
decides the answer (model, every message, tools, sampling settings, stop sequences, the token
limit) and nothing that does not (priority, deferrable, cache hints). It is a hash tree: the
shared prefix's digest, computed once per prefix by :mod:`avm.llm.io.prefix`, followed by the
canonical msgpack encoding of the rest; so hashing a request with a 50 KB system prompt costs
what hashing its conversation costs.
"""

from __future__ import annotations

from typing import Final

import blake3
import msgspec

from avm.llm.io.prefix import PREFIXES
from avm.llm.types import ModelRequest

__all__ = ["is_cacheable", "request_key"]

_CANONICAL: Final = msgspec.msgpack.Encoder(order="deterministic")
_NO_PREFIX: Final = bytes(32)

# The last request keyed, and its key: the cache and the coalescer, stacked, key the same
# request object one after the other with no await in between, so this saves the second hash.
# Holding the request keeps its id from being reused while it is remembered.
_memo: list[object] = [None, b""]


def is_cacheable(request: ModelRequest) -> bool:
    """Whether a request may be answered from the cache or share an in-flight call.

    ``request.cache`` decides when set; otherwise only greedy (temperature 0) requests, whose
    answer does not depend on a random draw. Sampled requests each asked for their own draw.
    """
    cache = request.cache
    if cache is not None:
        return cache
    return request.temperature == 0.0


def request_key(request: ModelRequest) -> bytes:
    """A 16-byte BLAKE3 key of the request's content (see the module docstring)."""
    memo = _memo
    if memo[0] is request:
        key = memo[1]
        assert isinstance(key, bytes)
        return key
    prefix = PREFIXES.of(request)
    if prefix is None:
        digest = _NO_PREFIX
        rest = request.messages
    else:
        digest = prefix.digest
        rest = request.messages[prefix.count :]
    encoded = _CANONICAL.encode(
        (
            request.model,
            rest,
            request.max_tokens,
            request.temperature,
            request.top_p,
            request.stop,
        )
    )
    key = blake3.blake3(digest + encoded).digest(16)
    memo[0] = request
    memo[1] = key
    return key
