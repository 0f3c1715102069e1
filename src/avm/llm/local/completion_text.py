"""The text of one completion as its tokens arrive: UTF-8 reassembly, stop strings, hold-back.

A token is a few bytes, not necessarily a whole character (emoji and accented letters are often
split across tokens), and a stop string may span several tokens. :class:`CompletionText` turns
the byte pieces of sampled tokens into text, cuts the text at the first stop string, and tells a
streaming caller how much of the text is final: the tail that could still turn out to be the
start of a stop string is held back until the next token decides it.
"""

from __future__ import annotations

import codecs

__all__ = ["CompletionText"]


class CompletionText:
    """Accumulates one completion's text; ``stopped`` once a stop string was seen."""

    __slots__ = ("_decoder", "_emitted", "_longest_stop", "_scan_from", "_stops", "stopped", "text")

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._stops = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        # "replace" so that a model emitting invalid UTF-8 yields U+FFFD instead of an error.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._scan_from = 0
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def feed(self, piece: bytes) -> None:
        """Append one token's bytes; sets :attr:`stopped` and trims at a stop string."""
        if self.stopped:
            return
        chunk = self._decoder.decode(piece)
        if not chunk:
            return
        self.text += chunk
        if not self._stops:
            return
        # Only the new text, plus enough before it to complete a stop string that straddles
        # the boundary, needs scanning.
        start = max(0, self._scan_from - self._longest_stop + 1)
        cut = -1
        for stop in self._stops:
            index = self.text.find(stop, start)
            if index != -1 and (cut == -1 or index < cut):
                cut = index
        if cut != -1:
            self.text = self.text[:cut]
            self.stopped = True
        self._scan_from = len(self.text)

    def finish(self) -> None:
        """No more tokens: flush a trailing partial character (as U+FFFD)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)

    def take_delta(self, *, final: bool = False) -> str:
        """Text not handed out before and certain not to be cut by a stop string.

        With ``final`` (the completion has ended) everything that remains is handed out.
        """
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        if end <= self._emitted:
            return ""
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        text = self.text
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
