"""Time as the VM sees it.

Every timer in the VM goes through a :class:`Clock`, so tests can swap real time for
:class:`avm.testing.MockClock` and run ``WAIT`` or ``SCHEDULE_TASK`` without sleeping.
``monotonic()`` drives timers; ``wall()`` stamps journal entries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once ``monotonic()`` reaches ``when``."""
        ...


class SystemClock:
    """Real time, on the running event loop's clock."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def monotonic(self) -> float:
        return self._running_loop().time()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return self._running_loop().call_at(when, callback)
