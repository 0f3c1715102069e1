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

from avm._core.host import Host, Parking, WaitHost, free, passthrough
from avm._core.host.swarm import arm_replies, replies_arrived, replies_interrupted
from avm._core.isa import Op
from avm._core.process import AgentProcess
from avm._core.runtime import Runtime

__all__ = ["HOSTS", "ScheduleTick"]

_random = random.SystemRandom()


class ScheduleTick(msgspec.Struct, frozen=True, array_like=True):
    """What SCHEDULE_TASK journals: the tick number and the wall time its grid started."""

    tick: int
    grid_start: float


def _arm_wait(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int, parking: Parking
) -> tuple[Any, int] | None:
    return _arm_sleep(rt, rt.timers.clock.monotonic() + float(args[0]), None, parking)


def _arm_sleep(
    rt: Runtime, deadline: float, result: Any, parking: Parking
) -> tuple[Any, int] | None:
    """Return ``result`` at ``deadline``: at once if it has passed, else arm a timer for it."""
    armed = rt.timers.arm_sleep(deadline)
    if armed is None:
        return result, 0
    parking.future, parking.timer = armed
    parking.target = result
    return None


def _slept(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking
) -> tuple[Any, int]:
    return parking.target, 0


def _sleep_interrupted(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking, exc: BaseException
) -> BaseException:
    if parking.timer is not None:
        parking.timer.cancel()
    return exc


def _arm_wait_for_response(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int, parking: Parking
) -> tuple[Any, int] | None:
    task_id, timeout_s = args
    replies = arm_replies(rt, task_id, 1, timeout_s, parking)
    return None if replies is None else (replies[0].data, 0)


def _response_arrived(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking
) -> tuple[Any, int]:
    return replies_arrived(rt, args[0], 1, parking)[0].data, 0


def _response_interrupted(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], parking: Parking, exc: BaseException
) -> BaseException:
    task_id, timeout_s = args
    return replies_interrupted(rt, task_id, 1, timeout_s, parking, exc)


def _arm_schedule_task(
    rt: Runtime, proc: AgentProcess, args: tuple[Any, ...], step: int, parking: Parking
) -> tuple[Any, int] | None:
    """Tick 0 fires at once; tick n at grid_start + n·interval, so ticks never drift.

    An agent that falls more than one interval behind skips the missed ticks rather than firing
    them in a burst; the tick number it gets says how many intervals have passed.
    """
    task_id, interval = args[0], float(args[1])
    schedules = proc.schedules
    if schedules is None:
        schedules = proc.schedules = {}
    timers = rt.timers
    now = timers.clock.wall()
    entry = schedules.get(task_id)
    if entry is None or entry[1] != interval:
        schedules[task_id] = (now, interval, 0)
        return ScheduleTick(0, now), 0
    start, _, tick = entry
    tick += 1
    if start + tick * interval < now - interval:
        tick = math.floor((now - start) / interval)
    schedules[task_id] = (start, interval, tick)
    deadline = timers.clock.monotonic() + (start + tick * interval - now)
    return _arm_sleep(rt, deadline, ScheduleTick(tick, start), parking)


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
    Op.WAIT: WaitHost(free, _arm_wait, _slept, _sleep_interrupted),
    Op.WAIT_FOR_RESPONSE: WaitHost(
        free, _arm_wait_for_response, _response_arrived, _response_interrupted
    ),
    Op.SCHEDULE_TASK: WaitHost(free, _arm_schedule_task, _slept, _sleep_interrupted),
    Op.NOW: Host(passthrough, free, _now),
    Op.RANDOM: Host(passthrough, free, _random_number),
}
