"""Token counts before a provider reports them.

A byte-pair token is at least one byte, so ``upper_bound_tokens`` (the UTF-8 length) never
undercounts: the VM reserves gas with it, so an agent cannot overspend on a model call. The
estimate (about four bytes a token for English under the common tokenizers) is what
``LOAD_PROMPT`` charges for and dashboards show.
"""

from __future__ import annotations

__all__ = ["estimate_tokens", "upper_bound_tokens"]


def estimate_tokens(text: str) -> int:
    return max(1, (len(text.encode()) + 3) // 4) if text else 0


def upper_bound_tokens(text: str) -> int:
    # An ASCII string's length is its UTF-8 size; CPython records ASCII-ness on the object,
    # so this skips encoding (a 50 KB copy for a system prompt) in the common case.
    if text.isascii():
        return len(text)
    return len(text.encode())
