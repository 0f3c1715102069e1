"""The packed warm table: a plain model (dict + LRU list) must agree with it after every step.

The stateful test inserts, removes, touches and rewrites entries of many sizes (small ones
share chunks, large ones get their own), so chunks fill, empty, and get compacted while other
entries' bytes are moved; every step checks every entry's key, bytes, fields and LRU position.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from avm.memory.packed import CHUNK_BYTES, MAX_HOLDS, OWN_CHUNK, PackedTable


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
        self.model: OrderedDict[bytes, Entry] = OrderedDict()  # oldest first
        self.next_key = 0

    @rule(size=sizes, count=st.integers(0, MAX_HOLDS), flags=st.integers(0, 255))
    def insert(self, size: int, count: int, flags: int) -> None:
        self.next_key += 1
        key = key_of(self.next_key)
        data = payload(self.next_key, size)
        codec = self.next_key % 5 - 1
        slot = self.table.insert(key, data, count, flags, codec)
        assert slot >= 0
        self.model[key] = Entry(data, count, flags, codec)

    @precondition(lambda self: len(self.model) > 0)
    @rule(pick=st.integers(0, 10**6))
    def remove(self, pick: int) -> None:
        key = list(self.model)[pick % len(self.model)]
        self.table.remove(self.table.find(key))
        del self.model[key]
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
        self.model.move_to_end(key)

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
        assert [table.key(slot) for slot in slots] == list(self.model)  # LRU order
        assert table.oldest() == (slots[0] if slots else -1)
        for slot, (key, entry) in zip(slots, self.model.items(), strict=True):
            assert table.find(key) == slot
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
