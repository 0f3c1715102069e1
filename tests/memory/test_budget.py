"""The memory budget: parsed like --memory, respected after every operation, never losing data."""

from __future__ import annotations

import hashlib
import sys
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_workloads import chat_message

from avm.errors import ConfigError
from avm.memory import Codec, ContentStore, MemoryBudget, Tier
from avm.memory.budget import MIN_BUDGET

MiB = 1024 * 1024


def test_budgets_parse_like_the_memory_flag() -> None:
    assert MemoryBudget.of("2GB").limit == 2_000_000_000
    assert MemoryBudget.of("512MiB").limit == 512 * MiB
    assert MemoryBudget.of(None).limit is None
    budget = MemoryBudget(limit=64 * MiB, hot_fraction=0.25)
    assert MemoryBudget.of(budget) is budget
    assert budget.hot_limit == 16 * MiB


def test_a_budget_string_may_name_the_hot_share() -> None:
    assert MemoryBudget.of("2GB,hot=64MB") == MemoryBudget(limit=2_000_000_000, hot_fraction=0.032)
    assert MemoryBudget.of("1GiB, hot=5%").hot_limit == int(1024 * MiB * 0.05)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("2GB,cold=1GB", "'cold=1GB'"),
        ("2GB,hot=", "'hot='"),
        ("2GB,hot=many%", "'many%'"),
        ("2GB,hot=3TB", "hot_fraction"),
    ],
)
def test_a_bad_budget_string_says_what_it_could_not_read(text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        MemoryBudget.of(text)


@pytest.mark.parametrize(
    "options",
    [{"limit": MIN_BUDGET - 1}, {"limit": 8 * MiB, "hot_fraction": 0}, {"slack": 1.0}],
)
def test_bad_budgets_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        MemoryBudget(**options)  # type: ignore[arg-type]


def test_unbounded_store_moves_nothing(store: ContentStore) -> None:
    for i in range(2000):
        store.put(chat_message(i))
    stats = store.stats()
    assert stats.hot.entries == 2000
    assert stats.demotions == 0


def blob(seed: int, size: int) -> bytes:
    """``size`` bytes, compressible about 2x (hex digits), distinct for every ``seed``."""
    return hashlib.shake_256(seed.to_bytes(8, "little")).hexdigest(size // 2 + 1)[:size].encode()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "put", "put", "get"]), st.integers(0, 10**9)),
        min_size=200,
        max_size=600,
    ),
    size=st.integers(2_000, 30_000),
    hot_fraction=st.sampled_from([0.1, 0.5, 0.9]),
)
def test_eviction_under_a_budget_never_loses_content(
    ops: list[tuple[str, int]], size: int, hot_fraction: float
) -> None:
    # A fresh store (and temporary directory) per example: fixtures outlive examples.
    budget = MemoryBudget(limit=MIN_BUDGET, hot_fraction=hot_fraction)
    with ContentStore(budget=budget, codec=Codec(background=False)) as store:
        check_budget_run(store, ops, size, hot_fraction)


def check_budget_run(
    store: ContentStore, ops: list[tuple[str, int]], size: int, hot_fraction: float
) -> None:
    written: dict[bytes, bytes] = {}
    order: list[bytes] = []
    ref: bytes
    for op, seed in ops:
        if op == "put" or not order:
            data = blob(seed, size + seed % 1000)
            ref = store.put(data, hold=seed % 2 == 0)
            written[ref] = data
            order.append(ref)
        else:
            ref = order[seed % len(order)]
            assert store.get(ref) == written[ref]
        stats = store.stats()
        assert stats.ram_bytes <= MIN_BUDGET
        assert stats.hot.ram_bytes <= MIN_BUDGET * hot_fraction
    stats = store.stats()
    assert stats.distinct_entries == len(written)
    assert stats.distinct_bytes == sum(map(len, written.values()))
    for ref, data in written.items():
        assert store.get(ref) == data


def test_recently_read_content_stays_hot(make_store: Callable[..., ContentStore]) -> None:
    store = make_store(budget=MemoryBudget(limit=8 * MiB, hot_fraction=0.25))
    favourite = store.put(blob(10**12, 20_000))
    for seed in range(1000):
        store.put(blob(seed, 20_000))
        store.get(favourite)
    assert store.tier_of(favourite) == Tier.HOT
    stats = store.stats()
    assert stats.cold.entries > 0
    assert stats.warm.entries > 0
    assert stats.ram_bytes <= 8 * MiB


def test_content_comes_back_up_on_access(make_store: Callable[..., ContentStore]) -> None:
    store = make_store(budget=MemoryBudget(limit=MIN_BUDGET, hot_fraction=0.5))
    first = store.put(blob(0, 10_000))
    for seed in range(1, 1500):
        store.put(blob(seed, 10_000))
    assert store.tier_of(first) == Tier.COLD
    assert store.get(first) == blob(0, 10_000)
    assert store.tier_of(first) == Tier.HOT
    assert store.holds(first) == 1


@pytest.mark.parametrize("tier", [Tier.HOT, Tier.WARM])
def test_ram_accounting_matches_tracemalloc(tier: Tier) -> None:
    """The per-entry cost model (object headers, entry, key, LRU slot) is within 10%."""
    # No training: dictionaries and samples are the codec's, not the tiers', to account.
    with ContentStore(codec=Codec(first_training=10**9)) as store:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            refs = [store.put(chat_message(i) + bytes(i % 700)) for i in range(20_000)]
            if tier == Tier.WARM:
                store.demote(refs, Tier.WARM)
            traced = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        stats = store.stats()
        accounted = stats.hot.ram_bytes + stats.warm.ram_bytes
        own = sys.getsizeof(refs)  # the test's list of refs: traced, but not the store's
        if tier == Tier.WARM:
            # The warm tier keeps keys packed, not the ref objects: those the test's list still
            # holds are its own. The codec's training samples were hot content and are now
            # the codec's alone. The hot map keeps its emptied table (dicts do not shrink when
            # entries leave), which the per-entry model does not count.
            own += sum(map(sys.getsizeof, refs)) + sum(map(sys.getsizeof, store.codec._samples))
            own += sys.getsizeof(store._hot)
        assert accounted == pytest.approx(traced - own, rel=0.10)
