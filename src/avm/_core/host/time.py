"""Time and tasks: WAIT, WAIT_FOR_RESPONSE, SCHEDULE_TASK, and the NOW and RANDOM intrinsics.

Schedules run on a wall-clock grid (``grid_start + n · interval``) so that a recovered agent, in
another process with another monotonic clock, keeps the same grid. ``SCHEDULE_TASK`` journals
the grid's start with each tick; replay rebuilds the schedule from it.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec

from avm._core.host import Host, free, passthrough
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime

__all__ = ["HOSTS", "ScheduleTick"]

_random = random.SystemRandom()


class ScheduleTick(msgspec.Struct, frozen=True, array_like=True):
    """What SCHEDULE_TASK journals: the tick number and the wall time its grid started."""

    tick: int
    grid_start: float


async def _wait(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    await rt.timers.sleep(float(args[0]))
    return None, 0


async def _wait_for_response(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int
) -> Any:
    task_id, timeout_s = args
    replies = await rt.bus.wait_replies(task_id, 1, timeout_s)
    return replies[0].data, 0


async def _schedule_task(rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int) -> Any:
    """Tick 0 fires at once; tick n at grid_start + n·interval, so ticks never drift.

    An agent that falls more than one interval behind skips the missed ticks rather than firing
    them in a burst; the tick number it gets says how many intervals have passed.
    """
    task_id, interval = args[0], float(args[1])
    schedules = proc.schedules
    if schedules is None:
        schedules = proc.schedules = {}
    now = rt.timers.clock.wall()
    entry = schedules.get(task_id)
    if entry is None or entry[1] != interval:
        schedules[task_id] = (now, interval, 0)
        return ScheduleTick(0, now), 0
    start, _, tick = entry
    tick += 1
    if start + tick * interval < now - interval:
        tick = math.floor((now - start) / interval)
    schedules[task_id] = (start, interval, tick)
    await rt.timers.sleep(start + tick * interval - now)
    return ScheduleTick(tick, start), 0


def restore_schedule(proc: AgentProcess, args: tuple[Any, ...], tick: ScheduleTick) -> None:
    """Replay: rebuild the schedule state a journaled SCHEDULE_TASK left behind."""
    if proc.schedules is None:
        proc.schedules = {}
    proc.schedules[args[0]] = (tick.grid_start, float(args[1]), tick.tick)


async def _now(rt: Runtime, proc: AgentProcess, args: Any, step: int) -> Any:
    return rt.timers.clock.wall(), 0


async def _random_number(rt: Runtime, proc: AgentProcess, args: Any, step: int) -> Any:
    return _random.random(), 0


HOSTS = {
    Op.WAIT: Host(passthrough, free, _wait),
    Op.WAIT_FOR_RESPONSE: Host(passthrough, free, _wait_for_response),
    Op.SCHEDULE_TASK: Host(passthrough, free, _schedule_task),
    Op.NOW: Host(passthrough, free, _now),
    Op.RANDOM: Host(passthrough, free, _random_number),
}
