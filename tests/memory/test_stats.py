"""Store statistics: dedup and compression ratios, per-tier bytes, JSON-ready snapshots."""

from __future__ import annotations

import msgspec
from memory_workloads import chat_message

from avm.memory import ContentStore, MemoryStats, Tier, collect


def test_dedup_and_compression_ratios(store: ContentStore) -> None:
    prompt = "shared system prompt " * 500
    refs = []
    for agent in range(50):
        store.put("".join([prompt]))
        refs.append(store.put(chat_message(agent)))
    stats = store.stats()
    logical = len(prompt) + sum(len(chat_message(agent)) for agent in range(50))
    assert stats.new_bytes == stats.distinct_bytes == logical
    assert stats.put_bytes == 50 * len(prompt) + logical - len(prompt)
    assert stats.dedup_ratio == round(stats.put_bytes / logical, 4)
    assert stats.compression_ratio == 1.0  # nothing compressed yet
    store.demote(refs, Tier.WARM)
    stats = store.stats()
    assert stats.compression_ratio == round(stats.warm.logical_bytes / stats.warm.stored_bytes, 4)
    assert stats.compression_ratio > 1.5
    assert stats.hot.entries == 1
    assert stats.distinct_bytes == logical


def test_ram_bytes_add_up(store: ContentStore) -> None:
    refs = [store.put(chat_message(i)) for i in range(100)]
    store.demote(refs[:50], Tier.WARM)
    store.demote(refs[50:75], Tier.COLD)
    stats = store.stats()
    assert stats.ram_bytes >= stats.hot.ram_bytes + stats.warm.ram_bytes + stats.codec_ram_bytes
    assert stats.cold.ram_bytes == 0
    assert stats.hot.ram_bytes > stats.hot.stored_bytes  # overheads are counted
    assert stats.distinct_entries == 100


def test_gc_totals_and_json(store: ContentStore) -> None:
    for i in range(10):
        store.put(chat_message(i), hold=False)
    collect(store)
    stats = store.stats()
    assert (stats.gc.runs, stats.gc.reclaimed_entries) == (1, 10)
    assert stats.gc.reclaimed_bytes == sum(len(chat_message(i)) for i in range(10))
    decoded = msgspec.json.decode(msgspec.json.encode(stats), type=MemoryStats)
    assert decoded == stats
    assert stats.hit_ratio == 1.0
