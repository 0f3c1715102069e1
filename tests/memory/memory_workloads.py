"""Test content that looks like a fleet's: chat messages with shared structure, unique values."""

from __future__ import annotations

import random

_TEXT = (
    "the market opened higher while volume stayed thin and analysts expect the central bank "
    "to hold rates steady through the quarter despite pressure from energy prices portfolio "
    "risk position exposure hedge order filled rejected pending tool call result summary"
)
_WORDS = _TEXT.split()


def chat_message(index: int) -> bytes:
    """A JSON chat turn of 200-900 bytes, different for every ``index``, alike in shape."""
    rng = random.Random(index)
    role = "user" if index % 2 else "assistant"
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(30, 140)))
    return (
        f'{{"role": "{role}", "content": "{words}", "agent": "agent-{index % 9973}", '
        f'"price": {rng.uniform(1, 500):.2f}, "step": {index}}}'
    ).encode()
