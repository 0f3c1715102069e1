"""Time and tasks: WAIT, WAIT_FOR_RESPONSE, SCHEDULE_TASK."""

from __future__ import annotations

import math
from typing import Any

from avm._core.host import Host, free, passthrough
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime


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
    """Tick 0 fires at once; tick n at start + n·interval, on a fixed grid so ticks never drift.

    An agent that falls more than one interval behind skips the missed ticks rather than firing
    them in a burst; the tick number it gets says how many intervals have passed.
    """
    task_id, interval = args[0], float(args[1])
    schedules = proc.schedules
    if schedules is None:
        schedules = proc.schedules = {}
    now = rt.timers.now()
    entry = schedules.get(task_id)
    if entry is None or entry[1] != interval:
        schedules[task_id] = (now, interval, 0)
        return 0, 0
    start, _, tick = entry
    tick += 1
    if start + tick * interval < now - interval:
        tick = math.floor((now - start) / interval)
    schedules[task_id] = (start, interval, tick)
    await rt.timers.sleep_until(start + tick * interval)
    return tick, 0


HOSTS = {
    Op.WAIT: Host(passthrough, free, _wait),
    Op.WAIT_FOR_RESPONSE: Host(passthrough, free, _wait_for_response),
    Op.SCHEDULE_TASK: Host(passthrough, free, _schedule_task),
}
