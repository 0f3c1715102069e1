"""The SQLite store's batch: read-your-writes before a commit, atomic commits, old layouts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from avm._core.journal import GENESIS, EntryStatus, JournalEntry
from avm.config import Durability
from avm.storage.sqlite import SqliteStateStore
from avm.testing import wait_until


def entry(agent_id: str, step: int, op: str = "KV_STORE") -> JournalEntry:
    return JournalEntry(
        agent_id, step, op, b"d" * 16, EntryStatus.OK, b"\xc0", 5, 1.0, GENESIS, bytes([step]) * 32
    )


def committed(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another connection sees: committed data only."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


@pytest.mark.parametrize("durability", ["durable", "relaxed"])
async def test_reads_see_the_batch_and_others_see_it_whole(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, durability)
    try:
        store.kv_put("a", "k", b"1")
        store.kv_put("a", "gone", b"x")
        store.kv_delete("a", "gone")
        store.state_put("a", b"state")
        store.journal_append(entry("a", 0))
        assert store.inbox_put("a", "m1", b"envelope")
        assert not store.inbox_put("a", "m1", b"envelope")  # deduplicated within the batch
        assert await store.kv_get("a", "k") == b"1"
        assert await store.kv_get("a", "gone") is None
        assert await store.state_get("a") == b"state"
        assert await store.journal_head("a") == (0, bytes([0]) * 32)
        assert committed(path, "SELECT count(*) FROM journal") == [(0,)]
        assert committed(path, "SELECT count(*) FROM kv") == [(0,)]

        await store.sync()  # durable: committed and on disk; relaxed: returns at once
        await asyncio.sleep(0)  # the end of this loop iteration commits the batch
        assert committed(path, "SELECT agent_id, key, value FROM kv") == [("a", "k", b"1")]
        assert committed(path, "SELECT agent_id, step FROM journal") == [("a", 0)]
        assert committed(path, "SELECT state FROM execution_state") == [(b"state",)]
        assert not store.inbox_put("a", "m1", b"envelope")  # deduplicated against the table
        assert await store.kv_get("a", "k") == b"1"
        assert await store.journal_head("a") == (0, bytes([0]) * 32)
        assert await store.inbox_pending("a") == [b"envelope"]
    finally:
        await store.aclose()


async def test_relaxed_commits_at_most_once_per_window(tmp_path: Path) -> None:
    """The first write after a quiet spell commits at the end of its iteration; later ones
    wait for the window, unless a history read or closing commits them first."""
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, "relaxed", relaxed_commit_s=3600.0)
    try:
        store.journal_append(entry("a", 0))
        await asyncio.sleep(0)
        assert committed(path, "SELECT step FROM journal") == [(0,)]
        store.journal_append(entry("a", 1))
        store.kv_put("a", "k", b"1")
        await asyncio.sleep(0)
        assert committed(path, "SELECT step FROM journal") == [(0,)]  # inside the window
        assert await store.journal_head("a") == (1, bytes([1]) * 32)  # reads see the batch
        assert await store.kv_get("a", "k") == b"1"
        assert [e.step for e in await store.journal_entries("a")] == [0, 1]  # commits first
        assert committed(path, "SELECT step FROM journal") == [(0,), (1,)]
        store.journal_append(entry("a", 2))
    finally:
        await store.aclose()
    assert committed(path, "SELECT step FROM journal") == [(0,), (1,), (2,)]  # closing commits

    store = SqliteStateStore(path, "relaxed", relaxed_commit_s=0.01)
    try:
        store.journal_append(entry("b", 0))
        await asyncio.sleep(0)
        store.journal_append(entry("b", 1))
        await wait_until(lambda: len(committed(path, "SELECT step FROM journal")) == 5)
    finally:
        await store.aclose()
    with pytest.raises(ValueError, match="relaxed_commit_s"):
        SqliteStateStore(path, "relaxed", relaxed_commit_s=-1)


async def test_durable_sync_waits_for_the_fsync(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db", "durable")
    try:
        store.kv_put("a", "k", b"1")
        store.journal_append(entry("a", 0))
        await store.sync()
        assert store.fsyncs >= 1
        assert store.commits == 1
        await store.sync()  # nothing new to wait for
        assert store.commits == 1
    finally:
        await store.aclose()


async def test_history_reads_commit_the_batch_first(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db", "relaxed")
    try:
        for step in range(3):
            store.journal_append(entry("a", step, "SAVE_EXECUTION_STATE" if step == 1 else "NOW"))
        assert [e.step for e in await store.journal_entries("a", 1)] == [1, 2]
        assert await store.journal_gas("a", 0) == 15
        assert await store.last_checkpoint("a", 0) == 1
    finally:
        await store.aclose()


_CLUSTERED_JOURNAL = """
CREATE TABLE journal (
    agent_id TEXT NOT NULL, step INTEGER NOT NULL, op TEXT NOT NULL, args_digest BLOB NOT NULL,
    status INTEGER NOT NULL, result BLOB NOT NULL, gas INTEGER NOT NULL, wall REAL NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL, flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, step)
) WITHOUT ROWID;
"""


async def test_databases_with_the_clustered_journal_still_work(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(_CLUSTERED_JOURNAL)
    store = SqliteStateStore(path, "durable")
    try:
        store.journal_append(entry("a", 0))
        await store.sync()
        assert await store.journal_head("a") == (0, bytes([0]) * 32)
        assert [e.step for e in await store.journal_entries("a")] == [0]
    finally:
        await store.aclose()
    indexes = committed(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("journal_by_agent",) not in indexes  # the primary key already is that index


async def test_closing_commits_and_syncs_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, "durable")
    store.kv_put("a", "k", b"1")
    store.journal_append(entry("a", 0))
    await store.aclose()
    assert committed(path, "SELECT count(*) FROM journal") == [(1,)]
    assert committed(path, "SELECT value FROM kv") == [(b"1",)]


async def test_recovery_reads_ahead_and_forgets_on_write(tmp_path: Path) -> None:
    from avm.storage.base import AgentRecord

    store = SqliteStateStore(tmp_path / "state.db", "relaxed")
    try:
        for agent_id, first_step in (("a", 0), ("b", 2), ("c", 0)):
            store.agent_put(
                AgentRecord(
                    agent_id=agent_id, definition="d", args=b"", priority=1, budget=None,
                    spent=0, status="running", created=1.0, first_step=first_step,
                )
            )  # fmt: skip
        for step in range(4):
            store.journal_append(entry("a", step, "SAVE_EXECUTION_STATE" if step == 1 else "NOW"))
            store.journal_append(entry("b", step, "RESET_EXECUTION_STATE" if step else "NOW"))
        assert [r.agent_id for r in await store.agents_unfinished()] == ["a", "b", "c"]
        assert await store.journal_head("a") == (3, bytes([3]) * 32)
        assert await store.journal_head("c") is None
        gas = [await store.journal_gas(a, f) for a, f in (("a", 0), ("b", 2), ("c", 0))]
        assert gas == [20, 10, 0]
        assert await store.journal_gas("b", 0) == 20  # not what was read ahead: asks the table
        assert await store.last_checkpoint("a", 0) == 1
        assert await store.last_checkpoint("b", 2) == 3
        assert await store.last_checkpoint("c", 0) is None
        store.journal_append(entry("a", 4, "SAVE_EXECUTION_STATE"))
        assert await store.journal_head("a") == (4, bytes([4]) * 32)
        assert await store.last_checkpoint("a", 0) == 4
        assert await store.journal_gas("a", 0) == 25
    finally:
        await store.aclose()
