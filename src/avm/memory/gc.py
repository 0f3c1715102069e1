"""Garbage collection of content: reclaim what no hold and no root can reach.

The store cannot know on its own who still needs a piece of content: agents hold refs in their
conversations, the journal names payloads by hash on disk, checkpoints name whole states. So
the caller passes **roots** — every ref that its live structures name — and :func:`collect`
runs a mark-and-sweep:

1. **mark** every root, and all content with holds (``incref``, or ``put`` without
   ``hold=False``), in RAM or on disk;
2. follow link lists (:meth:`~avm.memory.store.ContentStore.put_links`) from marked content,
   transitively, so rooting one conversation manifest or checkpoint keeps all it names;
3. **sweep** the RAM tiers (unmarked entries are dropped), then the cold tier's rows on disk
   (unmarked rows are deleted), including rows from earlier runs that RAM never saw.

Marks on RAM entries are a flag bit: on a hot entry's record, or in the warm tier's packed
flags array (cleared for every slot in one pass at the end).

A collection is synchronous and the store is single-threaded, so nothing can be put or linked
while it runs: a ref put with ``hold=False`` and stored into a rooted structure in the same
step is always seen. Refs reached that name content the store does not have are counted in the
report (``missing``), since a caller that roots missing content has lost track of something.

Cost: proportional to the entries in RAM plus the rows on disk (the disk sweep reads every
row's hash and size). Marks on RAM entries are a flag bit, so marking allocates only for refs
that are not in RAM. A VM runs it when the store has grown by some fraction since the last
run, or on demand.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec

from avm.memory.refs import HASH_SIZE, check_ref
from avm.memory.store import ContentStore, decode_links
from avm.memory.tiers import LINKS, MARK, ON_DISK

__all__ = ["GcReport", "collect"]


class GcReport(msgspec.Struct, frozen=True):
    """What one collection did.

    ``missing`` counts refs that were reached (as roots, or as children of link lists) but
    that the store does not have: a caller that roots content it lost has a bug to look at.
    """

    roots: int
    missing: int
    marked: int
    reclaimed_entries: int
    reclaimed_bytes: int  # logical (uncompressed) bytes of reclaimed content
    reclaimed_disk_rows: int
    duration_s: float


def collect(store: ContentStore, roots: Iterable[bytes] = ()) -> GcReport:
    """Reclaim every piece of content with no holds that ``roots`` cannot reach."""
    started = time.perf_counter()
    store._check_open()
    tiers = store._tiers
    hot, warm = tiers.hot.entries, tiers.warm.table
    try:
        marked, off_ram, root_count = _mark(store, roots)
        reclaimed, reclaimed_bytes = _sweep_ram(store)
        seen_off_ram = 0

        def live(ref: bytes) -> bool:
            nonlocal seen_off_ram
            if ref in off_ram:
                seen_off_ram += 1
                return True
            # After the RAM sweep, everything still in RAM was marked.
            return ref in hot or warm.find(ref) >= 0

        # Sweep disk: every row no mark reaches, including rows RAM never indexed.
        disk_rows, disk_bytes = tiers.cold.sweep(live)
    finally:
        # Marks live only for the length of one collection, whatever happened.
        for entry in hot.values():
            entry.flags &= ~MARK
        warm.clear_flag(MARK)

    counters = store._counters
    counters.gc_runs += 1
    counters.gc_reclaimed += reclaimed + disk_rows
    counters.gc_reclaimed_bytes += reclaimed_bytes + disk_bytes
    counters.gc_disk_rows += disk_rows
    return GcReport(
        roots=root_count,
        missing=len(off_ram) - seen_off_ram,
        marked=marked,
        reclaimed_entries=reclaimed + disk_rows,
        reclaimed_bytes=reclaimed_bytes + disk_bytes,
        reclaimed_disk_rows=disk_rows,
        duration_s=round(time.perf_counter() - started, 6),
    )


def _mark(store: ContentStore, roots: Iterable[bytes]) -> tuple[int, set[bytes], int]:
    """Mark everything reachable; ``(marked count, marked refs not in RAM, roots seen)``.

    Entries in RAM carry the mark as a flag bit (on the hot entry, or in the warm table's
    flags array), so marking them allocates nothing; only refs with no RAM entry (on disk, or
    missing) are collected in a set. Only link lists go on the stack: they are the only
    content whose bytes must be read.
    """
    tiers = store._tiers
    hot, warm = tiers.hot.entries, tiers.warm.table
    warm_flags, warm_counts = warm.flags, warm.counts
    # Which disk rows are link lists: read once, so marking never asks the disk per ref.
    disk_links = set(tiers.cold.link_hashes())
    off_ram: set[bytes] = set()
    stack: list[bytes] = []
    marked = 0

    def mark(ref: bytes) -> None:
        nonlocal marked
        entry = hot.get(ref)
        if entry is not None:
            if not entry.flags & MARK:
                entry.flags |= MARK
                marked += 1
                if entry.flags & LINKS:
                    stack.append(ref)
            return
        slot = warm.find(ref)
        if slot >= 0:
            flags = warm_flags[slot]
            if not flags & MARK:
                warm_flags[slot] = flags | MARK
                marked += 1
                if flags & LINKS:
                    stack.append(ref)
        elif ref not in off_ram:
            off_ram.add(ref)
            marked += 1
            if ref in disk_links:
                stack.append(ref)

    root_count = 0
    for root in roots:
        mark(root if type(root) is bytes and len(root) == HASH_SIZE else check_ref(root))
        root_count += 1
    for entry in hot.values():
        if entry.count > 0:
            mark(entry.ref)
    for slot in warm.slots():
        if warm_counts[slot] > 0:
            flags = warm_flags[slot]
            if not flags & MARK:
                warm_flags[slot] = flags | MARK
                marked += 1
                if flags & LINKS:
                    stack.append(warm.key(slot))
    # Rows held while cold. A row whose content is also in RAM has a stale count: RAM's wins.
    for ref in tiers.cold.held_hashes():
        if ref not in hot and warm.find(ref) < 0:
            mark(ref)

    while stack:
        data = store._read_quietly(stack.pop())
        if data is None:
            continue
        children, _payload = decode_links(data)
        for child in children:
            mark(child)
    return marked, off_ram, root_count


def _sweep_ram(store: ContentStore) -> tuple[int, int]:
    """Drop unmarked hot and warm entries; ``(entries, logical bytes)`` not also on disk."""
    tiers = store._tiers
    reclaimed = reclaimed_bytes = 0
    for entry in [e for e in tiers.hot.entries.values() if not e.flags & MARK]:
        data = tiers.hot.remove(entry)
        if not entry.flags & ON_DISK:  # on-disk ones are counted by the disk sweep
            reclaimed += 1
            reclaimed_bytes += len(data)
    table = tiers.warm.table
    flags = table.flags
    for slot in [slot for slot in table.slots() if not flags[slot] & MARK]:
        on_disk = flags[slot] & ON_DISK
        logical = tiers.warm.discard(slot)
        if not on_disk:
            reclaimed += 1
            reclaimed_bytes += logical
    return reclaimed, reclaimed_bytes
