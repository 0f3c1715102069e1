"""One timer structure for the whole VM.

A thousand agents sleeping do not make a thousand sleeping tasks or loop timers: every deadline
(``WAIT``, ``SCHEDULE_TASK`` ticks, message and reply timeouts) goes into one heap, and exactly
one clock callback is armed, for the earliest deadline. When it fires, every due timer runs in
deadline order. Cancelling a timer only marks it; the heap drops it when it reaches the top.

A passivated agent re-activated by its own deadline re-issues the instruction it was waiting
in; :meth:`TimerService.resume_at` makes the first timer that instruction arms keep the deadline
it had before, so a ``WAIT(60)`` woken after 60 s does not wait another 60.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from avm._core.clock import Clock, TimerHandle

if TYPE_CHECKING:
    from avm._core.process import AgentProcess

__all__ = ["Timer", "TimerService"]


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, callback: Callable[[], None], deadline: float) -> None:
        self.callback = callback
        self.cancelled = False
        self.deadline = deadline

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
        # Re-activated agents' tasks -> (agent, step of the instruction, deadline to keep).
        self._resume: dict[asyncio.Task[Any], tuple[AgentProcess, int, float]] = {}

    def __len__(self) -> int:
        return len(self._heap)

    def now(self) -> float:
        return self.clock.monotonic()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> Timer:
        if self._resume:
            deadline = self._resumed_deadline(deadline)
        timer = Timer(callback, deadline)
        heapq.heappush(self._heap, (deadline, next(self._seq), timer))
        if deadline < self._armed_at:
            self._arm(deadline)
        return timer

    def resume_at(
        self, task: asyncio.Task[Any], proc: AgentProcess, step: int, deadline: float
    ) -> None:
        """The first timer ``task`` arms while ``proc`` performs ``step`` ends at ``deadline``."""
        self._resume[task] = (proc, step, deadline)

    def forget_resume(self, task: asyncio.Task[Any]) -> None:
        self._resume.pop(task, None)

    def _resumed_deadline(self, deadline: float) -> float:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: not an agent's instruction
            return deadline
        if task is None:
            return deadline
        found = self._resume.pop(task, None)
        if found is None:
            return deadline
        proc, step, kept = found
        # proc.step is one past the instruction being performed.
        return kept if proc.step == step + 1 else deadline

    def arm_sleep(self, deadline: float) -> tuple[asyncio.Future[None], Timer] | None:
        """A future the timer service completes at ``deadline``, and its timer; None if due.

        A waiting instruction parks on the future itself, and cancels the timer
        (``timer.cancel()``) if it stops waiting early.
        """
        if deadline <= self.clock.monotonic():
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return future, self.call_at(deadline, functools.partial(_wake, future))

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
        self._resume.clear()
