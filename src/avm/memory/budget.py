"""The memory budget: how much RAM content may hold, and moving content down when it is full.

A budget is one number, written the way ``--memory`` takes it (``"2GB"``, ``"512MiB"``), and
it bounds **everything the content store holds in RAM**: hot bytes, warm (compressed) bytes and
the codec's dictionaries, samples and zstd contexts, each with its real CPython overhead (see
:mod:`avm.memory.tiers` for the cost model). Cold content holds no RAM at all. Within the
budget, the hot tier may use ``hot_fraction``; the warm tier takes what is left.

The policy is least-recently-used, applied after every operation that grows RAM:

1. while hot is over its share, the least recently used hot entry is compressed into warm;
2. while the total is over the budget, warm entries not used lately go to disk (in one
   transaction per batch; the warm table picks them by CLOCK, an approximation of LRU that
   costs a byte per entry, see :mod:`avm.memory.packed`), and if warm is empty, hot entries
   go straight to disk.

A read of warm or cold content brings it back to hot (and so may push other content down).
Written as a string, a budget may name the hot share after a comma: ``"2GB,hot=64MB"`` or
``"2GB,hot=5%"`` keeps at most 64 MB (or 5 %) of content uncompressed and the rest, up to
2 GB, compressed in RAM; a fleet whose agents mostly sit idle holds their conversations warm.
Moves stop at ``slack`` below the limit rather than at the limit, so a store that sits at its
budget moves content in batches instead of one entry per operation.

With no limit (``MemoryBudget()``, the default), nothing moves unless asked to
(:meth:`avm.memory.store.ContentStore.demote`).
"""

from __future__ import annotations

import msgspec

from avm.config import parse_bytes
from avm.errors import ConfigError
from avm.memory.tiers import RAM_ENTRY_BYTES, Entry, TierSet, bytes_object_cost

__all__ = ["MIN_BUDGET", "MemoryBudget", "enforce"]

MIN_BUDGET = 4 * 1024 * 1024
"""The smallest budget accepted: below it the codec's state alone would not fit."""

_HOT_FRACTION = 0.5

# Most entries moved to disk in one SQLite transaction: commits, not rows, are what cost most.
_COLD_BATCH = 4096


class MemoryBudget(msgspec.Struct, frozen=True, kw_only=True):
    """A RAM limit for the content store; ``limit=None`` means unbounded."""

    limit: int | None = None
    hot_fraction: float = _HOT_FRACTION
    slack: float = 1 / 32

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < MIN_BUDGET:
            raise ConfigError(
                f"a memory budget must be at least {MIN_BUDGET >> 20} MiB (the codec's own "
                f"working state takes up to about 2 MB of it), got {self.limit} bytes"
            )
        if not 0 < self.hot_fraction <= 1:
            raise ConfigError(f"hot_fraction must be in (0, 1], got {self.hot_fraction}")
        if not 0 <= self.slack < 1:
            raise ConfigError(f"slack must be in [0, 1), got {self.slack}")

    @classmethod
    def of(cls, value: MemoryBudget | str | int | None) -> MemoryBudget:
        """A budget from ``"2GB"``, ``"2GB,hot=64MB"``, ``"2GB,hot=5%"``, a byte count,
        ``None`` (unbounded) or a budget."""
        if isinstance(value, MemoryBudget):
            return value
        if value is None:
            return cls()
        if isinstance(value, str) and "," in value:
            return cls._parse(value)
        return cls(limit=parse_bytes(value))

    @classmethod
    def _parse(cls, text: str) -> MemoryBudget:
        size, *options = (part.strip() for part in text.split(","))
        limit = parse_bytes(size)
        hot_fraction = _HOT_FRACTION
        for option in options:
            name, equals, share = (part.strip() for part in option.partition("="))
            if name != "hot" or not equals or not share:
                raise ConfigError(
                    f"memory budget {text!r}: cannot read {option!r}; the one option is the "
                    "hot share, e.g. '2GB,hot=64MB' or '2GB,hot=5%'"
                )
            if share.endswith("%"):
                try:
                    hot_fraction = float(share[:-1]) / 100
                except ValueError:
                    raise ConfigError(
                        f"memory budget {text!r}: {share!r} is not a percentage"
                    ) from None
            else:
                hot_fraction = parse_bytes(share) / limit if limit > 0 else 0.0
        return cls(limit=limit, hot_fraction=hot_fraction)

    @property
    def hot_limit(self) -> int | None:
        """The most the hot tier may hold, overheads included."""
        return None if self.limit is None else int(self.limit * self.hot_fraction)

    def hot_excess(self, hot_bytes: int) -> int:
        """Bytes to move out of hot now: 0 within the limit, else down to ``slack`` below it."""
        limit = self.hot_limit
        if limit is None or hot_bytes <= limit:
            return 0
        return hot_bytes - int(limit * (1 - self.slack))

    def total_excess(self, ram_bytes: int) -> int:
        """Bytes to move out of RAM now, by the same rule as :meth:`hot_excess`."""
        if self.limit is None or ram_bytes <= self.limit:
            return 0
        return ram_bytes - int(self.limit * (1 - self.slack))


def enforce(budget: MemoryBudget, tiers: TierSet, keep: Entry | None = None) -> None:
    """Move least recently used content down until RAM fits ``budget`` (see module docstring).

    ``keep`` is an entry just read: it is moved only if it alone is over the hot share.
    """
    hot, warm = tiers.hot, tiers.warm
    excess = budget.hot_excess(hot.ram_bytes)
    while excess > 0:
        entry = hot.oldest()
        if entry is None:
            break
        if entry is keep and len(hot) > 1:
            hot.entries.move_to_end(entry.ref)
            continue
        before = hot.ram_bytes
        tiers.to_warm(entry)
        excess -= before - hot.ram_bytes
    excess = budget.total_excess(tiers.ram_bytes())
    while excess > 0:
        if len(warm):
            # Warm entries are slots; their bytes leave RAM for good only when their chunk
            # empties or is compacted, so the estimate may be high: the loop re-measures.
            tiers.to_cold(slots=warm.table.victims(excess, _COLD_BATCH))
        else:
            batch: list[Entry] = []
            freed = 0
            for entry in hot.entries.values():
                if entry is keep and len(hot) > 1:
                    continue
                batch.append(entry)
                assert entry.data is not None
                freed += bytes_object_cost(len(entry.data)) + RAM_ENTRY_BYTES
                if freed >= excess or len(batch) >= _COLD_BATCH:
                    break
            if not batch:
                break
            tiers.to_cold(batch)
        excess = budget.total_excess(tiers.ram_bytes())
