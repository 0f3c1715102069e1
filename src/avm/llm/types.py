"""The values that cross the model boundary: messages, requests, replies and token usage.

They are msgspec structs so that a request is encoded to provider JSON without an intermediate
dict, and a reply decodes straight from the wire.

All but :class:`ToolSpec` are ``gc=False``: the cycle collector does not track them. Every model
call makes several, and a fleet keeps thousands of them alive while it waits on its models (and
the response cache keeps replies), so tracking them made the collector's passes a tenth of the
client's CPU per call. Untracked is safe because none can be part of a reference cycle: their
fields are strings, numbers and tuples of other such structs, and the one open-ended value a
request reaches (a tool spec's JSON Schema ``parameters`` dict, behind the still tracked
:class:`ToolSpec`) is plain data that never refers back to a request.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Message",
    "ModelReply",
    "ModelRequest",
    "PrefixHint",
    "Role",
    "ToolCall",
    "ToolSpec",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """A model's request to call a tool: ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str


class Message(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One chat message."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool offered to the model: its name, what it does, and a JSON Schema of its input."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class PrefixHint(msgspec.Struct, frozen=True, gc=False):
    """Which leading part of a request is shared, as the code that built it knows.

    ``key`` names that part's content (a conversation's ``prefix_key``: the same key means the
    same tools and system text) and ``messages`` counts the leading messages in it; the
    request's tools always belong to it. Without a hint the I/O layer takes every leading
    plain system message, which would put a per-agent prompt into the shared part.
    """

    key: bytes
    messages: int


class ModelRequest(msgspec.Struct, frozen=True, gc=False):
    """One completion request, already resolved to a provider's own model name.

    The fields after ``tools`` are routing hints for the I/O wrappers (:mod:`avm.llm.io`), not
    part of what is asked of the model: they never reach the wire and do not change the cache
    key. ``priority`` orders admission when a model's capacity is short (0 interactive,
    1 normal, 2 background); ``deferrable`` lets the call wait for the provider's batch API
    (cheaper, minutes to hours); ``cache`` forces the response cache on or off (None: on for
    temperature 0); ``prefix`` says which leading part is shared (see :class:`PrefixHint`).
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    priority: int = 1
    deferrable: bool = False
    cache: bool | None = None
    prefix: PrefixHint | None = None


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Tokens a call consumed, as the provider counted them.

    ``tokens_in`` counts every prompt token; ``cached_tokens`` is the part of it read from the
    provider's prompt cache and ``cache_write_tokens`` the part written to it (Anthropic bills
    both differently from plain input).
    """

    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class ModelReply(msgspec.Struct, frozen=True, gc=False):
    """What ``RUN_MODEL`` returns to an agent; ``str(reply)`` is its text."""

    text: str
    model: str
    usage: Usage = Usage()
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "stop"

    def __str__(self) -> str:
        return self.text
