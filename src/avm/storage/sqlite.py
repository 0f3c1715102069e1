"""The embedded state store: one SQLite database in WAL mode, written with group commit.

All reads and writes run on one connection in the event-loop thread. A write executes at once
inside an open transaction (so the same connection reads its own writes) and arms a commit for
the end of the current loop iteration; every write made by every agent in that iteration commits
in one transaction, with one WAL sync. In ``durable`` mode the WAL is synced on each commit
(``synchronous=FULL``) and ``sync()`` waits for the commit that covers the caller's writes; in
``relaxed`` mode commits still batch but nobody waits and the WAL is synced at checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

from avm._core.journal import EntryStatus, JournalEntry
from avm.config import Durability
from avm.errors import StorageError, VMStateError
from avm.storage.base import AgentRecord

__all__ = ["SqliteStateStore"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id   TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    args       BLOB NOT NULL,
    priority   INTEGER NOT NULL,
    budget     INTEGER,
    spent      INTEGER NOT NULL,
    status     TEXT NOT NULL,
    created    REAL NOT NULL,
    first_step INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_by_status ON agents (status);
CREATE TABLE IF NOT EXISTS journal (
    agent_id    TEXT NOT NULL,
    step        INTEGER NOT NULL,
    op          TEXT NOT NULL,
    args_digest BLOB NOT NULL,
    status      INTEGER NOT NULL,
    result      BLOB NOT NULL,
    gas         INTEGER NOT NULL,
    wall        REAL NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL,
    flags       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    seq        INTEGER PRIMARY KEY,
    agent_id   TEXT NOT NULL,
    message_id TEXT NOT NULL,
    envelope   BLOB NOT NULL,
    consumed   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (agent_id, message_id)
);
CREATE TABLE IF NOT EXISTS kv (
    agent_id TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    BLOB NOT NULL,
    PRIMARY KEY (agent_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS execution_state (
    agent_id TEXT PRIMARY KEY,
    state    BLOB NOT NULL
) WITHOUT ROWID;
"""


class SqliteStateStore:
    def __init__(self, path: str | Path, durability: Durability = "durable") -> None:
        self.path = Path(path)
        self.durability: Durability = durability
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.executescript(
                "PRAGMA journal_mode=WAL;"
                f"PRAGMA synchronous={'FULL' if durability == 'durable' else 'NORMAL'};"
                "PRAGMA busy_timeout=5000;" + _SCHEMA
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open state database {self.path}: {exc}") from None
        self._in_txn = False
        self._commit_armed = False
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self.commits = 0

    # -- group commit ------------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        if self._closed:
            raise VMStateError("the state store is closed")
        if not self._in_txn:
            self._db.execute("BEGIN")
            self._in_txn = True
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"state database write failed: {exc}") from None
        if not self._commit_armed:
            self._commit_armed = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._commit_armed = False
        waiters, self._waiters = self._waiters, []
        error: Exception | None = None
        if self._in_txn:
            try:
                self._db.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                log.error("state database commit failed: %s", exc)
                error = StorageError(f"state database commit failed: {exc}")
                self._db.execute("ROLLBACK")
            self._in_txn = False
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def sync(self) -> None:
        if self.durability == "relaxed" or not self._in_txn:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def flush(self) -> None:
        """Commit the open batch now (used when stopping)."""
        if self._in_txn:
            self._commit()

    def close(self) -> None:
        """Commit what is pending and close the database."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._db.close()

    async def aclose(self) -> None:
        self.close()

    # -- KV and execution state --------------------------------------------------------------

    def kv_put(self, agent_id: str, key: str, value: bytes) -> None:
        self._write(
            "INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(agent_id, key) DO UPDATE SET value = excluded.value",
            (agent_id, key, value),
        )

    def kv_delete(self, agent_id: str, key: str) -> None:
        self._write("DELETE FROM kv WHERE agent_id = ? AND key = ?", (agent_id, key))

    async def kv_get(self, agent_id: str, key: str) -> bytes | None:
        row = self._db.execute(
            "SELECT value FROM kv WHERE agent_id = ? AND key = ?", (agent_id, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def state_put(self, agent_id: str, state: bytes | None) -> None:
        if state is None:
            self._write("DELETE FROM execution_state WHERE agent_id = ?", (agent_id,))
        else:
            self._write(
                "INSERT INTO execution_state(agent_id, state) VALUES (?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET state = excluded.state",
                (agent_id, state),
            )

    async def state_get(self, agent_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT state FROM execution_state WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- journal -----------------------------------------------------------------------------

    def journal_append(self, entry: JournalEntry) -> None:
        self._write(
            "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, wall, "
            "prev_hash, hash, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.agent_id,
                entry.step,
                entry.op,
                entry.args_digest,
                int(entry.status),
                entry.result,
                entry.gas,
                entry.wall,
                entry.prev_hash,
                entry.hash,
                entry.flags,
            ),
        )

    async def journal_head(self, agent_id: str) -> tuple[int, bytes] | None:
        row = self._db.execute(
            "SELECT step, hash FROM journal WHERE agent_id = ? ORDER BY step DESC LIMIT 1",
            (agent_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def journal_entries(self, agent_id: str, from_step: int = 0) -> list[JournalEntry]:
        rows = self._db.execute(
            "SELECT agent_id, step, op, args_digest, status, result, gas, wall, prev_hash, hash, "
            "flags FROM journal WHERE agent_id = ? AND step >= ? ORDER BY step",
            (agent_id, from_step),
        ).fetchall()
        return [
            JournalEntry(
                r[0], r[1], r[2], bytes(r[3]), EntryStatus(r[4]), bytes(r[5]), r[6], r[7],
                bytes(r[8]), bytes(r[9]), r[10],
            )
            for r in rows
        ]  # fmt: skip

    async def journal_gas(self, agent_id: str, from_step: int) -> int:
        row = self._db.execute(
            "SELECT coalesce(sum(gas), 0) FROM journal WHERE agent_id = ? AND step >= ?",
            (agent_id, from_step),
        ).fetchone()
        return int(row[0])

    async def last_checkpoint(self, agent_id: str, from_step: int) -> int | None:
        row = self._db.execute(
            "SELECT max(step) FROM journal WHERE agent_id = ? AND step >= ? AND status = 0 "
            "AND op IN ('SAVE_EXECUTION_STATE', 'RESET_EXECUTION_STATE')",
            (agent_id, from_step),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    # -- inbox -------------------------------------------------------------------------------

    def inbox_put(self, agent_id: str, message_id: str, envelope: bytes) -> bool:
        before = self._db.total_changes
        self._write(
            "INSERT OR IGNORE INTO inbox(agent_id, message_id, envelope) VALUES (?, ?, ?)",
            (agent_id, message_id, envelope),
        )
        return self._db.total_changes > before

    def inbox_consume(self, agent_id: str, message_id: str) -> None:
        self._write(
            "UPDATE inbox SET consumed = 1 WHERE agent_id = ? AND message_id = ?",
            (agent_id, message_id),
        )

    async def inbox_pending(self, agent_id: str) -> list[bytes]:
        rows = self._db.execute(
            "SELECT envelope FROM inbox WHERE agent_id = ? AND consumed = 0 ORDER BY seq",
            (agent_id,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    # -- agents ------------------------------------------------------------------------------

    def agent_put(self, record: AgentRecord) -> None:
        self._write(
            "INSERT INTO agents(agent_id, definition, args, priority, budget, spent, status, "
            "created, first_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id) DO "
            "UPDATE SET definition = excluded.definition, args = excluded.args, "
            "priority = excluded.priority, budget = excluded.budget, spent = excluded.spent, "
            "status = excluded.status, created = excluded.created, "
            "first_step = excluded.first_step",
            (
                record.agent_id,
                record.definition,
                record.args,
                record.priority,
                record.budget,
                record.spent,
                record.status,
                record.created,
                record.first_step,
            ),
        )

    def agent_update(self, agent_id: str, *, status: str, spent: int, budget: int | None) -> None:
        self._write(
            "UPDATE agents SET status = ?, spent = ?, budget = ? WHERE agent_id = ?",
            (status, spent, budget, agent_id),
        )

    _AGENT_COLUMNS = (
        "agent_id, definition, args, priority, budget, spent, status, created, first_step"
    )

    @staticmethod
    def _agent(row: Any) -> AgentRecord:
        return AgentRecord(
            agent_id=str(row[0]),
            definition=str(row[1]),
            args=bytes(row[2]),
            priority=int(row[3]),
            budget=None if row[4] is None else int(row[4]),
            spent=int(row[5]),
            status=str(row[6]),
            created=float(row[7]),
            first_step=int(row[8]),
        )

    async def agent_get(self, agent_id: str) -> AgentRecord | None:
        row = self._db.execute(
            f"SELECT {self._AGENT_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else self._agent(row)

    async def agents_unfinished(self) -> list[AgentRecord]:
        rows = self._db.execute(
            f"SELECT {self._AGENT_COLUMNS} FROM agents "
            "WHERE status IN ('running', 'out_of_gas', 'stopped') ORDER BY created, agent_id"
        ).fetchall()
        return [self._agent(row) for row in rows]
