"""Where content lives, and what each place costs: hot, warm and cold tiers.

* **hot** — the original bytes in RAM, in least-recently-used order. A read is a dict lookup
  and hands out the stored ``bytes`` object itself (or a ``memoryview`` of it): no copy.
* **warm** — compressed bytes in RAM (:mod:`avm.memory.codec`: zstd with a dictionary trained
  on the fleet's messages), evicted in CLOCK order (an approximation of LRU), packed into
  shared arrays and 64 KiB chunks with no Python object per entry (:mod:`avm.memory.packed`):
  most of a large fleet's content sits here, and an object per entry would cost more than the
  compressed bytes. A read decompresses and promotes to hot.
* **cold** — rows in a SQLite file (WAL) in the state directory. Nothing of cold content stays in
  RAM, not even its hold count, which the row carries; a read loads the row, checks its hash,
  and promotes it to hot.

One record per hash: an entry is either in RAM (hot or warm; its hold count is the true one,
and ``ON_DISK`` says a row also exists, whose ``holds`` column is then stale) or only on disk
(the row's ``holds`` is the true count). Holds are taken by live holders, so they do not
survive a restart: opening the file zeroes them, and roots are what persists.

Each tier accounts the RAM it really holds: in hot, the stored bytes *plus* CPython's object
headers, the entry record, the 32-byte key and the map slot, as measured for CPython 3.11 (see
the cost constants below); in warm, the chunks as allocated plus the packed table's arrays.
``tests/memory/test_budget.py`` checks both against ``tracemalloc``.
:mod:`avm.memory.budget` decides *when* content moves; this module owns *how*: the entry record,
the three containers, and the moves between them.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import blake3
import msgspec

from avm.memory.codec import RAW, Codec
from avm.memory.errors import ContentCorrupt, ContentError, StoreClosed
from avm.memory.packed import PackedTable
from avm.memory.refs import ContentRef

__all__ = [
    "LINKS",
    "MARK",
    "ON_DISK",
    "ColdRow",
    "ColdTier",
    "DiskFilter",
    "Entry",
    "HotTier",
    "Tier",
    "TierSet",
    "WarmTier",
    "bytes_object_cost",
]

log = logging.getLogger(__name__)


class Tier(enum.IntEnum):
    """Where a piece of content's bytes are: RAM as is, RAM compressed, or disk."""

    HOT = 0
    WARM = 1
    COLD = 2


LINKS = 1
"""Entry flag: the content is a link list (``put_links``); garbage collection follows it."""
ON_DISK = 2
"""Entry flag: a copy is in the cold-tier file, so moving the entry to cold writes nothing."""
MARK = 4
"""Entry flag: reached by the garbage collection in progress (never set between collections)."""


class Entry(msgspec.Struct, gc=False):
    """The store's record of one piece of content.

    ``gc=False``: an entry holds only bytes and ints, so it can never be part of a reference
    cycle, and keeping millions of them out of the cyclic collector's lists saves 16 bytes each
    and keeps collector pauses from growing with the store.
    """

    ref: ContentRef  # the key object itself, so put() can hand every caller the same object
    data: bytes | None  # hot: original bytes; warm: codec output; cold: None
    tier: int
    codec: int = RAW  # warm: the codec that produced ``data``
    count: int = 0  # holds (incref/decref); never negative
    flags: int = 0  # LINKS | ON_DISK | MARK


# -- what RAM really costs (CPython 3.11, 64-bit) -------------------------------------------


def _block(size: int) -> int:
    """Bytes an allocation of ``size`` really takes: pymalloc rounds small blocks to 16 bytes;
    larger ones come from malloc, which adds a 16-byte header and also aligns to 16."""
    if size <= 512:
        return (size + 15) & ~15
    return (size + 16 + 15) & ~15


_BYTES_HEADER = sys.getsizeof(b"")  # 33: object header, length, hash, trailing NUL
ENTRY_BYTES = _block(sys.getsizeof(Entry(ContentRef(b""), None, 0)))
REF_BYTES = _block(_BYTES_HEADER + 32)
# One slot of an OrderedDict, averaged over the table's growth: the dict's index and entry
# (~52 bytes at typical fill) plus the linked-list node (32) and fast-node index (~13). Measured
# with tracemalloc over 200,000 inserts (105.4 bytes); test_budget.py re-checks it.
LRU_SLOT_BYTES = 106


def bytes_object_cost(size: int) -> int:
    """RAM of a ``bytes`` object holding ``size`` bytes."""
    return _block(_BYTES_HEADER + size)


# Fixed cost of one hot or warm entry besides its data.
RAM_ENTRY_BYTES = ENTRY_BYTES + REF_BYTES + LRU_SLOT_BYTES


class _RamTier:
    """An LRU map of entries whose data is in RAM, with its byte counts kept current."""

    __slots__ = (
        "entries",
        "hits",
        "logical_bytes",
        "misses",
        "on_disk_bytes",
        "on_disk_entries",
        "ram_bytes",
        "stored_bytes",
    )

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.logical_bytes = 0  # original size of what is held
        self.stored_bytes = 0  # size of the data objects as stored (compressed in warm)
        self.ram_bytes = 0  # stored bytes plus every overhead (what the budget counts)
        self.on_disk_bytes = 0  # logical bytes of entries that also have a disk copy
        self.on_disk_entries = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _account(self, entry: Entry, stored: int, logical: int, sign: int) -> None:
        self.stored_bytes += sign * stored
        self.logical_bytes += sign * logical
        self.ram_bytes += sign * (bytes_object_cost(stored) + RAM_ENTRY_BYTES)
        if entry.flags & ON_DISK:
            self.on_disk_bytes += sign * logical
            self.on_disk_entries += sign

    def mark_on_disk(self, entry: Entry, logical: int) -> None:
        """Record that ``entry`` (held in this tier) now also has a copy on disk."""
        if not entry.flags & ON_DISK:
            entry.flags |= ON_DISK
            self.on_disk_bytes += logical
            self.on_disk_entries += 1

    def oldest(self) -> Entry | None:
        """The least recently used entry, or ``None`` if the tier is empty."""
        for entry in self.entries.values():
            return entry
        return None


class HotTier(_RamTier):
    """Original bytes in RAM, least recently used first."""

    __slots__ = ()

    def add(self, entry: Entry, data: bytes) -> None:
        entry.data = data
        entry.tier = Tier.HOT
        entry.codec = RAW
        self.entries[entry.ref] = entry
        size = len(data)
        self._account(entry, size, size, 1)

    def remove(self, entry: Entry) -> bytes:
        """Take ``entry`` out of the tier; its data, which the entry no longer holds."""
        del self.entries[entry.ref]
        data = entry.data
        assert data is not None
        entry.data = None
        size = len(data)
        self._account(entry, size, size, -1)
        return data


class WarmTier:
    """Compressed bytes in RAM, evicted in CLOCK order, packed (:mod:`avm.memory.packed`).

    An entry here is a slot number, not an object: its key, holds, flags, codec and bytes live
    in shared arrays and chunks. Nothing keeps the caller's ref object, so a ref handed out
    for warm content is a fresh ``bytes`` (equal to every other, not the same object).
    """

    __slots__ = (
        "codec",
        "hits",
        "logical_bytes",
        "misses",
        "on_disk_bytes",
        "on_disk_entries",
        "table",
    )

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.table = PackedTable()
        self.logical_bytes = 0
        self.on_disk_bytes = 0
        self.on_disk_entries = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.table)

    @property
    def stored_bytes(self) -> int:
        return self.table.stored_bytes

    @property
    def ram_bytes(self) -> int:
        return self.table.ram_bytes()

    def add(self, ref: bytes, data: bytes, count: int, flags: int) -> int:
        """Compress ``data`` (original bytes) into the tier under ``ref``; its slot."""
        codec, stored = self.codec.compress(data)
        slot = self.table.insert(ref, stored, count, flags, codec)
        self._account(flags, len(data), 1)
        return slot

    def _account(self, flags: int, logical: int, sign: int) -> None:
        self.logical_bytes += sign * logical
        if flags & ON_DISK:
            self.on_disk_bytes += sign * logical
            self.on_disk_entries += sign

    def logical_size(self, slot: int) -> int:
        """The original size of the slot's content, from the stored frame (no decompression)."""
        return self.codec.content_size(self.table.codecs[slot], self.table.data(slot))

    def read(self, slot: int) -> bytes:
        """The slot's original bytes, leaving it where it is."""
        return self.codec.decompress(self.table.codecs[slot], self.table.data(slot))

    def take(self, slot: int) -> tuple[bytes, int, int]:
        """Remove the slot; ``(original bytes, holds, flags)``."""
        table = self.table
        data = self.read(slot)
        count, flags = table.counts[slot], table.flags[slot]
        self._account(flags, len(data), -1)
        table.remove(slot)
        return data, count, flags

    def discard(self, slot: int) -> int:
        """Remove the slot without decompressing; its logical size."""
        logical = self.logical_size(slot)
        self._account(self.table.flags[slot], logical, -1)
        self.table.remove(slot)
        return logical

    def mark_on_disk(self, slot: int, logical: int) -> None:
        """Record that ``slot`` now also has a copy on disk."""
        flags = self.table.flags
        if not flags[slot] & ON_DISK:
            flags[slot] |= ON_DISK
            self.on_disk_bytes += logical
            self.on_disk_entries += 1

    def codec_of(self, ref: bytes) -> int | None:
        """The codec that compressed ``ref``'s warm copy, or ``None`` if it is not warm."""
        slot = self.table.find(ref)
        return None if slot < 0 else self.table.codecs[slot]

    def clear(self) -> None:
        self.table.clear()
        self.logical_bytes = self.on_disk_bytes = self.on_disk_entries = 0


Durability = Literal["durable", "relaxed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS content (
    hash  BLOB NOT NULL UNIQUE,
    codec INTEGER NOT NULL,
    size  INTEGER NOT NULL,
    links INTEGER NOT NULL,
    holds INTEGER NOT NULL,
    data  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS content_links ON content(hash) WHERE links != 0;
CREATE INDEX IF NOT EXISTS content_held ON content(hash) WHERE holds > 0;
CREATE TABLE IF NOT EXISTS dictionaries (
    version INTEGER PRIMARY KEY,
    data    BLOB NOT NULL
);
"""

# In relaxed mode, let the WAL grow to ~40 MB before checkpointing: each checkpoint syncs the
# database file, and at SQLite's default (4 MB) those syncs dominated the cost of spilling.
_CHECKPOINT_PAGES = 10_000
# Page cache of the cold-tier connection (KiB, as SQLite's negative cache_size): a batch of
# spilled content touches pages all over the hash index, and at SQLite's default (2 MB) a
# large batch re-read and re-spilled the same pages. Allocated only as pages are used. It is
# RAM outside the store's budget, so a store with a budget gets an eighth of it, within these.
MAX_CACHE_KIB = 32 * 1024
MIN_CACHE_KIB = 2 * 1024

_FILTER_PROBES = struct.Struct("<4I")


class DiskFilter:
    """A Bloom filter over the hashes on disk: "certainly not on disk" without a query.

    Every new piece of content must be checked against the cold tier (one record per hash), and
    a SQLite lookup costs ~10 µs; the filter answers most checks in ~1 µs from 16 bits per row.
    BLAKE3 digests are uniform, so the four probes are simply four 32-bit words of the hash.
    It cannot forget a hash, so it is rebuilt (from a scan of the hashes) when it fills up and
    after every garbage collection, which scans the hashes anyway.
    """

    __slots__ = ("_bits", "_mask", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        nbits = 1 << max(20, (max(capacity, 1) * 16 - 1).bit_length())
        self._bits = bytearray(nbits // 8)
        self._mask = nbits - 1
        self.capacity = nbits // 16
        self.count = 0

    @property
    def ram_bytes(self) -> int:
        return len(self._bits)

    def add(self, ref: bytes) -> None:
        bits, mask = self._bits, self._mask
        for word in _FILTER_PROBES.unpack_from(ref):
            bit = word & mask
            bits[bit >> 3] |= 1 << (bit & 7)
        self.count += 1

    def __contains__(self, ref: bytes) -> bool:
        bits, mask = self._bits, self._mask
        for word in _FILTER_PROBES.unpack_from(ref):
            bit = word & mask
            if not bits[bit >> 3] & (1 << (bit & 7)):
                return False
        return True


def _first(row: NewRow) -> bytes:
    return row[0]


def _second(count: tuple[int, bytes]) -> bytes:
    return count[1]


class ColdRow(msgspec.Struct, frozen=True):
    """One row of the cold tier, as stored (``data`` is the codec's output)."""

    codec: int
    size: int
    links: int
    holds: int
    data: bytes


NewRow = tuple[bytes, int, int, int, int, bytes]  # hash, codec, size, links, holds, data


class ColdTier:
    """Content on disk: one SQLite file in WAL mode, read lazily row by row.

    A rowid table with a unique index on the hash rather than a ``WITHOUT ROWID`` table: rows
    carry blobs of up to tens of KiB, which SQLite stores badly inside the primary-key B-tree.
    Partial indexes find the few rows garbage collection needs to start from (link lists and
    held rows) without reading the table. Writes come in batches, one transaction each;
    ``durable`` syncs every commit.
    """

    def __init__(
        self, path: Path, durability: Durability = "relaxed", cache_kib: int = MAX_CACHE_KIB
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if durability == "durable":
            pragmas = "PRAGMA synchronous=FULL;"
        else:
            pragmas = f"PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES};"
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.executescript(
                "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;"
                f"PRAGMA cache_size=-{int(cache_kib)};" + pragmas + _SCHEMA
            )
            # Holds belonged to holders of an earlier process; none of them is alive now.
            self._db.execute("UPDATE content SET holds = 0 WHERE holds > 0")
            rows, logical, stored = self._db.execute(
                "SELECT COUNT(*), TOTAL(size), TOTAL(length(data)) FROM content"
            ).fetchone()
        except sqlite3.Error as exc:
            raise ContentError(f"cannot open the cold-tier file {path}: {exc}") from None
        self.rows = int(rows)
        self.logical_bytes = int(logical)
        self.stored_bytes = int(stored)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._closed = False
        self.filter = DiskFilter(0)
        self._rebuild_filter()

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"the content store's cold tier {self.path} is closed")

    def _fail(self, action: str, exc: sqlite3.Error) -> ContentError:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        return ContentError(f"{action} the cold-tier file {self.path} failed: {exc}")

    def _rebuild_filter(self) -> None:
        fresh = DiskFilter(self.rows * 2)
        for ref in self.hashes():
            fresh.add(ref)
        self.filter = fresh

    def write(self, rows: list[NewRow]) -> None:
        """Insert rows for content not yet on disk, in one transaction.

        The store keeps one record per hash, so a row here is always new; a duplicate means
        that invariant broke, and fails loudly rather than overwriting.
        """
        self._check()
        db = self._db
        ordered = sorted(rows, key=_first)
        try:
            db.execute("BEGIN")
            # In hash order: the hash indexes then take the batch leaf by leaf, instead of
            # one random page per row (what made spilling a large fleet slow down as it grew).
            db.executemany(
                "INSERT INTO content(hash, codec, size, links, holds, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ordered,
            )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail("writing to", exc) from None
        for row in rows:
            self.filter.add(row[0])
            self.logical_bytes += row[2]
            self.stored_bytes += len(row[5])
        self.rows += len(rows)
        self.writes += len(rows)
        if self.filter.count > self.filter.capacity:
            self._rebuild_filter()

    def set_holds(self, counts: Sequence[tuple[int, bytes]]) -> None:
        """Record ``(holds, hash)`` for rows whose RAM entries are leaving RAM."""
        self._check()
        ordered = sorted(counts, key=_second)
        try:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE content SET holds = ? WHERE hash = ?", ordered)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail("updating", exc) from None

    def add_holds(self, ref: bytes, delta: int) -> int | None:
        """Change a row's hold count by ``delta`` unless it would go negative.

        Returns the new count, or ``None`` if there is no such row or too few holds.
        """
        self._check()
        if ref not in self.filter:
            return None
        try:
            row = self._db.execute(
                "UPDATE content SET holds = holds + ? WHERE hash = ? AND holds + ? >= 0 "
                "RETURNING holds",
                (delta, ref, delta),
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._fail("updating", exc) from None
        return None if row is None else int(row[0])

    def read(self, ref: bytes) -> ColdRow | None:
        """The row stored under ``ref``, or ``None``."""
        self._check()
        if ref not in self.filter:
            return None
        try:
            row = self._db.execute(
                "SELECT codec, size, links, holds, data FROM content WHERE hash = ?", (ref,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._fail("reading", exc) from None
        if row is None:
            return None
        codec, size, links, holds, data = row
        return ColdRow(int(codec), int(size), int(links), int(holds), bytes(data))

    def lookup(self, ref: bytes) -> tuple[int, int] | None:
        """``(links flag, holds)`` of the row for ``ref``, without its data; ``None`` if absent."""
        self._check()
        if ref not in self.filter:
            return None
        row = self._db.execute("SELECT links, holds FROM content WHERE hash = ?", (ref,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def sweep(self, keep: Callable[[bytes], bool]) -> tuple[int, int]:
        """Delete every row whose hash ``keep`` rejects; ``(rows deleted, logical bytes)``.

        The filter is rebuilt from the hashes that remain, in the same scan.
        """
        self._check()
        doomed: list[tuple[int]] = []
        fresh = DiskFilter(self.rows * 2)
        logical = stored = 0
        cursor = self._db.execute("SELECT rowid, hash, size, length(data) FROM content")
        while batch := cursor.fetchmany(4096):
            for rowid, raw, size, length in batch:
                ref = bytes(raw)
                if keep(ref):
                    fresh.add(ref)
                else:
                    doomed.append((rowid,))
                    logical += size
                    stored += length
        if doomed:
            try:
                self._db.execute("BEGIN")
                # By rowid, in rowid order: the table is walked once, front to back.
                self._db.executemany("DELETE FROM content WHERE rowid = ?", doomed)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._fail("deleting from", exc) from None
            self.rows -= len(doomed)
            self.logical_bytes -= logical
            self.stored_bytes -= stored
        self.filter = fresh
        return len(doomed), logical

    def hashes(self) -> Iterator[bytes]:
        """Every hash on disk."""
        return self._scan("SELECT hash FROM content")

    def link_hashes(self) -> Iterator[bytes]:
        """The hashes of link lists on disk (few: manifests and checkpoints)."""
        return self._scan("SELECT hash FROM content WHERE links != 0")

    def held_hashes(self) -> Iterator[bytes]:
        """The hashes of rows with holds (content held while it is cold)."""
        return self._scan("SELECT hash FROM content WHERE holds > 0")

    def _scan(self, sql: str) -> Iterator[bytes]:
        self._check()
        # Read in pages; callers change the table only after the scan, never during it.
        cursor = self._db.execute(sql)
        while batch := cursor.fetchmany(4096):
            for (ref,) in batch:
                yield bytes(ref)

    def save_dictionary(self, version: int, data: bytes) -> None:
        self._check()
        self._db.execute(
            "INSERT OR REPLACE INTO dictionaries(version, data) VALUES (?, ?)", (version, data)
        )

    def load_dictionary(self, version: int) -> bytes | None:
        self._check()
        row = self._db.execute(
            "SELECT data FROM dictionaries WHERE version = ?", (version,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def latest_dictionary(self) -> tuple[int, bytes] | None:
        self._check()
        row = self._db.execute(
            "SELECT version, data FROM dictionaries ORDER BY version DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()


class TierSet:
    """The three tiers and the moves between them; the store's index is the union of them.

    Every entry the store knows is in exactly one place: ``hot.entries`` (an :class:`Entry`),
    the warm table (a slot), or only on disk (no RAM at all).
    """

    def __init__(self, codec: Codec, cold: ColdTier) -> None:
        self.codec = codec
        self.hot = HotTier()
        self.warm = WarmTier(codec)
        self.cold = cold
        self.promotions = 0
        self.demotions = 0

    def ram_bytes(self) -> int:
        """Everything the tiers hold in RAM, overheads included, plus the codec's state."""
        return (
            self.hot.ram_bytes
            + self.warm.ram_bytes
            + self.codec.ram_bytes()
            + self.cold.filter.ram_bytes
        )

    def to_warm(self, entry: Entry) -> None:
        """Compress a hot entry into the warm tier (its :class:`Entry` is dropped)."""
        data = self.hot.remove(entry)
        self.warm.add(entry.ref, data, entry.count, entry.flags)
        self.demotions += 1

    def _hot_row(self, entry: Entry) -> NewRow:
        assert entry.data is not None
        codec, stored = self.codec.compress(entry.data)
        return entry.ref, codec, len(entry.data), entry.flags & LINKS, entry.count, stored

    def _warm_row(self, slot: int) -> NewRow:
        table = self.warm.table
        return (
            table.key(slot),
            table.codecs[slot],
            self.warm.logical_size(slot),
            table.flags[slot] & LINKS,
            table.counts[slot],
            bytes(table.data(slot)),
        )

    def to_cold(self, entries: Sequence[Entry] = (), slots: Sequence[int] = ()) -> None:
        """Move hot entries and warm slots to disk, one transaction each for rows and counts.

        Rows are written before any RAM copy is dropped, so a failed write loses nothing.
        """
        flags, counts_of = self.warm.table.flags, self.warm.table.counts
        new_rows = [self._hot_row(entry) for entry in entries if not entry.flags & ON_DISK]
        new_rows += [self._warm_row(slot) for slot in slots if not flags[slot] & ON_DISK]
        counts: list[tuple[int, bytes]] = [
            (entry.count, entry.ref) for entry in entries if entry.flags & ON_DISK
        ]
        counts += [
            (counts_of[slot], self.warm.table.key(slot)) for slot in slots if flags[slot] & ON_DISK
        ]
        if new_rows:
            self.cold.write(new_rows)
        if counts:
            self.cold.set_holds(counts)
        for entry in entries:
            self.hot.remove(entry)
            entry.tier = Tier.COLD
            entry.flags |= ON_DISK
            entry.codec = RAW
        for slot in slots:
            self.warm.discard(slot)
        self.demotions += len(entries) + len(slots)

    def persist(self, entries: Sequence[Entry] = (), slots: Sequence[int] = ()) -> None:
        """Write RAM content to disk without moving it (durability for journal payloads)."""
        flags = self.warm.table.flags
        hot = [entry for entry in entries if not entry.flags & ON_DISK]
        warm = [slot for slot in slots if not flags[slot] & ON_DISK]
        rows = [self._hot_row(entry) for entry in hot] + [self._warm_row(slot) for slot in warm]
        if rows:
            self.cold.write(rows)
        for entry, row in zip(hot, rows[: len(hot)], strict=True):
            self.hot.mark_on_disk(entry, row[2])
        for slot, row in zip(warm, rows[len(hot) :], strict=True):
            self.warm.mark_on_disk(slot, row[2])

    def read_cold(self, ref: bytes) -> tuple[bytes, ColdRow] | None:
        """``(original bytes, row)`` of a disk row, hash-checked; ``None`` if absent."""
        row = self.cold.read(ref)
        if row is None:
            return None
        data = self.codec.decompress(row.codec, row.data)
        if blake3.blake3(data).digest() != ref:
            raise ContentCorrupt(ref, str(self.cold.path))
        return data, row

    def promote(self, slot: int, ref: ContentRef) -> tuple[Entry, bytes]:
        """Bring a warm slot's content (named ``ref``) back to the hot tier.

        ``ref`` becomes the hot entry's key object: pass the caller's own, so every later
        caller gets the object agents already hold.
        """
        data, count, flags = self.warm.take(slot)
        entry = Entry(ref, None, Tier.HOT, count=count, flags=flags)
        self.hot.add(entry, data)
        self.promotions += 1
        return entry, data

    def load(self, ref: ContentRef) -> tuple[Entry, bytes] | None:
        """Bring disk-only content into the hot tier with its holds; ``None`` if absent."""
        loaded = self.read_cold(ref)
        if loaded is None:
            return None
        data, row = loaded
        entry = Entry(ref, None, Tier.COLD, count=row.holds, flags=ON_DISK | (row.links and LINKS))
        self.hot.add(entry, data)
        self.promotions += 1
        return entry, data
