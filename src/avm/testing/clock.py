"""A clock for tests: time moves only when the test (or autojump) says so.

With ``autojump=True`` the clock jumps straight to the next deadline whenever the event loop has
had a chance to run everything that was ready, so a test of a 300-second schedule takes
milliseconds; without it, ``advance(seconds)`` moves time by hand.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["MockClock"]

# How many loop iterations to let pass before concluding everything runnable has run. Agents
# woken by a timer typically need a few hops (timer -> future -> task -> next instruction).
_SETTLE_ITERATIONS = 20


class _Handle:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class MockClock:
    def __init__(self, *, start: float = 0.0, wall_start: float = 1_700_000_000.0,
                 autojump: bool = False) -> None:  # fmt: skip
        self._now = start
        self._wall_offset = wall_start - start
        self._pending: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()
        self.autojump = autojump
        self._jumper: asyncio.Task[None] | None = None

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(callback)
        heapq.heappush(self._pending, (when, next(self._seq), handle))
        if self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = asyncio.get_running_loop().create_task(self._autojump())
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward, running every callback that falls due, in order."""
        target = self._now + seconds
        while self._pending and self._pending[0][0] <= target:
            when, _, handle = heapq.heappop(self._pending)
            self._now = max(self._now, when)
            if not handle.cancelled:
                handle.callback()
        self._now = target

    def next_deadline(self) -> float | None:
        while self._pending and self._pending[0][2].cancelled:
            heapq.heappop(self._pending)
        return self._pending[0][0] if self._pending else None

    async def _autojump(self) -> None:
        while True:
            for _ in range(_SETTLE_ITERATIONS):
                await asyncio.sleep(0)
            deadline = self.next_deadline()
            if deadline is None:
                return
            self.advance(max(0.0, deadline - self._now))
