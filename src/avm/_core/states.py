"""The states an agent moves through, and the reasons it can be waiting.

::

    spawn ─► READY ─► RUNNING ─┬─► WAITING(reason) ─► READY ─► ...
               ▲               ├─► OUT_OF_GAS ── top-up ─┘
               └───────────────┴─► DONE | FAILED | KILLED
"""

from __future__ import annotations

import enum

__all__ = ["AgentState", "Priority", "WaitReason"]


class AgentState(enum.IntEnum):
    """Where an agent is in its life."""

    READY = 0  # wants to run, waiting for a run slot
    RUNNING = 1  # holds a run slot and executes its own Python code
    WAITING = 2  # inside an instruction that waits (see WaitReason)
    OUT_OF_GAS = 3  # halted until its budget is topped up
    DONE = 4
    FAILED = 5
    KILLED = 6

    @property
    def finished(self) -> bool:
        return self >= AgentState.DONE


class WaitReason(enum.IntEnum):
    """Why a waiting agent waits."""

    MODEL = 0
    TOOL = 1
    MESSAGE = 2
    TIMER = 3
    STORAGE = 4
    GAS = 5


class Priority(enum.IntEnum):
    """Scheduling class: lower runs first when run slots are short."""

    INTERACTIVE = 0
    NORMAL = 1
    BACKGROUND = 2

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        if isinstance(value, Priority):
            return value
        try:
            return cls[value.upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise ValueError(f"unknown priority {value!r}; expected one of {names}") from None
