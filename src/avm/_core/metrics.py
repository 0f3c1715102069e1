"""Live rates for the dashboard and ``vm.stats()``: events per second over a sliding window."""

from __future__ import annotations

__all__ = ["RateMeter"]


class RateMeter:
    """Counts events (and an optional value such as latency) in one-second buckets.

    ``rate()`` is events per second over the last ``window_s`` whole seconds, and ``mean()`` the
    average value over the same window: O(window) to read, O(1) to record.
    """

    __slots__ = ("_counts", "_stamps", "_sums", "_window", "total")

    def __init__(self, window_s: int = 5) -> None:
        self._window = window_s
        self._counts = [0] * window_s
        self._sums = [0.0] * window_s
        self._stamps = [-1] * window_s
        self.total = 0

    def record(self, now: float, value: float = 0.0) -> None:
        second = int(now)
        slot = second % self._window
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            self._counts[slot] = 0
            self._sums[slot] = 0.0
        self._counts[slot] += 1
        self._sums[slot] += value
        self.total += 1

    def _live(self, now: float) -> list[int]:
        # The current second is still filling; rate over the last complete seconds.
        current = int(now)
        oldest = current - self._window
        return [i for i, s in enumerate(self._stamps) if oldest <= s < current]

    def rate(self, now: float) -> float:
        live = self._live(now)
        return sum(self._counts[i] for i in live) / self._window

    def mean(self, now: float) -> float:
        live = self._live(now)
        count = sum(self._counts[i] for i in live)
        return sum(self._sums[i] for i in live) / count if count else 0.0
