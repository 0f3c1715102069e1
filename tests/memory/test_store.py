"""The content store's contract: dedup, zero-copy reads, holds that never go negative.

The stateful test drives a store with random puts, reads, holds, releases, demotions, link
lists and collections, and checks it against a plain model after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from avm.memory import (
    Codec,
    ContentError,
    ContentNotFound,
    ContentStore,
    InvalidRef,
    RefcountError,
    StoreClosed,
    Tier,
    collect,
)
from avm.memory.packed import MAX_HOLDS


def test_identical_content_is_stored_once_and_shares_one_ref_object(store: ContentStore) -> None:
    prompt_parts = ["You are a careful analyst. " * 100, "Answer in JSON."]
    refs = [store.put("".join(prompt_parts)) for _ in range(1000)]  # a new str every time
    assert all(ref is refs[0] for ref in refs)
    assert store.holds(refs[0]) == 1000
    stats = store.stats()
    assert stats.distinct_entries == 1
    assert stats.new_bytes == len("".join(prompt_parts))
    assert stats.dedup_ratio == 1000.0


def test_hot_reads_are_zero_copy(store: ContentStore) -> None:
    data = bytes(range(256)) * 8
    ref = store.put(data)
    assert store.get(ref) is data  # bytes are immutable: the stored object is handed out
    view = store.view(ref)
    assert view.readonly
    assert view.obj is data
    assert bytes(view[10:20]) == data[10:20]


def test_buffers_are_copied_once(store: ContentStore) -> None:
    buffer = bytearray(b"mutable " * 20)
    ref = store.put(buffer)
    buffer[:7] = b"changed"
    assert store.get(ref) == b"mutable " * 20
    assert store.put(memoryview(b"mutable " * 20)) is ref


def test_text_round_trips(store: ContentStore) -> None:
    ref = store.put("naïve café ☕")
    assert store.text(ref) == "naïve café ☕"


def test_unknown_content_is_not_found(store: ContentStore) -> None:
    missing = blake3.blake3(b"never stored").digest()
    with pytest.raises(ContentNotFound, match=missing.hex()):
        store.get(missing)
    assert missing not in store
    assert store.tier_of(missing) is None
    with pytest.raises(ContentNotFound):
        store.incref(missing)
    with pytest.raises(ContentNotFound):
        store.holds(missing)


def test_bad_refs_are_refused(store: ContentStore) -> None:
    with pytest.raises(InvalidRef):
        store.get(b"short")
    with pytest.raises(InvalidRef):
        store.get("not a ref, a str")  # type: ignore[arg-type]
    assert b"short" not in store


def test_decref_of_unknown_content_raises(store: ContentStore) -> None:
    missing = blake3.blake3(b"never stored").digest()
    with pytest.raises(RefcountError, match="not in the store"):
        store.decref(missing)


def test_decref_below_zero_raises_and_changes_nothing(store: ContentStore) -> None:
    ref = store.put(b"x" * 100)
    assert store.decref(ref) == 0
    with pytest.raises(RefcountError, match="has 0 hold"):
        store.decref(ref)
    assert store.holds(ref) == 0
    store.incref(ref, 2)
    with pytest.raises(RefcountError, match="has 2 hold"):
        store.decref(ref, 3)
    assert store.holds(ref) == 2


@pytest.mark.parametrize("n", [0, -1])
def test_hold_changes_must_be_positive(store: ContentStore, n: int) -> None:
    ref = store.put(b"x")
    with pytest.raises(RefcountError, match="positive"):
        store.incref(ref, n)
    with pytest.raises(RefcountError, match="positive"):
        store.decref(ref, n)
    assert store.holds(ref) == 1


def test_refcounts_of_cold_content_live_on_disk(store: ContentStore) -> None:
    ref = store.put(b"cold and held " * 50)
    store.incref(ref)
    assert store.demote([ref]) == 1
    assert store.tier_of(ref) == Tier.COLD
    assert store.stats().hot.entries == 0
    assert store.holds(ref) == 2
    assert store.decref(ref) == 1
    assert store.incref(ref) == 2
    assert store.decref(ref, 2) == 0
    with pytest.raises(RefcountError, match="has 0 hold"):
        store.decref(ref)
    assert store.get(ref) == b"cold and held " * 50


def test_put_of_content_already_on_disk_keeps_its_row_and_holds(store: ContentStore) -> None:
    data = b"passivated manifest " * 10
    ref = store.put(data)
    store.demote([ref])
    assert store.put(data) is not None
    assert store.tier_of(ref) == Tier.HOT
    assert store.holds(ref) == 2  # the hold taken while cold, and the new one
    assert store.stats().distinct_entries == 1
    assert store.stats().new_entries == 1


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    ref = store.put(b"data")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreClosed):
        store.get(ref)
    with pytest.raises(StoreClosed):
        store.put(b"more")


def test_link_lists_need_stored_children(store: ContentStore) -> None:
    child = store.put(b"child")
    parent = store.put_links([child, child], b"payload")
    assert store.read_links(parent) == ((child, child), b"payload")
    with pytest.raises(ContentNotFound):
        store.put_links([blake3.blake3(b"nope").digest()])
    with pytest.raises(ContentError, match="not a link list"):
        store.read_links(child)


def test_persist_writes_a_disk_copy_without_moving(make_store: Callable[..., ContentStore]) -> None:
    store = make_store()
    ref = store.put(b"journal payload " * 20)
    assert store.persist([ref]) == 1
    assert store.persist([ref]) == 0
    assert store.tier_of(ref) == Tier.HOT
    stats = store.stats()
    assert stats.cold.entries == 1
    assert stats.distinct_entries == 1  # RAM and disk copies are one piece of content
    store.close()
    reopened = make_store()
    assert reopened.get(ref) == b"journal payload " * 20
    assert reopened.holds(ref) == 0  # holds belong to the process that took them


class StoreMachine(RuleBasedStateMachine):
    """Random operations against a model: contents, holds, roots and link lists."""

    refs = Bundle("refs")

    def __init__(self) -> None:
        super().__init__()
        self.store = ContentStore(codec=Codec(background=False))
        self.contents: dict[bytes, bytes] = {}
        self.holds: dict[bytes, int] = {}
        self.links: dict[bytes, tuple[bytes, ...]] = {}
        self.roots: set[bytes] = set()

    def teardown(self) -> None:
        self.store.close()

    @initialize(target=refs, data=st.binary(min_size=1, max_size=64))
    def first(self, data: bytes) -> bytes:
        return self.put(data, hold=True)

    @rule(target=refs, data=st.binary(max_size=3000) | st.sampled_from([b"shared" * 50]))
    def put_held(self, data: bytes) -> bytes:
        return self.put(data, hold=True)

    @rule(target=refs, data=st.binary(max_size=3000))
    def put_rooted(self, data: bytes) -> bytes:
        ref = self.put(data, hold=False)
        self.roots.add(ref)
        return ref

    def put(self, data: bytes, *, hold: bool) -> bytes:
        ref = self.store.put(data, hold=hold)
        assert ref == blake3.blake3(data).digest()
        self.contents[ref] = data
        self.holds[ref] = self.holds.get(ref, 0) + hold
        return ref

    @rule(target=refs, children=st.lists(refs, max_size=4))
    def put_links(self, children: list[bytes]) -> bytes:
        children = [child for child in children if child in self.contents]
        ref = self.store.put_links(children, hold=False)
        self.contents[ref] = self.store.get(ref)
        self.holds.setdefault(ref, 0)
        self.links[ref] = tuple(children)
        self.roots.add(ref)
        return ref

    @rule(ref=refs)
    def read(self, ref: bytes) -> None:
        if ref in self.contents:
            assert self.store.get(ref) == self.contents[ref]
        else:
            with pytest.raises(ContentNotFound):
                self.store.get(ref)

    @rule(ref=refs)
    def incref(self, ref: bytes) -> None:
        if ref in self.contents:
            self.holds[ref] += 1
            assert self.store.incref(ref) == self.holds[ref]

    @rule(ref=refs)
    def decref(self, ref: bytes) -> None:
        if self.holds.get(ref, 0) > 0 and ref in self.contents:
            self.holds[ref] -= 1
            assert self.store.decref(ref) == self.holds[ref]
        else:
            with pytest.raises(RefcountError):
                self.store.decref(ref)

    @rule(ref=consumes(refs))
    def unroot(self, ref: bytes) -> None:
        self.roots.discard(ref)

    @rule(ref=refs, to=st.sampled_from([Tier.WARM, Tier.COLD]))
    def demote(self, ref: bytes, to: Tier) -> None:
        self.store.demote([ref], to)
        if ref in self.contents:
            tier = self.store.tier_of(ref)
            assert tier is not None
            assert tier >= to

    @precondition(lambda self: len(self.contents) > 0)
    @rule()
    def collect(self) -> None:
        live: set[bytes] = set()
        stack = [ref for ref in self.contents if self.holds[ref] > 0 or ref in self.roots]
        while stack:
            ref = stack.pop()
            if ref not in live:
                live.add(ref)
                stack.extend(self.links.get(ref, ()))
        report = collect(self.store, self.roots)
        dead = set(self.contents) - live
        assert report.reclaimed_entries == len(dead)
        for ref in dead:
            del self.contents[ref]
            del self.holds[ref]
            self.links.pop(ref, None)
        self.roots &= set(self.contents)

    @invariant()
    def counts_match_the_model(self) -> None:
        for ref, count in self.holds.items():
            assert count >= 0
            assert self.store.holds(ref) == count

    @invariant()
    def stats_match_the_model(self) -> None:
        stats = self.store.stats()
        assert stats.distinct_entries == len(self.contents)
        assert stats.distinct_bytes == sum(map(len, self.contents.values()))


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_demote_moves_a_ref_named_twice_once(store: ContentStore) -> None:
    # Two passivated agents holding the same content name it twice in one batch.
    ref = store.put(b"the same list of refs" * 10)
    assert store.demote([ref, ref], Tier.COLD) == 1
    assert store.tier_of(ref) is Tier.COLD
    assert store.get(ref) == b"the same list of refs" * 10


def test_holds_are_bounded_by_what_a_slot_counts() -> None:
    with ContentStore() as store:
        ref = store.put(b"held a great many times")  # one hold
        assert store.incref(ref, MAX_HOLDS - 1) == MAX_HOLDS
        with pytest.raises(RefcountError, match="would pass"):
            store.incref(ref)
        assert store.holds(ref) == MAX_HOLDS  # refused whole: nothing changed


@pytest.mark.parametrize(
    ("budget", "cache_kib"),
    [(None, 32 * 1024), ("64MiB", 8 * 1024), ("8MiB", 2 * 1024), ("4GB", 32 * 1024)],
)
def test_the_cold_tiers_page_cache_scales_with_the_budget(
    tmp_path: Path, budget: str | None, cache_kib: int
) -> None:
    # The page cache is RAM outside the budget: an eighth of it, between 2 and 32 MiB.
    with ContentStore(tmp_path, budget=budget) as store:
        (size,) = store._cold()._db.execute("PRAGMA cache_size").fetchone()
    assert size == -cache_kib
