"""Waiting in tests for something the VM will do soon, without guessing at sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until"]


async def wait_until(
    predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Return as soon as ``predicate()`` holds; fail after ``timeout_s`` of real time.

    Checks once per event-loop iteration at first, then every millisecond, so it neither slows
    fast tests nor gives up on work that waits on a thread (the journal's fsync, say).
    """
    deadline = time.monotonic() + timeout_s
    spins = 0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.001)
