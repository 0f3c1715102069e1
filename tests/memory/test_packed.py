"""The packed warm table: a plain model (a dict) must agree with it after every step.

The stateful test inserts, removes, touches, evicts and rewrites entries of many sizes (small
ones share chunks, large ones get their own), so chunks fill, empty, and get compacted while
other entries' bytes are moved; every step checks every entry's key, bytes and fields, and
every full CLOCK sweep hands out the entries not used since the last one before those that were.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from avm.memory.packed import CHUNK_BYTES, MAX_HOLDS, OWN_CHUNK, SLOT_BYTES, PackedTable


def key_of(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(9, "little", signed=True), digest_size=32).digest()


def payload(n: int, size: int) -> bytes:
    return hashlib.shake_256(n.to_bytes(8, "big")).digest(size)


sizes = st.one_of(
    st.integers(0, 64),
    st.integers(100, 3000),
    st.integers(OWN_CHUNK - 2, OWN_CHUNK + 2),
    st.integers(OWN_CHUNK, 3 * OWN_CHUNK),
)


class Entry:
    __slots__ = ("codec", "count", "data", "flags")

    def __init__(self, data: bytes, count: int, flags: int, codec: int) -> None:
        self.data, self.count, self.flags, self.codec = data, count, flags, codec


class PackedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = PackedTable()
        self.model: dict[bytes, Entry] = {}
        self.next_key = 0
        # Keys inserted or touched since the last full sweep, and whether a partial sweep has
        # since unmarked some of them (then the order of the next full sweep is not checked).
        self.used: set[bytes] = set()
        self.order_known = True

    @rule(size=sizes, count=st.integers(0, MAX_HOLDS), flags=st.integers(0, 255))
    def insert(self, size: int, count: int, flags: int) -> None:
        self.next_key += 1
        key = key_of(self.next_key)
        data = payload(self.next_key, size)
        codec = self.next_key % 5 - 1
        slot = self.table.insert(key, data, count, flags, codec)
        assert slot >= 0
        self.model[key] = Entry(data, count, flags, codec)
        self.used.add(key)

    @precondition(lambda self: len(self.model) > 0)
    @rule(pick=st.integers(0, 10**6))
    def remove(self, pick: int) -> None:
        key = list(self.model)[pick % len(self.model)]
        self.remove_key(key)
        assert self.table.find(key) == -1

    @precondition(lambda self: len(self.model) > 0)
    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=40))
    def remove_many(self, picks: list[int]) -> None:
        # Bursts of removals are what empty and compact chunks.
        for pick in picks:
            if not self.model:
                return
            self.remove(pick)

    @precondition(lambda self: len(self.model) > 0)
    @rule(pick=st.integers(0, 10**6))
    def touch(self, pick: int) -> None:
        key = list(self.model)[pick % len(self.model)]
        self.table.touch(self.table.find(key))
        self.used.add(key)

    @rule()
    def sweep_everything(self) -> None:
        table = self.table
        order = [table.key(slot) for slot in table.victims(2**62, len(self.model) + 5)]
        assert sorted(order) == sorted(self.model)  # every live entry, each once
        if self.order_known:
            untouched = [key for key in order if key not in self.used]
            assert order[: len(untouched)] == untouched  # second chance for the used ones
        self.used.clear()
        self.order_known = True

    @precondition(lambda self: len(self.model) > 0)
    @rule(size=st.integers(0, 20_000), limit=st.integers(1, 30))
    def evict(self, size: int, limit: int) -> None:
        table = self.table
        chosen = table.victims(size, limit)
        assert len(set(chosen)) == len(chosen) <= limit
        freed = [table.lengths[slot] + SLOT_BYTES for slot in chosen]
        if sum(freed) < size:
            assert len(chosen) in (limit, len(self.model))  # stopped early only when it had to
        elif chosen:
            assert sum(freed[:-1]) < size  # and no later than it had to
        keys = [table.key(slot) for slot in chosen]
        for key in keys:
            self.remove_key(key)
        self.order_known = False

    def remove_key(self, key: bytes) -> None:
        self.table.remove(self.table.find(key))
        del self.model[key]
        self.used.discard(key)

    @precondition(lambda self: len(self.model) > 0)
    @rule(pick=st.integers(0, 10**6), delta=st.integers(-5, 5), bit=st.sampled_from([1, 2, 4]))
    def change_fields(self, pick: int, delta: int, bit: int) -> None:
        key = list(self.model)[pick % len(self.model)]
        slot = self.table.find(key)
        entry = self.model[key]
        entry.count = min(MAX_HOLDS, max(0, entry.count + delta))
        self.table.counts[slot] = entry.count
        entry.flags ^= bit
        self.table.flags[slot] = entry.flags

    @rule(bit=st.sampled_from([1, 2, 4, 128]))
    def clear_flag(self, bit: int) -> None:
        self.table.clear_flag(bit)
        for entry in self.model.values():
            entry.flags &= ~bit

    @rule(n=st.integers(0, 10**9))
    def absent_keys_are_not_found(self, n: int) -> None:
        assert self.table.find(key_of(-1 - n)) == -1

    @invariant()
    def agrees_with_the_model(self) -> None:
        table = self.table
        assert len(table) == len(self.model)
        slots = list(table.slots())
        assert sorted(table.key(slot) for slot in slots) == sorted(self.model)
        for key, entry in self.model.items():
            slot = table.find(key)
            assert slot in slots
            assert bytes(table.data(slot)) == entry.data
            assert table.counts[slot] == entry.count
            assert table.flags[slot] == entry.flags
            assert table.codecs[slot] == entry.codec
        assert table.stored_bytes == sum(len(e.data) for e in self.model.values())

    @invariant()
    def freed_space_is_bounded(self) -> None:
        # Every chunk but the fill chunk is at least half live, so chunks hold at most twice
        # the live data plus one chunk, plus the big entries' own chunks.
        table = self.table
        assert table.chunk_count() * CHUNK_BYTES <= 2 * table.stored_bytes + 2 * CHUNK_BYTES + (
            sum(len(e.data) for e in self.model.values() if len(e.data) >= OWN_CHUNK)
            * (CHUNK_BYTES // OWN_CHUNK)
        )
        if not self.model:
            assert table.ram_bytes() == 0


TestPackedMachine = PackedMachine.TestCase
TestPackedMachine.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32))
def test_a_large_table_finds_every_key_after_churn(n: int, seed: int) -> None:
    """Index growth, shrinking and backward-shift deletion keep every key findable."""
    table = PackedTable()
    keys = [key_of(seed * 10_000 + i) for i in range(n)]
    for i, key in enumerate(keys):
        table.insert(key, payload(i, 40 + i % 300), i, 0, -1)
    for key in keys[::2]:
        table.remove(table.find(key))
    for i, key in enumerate(keys):
        slot = table.find(key)
        if i % 2 == 0:
            assert slot == -1
        else:
            assert table.key(slot) == key
            assert bytes(table.data(slot)) == payload(i, 40 + i % 300)
    assert len(table) == n // 2


def test_compaction_moves_live_bytes_and_gives_chunks_back() -> None:
    table = PackedTable()
    per_chunk = CHUNK_BYTES // 1000
    keys = [key_of(i) for i in range(per_chunk * 8)]
    for i, key in enumerate(keys):
        table.insert(key, payload(i, 1000), 1, 0, 0)
    assert table.chunk_count() == 8
    # Free three entries in four everywhere: the old chunks fall under half live and are
    # compacted into fresh ones, so RAM follows the live data (2 chunks' worth) down.
    for i, key in enumerate(keys):
        if i % 4:
            table.remove(table.find(key))
    assert table.stored_bytes == len(keys) // 4 * 1000
    assert table.chunk_count() <= 4
    for i, key in enumerate(keys):
        if i % 4 == 0:
            assert bytes(table.data(table.find(key))) == payload(i, 1000)


def test_entries_used_since_the_hand_passed_are_evicted_last() -> None:
    table = PackedTable()
    keys = [key_of(i) for i in range(200)]
    for i, key in enumerate(keys):
        table.insert(key, payload(i, 100), 0, 0, -1)
    table.victims(2**62, len(keys))  # a full sweep: nothing counts as used any more
    read = set(keys[10::20])
    for key in read:
        table.touch(table.find(key))
    size = (100 + SLOT_BYTES) * (len(keys) - len(read))
    chosen = [table.key(slot) for slot in table.victims(size, 1000)]
    assert len(chosen) == len(keys) - len(read)
    assert not read & set(chosen)


def test_free_slots_are_reused_and_skipped() -> None:
    table = PackedTable()
    keys = [key_of(i) for i in range(10)]
    slots = [table.insert(key, payload(i, 50), 0, 0, -1) for i, key in enumerate(keys)]
    for slot in slots[2:5]:
        table.remove(slot)
    assert list(table.slots()) == slots[:2] + slots[5:]
    assert sorted(table.victims(2**62, 100)) == slots[:2] + slots[5:]
    again = [table.insert(key_of(100 + i), payload(i, 50), 0, 0, -1) for i in range(4)]
    assert sorted(again) == [*slots[2:5], 10]  # the three freed slots first, then a new one
