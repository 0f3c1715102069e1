"""Turning what an agent passes to ``RUN_MODEL`` into chat messages.

An agent may pass a string (one user message), or a list mixing loaded prompts (system
messages), strings (user messages), :class:`Message` values and ``{"role", "content"}`` dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from avm.errors import InvalidArgument
from avm.llm.prompts import Prompt
from avm.llm.types import Message

__all__ = ["to_messages"]

_ROLES = frozenset({"system", "user", "assistant", "tool"})


def to_messages(value: str | Sequence[Any]) -> tuple[Message, ...]:
    if isinstance(value, str):
        return (Message("user", value),)
    messages: list[Message] = []
    for index, item in enumerate(value):
        kind = type(item)
        # Exact types first: what agents pass is almost always one of these two.
        if kind is Message:
            messages.append(item)
        elif kind is str:
            messages.append(Message("user", item))
        elif isinstance(item, Message):
            messages.append(item)
        elif isinstance(item, Prompt):
            messages.append(Message("system", item.text))
        elif isinstance(item, str):
            messages.append(Message("user", item))
        elif isinstance(item, dict) and item.get("role") in _ROLES:
            if len(item) == 2 and type(content := item.get("content")) is str:
                # The usual {"role", "content"} dict, without msgspec.convert's generality.
                messages.append(Message(item["role"], content))
                continue
            try:
                messages.append(msgspec.convert(item, Message))
            except msgspec.ValidationError as exc:
                raise InvalidArgument(f"input[{index}] is not a valid message: {exc}") from None
        else:
            raise InvalidArgument(
                f"input[{index}] must be a str, Prompt, Message or role/content dict, "
                f"got {type(item).__name__}"
            )
    return tuple(messages)
