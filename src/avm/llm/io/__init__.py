"""The I/O manager: what stands between ``RUN_MODEL`` and a model provider.

Every piece is a wrapper with the :class:`~avm.llm.provider.ModelProvider` shape (``complete``,
``aclose``, and ``stream`` where it applies), so they compose in any order and a test can use any
one alone. :class:`IOManager` composes them per model from an :class:`IOPolicy`:

- :mod:`~avm.llm.io.pacing`: rpm/tpm token buckets and a concurrency limit, admission by priority;
- :mod:`~avm.llm.io.breaker`: circuit breaking with failover to another model;
- :mod:`~avm.llm.io.cache`: replies to repeated deterministic requests, from memory;
- :mod:`~avm.llm.io.coalesce`: identical in-flight requests share one upstream call;
- :mod:`~avm.llm.io.batch_lane`: deferrable requests through the provider's batch API;
- :mod:`~avm.llm.io.prefix`: the shared system prompt and tools, encoded once and reused;
- :mod:`~avm.llm.io.http` and :mod:`~avm.llm.io.transport`: the lean HTTP/1.1 pool, retries and
  error translation that the HTTP providers send through.
"""

from avm.config import IOPolicy
from avm.llm.io.batch_lane import BatchAPI, BatchLane
from avm.llm.io.breaker import BreakerState, CircuitBreaker
from avm.llm.io.cache import ResponseCache
from avm.llm.io.coalesce import Coalescer
from avm.llm.io.keys import is_cacheable, request_key
from avm.llm.io.pacing import Pacer, estimate_request_tokens
from avm.llm.io.prefix import PREFIXES, PrefixTable, SharedPrefix
from avm.llm.io.stack import IOManager, build_stack
from avm.llm.io.streams import ReplyStream, StreamingProvider, stream_reply

__all__ = [
    "PREFIXES",
    "BatchAPI",
    "BatchLane",
    "BreakerState",
    "CircuitBreaker",
    "Coalescer",
    "IOManager",
    "IOPolicy",
    "Pacer",
    "PrefixTable",
    "ReplyStream",
    "ResponseCache",
    "SharedPrefix",
    "StreamingProvider",
    "build_stack",
    "estimate_request_tokens",
    "is_cacheable",
    "request_key",
    "stream_reply",
]
