"""What the content store reports about itself: per-tier bytes and hits, dedup and compression.

:class:`MemoryStats` is an immutable snapshot (msgspec, so it goes to JSON or a dashboard as
is) built from counters the tiers and the store keep current as they work; taking one costs a
few attribute reads, never a walk over the content. Definitions:

* ``logical`` bytes are content as callers gave it (uncompressed); ``stored`` bytes are what a
  tier holds (compressed in warm and on disk); ``ram`` bytes are what the memory budget counts
  (stored bytes plus CPython object and container overheads).
* ``distinct_bytes`` is the logical size of every distinct piece of content the store knows, in
  any tier, counted once even where RAM and disk both have a copy.
* ``dedup_ratio`` is bytes offered to ``put`` over bytes that were new (what storing every
  offer separately would have cost, over what was stored); ``compression_ratio`` is logical over
  stored bytes across warm and cold.
* ``hits``/``misses`` count lookups per tier as levels of a cache: a lookup that misses hot is
  tried in warm, then on disk; a miss in the cold tier means the content was not found at all.
"""

from __future__ import annotations

import msgspec

from avm.memory.codec import DictionaryInfo

__all__ = ["Counters", "GcStats", "MemoryStats", "TierStats"]


class Counters:
    """Mutable totals the store increments on its hot paths (plain int slots: cheapest)."""

    __slots__ = (
        "gc_disk_rows",
        "gc_reclaimed",
        "gc_reclaimed_bytes",
        "gc_runs",
        "new_bytes",
        "new_entries",
        "put_bytes",
        "put_calls",
    )

    def __init__(self) -> None:
        self.put_calls = 0
        self.put_bytes = 0
        self.new_entries = 0
        self.new_bytes = 0
        self.gc_runs = 0
        self.gc_reclaimed = 0
        self.gc_reclaimed_bytes = 0
        self.gc_disk_rows = 0


class TierStats(msgspec.Struct, frozen=True):
    """One tier. For ``cold``, ``entries`` and ``*_bytes`` describe the rows on disk (which
    may also be in RAM) and ``ram_bytes`` is 0: cold content keeps nothing in RAM."""

    entries: int
    logical_bytes: int
    stored_bytes: int
    ram_bytes: int
    hits: int
    misses: int


class GcStats(msgspec.Struct, frozen=True):
    """Garbage collections so far and what they reclaimed (entries and logical bytes)."""

    runs: int
    reclaimed_entries: int
    reclaimed_bytes: int
    reclaimed_disk_rows: int


class MemoryStats(msgspec.Struct, frozen=True):
    """A snapshot of the content store (see the module docstring for the definitions)."""

    hot: TierStats
    warm: TierStats
    cold: TierStats
    distinct_entries: int
    distinct_bytes: int
    ram_bytes: int
    budget_bytes: int | None
    codec_ram_bytes: int
    put_calls: int
    put_bytes: int
    new_entries: int
    new_bytes: int
    dedup_ratio: float
    compression_ratio: float
    promotions: int
    demotions: int
    dictionary_version: int
    dictionaries: tuple[DictionaryInfo, ...]
    gc: GcStats

    @property
    def hit_ratio(self) -> float:
        """Share of lookups served from RAM (hot or warm)."""
        lookups = self.hot.hits + self.hot.misses
        return (self.hot.hits + self.warm.hits) / lookups if lookups else 1.0


def ratio(numerator: int, denominator: int) -> float:
    """``numerator / denominator`` rounded for reports; 1.0 when there is nothing to divide."""
    return round(numerator / denominator, 4) if denominator else 1.0
