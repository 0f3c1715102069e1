"""Offline access to a state store: what the history tools read, and the one write of an import.

``avm verify``, ``log``, ``gas``, ``export`` and ``import`` work on a store without a VM running
on it: a SQLite state directory (opened read-only unless importing, so they work on a copy, or
beside a live VM) or a PostgreSQL database named by its URL. :func:`open_offline` returns the
same small interface for both; the SQL of each dialect lives in its own class.

The calls are synchronous, for the CLI. PostgreSQL is reached through asyncpg on an event loop of
the store's own, run in a thread, so the calls also work from code that is itself on a loop (a
test, a server) without nesting loops.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from avm._core.journal import EntryStatus, JournalEntry
from avm.errors import AvmError, StorageError
from avm.identity import SignedHead
from avm.storage.base import AgentRecord

__all__ = ["AgentRows", "OfflineStore", "is_store_url", "open_offline"]

_T = TypeVar("_T")

_ENTRY_COLUMNS = (
    "agent_id, step, op, args_digest, status, result, gas, wall, prev_hash, hash, flags"
)
_AGENT_COLUMNS = "agent_id, definition, args, priority, budget, spent, status, created, first_step"
_HEADS = "SELECT agent_id, step, hash, public_key, signature FROM chain_heads"


class AgentRows(msgspec.Struct, kw_only=True):
    """Everything a state store holds about one agent (its blobs are read by key)."""

    record: AgentRecord
    journal: list[JournalEntry]
    kv: list[tuple[str, bytes]]
    state: bytes | None
    inbox: list[tuple[str, bytes, int]]  # message id, envelope, consumed
    topics: list[tuple[str, int]]  # swarm, step joined
    head: SignedHead | None = None


class OfflineStore(Protocol):
    def entries(self, agent_id: str | None = None) -> Iterator[JournalEntry]:
        """Journal entries of one agent (or all), ordered by agent and step."""
        ...

    def blob(self, key: bytes) -> bytes | None: ...

    def signed_heads(self) -> dict[str, SignedHead]: ...

    def gas(self) -> tuple[dict[str, int], dict[str, int]]:
        """Milligas charged, by agent and by instruction."""
        ...

    def agent(self, agent_id: str) -> AgentRows | None: ...

    def install(
        self, rows: AgentRows, blobs: dict[bytes, bytes], before_commit: Callable[[], None]
    ) -> bool:
        """Write an agent in one transaction; False (nothing written) if the store has it.

        ``before_commit`` runs inside the transaction, last: if it raises, nothing is written.
        """
        ...

    def close(self) -> None: ...


def is_store_url(store: str | None) -> bool:
    return store is not None and store.startswith(("postgresql://", "postgres://"))


def open_offline(
    state_dir: str | Path, store: str | None = None, *, write: bool = False
) -> OfflineStore:
    """The store of a state directory (SQLite), or the PostgreSQL database ``store`` names."""
    if store is None or store.startswith("sqlite:"):
        path = (
            Path(state_dir) / "state.db" if store is None else Path(store.removeprefix("sqlite:"))
        )
        return SqliteOffline(path, write=write)
    if is_store_url(store):
        return PostgresOffline(store, write=write)
    raise AvmError(f"unknown state store {store!r}: use a postgresql:// URL, or none for SQLite")


def _entry(row: Any) -> JournalEntry:
    return JournalEntry(
        row[0], row[1], row[2], bytes(row[3]), EntryStatus(row[4]), bytes(row[5]), row[6], row[7],
        bytes(row[8]), bytes(row[9]), row[10],
    )  # fmt: skip


def _record(row: Any) -> AgentRecord:
    return AgentRecord(
        agent_id=row[0], definition=row[1], args=bytes(row[2]), priority=row[3], budget=row[4],
        spent=row[5], status=row[6], created=row[7], first_step=row[8],
    )  # fmt: skip


def _head(row: Any) -> SignedHead:
    return SignedHead(row[0], row[1], bytes(row[2]), bytes(row[3]), bytes(row[4]))


def _entry_params(entry: JournalEntry) -> tuple[Any, ...]:
    return (
        entry.agent_id, entry.step, entry.op, entry.args_digest, int(entry.status), entry.result,
        entry.gas, entry.wall, entry.prev_hash, entry.hash, entry.flags,
    )  # fmt: skip


def _record_params(record: AgentRecord, status: str) -> tuple[Any, ...]:
    return (
        record.agent_id, record.definition, record.args, record.priority, record.budget,
        record.spent, status, record.created, record.first_step,
    )  # fmt: skip


# The statements of an import, in SQLite's placeholders; PostgreSQL's are numbered from these.
_INSTALL = {
    "agent": f"INSERT INTO agents({_AGENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "journal": f"INSERT INTO journal({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "kv": "INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?)",
    "state": "INSERT INTO execution_state(agent_id, state) VALUES (?, ?)",
    "inbox": "INSERT INTO inbox(agent_id, message_id, envelope, consumed) VALUES (?, ?, ?, ?)",
    "topics": "INSERT INTO swarm_members(agent_id, topic, step) VALUES (?, ?, ?)",
}
_EXISTS = "SELECT 1 FROM agents WHERE agent_id = ? UNION SELECT 1 FROM journal WHERE agent_id = ?"


def _install_plan(rows: AgentRows, status: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Each install statement with its rows, in order."""
    agent_id = rows.record.agent_id
    return [
        (_INSTALL["agent"], [_record_params(rows.record, status)]),
        (_INSTALL["journal"], [_entry_params(e) for e in rows.journal]),
        (_INSTALL["kv"], [(agent_id, k, v) for k, v in rows.kv]),
        (_INSTALL["state"], [] if rows.state is None else [(agent_id, rows.state)]),
        (_INSTALL["inbox"], [(agent_id, m, e, c) for m, e, c in rows.inbox]),
        (_INSTALL["topics"], [(agent_id, t, s) for t, s in rows.topics]),
    ]


_UNFINISHED = ("running", "out_of_gas", "stopped")


def _imported_status(record: AgentRecord) -> str:
    # An agent that was running where it came from resumes here as one stopped with its VM.
    return "stopped" if record.status in _UNFINISHED else record.status


class SqliteOffline:
    def __init__(self, path: Path, *, write: bool) -> None:
        if write:
            from avm.storage.sqlite import SqliteStateStore

            SqliteStateStore(path).close()  # create the schema, or add newer tables
        elif not path.exists():
            raise AvmError(f"no AVM state database at {path}")
        self.path = path
        try:
            if write:
                self._db = sqlite3.connect(path, isolation_level=None)
            else:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {path}: {exc}") from None

    def _rows(self, sql: str, *params: Any) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"the state database {self.path} is damaged: {exc}") from None

    def entries(self, agent_id: str | None = None) -> Iterator[JournalEntry]:
        where, params = ("WHERE agent_id = ?", (agent_id,)) if agent_id else ("", ())
        sql = f"SELECT {_ENTRY_COLUMNS} FROM journal {where} ORDER BY agent_id, step"
        try:
            for row in self._db.execute(sql, params):
                yield _entry(row)
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise StorageError(f"the state database {self.path} is damaged: {exc}") from None

    def blob(self, key: bytes) -> bytes | None:
        try:
            row = self._db.execute("SELECT data FROM blobs WHERE hash = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # made before payloads were stored by hash: none there
            return None
        return None if row is None else bytes(row[0])

    def signed_heads(self) -> dict[str, SignedHead]:
        try:
            rows = self._db.execute(_HEADS).fetchall()
        except sqlite3.OperationalError:  # no VM has signed heads here yet
            return {}
        return {r[0]: _head(r) for r in rows}

    def gas(self) -> tuple[dict[str, int], dict[str, int]]:
        by_agent = self._rows("SELECT agent_id, sum(gas) FROM journal GROUP BY agent_id")
        by_op = self._rows("SELECT op, sum(gas) FROM journal GROUP BY op")
        return {str(a): int(g) for a, g in by_agent}, {str(o): int(g) for o, g in by_op}

    def agent(self, agent_id: str) -> AgentRows | None:
        found = self._rows(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", agent_id)
        if not found:
            return None
        state = self._rows("SELECT state FROM execution_state WHERE agent_id = ?", agent_id)
        try:
            topics = self._db.execute(
                "SELECT topic, step FROM swarm_members WHERE agent_id = ? ORDER BY step",
                (agent_id,),
            ).fetchall()
        except sqlite3.OperationalError:  # from before memberships were stored
            topics = []
        return AgentRows(
            record=_record(found[0]),
            journal=list(self.entries(agent_id)),
            kv=[
                (str(k), bytes(v))
                for k, v in self._rows("SELECT key, value FROM kv WHERE agent_id = ?", agent_id)
            ],
            state=bytes(state[0][0]) if state else None,
            inbox=[
                (str(m), bytes(e), int(c))
                for m, e, c in self._rows(
                    "SELECT message_id, envelope, consumed FROM inbox WHERE agent_id = ? "
                    "ORDER BY seq",
                    agent_id,
                )
            ],
            topics=[(str(t), int(s)) for t, s in topics],
        )

    def install(
        self, rows: AgentRows, blobs: dict[bytes, bytes], before_commit: Callable[[], None]
    ) -> bool:
        db = self._db
        agent_id = rows.record.agent_id
        try:
            db.execute("BEGIN IMMEDIATE")
            if db.execute(_EXISTS, (agent_id, agent_id)).fetchone() is not None:
                db.execute("ROLLBACK")
                return False
            for sql, params in _install_plan(rows, _imported_status(rows.record)):
                db.executemany(sql, params)
            db.executemany("INSERT OR IGNORE INTO blobs(hash, data) VALUES (?, ?)", blobs.items())
            if rows.head is not None:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS chain_heads (agent_id TEXT PRIMARY KEY, step "
                    "INTEGER NOT NULL, hash BLOB NOT NULL, public_key BLOB NOT NULL, "
                    "signature BLOB NOT NULL)"
                )
                head = rows.head
                db.execute(
                    "INSERT OR REPLACE INTO chain_heads VALUES (?, ?, ?, ?, ?)",
                    (head.agent_id, head.step, head.hash, head.public_key, head.signature),
                )
            before_commit()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    def close(self) -> None:
        self._db.close()


def _numbered(sql: str) -> str:
    """SQLite's ``?`` placeholders as PostgreSQL's ``$1, $2, ...``."""
    numbers = itertools.count(1)
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)


class PostgresOffline:
    def __init__(self, url: str, *, write: bool) -> None:
        import asyncpg

        self._asyncpg = asyncpg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="avm-offline-postgres", daemon=True
        )
        self._thread.start()
        try:
            self._conn: Any = self._run(asyncpg.connect(url))
            if write:
                from avm.storage.postgres import create_schema

                self._run(create_schema(self._conn))
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except (OSError, self._asyncpg.PostgresError) as exc:
            raise StorageError(f"PostgreSQL state store: {exc}") from None

    def _fetch(self, sql: str, *params: Any) -> list[Any]:
        return self._run(self._conn.fetch(_numbered(sql), *params))

    def entries(self, agent_id: str | None = None) -> Iterator[JournalEntry]:
        if agent_id is not None:
            agents = [agent_id]
        else:
            agents = [r[0] for r in self._fetch("SELECT DISTINCT agent_id FROM journal ORDER BY 1")]
        for agent in agents:  # an agent at a time: a whole history need not fit in memory
            rows = self._fetch(
                f"SELECT {_ENTRY_COLUMNS} FROM journal WHERE agent_id = ? ORDER BY step", agent
            )
            yield from (_entry(row) for row in rows)

    def blob(self, key: bytes) -> bytes | None:
        rows = self._fetch("SELECT data FROM blobs WHERE hash = ?", key)
        return bytes(rows[0][0]) if rows else None

    def signed_heads(self) -> dict[str, SignedHead]:
        exists = self._fetch("SELECT to_regclass('chain_heads') IS NOT NULL")[0][0]
        return {r[0]: _head(r) for r in self._fetch(_HEADS)} if exists else {}

    def gas(self) -> tuple[dict[str, int], dict[str, int]]:
        by_agent = self._fetch("SELECT agent_id, sum(gas) FROM journal GROUP BY agent_id")
        by_op = self._fetch("SELECT op, sum(gas) FROM journal GROUP BY op")
        return {str(a): int(g) for a, g in by_agent}, {str(o): int(g) for o, g in by_op}

    def agent(self, agent_id: str) -> AgentRows | None:
        found = self._fetch(f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", agent_id)
        if not found:
            return None
        state = self._fetch("SELECT state FROM execution_state WHERE agent_id = ?", agent_id)
        inbox = self._fetch(
            "SELECT message_id, envelope, consumed FROM inbox WHERE agent_id = ? ORDER BY seq",
            agent_id,
        )
        topics = self._fetch(
            "SELECT topic, step FROM swarm_members WHERE agent_id = ? ORDER BY step", agent_id
        )
        return AgentRows(
            record=_record(found[0]),
            journal=list(self.entries(agent_id)),
            kv=[
                (str(k), bytes(v))
                for k, v in self._fetch("SELECT key, value FROM kv WHERE agent_id = ?", agent_id)
            ],
            state=bytes(state[0][0]) if state else None,
            inbox=[(str(m), bytes(e), int(c)) for m, e, c in inbox],
            topics=[(str(t), int(s)) for t, s in topics],
        )

    def install(
        self, rows: AgentRows, blobs: dict[bytes, bytes], before_commit: Callable[[], None]
    ) -> bool:
        return self._run(self._install(rows, blobs, before_commit))

    async def _install(
        self, rows: AgentRows, blobs: dict[bytes, bytes], before_commit: Callable[[], None]
    ) -> bool:
        conn = self._conn
        agent_id = rows.record.agent_id
        async with conn.transaction():
            if await conn.fetchval(_numbered(_EXISTS), agent_id, agent_id) is not None:
                return False
            status = _imported_status(rows.record)
            for sql, params in _install_plan(rows, status):
                if params:
                    # consumed is a boolean column here, an integer in SQLite
                    if sql == _INSTALL["inbox"]:
                        params = [(a, m, e, bool(c)) for a, m, e, c in params]
                    await conn.executemany(_numbered(sql), params)
            if blobs:
                await conn.executemany(
                    "INSERT INTO blobs(hash, data) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
                    list(blobs.items()),
                )
            head = rows.head
            if head is not None:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS chain_heads (agent_id text PRIMARY KEY, "
                    "step bigint NOT NULL, hash bytea NOT NULL, public_key bytea NOT NULL, "
                    "signature bytea NOT NULL)"
                )
                await conn.execute(
                    "INSERT INTO chain_heads VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id) "
                    "DO UPDATE SET step = excluded.step, hash = excluded.hash, "
                    "public_key = excluded.public_key, signature = excluded.signature",
                    head.agent_id, head.step, head.hash, head.public_key, head.signature,
                )  # fmt: skip
            before_commit()
        return True

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        try:
            self._run(self._conn.close())
        finally:
            self._stop()
