"""One timer structure for the whole VM.

A thousand agents sleeping do not make a thousand sleeping tasks or loop timers: every deadline
(``WAIT``, ``SCHEDULE_TASK`` ticks, message and reply timeouts) goes into one heap, and exactly
one clock callback is armed, for the earliest deadline. When it fires, every due timer runs in
deadline order. Cancelling a timer only marks it; the heap drops it when it reaches the top.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from avm._core.clock import Clock, TimerHandle

__all__ = ["Timer", "TimerService"]


class Timer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TimerService:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._armed: TimerHandle | None = None
        self._armed_at = float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def now(self) -> float:
        return self.clock.monotonic()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(callback)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        if deadline < self._armed_at:
            self._arm(deadline)
        return timer

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.clock.monotonic():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_at(deadline, lambda: _wake(future))
        try:
            await future
        finally:
            timer.cancelled = True

    async def sleep(self, delay_s: float) -> None:
        await self.sleep_until(self.clock.monotonic() + delay_s)

    def next_deadline(self) -> float | None:
        self._drop_cancelled()
        return self._heap[0][0] if self._heap else None

    def _arm(self, deadline: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = deadline
        self._armed = self.clock.call_at(deadline, self._fire)

    def _drop_cancelled(self) -> None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)

    def _fire(self) -> None:
        self._armed, self._armed_at = None, float("inf")
        now = self.clock.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        self._drop_cancelled()
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        self._heap.clear()
