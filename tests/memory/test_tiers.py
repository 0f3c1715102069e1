"""Content round-trips through every tier; the cold tier is lazy, checked and reopenable."""

from __future__ import annotations

import sqlite3
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_workloads import chat_message

from avm.memory import RAW, ZSTD, Codec, ContentCorrupt, ContentStore, Tier

texty = st.text(min_size=0, max_size=3000).map(str.encode)
payloads = st.binary(max_size=5000) | texty | st.builds(chat_message, st.integers(0, 10**6))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=payloads, path=st.sampled_from(["warm", "cold", "warm-cold"]))
def test_put_get_round_trips_through_every_tier(
    store: ContentStore, data: bytes, path: str
) -> None:
    ref = store.put(data)
    for step in path.split("-"):
        store.demote([ref], Tier.WARM if step == "warm" else Tier.COLD)
        assert store.tier_of(ref) == (Tier.WARM if step == "warm" else Tier.COLD)
    assert store.get(ref) == data
    assert store.tier_of(ref) == Tier.HOT  # read brings it back up
    assert store.get(ref) == data
    store.decref(ref)


def test_warm_is_compressed_and_cold_keeps_no_ram(store: ContentStore) -> None:
    refs = [store.put(chat_message(i)) for i in range(300)]
    logical = sum(len(chat_message(i)) for i in range(300))
    store.demote(refs, Tier.WARM)
    warm = store.stats().warm
    assert warm.entries == 300
    assert warm.logical_bytes == logical
    assert warm.stored_bytes < logical / 1.5
    store.demote(refs, Tier.COLD)
    stats = store.stats()
    assert stats.hot.entries == stats.warm.entries == 0
    assert stats.hot.ram_bytes == stats.warm.ram_bytes == 0
    assert stats.cold.entries == 300
    assert stats.cold.logical_bytes == logical
    assert [store.get(ref) for ref in refs] == [chat_message(i) for i in range(300)]


def test_reads_are_counted_per_tier(store: ContentStore) -> None:
    hot, warm, cold = (store.put(f"content {i} ".encode() * 30) for i in range(3))
    store.demote([warm], Tier.WARM)
    store.demote([cold], Tier.COLD)
    for ref in (hot, warm, cold):
        store.get(ref)
    store.get(hot)
    stats = store.stats()
    assert (stats.hot.hits, stats.hot.misses) == (2, 2)
    assert (stats.warm.hits, stats.warm.misses) == (1, 1)
    assert (stats.cold.hits, stats.cold.misses) == (1, 0)
    assert stats.promotions == 2


def test_entries_record_the_dictionary_that_compressed_them(store: ContentStore) -> None:
    codec = store.codec
    early = [store.put(chat_message(i)) for i in range(200)]
    store.demote(early, Tier.WARM)
    assert {store._tiers.warm.codec_of(ref) for ref in early} <= {ZSTD, RAW}
    assert codec.train_now() == 1
    middle = [store.put(chat_message(i)) for i in range(200, 400)]
    store.demote(middle, Tier.WARM)
    assert {store._tiers.warm.codec_of(ref) for ref in middle} == {1}
    assert codec.train_now() == 2
    late = [store.put(chat_message(i)) for i in range(400, 600)]
    store.demote(late, Tier.COLD)
    # Every generation still decodes, from RAM and from disk.
    store.demote(early + middle, Tier.COLD)
    for index, ref in enumerate(early + middle + late):
        assert store.get(ref) == chat_message(index)


def test_dictionaries_survive_a_reopen(make_store: Callable[..., ContentStore]) -> None:
    store = make_store()
    for i in range(300):
        store.put(chat_message(i))
    assert store.codec.train_now() == 1
    refs = [store.put(chat_message(i)) for i in range(1000, 1100)]
    store.demote(refs, Tier.COLD)
    store.close()
    reopened = make_store()
    assert reopened.codec.version == 1  # resumes compressing with the latest dictionary
    assert [reopened.get(ref) for ref in refs] == [chat_message(i) for i in range(1000, 1100)]
    for i in range(300):
        reopened.put(chat_message(i + 5000))
    assert reopened.codec.train_now() == 2  # numbering continues after the stored versions


def test_a_damaged_row_is_detected(store: ContentStore) -> None:
    ref = store.put(b"important " * 40)
    store.demote([ref])
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE content SET data = ?, codec = ? WHERE hash = ?", (b"evil", RAW, ref))
    with pytest.raises(ContentCorrupt, match=ref.hex()):
        store.get(ref)


def test_incompressible_content_is_kept_raw(store: ContentStore) -> None:
    import os

    noise = os.urandom(2000)
    ref = store.put(noise)
    store.demote([ref], Tier.WARM)
    assert store._tiers.warm.codec_of(ref) == RAW
    assert store.get(ref) == noise


def test_background_training_installs_a_better_dictionary(
    make_store: Callable[..., ContentStore],
) -> None:
    codec = Codec(first_training=500)
    store = make_store(codec=codec)
    for i in range(600):
        store.put(chat_message(i))
    codec.wait_for_training()
    (info,) = codec.dictionaries
    assert info.version == 1
    assert info.ratio > info.plain_ratio
    ref = store.put(chat_message(10**6))
    store.demote([ref], Tier.WARM)
    assert store._tiers.warm.codec_of(ref) == 1
    assert store.get(ref) == chat_message(10**6)


def test_warm_entries_are_not_python_objects(store: ContentStore) -> None:
    """The warm tier packs entries into shared arrays and chunks: no allocation per entry."""
    refs = [store.put(chat_message(i)) for i in range(20_000)]
    tracemalloc.start()
    try:
        store.demote(refs, Tier.WARM)
        blocks = sum(stat.count for stat in tracemalloc.take_snapshot().statistics("filename"))
    finally:
        tracemalloc.stop()
    assert store.stats().warm.entries == 20_000
    assert blocks < 1_000  # chunks and array buffers: a few hundred blocks for 20,000 entries
    assert [store.get(ref) for ref in refs[:50]] == [chat_message(i) for i in range(50)]
