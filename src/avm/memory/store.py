"""The content store: every large byte string in the VM, held once and named by its BLAKE3 hash.

Prompts, tool schemas, messages and model outputs go in with :meth:`ContentStore.put`, which
returns a 32-byte :data:`~avm.memory.refs.ContentRef`. Identical content put by a thousand
agents is stored once, and while it is hot every one of them gets *the same ref object* back,
so an agent that holds refs holds pointers, not copies. (Warm content keeps no ref object, so
a put that finds it warm returns the digest it just computed: equal, not identical.) Reads from
the hot tier hand out the stored ``bytes`` object (or a ``memoryview`` of it): no copy, no
decompression.

Lifetime has two mechanisms, used together:

* **holds** (reference counts): ``put`` takes one hold unless ``hold=False``; ``incref`` takes
  more, ``decref`` releases them. Counts never go negative: releasing a hold that was never
  taken raises :class:`~avm.memory.errors.RefcountError`, because it means some other holder's
  content is about to be freed.
* **roots**: :func:`avm.memory.gc.collect` reclaims content that has no holds *and* is not
  reachable from the roots its caller passes (live agents' conversations, journal entries,
  checkpoints), following link lists made with :meth:`ContentStore.put_links`.

Content with no holds is *not* freed when its count reaches zero: it stays readable until a
collection finds it unreachable. So a ref stored into a rooted structure in the same synchronous
step as ``put(..., hold=False)`` is never at risk.

Where bytes live (hot, warm, cold) is :mod:`avm.memory.tiers`; when they move is
:mod:`avm.memory.budget`. The store is single-threaded: call it from the thread that owns it
(the VM's event loop). Nothing in it awaits, so a call is atomic with respect to other agents.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import blake3

from avm.memory.budget import MemoryBudget, enforce
from avm.memory.codec import Codec
from avm.memory.errors import (
    ContentError,
    ContentNotFound,
    RefcountError,
    StoreClosed,
)
from avm.memory.packed import MAX_HOLDS
from avm.memory.refs import HASH_SIZE, Content, ContentRef, as_bytes, check_ref
from avm.memory.stats import Counters, GcStats, MemoryStats, TierStats, ratio
from avm.memory.tiers import (
    LINKS,
    MAX_CACHE_KIB,
    MIN_CACHE_KIB,
    ON_DISK,
    ColdTier,
    Durability,
    Entry,
    Tier,
    TierSet,
)

__all__ = ["ContentStore", "decode_links", "encode_links"]

log = logging.getLogger(__name__)

_LINK_MAGIC = b"AVML"
_LINK_HEADER = struct.Struct("<4sI")


def encode_links(children: Sequence[bytes], payload: bytes = b"") -> bytes:
    """The bytes of a link list: a header, the children's 32-byte refs, then ``payload``."""
    return _LINK_HEADER.pack(_LINK_MAGIC, len(children)) + b"".join(children) + payload


def decode_links(data: bytes | memoryview) -> tuple[tuple[ContentRef, ...], bytes]:
    """``(children, payload)`` of a link list made by :func:`encode_links`."""
    if len(data) < _LINK_HEADER.size or bytes(data[:4]) != _LINK_MAGIC:
        raise ContentError("content is not a link list (it was not stored with put_links)")
    _, count = _LINK_HEADER.unpack_from(data)
    start = _LINK_HEADER.size
    end = start + count * HASH_SIZE
    if len(data) < end:
        raise ContentError(f"link list is truncated: {count} children announced")
    raw = bytes(data[start:end])
    children = tuple(ContentRef(raw[i : i + HASH_SIZE]) for i in range(0, len(raw), HASH_SIZE))
    return children, bytes(data[end:])


class ContentStore:
    """Content-addressed storage with holds, tiers under a memory budget, and lazy cold reads.

    ``state_dir`` is where the cold tier's SQLite file (``content.db``) goes; ``None`` uses a
    temporary directory removed on :meth:`close`. ``budget`` bounds the RAM held (``"2GB"``, a
    byte count, a :class:`~avm.memory.budget.MemoryBudget`, or ``None`` for no bound).
    ``durability="durable"`` syncs every cold-tier commit (what journal payloads need);
    ``"relaxed"`` leaves syncing to SQLite's checkpoints.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        budget: MemoryBudget | str | int | None = None,
        codec: Codec | None = None,
        durability: Durability = "relaxed",
        filename: str = "content.db",
    ) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="avm-content-")
            state_dir = self._tmpdir.name
        self.budget = MemoryBudget.of(budget)
        self.codec = codec if codec is not None else Codec()
        limit = self.budget.limit
        cache_kib = (
            MAX_CACHE_KIB
            if limit is None
            else max(MIN_CACHE_KIB, min(MAX_CACHE_KIB, limit // 8 // 1024))
        )
        cold = ColdTier(Path(state_dir) / filename, durability, cache_kib)
        self._tiers = TierSet(self.codec, cold)
        self.codec.on_new_dictionary = cold.save_dictionary
        self.codec.dictionary_loader = cold.load_dictionary
        latest = cold.latest_dictionary()
        if latest is not None:
            self.codec.restore(*latest, current=True)
        self._counters = Counters()
        self._closed = False
        # The hot path reads these directly: one attribute load each, no calls.
        self._hot = self._tiers.hot.entries
        self._warm = self._tiers.warm.table
        self._bounded = self.budget.limit is not None

    @property
    def path(self) -> Path:
        """The cold tier's SQLite file."""
        return self._tiers.cold.path

    # -- writing -------------------------------------------------------------------------

    def put(self, data: Content, *, hold: bool = True) -> ContentRef:
        """Store ``data`` (text as UTF-8) once; its ref, the same object for every caller.

        Takes one hold unless ``hold=False`` (then root the ref before the next collection).
        ``bytes`` are kept without copying; other buffers are copied once, since the store
        must not see them change.
        """
        if type(data) is not bytes:
            data = as_bytes(data)
        key = blake3.blake3(data).digest()
        counters = self._counters
        counters.put_calls += 1
        counters.put_bytes += len(data)
        entry = self._hot.get(key)
        if entry is not None:
            self._hot.move_to_end(key)
            if hold:
                entry.count += 1
            return entry.ref
        warm = self._warm
        slot = warm.find(key)
        if slot < 0:
            return self._insert(ContentRef(key), data, hold, 0)
        warm.touch(slot)
        if hold:
            warm.counts[slot] += 1
        return ContentRef(key)

    def put_links(
        self, children: Iterable[bytes], payload: bytes = b"", *, hold: bool = True
    ) -> ContentRef:
        """Store a link list: content that names other content (a manifest, a checkpoint).

        Garbage collection follows the links, so rooting or holding the list keeps every child
        alive. Every child must already be stored. ``payload`` is free-form bytes carried
        along (e.g. which child is which); read both back with :meth:`read_links`.
        """
        refs = [check_ref(child) for child in children]
        for ref in refs:
            if ref not in self:
                raise ContentNotFound(ref)
        data = encode_links(refs, payload)
        key = ContentRef(blake3.blake3(data).digest())
        entry = self._hot.get(key)
        slot = -1 if entry is not None else self._warm.find(key)
        if entry is not None:
            entry.flags |= LINKS
        elif slot >= 0:
            self._warm.flags[slot] |= LINKS
        else:
            self._counters.put_calls += 1
            self._counters.put_bytes += len(data)
            return self._insert(key, data, hold, LINKS)
        return self.put(data, hold=hold)

    def _insert(self, key: ContentRef, data: bytes, hold: bool, flags: int) -> ContentRef:
        """Add content that is in no RAM tier: new, or (once anything spilled) maybe on disk."""
        if self._closed:
            raise StoreClosed("the content store is closed")
        count = 1 if hold else 0
        tiers = self._tiers
        # One record per hash: content already on disk keeps its row and the row's holds,
        # and is promoted rather than stored twice. The cold tier's Bloom filter answers
        # "not on disk" for almost all new content without a query.
        found = tiers.cold.lookup(key) if tiers.cold.rows else None
        if found is not None:
            links, holds = found
            count += holds
            flags |= ON_DISK | (LINKS if links else 0)
        entry = Entry(key, None, Tier.HOT, count=count, flags=flags)
        tiers.hot.add(entry, data)
        if found is None:
            counters = self._counters
            counters.new_entries += 1
            counters.new_bytes += len(data)
            self.codec.observe(data)
        if self._bounded:
            enforce(self.budget, tiers, entry)
        return key

    # -- reading -------------------------------------------------------------------------

    def get(self, ref: bytes) -> bytes:
        """The content stored under ``ref``. From the hot tier this is the stored object
        itself (zero-copy); from warm or cold it is decompressed or loaded and promoted."""
        try:
            entry = self._hot.get(ref)
        except TypeError:
            entry = None  # unhashable: _fetch validates and raises InvalidRef
        if entry is not None:
            self._hot.move_to_end(ref)
            self._tiers.hot.hits += 1
            data = entry.data
            assert data is not None
            return data
        return self._fetch(ref)

    def view(self, ref: bytes) -> memoryview:
        """A read-only ``memoryview`` of the content: slices of it copy nothing."""
        return memoryview(self.get(ref))

    def text(self, ref: bytes) -> str:
        """The content decoded as UTF-8 (what ``put(str)`` stored)."""
        return self.get(ref).decode()

    def read_links(self, ref: bytes) -> tuple[tuple[ContentRef, ...], bytes]:
        """``(children, payload)`` of a link list stored with :meth:`put_links`."""
        return decode_links(self.get(ref))

    def _fetch(self, ref: bytes) -> bytes:
        ref = check_ref(ref)
        tiers = self._tiers
        tiers.hot.misses += 1
        slot = self._warm.find(ref)
        if slot >= 0:
            tiers.warm.hits += 1
            entry, data = tiers.promote(slot, ref)
        else:
            tiers.warm.misses += 1
            self._check_open()
            loaded = tiers.load(ref)
            if loaded is None:
                tiers.cold.misses += 1
                raise ContentNotFound(ref)
            tiers.cold.hits += 1
            entry, data = loaded
        if self._bounded:
            enforce(self.budget, tiers, entry)
        return data

    def __contains__(self, ref: object) -> bool:
        try:
            ref = check_ref(ref)
        except ContentError:
            return False
        return ref in self._hot or self._warm.find(ref) >= 0 or self._cold().lookup(ref) is not None

    def tier_of(self, ref: bytes) -> Tier | None:
        """Where the content's bytes are now, or ``None`` if the store does not have it."""
        ref = check_ref(ref)
        if ref in self._hot:
            return Tier.HOT
        if self._warm.find(ref) >= 0:
            return Tier.WARM
        return Tier.COLD if self._cold().lookup(ref) is not None else None

    # -- holds ---------------------------------------------------------------------------

    def incref(self, ref: bytes, n: int = 1) -> int:
        """Take ``n`` more holds on stored content; the new count."""
        ref = check_ref(ref)
        if n < 1:
            raise RefcountError(ref, f"incref takes a positive count, got {n}")
        entry = self._hot.get(ref)
        if entry is not None:
            _check_room(ref, entry.count, n)
            entry.count += n
            return entry.count
        slot = self._warm.find(ref)
        if slot >= 0:
            counts = self._warm.counts
            _check_room(ref, counts[slot], n)
            counts[slot] += n
            return counts[slot]
        found = self._cold().lookup(ref)
        if found is None:
            raise ContentNotFound(ref)
        _check_room(ref, found[1], n)
        count = self._cold().add_holds(ref, n)
        assert count is not None
        return count

    def decref(self, ref: bytes, n: int = 1) -> int:
        """Release ``n`` holds; the new count. At zero the content becomes collectable.

        Raises :class:`RefcountError` for content the store does not know or that has fewer
        than ``n`` holds: an unbalanced release would free another holder's content.
        """
        ref = check_ref(ref)
        if n < 1:
            raise RefcountError(ref, f"decref takes a positive count, got {n}")
        entry = self._hot.get(ref)
        if entry is not None:
            if entry.count < n:
                raise RefcountError(ref, f"has {entry.count} hold(s); cannot release {n}")
            entry.count -= n
            return entry.count
        slot = self._warm.find(ref)
        if slot >= 0:
            counts = self._warm.counts
            if counts[slot] < n:
                raise RefcountError(ref, f"has {counts[slot]} hold(s); cannot release {n}")
            counts[slot] -= n
            return counts[slot]
        count = self._cold().add_holds(ref, -n)
        if count is not None:
            return count
        found = self._cold().lookup(ref)
        if found is None:
            raise RefcountError(
                ref, "is not in the store (never stored, or already reclaimed); nothing to release"
            )
        raise RefcountError(ref, f"has {found[1]} hold(s); cannot release {n}")

    def holds(self, ref: bytes) -> int:
        """How many holds the content has (0 for content kept only by roots, or by nothing)."""
        ref = check_ref(ref)
        entry = self._hot.get(ref)
        if entry is not None:
            return entry.count
        slot = self._warm.find(ref)
        if slot >= 0:
            return self._warm.counts[slot]
        found = self._cold().lookup(ref)
        if found is None:
            raise ContentNotFound(ref)
        return found[1]

    # -- tiering -------------------------------------------------------------------------

    def demote(self, refs: Iterable[bytes], to: Tier = Tier.COLD) -> int:
        """Move content down now, e.g. the conversation of an agent being passivated.

        ``to=Tier.WARM`` compresses hot content in RAM; ``to=Tier.COLD`` writes hot and warm
        content to disk and drops its RAM copy. Returns how many entries moved.
        """
        if to == Tier.HOT:
            raise ContentError("demote moves content down: pass to=Tier.WARM or to=Tier.COLD")
        tiers = self._tiers
        hot, warm = self._hot, self._warm
        batch: list[Entry] = []
        slots: list[int] = []
        moved = 0
        queued: set[bytes] = set()
        for ref in refs:
            ref = check_ref(ref)
            if ref in queued:
                continue  # a ref named twice moves once
            entry = hot.get(ref)
            if entry is not None:
                queued.add(ref)
                if to == Tier.WARM:
                    tiers.to_warm(entry)
                    moved += 1
                else:
                    batch.append(entry)
            elif to == Tier.COLD:
                slot = warm.find(ref)
                if slot >= 0:
                    queued.add(ref)
                    slots.append(slot)
        if batch or slots:
            tiers.to_cold(batch, slots)
            moved += len(batch) + len(slots)
        return moved

    def persist(self, refs: Iterable[bytes]) -> int:
        """Make sure the content has a copy on disk (committed) without moving it out of RAM.

        A journal entry that names content by hash must not outlive the content across a
        crash: persist its payloads before committing the entry. Returns rows written.
        """
        entries: list[Entry] = []
        slots: list[int] = []
        seen: set[bytes] = set()
        for ref in refs:
            checked = check_ref(ref)
            if checked in seen:
                continue
            seen.add(checked)
            entry = self._hot.get(checked)
            if entry is not None:
                entries.append(entry)
                continue
            slot = self._warm.find(checked)
            if slot >= 0:
                slots.append(slot)
            elif self._cold().lookup(checked) is None:
                raise ContentNotFound(checked)
        before = self._tiers.cold.writes
        self._tiers.persist(entries, slots)
        return self._tiers.cold.writes - before

    # -- internals shared with avm.memory.gc ---------------------------------------------

    def _cold(self) -> ColdTier:
        self._check_open()
        return self._tiers.cold

    def _read_quietly(self, ref: bytes) -> bytes | None:
        """Content bytes without touching LRU order or hit counters (for the collector)."""
        entry = self._hot.get(ref)
        if entry is not None:
            return entry.data
        slot = self._warm.find(ref)
        if slot >= 0:
            return self._tiers.warm.read(slot)
        loaded = self._tiers.read_cold(ref)
        return None if loaded is None else loaded[0]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the content store is closed")

    # -- reporting and life cycle --------------------------------------------------------

    def stats(self) -> MemoryStats:
        """A snapshot of sizes, ratios and counters (cheap: no walk over the content)."""
        tiers = self._tiers
        hot, warm, cold = tiers.hot, tiers.warm, tiers.cold
        counters = self._counters
        overlap_entries = hot.on_disk_entries + warm.on_disk_entries
        overlap_bytes = hot.on_disk_bytes + warm.on_disk_bytes
        return MemoryStats(
            hot=TierStats(
                len(hot), hot.logical_bytes, hot.stored_bytes, hot.ram_bytes, hot.hits, hot.misses
            ),
            warm=TierStats(
                len(warm),
                warm.logical_bytes,
                warm.stored_bytes,
                warm.ram_bytes,
                warm.hits,
                warm.misses,
            ),
            cold=TierStats(
                cold.rows,
                cold.logical_bytes,
                cold.stored_bytes,
                0,
                cold.hits,
                cold.misses,
            ),
            distinct_entries=len(hot) + len(warm) + cold.rows - overlap_entries,
            distinct_bytes=hot.logical_bytes
            + warm.logical_bytes
            + cold.logical_bytes
            - overlap_bytes,
            ram_bytes=tiers.ram_bytes(),
            budget_bytes=self.budget.limit,
            codec_ram_bytes=self.codec.ram_bytes(),
            put_calls=counters.put_calls,
            put_bytes=counters.put_bytes,
            new_entries=counters.new_entries,
            new_bytes=counters.new_bytes,
            dedup_ratio=ratio(counters.put_bytes, counters.new_bytes),
            compression_ratio=ratio(
                warm.logical_bytes + cold.logical_bytes, warm.stored_bytes + cold.stored_bytes
            ),
            promotions=tiers.promotions,
            demotions=tiers.demotions,
            dictionary_version=self.codec.version,
            dictionaries=self.codec.dictionaries,
            gc=GcStats(
                counters.gc_runs,
                counters.gc_reclaimed,
                counters.gc_reclaimed_bytes,
                counters.gc_disk_rows,
            ),
        )

    def __len__(self) -> int:
        """Distinct pieces of content known, in any tier."""
        return self.stats().distinct_entries

    def entries(self) -> Iterator[tuple[ContentRef, Tier, int]]:
        """``(ref, tier, holds)`` of every entry in RAM (hot and warm; not disk-only content)."""
        for entry in list(self._hot.values()):
            yield entry.ref, Tier.HOT, entry.count
        warm = self._warm
        snapshot = [(ContentRef(warm.key(slot)), warm.counts[slot]) for slot in warm.slots()]
        for ref, count in snapshot:
            yield ref, Tier.WARM, count

    def close(self) -> None:
        """Release RAM, stop the codec's trainer and close the cold-tier file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.codec.close()
        self._hot.clear()
        self._tiers.warm.clear()
        self._tiers.cold.close()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_room(ref: ContentRef, count: int, n: int) -> None:
    """Refuse holds past what a warm slot can count (``MAX_HOLDS``), in every tier alike."""
    if count > MAX_HOLDS - n:
        raise RefcountError(ref, f"has {count} hold(s); {n} more would pass {MAX_HOLDS}")
