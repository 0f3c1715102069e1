"""Splitting documents into searchable chunks, and text into the terms that index them.

Chunks are windows of ``size`` words overlapping by ``overlap`` words, cut from the original
text (whitespace and line breaks kept). The default, 200 words with 40 of overlap (about 1.2 KB
of English), is a passage: long enough for bm25 to have term statistics to work with, short
enough that a handful of hits fit a small model's context, and the overlap keeps a sentence
that straddles a cut findable from either side.

Terms are the same for indexing and querying, public or private: Unicode-normalised (NFKC),
case-folded runs of letters and digits.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_SIZE", "chunk_text", "terms"]

DEFAULT_SIZE = 200
DEFAULT_OVERLAP = 40
_WORD = re.compile(r"\S+")
_TERM = re.compile(r"[^\W_]+")
MAX_TERM = 64


def chunk_text(text: str, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP) -> list[str]:
    """Overlapping word windows of ``text``; a text of at most ``size`` words is one chunk."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"chunk size {size} and overlap {overlap}: need size > overlap >= 0")
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return []
    chunks: list[str] = []
    step = size - overlap
    start = 0
    while True:
        window = spans[start : start + size]
        chunks.append(text[window[0][0] : window[-1][1]])
        if start + size >= len(spans):
            return chunks
        start += step


def terms(text: str) -> list[str]:
    """The index terms of ``text``, in order, repeats kept (bm25 counts them)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [t[:MAX_TERM] for t in _TERM.findall(folded)]
