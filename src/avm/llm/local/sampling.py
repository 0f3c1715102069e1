"""Choosing the next token of one sequence from its logits: greedy, or temperature + top-p.

This module owns :class:`TokenSampler`, one per generating sequence, so that each request's
random stream depends only on its own seed and not on which other requests shared its batch:
the same request with the same seed gives the same text whether it ran alone or among 31
others (up to the floating-point noise of batched kernels, see the engine).

Sampling runs on numpy views of llama.cpp's logits buffer (no copy into Python floats): a
vocabulary is ~49k entries, and a Python loop over it would cost milliseconds per token.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["TokenSampler"]

# Top-p first looks at this many of the most likely tokens and widens (x4) only when their
# probability mass falls short of top_p; a full sort of the vocabulary is rarely needed.
_FIRST_CANDIDATES: Final = 64


class TokenSampler:
    """Picks tokens for one sequence.

    Args:
        temperature: 0 (or less) means greedy: always the most likely token, no randomness.
            Otherwise logits are divided by it before the softmax.
        top_p: nucleus sampling: only the smallest set of most likely tokens whose probability
            adds up to at least ``top_p`` can be drawn. 1.0 keeps the whole vocabulary.
        seed: seeds this sequence's own random generator.
    """

    __slots__ = ("_rng", "temperature", "top_p")

    def __init__(self, *, temperature: float, top_p: float, seed: int) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = max(0.0, temperature)
        self.top_p = top_p
        self._rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sample(self, logits: npt.NDArray[np.float32]) -> int:
        """The next token id, given the sequence's logits over the vocabulary."""
        if self.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if self.top_p >= 1.0:
            cumulative = np.cumsum(probs)
            index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1]))
            return min(index, len(probs) - 1)
        return self._sample_nucleus(probs)

    def _sample_nucleus(self, probs: npt.NDArray[np.float64]) -> int:
        vocab = len(probs)
        k = min(_FIRST_CANDIDATES, vocab)
        while True:
            candidates = np.argpartition(-probs, k - 1)[:k] if k < vocab else np.arange(vocab)
            if k >= vocab or probs[candidates].sum() >= self.top_p:
                break
            k = min(k * 4, vocab)
        # Sorted by token id first, then stably by probability, so that ties break the same
        # way every time whatever order argpartition left them in.
        candidates = np.sort(candidates)
        candidates = candidates[np.argsort(-probs[candidates], kind="stable")]
        cumulative = np.cumsum(probs[candidates])
        keep = int(np.searchsorted(cumulative, self.top_p)) + 1
        kept = cumulative[:keep]
        index = int(np.searchsorted(kept, self._rng.random() * kept[-1]))
        return int(candidates[min(index, keep - 1)])
