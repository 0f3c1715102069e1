"""What the fake model servers answer with: scripted replies, responders and token counts.

This module owns the protocol-neutral side of a fake reply. A test scripts plain text, a
:class:`FakeToolCall` or a full :class:`FakeReply`; each fake server (OpenAI-compatible,
Anthropic) then renders it in its own wire format and counts its tokens with
:func:`count_tokens`, so the two fakes agree on what "the same reply" costs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

__all__ = [
    "FakeReply",
    "FakeReplyLike",
    "FakeToolCall",
    "Responder",
    "as_reply",
    "count_tokens",
]


def count_tokens(text: str) -> int:
    """Estimate tokens as ``ceil(utf8_bytes / 4)``, the usual rule of thumb for English text."""
    # isascii() is a flag check, so the common case never allocates an encoded copy.
    n = len(text) if text.isascii() else len(text.encode())
    return (n + 3) // 4


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    """A scripted tool call: the model asks to call ``name`` with JSON ``arguments``.

    ``arguments`` may be a mapping (encoded to JSON) or JSON text used as is. ``id`` defaults to a
    deterministic id assigned by the server (``call_<n>``, or ``toolu_<n>`` from Anthropic's).
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the JSON text that goes on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return msgspec.json.encode(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class FakeReply:
    """A full scripted reply: text, tool calls, or both.

    ``finish_reason`` defaults to what the protocol says for the reply (OpenAI: ``"tool_calls"``
    when there are tool calls, else ``"stop"``, ``"length"`` when the server truncates the text
    to ``max_tokens``; Anthropic: ``"tool_use"``, ``"end_turn"``, ``"max_tokens"``).
    """

    text: str = ""
    tool_calls: tuple[FakeToolCall, ...] = ()
    finish_reason: str | None = None


FakeReplyLike = str | FakeToolCall | FakeReply
"""Anything a script or responder may return: plain text, one tool call, or a full reply."""

Responder = Callable[[dict[str, Any]], FakeReplyLike]
"""A synchronous callable that gets the decoded request body and returns the reply."""


def as_reply(value: FakeReplyLike) -> FakeReply:
    """``value`` as a full :class:`FakeReply`; anything else is a :class:`TypeError`."""
    if isinstance(value, FakeReply):
        return value
    if isinstance(value, FakeToolCall):
        return FakeReply(tool_calls=(value,))
    if isinstance(value, str):
        return FakeReply(text=value)
    raise TypeError(
        f"a fake reply must be str, FakeToolCall or FakeReply, not {type(value).__name__}"
    )
