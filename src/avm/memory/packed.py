"""A packed table with CLOCK eviction: many small byte strings under 32-byte keys, no object each.

The warm tier holds most of a large fleet's content (every parked agent's turns), and there a
Python object per entry costs more than the compressed bytes it guards: a ``bytes`` header, a
record, and an ``OrderedDict`` slot come to ~210 bytes on top of ~170 bytes of data. This
module keeps the same information in a few flat arrays and shared buffers instead::

    slot s (dense, reused)            index (open addressing)        chunks (64 KiB arenas)
    ┌────────────────────────┐        ┌────┐                         ┌────────────────────┐
    │ keys[32s:32s+32]       │◄───────│ s  │  hash(key) & mask,      │ data | data | ...  │
    │ counts[s]  (holds)     │        │ -1 │  linear probing,        └────────────────────┘
    │ flags[s]   codecs[s]   │        │ s' │  backward-shift delete    ▲ chunk_of[s],
    │ chunk_of[s] offsets[s] ├─────────────────────────────────────────┘ offsets[s], lengths[s]
    │ lengths[s] hashes[s]   │
    │ recent[s] (CLOCK)      │  one byte: used since the clock hand last passed?
    └────────────────────────┘

About 58 bytes of slot fields, 6-12 bytes of index and 4 bytes of chunk membership per entry,
plus the data itself with no per-entry header or rounding. Nothing in here is a Python object
per entry, so the cycle collector never sees the entries either.

* **Slots** are dense integers, reused through a free list (threaded through ``lengths``,
  which a free slot does not need). A slot number is stable for as long as its entry lives,
  whatever happens to its bytes.
* **Eviction order** is CLOCK (second chance), an approximation of least-recently-used that
  costs one byte per slot where an exact LRU list cost eight (two 32-bit links). Inserting or
  touching an entry marks it *used*. :meth:`PackedTable.victims` moves a hand around the slots:
  an entry marked used loses its mark and is passed over (its second chance), an unmarked one
  is chosen. So an entry is chosen only if it was not used since the hand last passed it, and
  every entry not used since then is chosen before any entry that was. Both the marking and
  the sweep are ``bytearray`` operations (a store, ``find``, ``translate``), which run in C.
* **Chunks**: data shorter than ``OWN_CHUNK`` is appended to the current 64 KiB ``bytearray``
  (the *fill* chunk); longer data becomes a chunk of its own (the ``bytes`` object itself,
  not copied). A chunk whose entries are all gone is dropped. A chunk that is less than half
  live, other than the fill chunk, is **compacted**: its live entries are copied to the fill
  chunk and it is dropped, so freed space costs at most as much RAM again as live data, and
  each freed byte causes at most one byte of copying.
* Chunk regions are written once and never reused (a fresh chunk is allocated, not an old
  one recycled), so a ``memoryview`` from :meth:`PackedTable.data` never sees other bytes.

Keys are BLAKE3 digests, so the index hashes them with ``hash()`` (cached on the ``bytes``
objects callers pass). The table knows nothing about tiers or codecs: ``counts``, ``flags``
and ``codecs`` are fields its owner reads and writes directly (they are public arrays for
speed; :mod:`avm.memory.tiers` is the one owner).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

__all__ = ["CHUNK_BYTES", "MAX_HOLDS", "OWN_CHUNK", "SLOT_BYTES", "PackedTable"]

KEY = 32
CHUNK_BYTES = 64 * 1024
MAX_HOLDS = 2**32 - 1  # a slot's hold count is 32 bits (the store refuses more)
"""Size of a shared data chunk."""
OWN_CHUNK = CHUNK_BYTES // 4
"""Data at least this long is kept as a chunk of its own rather than packed."""

_FREE = 0xFFFFFFFF  # chunk_of of a free slot; lengths of the last slot of the free list
# A slot's byte in ``_recent``: the CLOCK state of its entry, or that it has none.
_UNUSED = 0  # not used since the hand last passed: the next one the hand reaches is chosen
_USED = 1  # inserted or touched since: passed over once (and unmarked) before it can be chosen
_CHOSEN = 2  # chosen by the sweep in progress (so a wrapping sweep never picks it twice)
_VACANT = 3  # a free slot
# Passing over used entries unmarks them, in one ``translate`` over the stretch the hand crossed.
_PASS_OVER = bytes(_UNUSED if b == _USED else b for b in range(256))
_EMPTY = -1  # an empty index bucket
_NOT_EMPTY = (0).__le__  # a bucket holding a slot (filter() runs it in C)
_MIN_INDEX = 64
_MAX_LOAD = 2 / 3
# For each single-bit flag, a byte translation table that clears it.
_CLEARED = {1 << bit: bytes(b & ~(1 << bit) for b in range(256)) for bit in range(8)}
# Bytes of the per-slot fields: key, count (I), flags (B), codec (h), offset (H), chunk, length
# and hash (I), and the CLOCK byte; plus 1/16 for ``array``'s over-allocation when it grows.
SLOT_BYTES = KEY + 4 + 1 + 2 + 2 + 3 * 4 + 1
_SLOT_RAM = SLOT_BYTES + (SLOT_BYTES + 15) // 16
# Per chunk: its list slot, used/live/count entries, and the bytearray object's header (a
# pymalloc block) plus malloc's header on its buffer.
_CHUNK_FIXED = 8 + 3 * 4 + 64 + 16


def _buffer_cost(size: int) -> int:
    """RAM of a malloc'd buffer of ``size`` bytes (16-byte header, 16-byte alignment)."""
    return (size + 16 + 15) & ~15


class PackedTable:
    """Entries under 32-byte keys, each with a byte string, a count, flags and a codec id.

    Not thread-safe; the owner's single thread calls it. Every method that takes a slot
    expects a live one (from :meth:`find`, :meth:`insert` or iteration).
    """

    __slots__ = (
        "_chunk_count",
        "_chunk_live",
        "_chunk_ram",
        "_chunk_used",
        "_chunks",
        "_fill",
        "_free_chunks",
        "_free_slot",
        "_hand",
        "_hashes",
        "_index",
        "_live",
        "_mask",
        "_member_total",
        "_members",
        "_recent",
        "chunk_of",
        "codecs",
        "counts",
        "flags",
        "keys",
        "lengths",
        "offsets",
        "stored_bytes",
    )

    def __init__(self) -> None:
        self.keys = bytearray()
        self.counts = array("I")  # holds: 32 bits, a hold per agent is far below 2**32
        self.flags = array("B")
        self.codecs = array("h")
        self.chunk_of = array("I")
        self.offsets = array("H")  # within a 64 KiB chunk (or 0 in a chunk of its own)
        self.lengths = array("I")
        self._recent = bytearray()  # CLOCK state per slot (see the module docstring)
        self._hashes = array("I")  # low 32 bits of hash(key): the index never rehashes keys
        self._free_slot = -1
        self._hand = 0  # the slot the CLOCK sweep looks at next
        self._live = 0
        self._index = array("i")  # allocated with the first entry
        self._mask = 0
        self._chunks: list[bytearray | bytes | None] = []
        self._chunk_used = array("I")
        self._chunk_live = array("I")
        self._chunk_count = array("I")
        self._members: list[array[int] | None] = []
        self._member_total = 0
        self._free_chunks: list[int] = []
        self._fill = -1
        self._chunk_ram = 0
        self.stored_bytes = 0  # sum of the entries' data lengths

    # -- size ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def ram_bytes(self) -> int:
        """RAM held: chunks (allocated, not just used), slot fields, index and bookkeeping."""
        return (
            self._chunk_ram
            + len(self.counts) * _SLOT_RAM
            + len(self._index) * 4
            + self._member_total * 4
            + len(self._chunks) * _CHUNK_FIXED
        )

    def chunk_count(self) -> int:
        """Chunks allocated now (for tests and reports)."""
        return len(self._chunks) - len(self._free_chunks)

    # -- lookup --------------------------------------------------------------------------

    def find(self, key: bytes) -> int:
        """The slot holding ``key``, or -1."""
        if not self._live:
            return -1
        index, mask, keys = self._index, self._mask, self.keys
        i = hash(key) & mask  # the mask is below 2**32: the same bits as _hashes keeps
        while True:
            slot = index[i]
            if slot < 0:
                return -1
            if keys.startswith(key, slot << 5):
                return slot
            i = (i + 1) & mask

    def key(self, slot: int) -> bytes:
        """The key of ``slot``, as a new ``bytes`` object."""
        start = slot << 5
        return bytes(self.keys[start : start + KEY])

    def data(self, slot: int) -> memoryview:
        """A view of the slot's bytes (valid as long as you keep it: regions are never reused)."""
        chunk = self._chunks[self.chunk_of[slot]]
        assert chunk is not None
        start = self.offsets[slot]
        return memoryview(chunk)[start : start + self.lengths[slot]]

    # -- change --------------------------------------------------------------------------

    def insert(self, key: bytes, data: bytes, count: int, flags: int, codec: int) -> int:
        """Add ``key`` (which must not be present), marked used; its slot."""
        hashed = hash(key) & 0xFFFFFFFF
        slot = self._free_slot
        if slot >= 0:
            following = self.lengths[slot]
            self._free_slot = -1 if following == _FREE else following
            self.keys[slot << 5 : (slot << 5) + KEY] = key
            self.counts[slot] = count
            self.flags[slot] = flags
            self.codecs[slot] = codec
            self._hashes[slot] = hashed
            self._recent[slot] = _USED
        else:
            slot = len(self.counts)
            self.keys += key
            self.counts.append(count)
            self.flags.append(flags)
            self.codecs.append(codec)
            self.chunk_of.append(_FREE)
            self.offsets.append(0)
            self.lengths.append(0)
            self._hashes.append(hashed)
            self._recent.append(_USED)
        self._place(slot, data)
        self._live += 1
        index = self._index
        if (self._live + 1) > len(index) * _MAX_LOAD:
            self._reindex(max(_MIN_INDEX, len(index) * 2))
            index = self._index
        # Index it (inlined: this runs for every demotion).
        mask = self._mask
        i = hashed & mask
        while index[i] >= 0:
            i = (i + 1) & mask
        index[i] = slot
        return slot

    def remove(self, slot: int) -> None:
        """Drop the entry in ``slot``: its key leaves the index and its bytes are released."""
        self._unindex(slot)
        self._release(slot)
        self._recent[slot] = _VACANT
        self.lengths[slot] = _FREE if self._free_slot < 0 else self._free_slot
        self._free_slot = slot
        self._live -= 1
        if not self._live:
            self.clear()  # an empty table gives back all its RAM, slot arrays included
            return
        size = len(self._index)
        if size > _MIN_INDEX and self._live * 8 < size:
            self._reindex(size // 2)

    def touch(self, slot: int) -> None:
        """Mark ``slot`` used: the CLOCK hand passes over it once before it can be chosen."""
        self._recent[slot] = _USED

    def clear_flag(self, bit: int) -> None:
        """Clear ``bit`` in every slot's flags, in one pass (``bytes.translate``, in C)."""
        self.flags = array("B", self.flags.tobytes().translate(_CLEARED[bit]))

    def clear(self) -> None:
        """Drop every entry and release all RAM."""
        self.__init__()  # type: ignore[misc]

    # -- iteration and eviction ----------------------------------------------------------

    def slots(self) -> Iterator[int]:
        """Every live slot, in slot order (do not remove while iterating)."""
        recent = self._recent
        first_free = recent.find(_VACANT)
        if first_free < 0:  # no free slot: every slot is live
            yield from range(len(recent))
            return
        yield from range(first_free)
        for slot in range(first_free + 1, len(recent)):
            if recent[slot] != _VACANT:
                yield slot

    def victims(self, size: int, limit: int) -> list[int]:
        """Live slots to evict, in CLOCK order, until their bytes reach ``size`` or ``limit``.

        Each slot counts as its data plus :data:`SLOT_BYTES`. The slots stay in the table
        (the caller removes them, e.g. once they are safely on disk); every call goes on from
        where the previous one left the hand.
        """
        recent, lengths = self._recent, self.lengths
        chosen: list[int] = []
        freed = 0
        pos = self._hand
        while freed < size and len(chosen) < limit:
            found = recent.find(_UNUSED, pos)
            if found < 0:
                # The hand reaches the end: what it crossed had its second chance; wrap round.
                recent[pos:] = recent[pos:].translate(_PASS_OVER)
                pos = 0
                found = recent.find(_UNUSED)
                if found < 0:
                    # Only used entries before the old position remain: pass over them all.
                    recent[:] = recent.translate(_PASS_OVER)
                    found = recent.find(_UNUSED)
                    if found < 0:
                        break  # every live slot is chosen
            if found > pos:
                recent[pos:found] = recent[pos:found].translate(_PASS_OVER)
            recent[found] = _CHOSEN
            chosen.append(found)
            freed += lengths[found] + SLOT_BYTES
            pos = found + 1
        self._hand = pos
        for slot in chosen:
            recent[slot] = _UNUSED
        return chosen

    # -- the index -----------------------------------------------------------------------

    def _unindex(self, slot: int) -> None:
        # Linear probing deletes by shifting later members of the cluster back, so lookups
        # never need tombstones and the table never fills with them.
        index, mask, hashes = self._index, self._mask, self._hashes
        i = hashes[slot] & mask
        while index[i] != slot:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            other = index[j]
            if other < 0:
                break
            home = hashes[other] & mask
            # ``other`` may move back to the hole at ``i`` unless its home lies cyclically
            # in (i, j], in which case moving it would put it before its home.
            if (i < j and i < home <= j) or (j < i and (home > i or home <= j)):
                continue
            index[i] = other
            i = j
        index[i] = _EMPTY

    def _reindex(self, size: int) -> None:
        """Rebuild the index at ``size`` buckets from the old one's entries.

        The old index, not the slots: it holds just the live entries, in at most 8 buckets
        each, while the slot arrays keep their length when a table empties.
        """
        old = self._index
        index = self._index = array("i", [_EMPTY]) * size
        mask = self._mask = size - 1
        hashes = self._hashes
        for slot in filter(_NOT_EMPTY, old):
            i = hashes[slot] & mask
            while index[i] >= 0:
                i = (i + 1) & mask
            index[i] = slot

    # -- chunks --------------------------------------------------------------------------

    def _new_chunk(self, chunk: bytearray | bytes, used: int) -> int:
        if self._free_chunks:
            c = self._free_chunks.pop()
            self._chunks[c] = chunk
            self._chunk_used[c] = used
            self._chunk_live[c] = 0
            self._chunk_count[c] = 0
        else:
            c = len(self._chunks)
            self._chunks.append(chunk)
            self._chunk_used.append(used)
            self._chunk_live.append(0)
            self._chunk_count.append(0)
            self._members.append(None)
        self._chunk_ram += _buffer_cost(len(chunk))
        return c

    def _place(self, slot: int, data: bytes | memoryview) -> None:
        """Write ``data`` for ``slot`` into a chunk and record where it went."""
        size = len(data)
        if size >= OWN_CHUNK:
            c = self._new_chunk(data if type(data) is bytes else bytes(data), size)
            start = 0
        else:
            c = self._fill
            start = self._chunk_used[c] if c >= 0 else 0
            if c < 0 or start + size > CHUNK_BYTES:
                c = self._fill = self._new_chunk(bytearray(CHUNK_BYTES), 0)
                self._members[c] = array("i")
                start = 0
            chunk = self._chunks[c]
            assert chunk is not None
            assert type(chunk) is bytearray
            chunk[start : start + size] = data
            self._chunk_used[c] = start + size
            members = self._members[c]
            assert members is not None
            members.append(slot)
            self._member_total += 1
        self.chunk_of[slot] = c
        self.offsets[slot] = start
        self.lengths[slot] = size
        self._chunk_live[c] += size
        self._chunk_count[c] += 1
        self.stored_bytes += size

    def _release(self, slot: int) -> None:
        """Give back the bytes of ``slot``, dropping or compacting its chunk as it empties."""
        c = self.chunk_of[slot]
        size = self.lengths[slot]
        self.chunk_of[slot] = _FREE  # before any compaction, which must not move it
        self._chunk_live[c] -= size
        self._chunk_count[c] -= 1
        self.stored_bytes -= size
        if self._chunk_count[c] == 0:
            self._drop_chunk(c)
        elif c != self._fill and self._chunk_live[c] * 2 < self._chunk_used[c]:
            self._compact(c)

    def _drop_chunk(self, c: int) -> None:
        chunk = self._chunks[c]
        assert chunk is not None
        self._chunk_ram -= _buffer_cost(len(chunk))
        self._chunks[c] = None
        members = self._members[c]
        if members is not None:
            self._member_total -= len(members)
            self._members[c] = None
        if c == self._fill:
            self._fill = -1
        self._free_chunks.append(c)

    def _compact(self, c: int) -> None:
        """Copy the live entries of chunk ``c`` into the fill chunk, then drop ``c``."""
        chunk = self._chunks[c]
        members = self._members[c]
        assert chunk is not None
        assert members is not None
        view = memoryview(chunk)
        chunk_of, offsets, lengths = self.chunk_of, self.offsets, self.lengths
        for slot in members:
            # A member whose entry left (or moved) no longer points here; one whose slot was
            # reused in this chunk appears twice, and moves once.
            if chunk_of[slot] != c:
                continue
            start = offsets[slot]
            size = lengths[slot]
            self._chunk_live[c] -= size
            self._chunk_count[c] -= 1
            self.stored_bytes -= size
            self._place(slot, view[start : start + size])
        view.release()
        self._drop_chunk(c)
