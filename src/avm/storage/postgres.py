"""The PostgreSQL state store: the same journal, KV, execution state, inbox and agent records as
the SQLite store, behind a ``postgresql://`` URL, through asyncpg.

Writes are synchronous calls that only queue: each joins the current batch, and one flusher
commits batches in order, each in one transaction (grouped by the table they write, so that a
thousand agents' interleaved KV writes and journal entries go in two ``executemany`` calls). So,
as with SQLite, a KV write and the journal entry of the instruction that made it commit
together. ``sync()`` waits for the commit covering everything queued so far; in ``relaxed`` mode
the VM never calls it and the session commits with ``synchronous_commit = off``.

Reads must see writes still queued or in flight: KV, execution state, blobs and chain heads keep
an overlay of the values written since the last commit that covered them. A blob key committed
once is remembered, so a payload many agents share is sent to the server once. Message deduplication
must be answered at once, so the store remembers the message ids delivered in this process and
loads an agent's earlier ids when the agent is recovered. Reads that only recovery and the
history tools make (journal entries, gas totals, checkpoints, agent records) first wait for the
queue to drain.

Agents' own SQL stays in their per-agent SQLite files (see ``agent_sql``): that isolation is by
construction, and agents' SQL is written in SQLite's dialect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import asyncpg

from avm._core.journal import EntryStatus, JournalEntry
from avm.config import Durability
from avm.errors import StorageError, VMStateError
from avm.storage.base import AgentRecord, statement_runs

__all__ = ["PostgresStateStore", "create_schema"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id text PRIMARY KEY, definition text NOT NULL, args bytea NOT NULL,
    priority int NOT NULL, budget bigint, spent bigint NOT NULL, status text NOT NULL,
    created double precision NOT NULL, first_step bigint NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS agents_by_status ON agents (status);
CREATE TABLE IF NOT EXISTS journal (
    agent_id text NOT NULL, step bigint NOT NULL, op text NOT NULL, args_digest bytea NOT NULL,
    status smallint NOT NULL, result bytea NOT NULL, gas bigint NOT NULL,
    wall double precision NOT NULL, prev_hash bytea NOT NULL, hash bytea NOT NULL,
    flags int NOT NULL DEFAULT 0, PRIMARY KEY (agent_id, step));
CREATE TABLE IF NOT EXISTS kv (
    agent_id text NOT NULL, key text NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (agent_id, key));
CREATE TABLE IF NOT EXISTS execution_state (agent_id text PRIMARY KEY, state bytea NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (hash bytea PRIMARY KEY, data bytea NOT NULL);
CREATE TABLE IF NOT EXISTS swarm_members (
    agent_id text NOT NULL, topic text NOT NULL, step bigint NOT NULL,
    PRIMARY KEY (agent_id, topic));
CREATE TABLE IF NOT EXISTS inbox (
    seq bigserial PRIMARY KEY, agent_id text NOT NULL, message_id text NOT NULL,
    envelope bytea NOT NULL, consumed boolean NOT NULL DEFAULT false,
    UNIQUE (agent_id, message_id));
CREATE TABLE IF NOT EXISTS passivated (agent_id text PRIMARY KEY, record bytea NOT NULL);
"""

_KV_PUT = (
    "INSERT INTO kv(agent_id, key, value) VALUES ($1, $2, $3) "
    "ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value"
)
_KV_DELETE = "DELETE FROM kv WHERE agent_id = $1 AND key = $2"
_STATE_PUT = (
    "INSERT INTO execution_state(agent_id, state) VALUES ($1, $2) "
    "ON CONFLICT (agent_id) DO UPDATE SET state = excluded.state"
)
_STATE_DELETE = "DELETE FROM execution_state WHERE agent_id = $1"
_JOURNAL = (
    "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, wall, "
    "prev_hash, hash, flags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_BLOB_PUT = "INSERT INTO blobs(hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING"
_KV_MANY = (
    "SELECT r.i, kv.value FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(a, k, i) "
    "JOIN kv ON kv.agent_id = r.a AND kv.key = r.k"
)
_SWARM_JOIN = (
    "INSERT INTO swarm_members(agent_id, topic, step) VALUES ($1, $2, $3) "
    "ON CONFLICT (agent_id, topic) DO UPDATE SET step = excluded.step"
)
_INBOX_PUT = (
    "INSERT INTO inbox(agent_id, message_id, envelope) VALUES ($1, $2, $3) "
    "ON CONFLICT (agent_id, message_id) DO NOTHING"
)
_INBOX_CONSUME = "UPDATE inbox SET consumed = true WHERE agent_id = $1 AND message_id = $2"
_AGENT_PUT = (
    "INSERT INTO agents(agent_id, definition, args, priority, budget, spent, status, created, "
    "first_step) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (agent_id) DO UPDATE "
    "SET definition = excluded.definition, args = excluded.args, priority = excluded.priority, "
    "budget = excluded.budget, spent = excluded.spent, status = excluded.status, "
    "created = excluded.created, first_step = excluded.first_step"
)
_AGENT_UPDATE = "UPDATE agents SET status = $1, spent = $2, budget = $3 WHERE agent_id = $4"
_AGENT_COLUMNS = "agent_id, definition, args, priority, budget, spent, status, created, first_step"
_PASSIVATED_PUT = (
    "INSERT INTO passivated(agent_id, record) VALUES ($1, $2) "
    "ON CONFLICT (agent_id) DO UPDATE SET record = excluded.record"
)
_PASSIVATED_DELETE = "DELETE FROM passivated WHERE agent_id = $1"
_UNFINISHED = "a.status IN ('running', 'out_of_gas', 'stopped')"
# The table each statement writes. A batch's statements run grouped by table, each table's in the
# order they were queued: statements on different tables commute (no foreign keys, one
# transaction), and the agents' interleaving (a KV write, a journal entry, the next agent's KV
# write, ...) would otherwise cost a round trip per statement instead of one per kind.
_TABLE = {
    _KV_PUT: "kv", _KV_DELETE: "kv", _STATE_PUT: "execution_state",
    _STATE_DELETE: "execution_state", _JOURNAL: "journal", _BLOB_PUT: "blobs",
    _SWARM_JOIN: "swarm_members", _INBOX_PUT: "inbox", _INBOX_CONSUME: "inbox",
    _AGENT_PUT: "agents", _AGENT_UPDATE: "agents",
    _PASSIVATED_PUT: "passivated", _PASSIVATED_DELETE: "passivated",
}  # fmt: skip
_DELETED = object()  # overlay marker: written as deleted, not yet committed
_KNOWN_BLOBS = 65_536  # committed blob keys remembered; past this the set starts over


async def create_schema(conn: asyncpg.Connection) -> None:
    """Create the store's tables where missing."""
    # Concurrent VMs starting on one database must not race creating the schema.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(727175)")
        await conn.execute(_SCHEMA)


def _by_table(
    batch: list[tuple[str, tuple[Any, ...]]],
) -> list[list[tuple[str, tuple[Any, ...]]]]:
    """The batch's statements split by the table they write, each list in queue order."""
    tables: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for statement in batch:
        table = tables.get(_TABLE[statement[0]])
        if table is None:
            tables[_TABLE[statement[0]]] = [statement]
        else:
            table.append(statement)
    return list(tables.values())


class _KvReads:
    """KV reads issued in one turn of the event loop, answered by one query.

    A thousand agents fetching a key each at once would otherwise be a thousand round trips
    through a pool of four connections; here they are one ``unnest`` join. A read waits at
    most one loop turn for its companions.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._waiting: list[tuple[str, str, asyncio.Future[bytes | None]]] = []
        self._queries: set[asyncio.Task[None]] = set()

    def get(self, agent_id: str, key: str) -> asyncio.Future[bytes | None]:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._send)
        future: asyncio.Future[bytes | None] = loop.create_future()
        self._waiting.append((agent_id, key, future))
        return future

    def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        query = asyncio.get_running_loop().create_task(self._answer(batch))
        self._queries.add(query)
        query.add_done_callback(self._queries.discard)

    async def _answer(self, batch: list[tuple[str, str, asyncio.Future[bytes | None]]]) -> None:
        try:
            rows = await self._pool.fetch(
                _KV_MANY, [agent for agent, _, _ in batch], [key for _, key, _ in batch]
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            error = StorageError(f"reading KV from the state database failed: {exc}")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        found = {int(row[0]): bytes(row[1]) for row in rows}
        for index, (_, _, future) in enumerate(batch, 1):
            if not future.done():
                future.set_result(found.get(index))


class PostgresStateStore:
    def __init__(self, pool: asyncpg.Pool, durability: Durability) -> None:
        self._pool = pool
        self._kv_reads = _KvReads(pool)
        self.durability: Durability = durability
        self._batch: list[tuple[str, tuple[Any, ...]]] = []
        self._queued = 0  # batches queued so far (including the open one, once written to)
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._kv: dict[tuple[str, str], tuple[int, object]] = {}
        self._state: dict[str, tuple[int, object]] = {}
        self._blobs: dict[bytes, tuple[int, bytes]] = {}
        self._known_blobs: set[bytes] = set()
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._delivered: set[tuple[str, str]] = set()
        self._closed = False
        self.commits = 0

    @classmethod
    async def connect(cls, url: str, durability: Durability = "durable") -> PostgresStateStore:
        settings = {"synchronous_commit": "on" if durability == "durable" else "off"}
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=4, server_settings=settings)
            async with pool.acquire() as conn:
                await create_schema(conn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot open the PostgreSQL state store: {exc}") from None
        return cls(pool, durability)

    # -- batching ----------------------------------------------------------------------------

    def _queue(self, sql: str, args: tuple[Any, ...]) -> None:
        if self._closed:
            raise VMStateError("the state store is closed")
        if not self._batch:
            self._queued += 1
        self._batch.append((sql, args))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())

    async def _flush_all(self) -> None:
        try:
            await asyncio.sleep(0)  # let every agent runnable now add to this batch
            while self._batch:
                batch, self._batch = self._batch, []
                number = self._queued
                try:
                    await self._commit(batch)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.error("state database commit failed: %s", exc)
                    # Those blobs are not stored: a later write of them must not be skipped.
                    self._blobs = {k: v for k, v in self._blobs.items() if v[0] > number}
                    self._fail(StorageError(f"state database commit failed: {exc}"))
                    continue
                self._committed = number
                self.commits += 1
                self._settle(number)
        finally:
            self._flusher = None

    async def _commit(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            for statements in _by_table(batch):
                for sql, params in statement_runs(statements):
                    await conn.executemany(sql, params)

    def _settle(self, number: int) -> None:
        waiting, self._waiters = self._waiters, []
        for wanted, waiter in waiting:
            if wanted > number:
                self._waiters.append((wanted, waiter))
            elif not waiter.done():
                waiter.set_result(None)
        # Overlay values written in batches now committed are in the database: drop them.
        self._kv = {k: v for k, v in self._kv.items() if v[0] > number}
        self._state = {k: v for k, v in self._state.items() if v[0] > number}
        committed = [k for k, v in self._blobs.items() if v[0] <= number]
        if committed:
            if len(self._known_blobs) + len(committed) > _KNOWN_BLOBS:
                self._known_blobs.clear()
            self._known_blobs.update(committed)
            for key in committed:
                del self._blobs[key]

    def _fail(self, error: Exception) -> None:
        waiting, self._waiters = self._waiters, []
        for _, waiter in waiting:
            if not waiter.done():
                waiter.set_exception(error)

    async def sync(self) -> None:
        if self._committed >= self._queued:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._queued, waiter))
        await waiter

    async def _drain(self) -> None:
        while self._batch or self._flusher is not None:
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
            elif self._batch:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_all())

    async def aclose(self) -> None:
        if self._closed:
            return
        await self._drain()
        self._closed = True
        await self._pool.close()

    # -- KV and execution state --------------------------------------------------------------

    def kv_put(self, agent_id: str, key: str, value: bytes) -> None:
        self._queue(_KV_PUT, (agent_id, key, value))
        self._kv[(agent_id, key)] = (self._queued, value)

    def kv_delete(self, agent_id: str, key: str) -> None:
        self._queue(_KV_DELETE, (agent_id, key))
        self._kv[(agent_id, key)] = (self._queued, _DELETED)

    async def kv_get(self, agent_id: str, key: str) -> bytes | None:
        pending = self._kv.get((agent_id, key))
        if pending is not None:
            return None if pending[1] is _DELETED else pending[1]  # type: ignore[return-value]
        return await self._kv_reads.get(agent_id, key)

    def state_put(self, agent_id: str, state: bytes | None) -> None:
        if state is None:
            self._queue(_STATE_DELETE, (agent_id,))
        else:
            self._queue(_STATE_PUT, (agent_id, state))
        self._state[agent_id] = (self._queued, _DELETED if state is None else state)

    async def state_get(self, agent_id: str) -> bytes | None:
        pending = self._state.get(agent_id)
        if pending is not None:
            return None if pending[1] is _DELETED else pending[1]  # type: ignore[return-value]
        value = await self._pool.fetchval(
            "SELECT state FROM execution_state WHERE agent_id = $1", agent_id
        )
        return None if value is None else bytes(value)

    # -- blobs -------------------------------------------------------------------------------

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        pending, known = self._blobs, self._known_blobs
        for key, data in blobs:
            if key not in pending and key not in known:
                self._queue(_BLOB_PUT, (key, data))
                pending[key] = (self._queued, data)

    async def get_blob(self, key: bytes) -> bytes | None:
        pending = self._blobs.get(key)
        if pending is not None:
            return pending[1]
        value = await self._pool.fetchval("SELECT data FROM blobs WHERE hash = $1", key)
        return None if value is None else bytes(value)

    # -- journal -----------------------------------------------------------------------------

    def journal_append(self, entry: JournalEntry) -> None:
        self._queue(
            _JOURNAL,
            (
                entry.agent_id, entry.step, entry.op, entry.args_digest, int(entry.status),
                entry.result, entry.gas, entry.wall, entry.prev_hash, entry.hash, entry.flags,
            ),
        )  # fmt: skip
        self._heads[entry.agent_id] = (entry.step, entry.hash)

    async def journal_head(self, agent_id: str) -> tuple[int, bytes] | None:
        head = self._heads.get(agent_id)
        if head is not None:
            return head
        row = await self._pool.fetchrow(
            "SELECT step, hash FROM journal WHERE agent_id = $1 ORDER BY step DESC LIMIT 1",
            agent_id,
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def journal_entries(self, agent_id: str, from_step: int = 0) -> list[JournalEntry]:
        await self._drain()
        rows = await self._pool.fetch(
            "SELECT agent_id, step, op, args_digest, status, result, gas, wall, prev_hash, hash, "
            "flags FROM journal WHERE agent_id = $1 AND step >= $2 ORDER BY step",
            agent_id,
            from_step,
        )
        return [
            JournalEntry(
                r[0], r[1], r[2], bytes(r[3]), EntryStatus(r[4]), bytes(r[5]), r[6], r[7],
                bytes(r[8]), bytes(r[9]), r[10],
            )
            for r in rows
        ]  # fmt: skip

    async def journal_gas(self, agent_id: str, from_step: int) -> int:
        await self._drain()
        total = await self._pool.fetchval(
            "SELECT coalesce(sum(gas), 0) FROM journal WHERE agent_id = $1 AND step >= $2",
            agent_id,
            from_step,
        )
        return int(total)

    async def last_checkpoint(self, agent_id: str, from_step: int) -> int | None:
        await self._drain()
        step = await self._pool.fetchval(
            "SELECT max(step) FROM journal WHERE agent_id = $1 AND step >= $2 AND status = 0 "
            "AND op IN ('SAVE_EXECUTION_STATE', 'RESET_EXECUTION_STATE')",
            agent_id,
            from_step,
        )
        return None if step is None else int(step)

    # -- inbox -------------------------------------------------------------------------------

    def inbox_put(self, agent_id: str, message_id: str, envelope: bytes) -> bool:
        key = (agent_id, message_id)
        if key in self._delivered:
            return False
        self._delivered.add(key)
        self._queue(_INBOX_PUT, (agent_id, message_id, envelope))
        return True

    def inbox_consume(self, agent_id: str, message_id: str) -> None:
        self._queue(_INBOX_CONSUME, (agent_id, message_id))

    async def inbox_pending(self, agent_id: str) -> list[bytes]:
        await self._drain()
        rows = await self._pool.fetch(
            "SELECT message_id, envelope, consumed FROM inbox WHERE agent_id = $1 ORDER BY seq",
            agent_id,
        )
        # A recovered agent's earlier messages must be recognised if a sender sends them again.
        self._delivered.update((agent_id, str(r[0])) for r in rows)
        return [bytes(r[1]) for r in rows if not r[2]]

    # -- swarm membership --------------------------------------------------------------------

    def swarm_join(self, agent_id: str, topic: str, step: int) -> None:
        self._queue(_SWARM_JOIN, (agent_id, topic, step))

    async def swarm_topics(self, agent_id: str, from_step: int) -> list[str]:
        await self._drain()
        rows = await self._pool.fetch(
            "SELECT topic FROM swarm_members WHERE agent_id = $1 AND step >= $2 ORDER BY step",
            agent_id,
            from_step,
        )
        return [str(r[0]) for r in rows]

    # -- agents ------------------------------------------------------------------------------

    def agent_put(self, record: AgentRecord) -> None:
        self._queue(
            _AGENT_PUT,
            (
                record.agent_id, record.definition, record.args, record.priority, record.budget,
                record.spent, record.status, record.created, record.first_step,
            ),
        )  # fmt: skip

    def agent_update(self, agent_id: str, *, status: str, spent: int, budget: int | None) -> None:
        self._queue(_AGENT_UPDATE, (status, spent, budget, agent_id))

    @staticmethod
    def _agent(row: Any) -> AgentRecord:
        return AgentRecord(
            agent_id=row[0], definition=row[1], args=bytes(row[2]), priority=row[3],
            budget=row[4], spent=row[5], status=row[6], created=row[7], first_step=row[8],
        )  # fmt: skip

    async def agent_get(self, agent_id: str) -> AgentRecord | None:
        await self._drain()
        row = await self._pool.fetchrow(
            f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = $1", agent_id
        )
        return None if row is None else self._agent(row)

    async def agents_unfinished(self) -> list[AgentRecord]:
        await self._drain()
        rows = await self._pool.fetch(
            f"SELECT {_AGENT_COLUMNS} FROM agents a WHERE {_UNFINISHED} AND NOT EXISTS "
            "(SELECT 1 FROM passivated p WHERE p.agent_id = a.agent_id) "
            "ORDER BY created, agent_id"
        )
        return [self._agent(row) for row in rows]

    # -- passivation records -------------------------------------------------------------------

    def passivated_put(self, agent_id: str, record: bytes) -> None:
        self._queue(_PASSIVATED_PUT, (agent_id, record))

    def passivated_delete(self, agent_id: str) -> None:
        self._queue(_PASSIVATED_DELETE, (agent_id,))

    async def passivated_agents(self) -> list[tuple[str, bytes, int]]:
        await self._drain()
        rows = await self._pool.fetch(
            "SELECT agent_id, p.record, a.first_step "
            "FROM passivated p JOIN agents a USING (agent_id) "
            f"WHERE {_UNFINISHED}"
        )
        return [(str(r[0]), bytes(r[1]), int(r[2])) for r in rows]
