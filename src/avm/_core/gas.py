"""Gas: per-agent accounts, and the ledger that answers where gas went.

Gas is kept in integer milligas so that accounting is exact: a formula's result is rounded up to
the next milligas once, when it is charged, and sums never drift. An instruction first *reserves*
an upper bound of its cost, then *settles* the actual cost, which releases the reservation; an
account never spends beyond its budget because nothing is performed until its reservation fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["MGAS_PER_GAS", "GasAccount", "GasLedger", "ModelUsage", "to_gas", "to_mgas"]

MGAS_PER_GAS = 1000
_TIMELINE_BUCKETS = 3600


def to_mgas(gas: float) -> int:
    """Gas to milligas, rounding up (a fraction of a milligas is still charged)."""
    if gas <= 0:
        return 0
    return math.ceil(gas * MGAS_PER_GAS - 1e-9)


def to_gas(mgas: int) -> float:
    return mgas / MGAS_PER_GAS


class GasAccount:
    """One agent's budget, what it has spent, and what in-flight instructions hold reserved."""

    __slots__ = ("budget", "reserved", "spent")

    def __init__(self, budget: int | None) -> None:
        self.budget = budget  # None: unlimited
        self.spent = 0
        self.reserved = 0

    @property
    def available(self) -> int | None:
        if self.budget is None:
            return None
        return self.budget - self.spent - self.reserved

    def covers(self, mgas: int) -> bool:
        return self.budget is None or self.budget - self.spent - self.reserved >= mgas

    def reserve(self, mgas: int) -> bool:
        """Hold ``mgas`` for an instruction about to run; False if the budget cannot cover it."""
        if not self.covers(mgas):
            return False
        self.reserved += mgas
        return True

    def settle(self, reserved: int, actual: int) -> None:
        """Release a reservation and charge what the instruction actually cost."""
        self.reserved -= reserved
        self.spent += actual

    def release(self, reserved: int) -> None:
        self.reserved -= reserved

    def top_up(self, mgas: int) -> None:
        if self.budget is not None:
            self.budget += mgas


@dataclass(slots=True)
class ModelUsage:
    """What one model served: calls, tokens, gas and total latency."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens: int = 0
    mgas: int = 0
    latency_s: float = 0.0


@dataclass(slots=True)
class GasLedger:
    """Totals of charged gas by instruction, by model and by second of wall time.

    Per-agent totals live in each agent's :class:`GasAccount`; ``by_agent`` reads them through
    ``accounts`` so the ledger holds no per-agent entries of its own.
    """

    accounts: Callable[[], Iterable[tuple[str, GasAccount]]]
    by_op: dict[str, int] = field(default_factory=dict)
    models: dict[str, ModelUsage] = field(default_factory=dict)
    timeline: dict[int, int] = field(default_factory=dict)
    total: int = 0

    def charge(self, op: str, mgas: int, wall_time: float) -> None:
        if mgas == 0:
            return
        self.total += mgas
        self.by_op[op] = self.by_op.get(op, 0) + mgas
        second = int(wall_time)
        timeline = self.timeline
        timeline[second] = timeline.get(second, 0) + mgas
        if len(timeline) > _TIMELINE_BUCKETS:
            del timeline[min(timeline)]

    def model_call(
        self,
        model: str,
        *,
        tokens_in: int,
        tokens_out: int,
        cached_tokens: int,
        mgas: int,
        latency_s: float,
    ) -> None:
        usage = self.models.get(model)
        if usage is None:
            usage = self.models[model] = ModelUsage()
        usage.calls += 1
        usage.tokens_in += tokens_in
        usage.tokens_out += tokens_out
        usage.cached_tokens += cached_tokens
        usage.mgas += mgas
        usage.latency_s += latency_s

    def by_agent(self) -> dict[str, float]:
        return {agent_id: to_gas(acct.spent) for agent_id, acct in self.accounts()}

    def by_instruction(self) -> dict[str, float]:
        return {op: to_gas(m) for op, m in sorted(self.by_op.items())}

    def by_model(self) -> dict[str, ModelUsage]:
        return dict(self.models)

    def over_time(self, bucket_s: int = 60) -> list[tuple[int, float]]:
        """Gas charged per ``bucket_s`` seconds of wall time, oldest first."""
        buckets: dict[int, int] = {}
        for second, mgas in self.timeline.items():
            start = second - second % bucket_s
            buckets[start] = buckets.get(start, 0) + mgas
        return [(start, to_gas(m)) for start, m in sorted(buckets.items())]
