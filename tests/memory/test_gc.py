"""Garbage collection: unique content of dropped holders goes, shared content stays."""

from __future__ import annotations

import hashlib

import blake3

from avm.memory import ContentStore, Tier, collect

SHARED_PROMPT = "You are a careful analyst. Cite figures. Answer in JSON. " * 900  # ~51 KB


def conversation(agent: int) -> list[bytes]:
    text = hashlib.shake_256(agent.to_bytes(8, "little")).hexdigest(1024)
    return [text[turn * 256 : (turn + 1) * 256].encode() for turn in range(8)]


def test_dropping_ten_thousand_holders_reclaims_their_unique_content(store: ContentStore) -> None:
    agents = 20_000
    roots: dict[int, tuple[bytes, ...]] = {}
    for agent in range(agents):
        prompt = store.put("".join([SHARED_PROMPT]), hold=False)  # a fresh string per agent
        messages = tuple(store.put(message, hold=False) for message in conversation(agent))
        roots[agent] = (prompt, *messages)
    unique_bytes = 8 * 256
    before = store.stats()
    assert before.distinct_entries == 1 + agents * 8
    assert before.distinct_bytes == len(SHARED_PROMPT) + agents * unique_bytes
    # Half of the fleet is on disk by now: collection must sweep every tier.
    store.demote([ref for agent in range(0, agents, 2) for ref in roots[agent][1:]], Tier.COLD)
    store.demote([ref for agent in range(1, agents, 4) for ref in roots[agent][1:]], Tier.WARM)

    dropped = range(0, agents, 2)  # 10,000 agents end
    for agent in dropped:
        del roots[agent]
    report = collect(store, (ref for refs in roots.values() for ref in refs))

    assert report.reclaimed_entries == 10_000 * 8
    assert report.reclaimed_bytes == 10_000 * unique_bytes
    assert report.missing == 0
    after = store.stats()
    assert after.distinct_entries == 1 + 10_000 * 8
    assert after.distinct_bytes == len(SHARED_PROMPT) + 10_000 * unique_bytes
    assert after.gc.reclaimed_entries == 80_000
    assert after.cold.entries == 0  # every cold row belonged to a dropped agent
    assert store.text(roots[1][0]) == SHARED_PROMPT
    for agent in (1, 3, 19_999):
        assert [store.get(ref) for ref in roots[agent][1:]] == conversation(agent)
    for agent in (0, 2, 19_998):
        for message in conversation(agent):
            assert blake3.blake3(message).digest() not in store


def test_held_content_needs_no_roots(store: ContentStore) -> None:
    pinned = store.put(b"registered tool schema")
    loose = store.put(b"nobody keeps this", hold=False)
    store.demote([pinned])
    report = collect(store)
    assert report.reclaimed_entries == 1
    assert pinned in store
    assert loose not in store


def test_links_are_followed_through_every_tier(store: ContentStore) -> None:
    leaves = [store.put(f"leaf {i}".encode(), hold=False) for i in range(6)]
    inner = store.put_links(leaves[:3], hold=False)
    top = store.put_links([inner, leaves[3]], hold=False)
    store.demote([inner, leaves[0]], Tier.COLD)
    store.demote([top], Tier.WARM)
    report = collect(store, [top])
    assert report.reclaimed_entries == 2  # leaves 4 and 5
    assert report.marked == 6
    assert all(leaf in store for leaf in leaves[:4])


def test_missing_roots_are_reported(store: ContentStore) -> None:
    report = collect(store, [blake3.blake3(b"lost").digest()])
    assert report.missing == 1


def test_content_from_an_earlier_run_is_collected(make_store: type[ContentStore]) -> None:
    first = make_store()
    kept = first.put(b"kept across runs")
    gone = first.put(b"not rooted after the restart")
    first.persist([kept, gone])
    first.close()
    second = make_store()  # holds are gone with the process that took them
    report = collect(second, [kept])
    assert report.reclaimed_disk_rows == 1
    assert second.get(kept) == b"kept across runs"
    assert gone not in second
