"""The embedded state store: one SQLite database in WAL mode, written with group commit.

Writes never touch the database when they are made. A KV or execution-state write goes into an
overlay (the latest value per key, or a deletion), a journal entry into a list, a blob into a
map by key (unless this store already wrote that key), anything else (inbox, swarm membership,
agent and passivation records) into a queue of statements; every agent's writes pile up there
until the batch commits in one transaction (``BEGIN``, one ``executemany`` per kind, ``COMMIT``)
on the event loop's connection. Reads see their own writes: KV and state reads look in the
overlay first, journal heads in the newest entry per agent of the batch, blobs in the batch's
map, inbox deduplication in the set of messages queued; the rarer reads of whole histories
(entries, gas totals, checkpoints, inbox contents, swarm memberships, agent records) commit the
batch first.
So the loop only holds a write transaction
inside a commit, and nothing is half-written when it yields. For a recovery,
``agents_unfinished()`` reads the journal head, gas total and last checkpoint of every agent it
returns in one statement, since restoring each of them asks for exactly those next.

Where a batch may commit is what makes replay exactly-once. The KV write of an instruction and
its journal entry must commit together, and so must the instructions an agent issues without
suspending in between (an agent that checkpoints after each message it receives relies on the
receive and the save landing together). A batch therefore commits only where no agent is
between two instructions: from a loop callback (the end of the loop iteration that wrote it),
or in ``sync()``, just before its caller suspends.

When a batch commits is the durability mode's business. ``durable`` commits at the end of every
loop iteration that wrote (its agents wait for the fsync anyway). ``relaxed`` promises only that
nobody waits, so it commits at most once per ``relaxed_commit_s`` (5 ms): the first write after a
quiet spell still commits at the end of its iteration, later ones ride in the batch that commits
when the window is over (from a timer callback, so still where no agent is between two
instructions). A fleet whose replies arrive one loop iteration at a time otherwise committed a
transaction of two or three entries per iteration, each writing its own WAL frames for the same
few index pages; in bench/io_calls.py that was most of the state store's CPU per model call.
A process that dies loses at most that window's entries, which its agents re-run on recovery,
like PostgreSQL's asynchronous commit (whose window is larger).

::

    agents ─► overlay / entries / statements ─► commit (loop) ─► fsync, checkpoint (thread)
                    ▲                              │                      │
                    └── the next batch fills ──────┘◄── wake the waiters ─┘
                        while the thread works

One background thread does the slow disk work, a job at a time. In ``durable`` mode it fsyncs
the WAL after every commit that somebody waits for (fsync flushes a file's data whichever
descriptor wrote it, so commits run with ``synchronous=NORMAL`` and never wait for the disk on
the loop) and then wakes the agents waiting in ``sync()``; a batch of reads only needs no fsync
of its own, the next one covers it. In both modes it runs the WAL checkpoints
(``wal_autocheckpoint`` is off on the loop's connection) on a connection of its own. The loop
does not commit while the thread works: writes pile into the next batch, which commits when the
thread is done, so batches grow with the disk's latency, there is one fsync or checkpoint in
flight at most, and a checkpoint runs with no commit beside it, copies every frame, and lets
the next commit restart the WAL from its beginning (the file stays small). When fsyncs take
longer than commits, ``sync()`` commits a batch of ``_EARLY_COMMIT_ROWS`` entries without
waiting for the end of the loop iteration, so that the thread syncs one group of agents while
the loop runs the next instead of the whole fleet waiting on one fsync in lockstep.

The SQL itself stays on the loop's thread. Moved to a writer thread, the inserts would need the
GIL for every row they bind; on a machine whose cores are busy, a batch took six times longer
there while slowing the loop down, so only the calls that wait on the disk moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from msgspec.structs import astuple

from avm._core.journal import EntryStatus, JournalEntry
from avm.config import Durability
from avm.errors import StorageError, VMStateError
from avm.storage.base import AgentRecord, statement_runs

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
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS swarm_members (
    agent_id TEXT NOT NULL,
    topic    TEXT NOT NULL,
    step     INTEGER NOT NULL,
    PRIMARY KEY (agent_id, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS passivated (
    agent_id TEXT PRIMARY KEY,
    record   BLOB NOT NULL
) WITHOUT ROWID;
"""

# The journal is appended to in rowid order, with the (agent, step) key in an index: a batch of
# entries from many agents then fills a few new pages at the table's end and scatters only its
# small index entries, where a table clustered by (agent, step) rewrites a page per agent (four
# times the WAL, and twice the commit time, at a thousand agents). Databases made before keep
# their clustered table; every query works on both.
_JOURNAL_SCHEMA = """
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
    flags       INTEGER NOT NULL DEFAULT 0
);
"""
_JOURNAL_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS journal_by_agent ON journal (agent_id, step)"

_KV_PUT = (
    "INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT(agent_id, key) DO UPDATE SET value = excluded.value"
)
_KV_DELETE = "DELETE FROM kv WHERE agent_id = ? AND key = ?"
_STATE_PUT = (
    "INSERT INTO execution_state(agent_id, state) VALUES (?, ?) "
    "ON CONFLICT(agent_id) DO UPDATE SET state = excluded.state"
)
_STATE_DELETE = "DELETE FROM execution_state WHERE agent_id = ?"
_JOURNAL = (
    "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, wall, "
    "prev_hash, hash, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BLOB_PUT = "INSERT OR IGNORE INTO blobs(hash, data) VALUES (?, ?)"
_SWARM_JOIN = (
    "INSERT INTO swarm_members(agent_id, topic, step) VALUES (?, ?, ?) "
    "ON CONFLICT(agent_id, topic) DO UPDATE SET step = excluded.step"
)
_INBOX_PUT = "INSERT OR IGNORE INTO inbox(agent_id, message_id, envelope) VALUES (?, ?, ?)"
_INBOX_CONSUME = "UPDATE inbox SET consumed = 1 WHERE agent_id = ? AND message_id = ?"
_AGENT_PUT = (
    "INSERT INTO agents(agent_id, definition, args, priority, budget, spent, status, "
    "created, first_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id) DO "
    "UPDATE SET definition = excluded.definition, args = excluded.args, "
    "priority = excluded.priority, budget = excluded.budget, spent = excluded.spent, "
    "status = excluded.status, created = excluded.created, "
    "first_step = excluded.first_step"
)
_AGENT_UPDATE = "UPDATE agents SET status = ?, spent = ?, budget = ? WHERE agent_id = ?"
_AGENT_COLUMNS = "agent_id, definition, args, priority, budget, spent, status, created, first_step"
_PASSIVATED_PUT = (
    "INSERT INTO passivated(agent_id, record) VALUES (?, ?) "
    "ON CONFLICT(agent_id) DO UPDATE SET record = excluded.record"
)
_PASSIVATED_DELETE = "DELETE FROM passivated WHERE agent_id = ?"
# The unfinished agents a restart resumes into RAM: passivated ones stay out of it.
_RESUMED = (
    "a.status IN ('running', 'out_of_gas', 'stopped') "
    "AND NOT EXISTS (SELECT 1 FROM passivated p WHERE p.agent_id = a.agent_id)"
)

# A durable batch may commit early once it holds this many journal entries and the disk thread
# is idle: small enough that the thread starts syncing while the loop still has most of a large
# fleet to run, large enough that a commit's fixed costs stay small per entry. It does so only
# while fsyncs take longer than commits (both measured as they run), since an early commit buys
# the overlap of one fsync with the cost of one more commit.
_EARLY_COMMIT_ROWS = 256
# In relaxed mode a batch commits at most this often by default (see the module docstring).
_RELAXED_COMMIT_S = 0.005
_SMOOTHING = 0.2  # weight of the newest measurement in the running fsync and commit times
# Checkpoint once this many rows were committed since the last checkpoint: with the journal's
# rows spread over many pages, about the 1,000 pages at which SQLite would checkpoint by itself.
_CHECKPOINT_ROWS = 4096
# Blob keys this store wrote, remembered so that a payload many agents share is handed to SQLite
# once, not once per agent; past this many it starts over (a repeat then costs one ignored row).
_KNOWN_BLOBS = 65_536

_STATUS = {int(status): status for status in EntryStatus}
# sqlite3 binds an int subclass only after looking for an adapter and a __conform__ method; with
# one registered it finds the first at once, which halves what binding a journal entry costs.
sqlite3.register_adapter(EntryStatus, int)
# The same goes for bytes, which sqlite3 passes through unadapted only for int, float, str and
# bytearray: every blob looked for a __conform__ attribute and cleared the AttributeError. An
# entry binds four blobs (digest, result, both hashes); this identity adapter (bytes(b) is b)
# cuts a fifth off the cost of writing one. It changes nothing else: it is not one of the base
# types whose adapters make sqlite3 adapt every value.
sqlite3.register_adapter(bytes, bytes)


_READ_AHEAD = f"""
SELECT a.agent_id, a.first_step,
    (SELECT max(step) FROM journal WHERE agent_id = a.agent_id),
    (SELECT hash FROM journal WHERE agent_id = a.agent_id ORDER BY step DESC LIMIT 1),
    (SELECT coalesce(sum(gas), 0) FROM journal
        WHERE agent_id = a.agent_id AND step >= a.first_step),
    (SELECT max(step) FROM journal
        WHERE agent_id = a.agent_id AND step >= a.first_step AND status = 0
        AND op IN ('SAVE_EXECUTION_STATE', 'RESET_EXECUTION_STATE'))
FROM agents a WHERE {_RESUMED}
"""


class _Recovering(NamedTuple):
    """What restoring an agent reads from its journal, read ahead for many agents at once."""

    first_step: int
    head: tuple[int, bytes] | None
    gas: int
    checkpoint: int | None
    topics: list[tuple[str, int]]  # swarms joined, with the step of the join


_TOPICS_AHEAD = (
    "SELECT m.agent_id, m.topic, m.step FROM swarm_members m JOIN agents a USING (agent_id) "
    f"WHERE {_RESUMED} ORDER BY m.step"
)


class _Job:
    """What the disk thread is asked to do after a commit."""

    __slots__ = ("checkpoint", "fsync", "target")

    def __init__(self, target: int, fsync: bool, checkpoint: bool) -> None:
        self.target = target
        self.fsync = fsync
        self.checkpoint = checkpoint


class SqliteStateStore:
    def __init__(
        self,
        path: str | Path,
        durability: Durability = "durable",
        *,
        relaxed_commit_s: float = _RELAXED_COMMIT_S,
    ) -> None:
        if relaxed_commit_s < 0:
            raise ValueError(f"relaxed_commit_s must not be negative, got {relaxed_commit_s}")
        self.path = Path(path)
        self.durability: Durability = durability
        self._durable = durability == "durable"
        self._relaxed_commit_s = relaxed_commit_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.executescript(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000; "
                "PRAGMA wal_autocheckpoint=0;" + _SCHEMA + _JOURNAL_SCHEMA
            )
            (journal,) = self._db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'journal'"
            ).fetchone()
            if "WITHOUT ROWID" not in journal:
                self._db.execute(_JOURNAL_INDEX)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open state database {self.path}: {exc}") from None
        # The batch being written: nothing of it is in the database until it commits.
        self._kv: dict[tuple[str, str], bytes | None] = {}  # None: deleted
        self._state: dict[str, bytes | None] = {}
        self._journal: list[JournalEntry] = []
        self._blobs: dict[bytes, bytes] = {}
        self._known_blobs: set[bytes] = set()
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._statements: list[tuple[str, tuple[object, ...]]] = []
        self._inbox_new: set[tuple[str, str]] = set()
        self._recovering: dict[str, _Recovering] = {}  # see agents_unfinished
        self._dirty = False  # the batch holds writes
        self._armed = False  # a commit is scheduled (end of this loop iteration, or window)
        self._closed = False
        self._last_commit = -math.inf  # time.perf_counter() of the last commit's start
        self.commits = 0
        self.fsyncs = 0
        self._rows_since_checkpoint = 0
        # Durability: batches are numbered as they commit; a waiter wants the fsync that covers
        # a given batch number.
        self._synced = 0
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._fsync_s = 0.0  # running averages, seconds
        self._commit_s = 0.0
        # The disk thread: at most one job at a time; ``_busy`` is set by the loop when it hands
        # a job over and cleared by the thread when the job is done.
        self._busy = False
        self._job: _Job | None = None
        self._stopping = False
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wal_fd: int | None = None
        self._checkpointer: sqlite3.Connection | None = None

    # -- the batch ---------------------------------------------------------------------------

    def _touch(self) -> None:
        """Note that the batch holds writes; commit it at the end of this loop iteration."""
        if self._dirty:
            return
        if self._closed:
            raise VMStateError("the state store is closed")
        self._dirty = True
        if not self._armed:
            self._armed = True
            loop = asyncio.get_running_loop()
            wait = self._last_commit + self._relaxed_commit_s - time.perf_counter()
            if self._durable or wait <= 0:
                loop.call_soon(self._end_of_iteration)
            else:
                loop.call_later(wait, self._end_of_iteration)

    def _queue(self, sql: str, params: tuple[object, ...]) -> None:
        self._touch()
        self._statements.append((sql, params))

    def _end_of_iteration(self) -> None:
        self._armed = False
        if self._dirty and not self._busy:
            self._commit()

    def _commit(self) -> None:
        """Write the batch in one transaction, then hand the disk work to the thread."""
        if not self._dirty:
            return
        self._dirty = False
        kv, self._kv = self._kv, {}
        state, self._state = self._state, {}
        journal, self._journal = self._journal, []
        blobs, self._blobs = self._blobs, {}
        statements, self._statements = self._statements, []
        self._heads = {}
        self._inbox_new = set()
        db = self._db
        started = self._last_commit = time.perf_counter()
        try:
            db.execute("BEGIN")
            if kv:
                db.executemany(_KV_PUT, [(a, k, v) for (a, k), v in kv.items() if v is not None])
                db.executemany(_KV_DELETE, [key for key, v in kv.items() if v is None])
            if state:
                db.executemany(_STATE_PUT, [(a, s) for a, s in state.items() if s is not None])
                db.executemany(_STATE_DELETE, [(a,) for a, s in state.items() if s is None])
            _run_in_order(db, statements)
            if blobs:  # before the entries that refer to them, in the same transaction
                db.executemany(_BLOB_PUT, blobs.items())
            if journal:
                db.executemany(_JOURNAL, map(astuple, journal))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("state database commit failed: %s", exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._fail(self.commits + 1, StorageError(f"state database commit failed: {exc}"))
            return
        self.commits += 1
        if blobs:
            if len(self._known_blobs) + len(blobs) > _KNOWN_BLOBS:
                self._known_blobs.clear()
            self._known_blobs.update(blobs)
        self._commit_s += _SMOOTHING * (time.perf_counter() - started - self._commit_s)
        self._rows_since_checkpoint += (
            len(kv) + len(state) + len(statements) + len(journal) + len(blobs)
        )
        checkpoint = self._rows_since_checkpoint >= _CHECKPOINT_ROWS
        if checkpoint:
            self._rows_since_checkpoint = 0
        # Only a batch somebody waits for needs its fsync now: one of reads only is covered by
        # the next fsync, the next checkpoint, or closing.
        fsync = self._durable and bool(self._waiting)
        if (fsync or checkpoint) and not self._stopping:
            self._hand_over(self.commits, fsync, checkpoint)

    # -- the disk thread ---------------------------------------------------------------------

    def _hand_over(self, target: int, fsync: bool, checkpoint: bool) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._disk_work, name=f"avm-sqlite-{self.path.name}", daemon=True
            )
            self._thread.start()
        with self._wakeup:
            self._busy = True
            queued = self._job
            if queued is not None:  # a read committed while the thread was busy: do both
                fsync = fsync or queued.fsync
                checkpoint = checkpoint or queued.checkpoint
            self._job = _Job(target, fsync, checkpoint)
            self._wakeup.notify()

    def _disk_work(self) -> None:
        """The thread's loop: one job at a time, each reported back to the event loop."""
        while True:
            with self._wakeup:
                while self._job is None and not self._stopping:
                    self._wakeup.wait()
                job, self._job = self._job, None
            if job is None:
                return
            if job.fsync:
                try:
                    self._fsync()
                except OSError as exc:
                    self._report(self._fsync_failed, job.target, exc)
                else:
                    self._report(self._synced_to, job.target)
            if job.checkpoint:
                self._checkpoint()
            with self._wakeup:
                self._busy = self._job is not None
            self._report(self._idle)

    def _report(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        # The loop may have closed while we worked: then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    def _fsync(self) -> None:
        with self._wakeup:  # opened once, by whichever thread syncs first
            if self._wal_fd is None:
                self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
                directory = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)  # the WAL file's own existence must survive a crash too
                finally:
                    os.close(directory)
        started = time.perf_counter()
        os.fsync(self._wal_fd)
        self._fsync_s += _SMOOTHING * (time.perf_counter() - started - self._fsync_s)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database on the thread's own connection, without blocking.

        A PASSIVE checkpoint takes no lock that the loop's commits need; the loop commits
        nothing while it runs, so it usually copies every frame and the WAL restarts.
        """
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._checkpointer.executescript(
                    "PRAGMA busy_timeout=5000; PRAGMA synchronous=NORMAL;"
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("checkpoint of %s failed (the WAL will grow): %s", self.path, exc)

    def _synced_to(self, target: int) -> None:
        self.fsyncs += 1
        self._synced = max(self._synced, target)
        for number in sorted(n for n in self._waiting if n <= target):
            for waiter in self._waiting.pop(number):
                if not waiter.done():
                    waiter.set_result(None)

    def _fsync_failed(self, target: int, exc: OSError) -> None:
        error = StorageError(f"cannot sync the state database to disk: {exc}")
        for number in sorted(n for n in self._waiting if n <= target):
            for waiter in self._waiting.pop(number):
                if not waiter.done():
                    waiter.set_exception(error)

    def _idle(self) -> None:
        """The thread is done: commit what piled up meanwhile, or sync what waiters still want."""
        if self._busy or self._closed:
            return
        if self._dirty:
            self._commit()
        elif self._waiting and self._synced < self.commits:
            self._hand_over(self.commits, True, False)

    def _fail(self, number: int, error: Exception) -> None:
        for waiter in self._waiting.pop(number, []):
            if not waiter.done():
                waiter.set_exception(error)

    async def sync(self) -> None:
        if not self._durable:
            return
        # The caller suspends right after this, so its instructions since it last suspended
        # are all in the batch: committing here splits no agent's run of instructions, just as
        # a commit from a loop callback does not.
        if (
            self._dirty
            and not self._busy
            and len(self._journal) >= _EARLY_COMMIT_ROWS
            and self._fsync_s > self._commit_s
        ):
            self._commit()
        wanted = self.commits + 1 if self._dirty else self.commits
        if self._synced >= wanted:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(wanted)
        if waiting is None:
            self._waiting[wanted] = [waiter]
        else:
            waiting.append(waiter)
        if wanted == self.commits and not self._busy:  # committed, but nobody asked for an fsync
            self._hand_over(wanted, True, False)
        await waiter

    def flush(self) -> None:
        """Commit the batch now and, in durable mode, sync it (used when stopping)."""
        self._commit()
        if self._durable and self._synced < self.commits:
            self._fsync()
            self._synced_to(self.commits)

    def close(self) -> None:
        """Commit what is pending and close the database."""
        if self._closed:
            return
        # The thread finishes what it was given first, so that nothing else uses its connection
        # or the WAL descriptor while the last batch commits and syncs here.
        if self._thread is not None:
            with self._wakeup:
                self._stopping = True
                self._wakeup.notify()
            self._thread.join()
        self._stopping = True
        self.flush()
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)

    async def aclose(self) -> None:
        self.close()

    def _commit_for_read(self) -> None:
        """Reads of whole histories see the batch by committing it first."""
        if self._dirty:
            self._commit()

    # -- KV and execution state --------------------------------------------------------------

    def kv_put(self, agent_id: str, key: str, value: bytes) -> None:
        self._touch()
        self._kv[agent_id, key] = value

    def kv_delete(self, agent_id: str, key: str) -> None:
        self._touch()
        self._kv[agent_id, key] = None

    async def kv_get(self, agent_id: str, key: str) -> bytes | None:
        pending = self._kv
        if pending and (agent_id, key) in pending:
            return pending[agent_id, key]
        row = self._db.execute(
            "SELECT value FROM kv WHERE agent_id = ? AND key = ?", (agent_id, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def state_put(self, agent_id: str, state: bytes | None) -> None:
        self._touch()
        self._state[agent_id] = state

    async def state_get(self, agent_id: str) -> bytes | None:
        pending = self._state
        if agent_id in pending:
            return pending[agent_id]
        row = self._db.execute(
            "SELECT state FROM execution_state WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- blobs -------------------------------------------------------------------------------

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        pending, known = self._blobs, self._known_blobs
        for key, data in blobs:
            if key not in pending and key not in known:
                self._touch()
                pending[key] = data

    async def get_blob(self, key: bytes) -> bytes | None:
        pending = self._blobs.get(key)
        if pending is not None:
            return pending
        row = self._db.execute("SELECT data FROM blobs WHERE hash = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    # -- journal -----------------------------------------------------------------------------

    def journal_append(self, entry: JournalEntry) -> None:
        self._touch()
        self._journal.append(entry)
        agent_id = entry.agent_id
        self._heads[agent_id] = (entry.step, entry.hash)
        if self._recovering:
            self._recovering.pop(agent_id, None)

    async def journal_head(self, agent_id: str) -> tuple[int, bytes] | None:
        head = self._heads.get(agent_id)
        if head is not None:
            return head
        known = self._recovering.get(agent_id)
        if known is not None:
            return known.head
        row = self._db.execute(
            "SELECT step, hash FROM journal WHERE agent_id = ? ORDER BY step DESC LIMIT 1",
            (agent_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    async def journal_entries(self, agent_id: str, from_step: int = 0) -> list[JournalEntry]:
        self._commit_for_read()
        rows = self._db.execute(
            "SELECT agent_id, step, op, args_digest, status, result, gas, wall, prev_hash, hash, "
            "flags FROM journal WHERE agent_id = ? AND step >= ? ORDER BY step",
            (agent_id, from_step),
        ).fetchall()
        status = _STATUS
        return [
            JournalEntry(
                r[0], r[1], r[2], bytes(r[3]), status[r[4]], bytes(r[5]), r[6], r[7],
                bytes(r[8]), bytes(r[9]), r[10],
            )
            for r in rows
        ]  # fmt: skip

    async def journal_gas(self, agent_id: str, from_step: int) -> int:
        known = self._recovering.get(agent_id)
        if known is not None and known.first_step == from_step:
            return known.gas
        self._commit_for_read()
        row = self._db.execute(
            "SELECT coalesce(sum(gas), 0) FROM journal WHERE agent_id = ? AND step >= ?",
            (agent_id, from_step),
        ).fetchone()
        return int(row[0])

    async def last_checkpoint(self, agent_id: str, from_step: int) -> int | None:
        known = self._recovering.get(agent_id)
        if known is not None and known.first_step == from_step:
            return known.checkpoint
        self._commit_for_read()
        row = self._db.execute(
            "SELECT max(step) FROM journal WHERE agent_id = ? AND step >= ? AND status = 0 "
            "AND op IN ('SAVE_EXECUTION_STATE', 'RESET_EXECUTION_STATE')",
            (agent_id, from_step),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    # -- inbox -------------------------------------------------------------------------------

    def inbox_put(self, agent_id: str, message_id: str, envelope: bytes) -> bool:
        key = (agent_id, message_id)
        if key in self._inbox_new:
            return False
        row = self._db.execute(
            "SELECT 1 FROM inbox WHERE agent_id = ? AND message_id = ?", key
        ).fetchone()
        if row is not None:
            return False
        self._queue(_INBOX_PUT, (agent_id, message_id, envelope))
        self._inbox_new.add(key)
        return True

    def inbox_consume(self, agent_id: str, message_id: str) -> None:
        self._queue(_INBOX_CONSUME, (agent_id, message_id))

    async def inbox_pending(self, agent_id: str) -> list[bytes]:
        self._commit_for_read()
        rows = self._db.execute(
            "SELECT envelope FROM inbox WHERE agent_id = ? AND consumed = 0 ORDER BY seq",
            (agent_id,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    # -- swarm membership --------------------------------------------------------------------

    def swarm_join(self, agent_id: str, topic: str, step: int) -> None:
        self._queue(_SWARM_JOIN, (agent_id, topic, step))

    async def swarm_topics(self, agent_id: str, from_step: int) -> list[str]:
        known = self._recovering.get(agent_id)
        if known is not None:
            return [topic for topic, step in known.topics if step >= from_step]
        self._commit_for_read()
        rows = self._db.execute(
            "SELECT topic FROM swarm_members WHERE agent_id = ? AND step >= ? ORDER BY step",
            (agent_id, from_step),
        ).fetchall()
        return [str(r[0]) for r in rows]

    # -- agents ------------------------------------------------------------------------------

    def agent_put(self, record: AgentRecord) -> None:
        self._queue(
            _AGENT_PUT,
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
        self._queue(_AGENT_UPDATE, (status, spent, budget, agent_id))

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
        self._commit_for_read()
        row = self._db.execute(
            f"SELECT {_AGENT_COLUMNS} FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else self._agent(row)

    async def agents_unfinished(self) -> list[AgentRecord]:
        """The agents to resume, with what restoring each will ask of the journal read ahead.

        The VM next asks for every one of them its journal head, its gas total, its last
        checkpoint and its swarms: two statements answer those for all of them (SQLite runs the
        per-agent lookups itself, on the journal's index), instead of four round trips per
        agent. The answers stand until the agent writes to its journal again (joining a swarm
        writes an entry too).
        """
        self._commit_for_read()
        rows = self._db.execute(
            f"SELECT {_AGENT_COLUMNS} FROM agents a WHERE {_RESUMED} ORDER BY created, agent_id"
        ).fetchall()
        topics: dict[str, list[tuple[str, int]]] = {}
        for agent_id, topic, step in self._db.execute(_TOPICS_AHEAD):
            topics.setdefault(str(agent_id), []).append((str(topic), int(step)))
        self._recovering = {
            str(r[0]): _Recovering(
                int(r[1]),
                None if r[2] is None else (int(r[2]), bytes(r[3])),
                int(r[4]),
                None if r[5] is None else int(r[5]),
                topics.get(str(r[0]), []),
            )
            for r in self._db.execute(_READ_AHEAD)
        }
        return [self._agent(row) for row in rows]

    # -- passivation records -------------------------------------------------------------------

    def passivated_put(self, agent_id: str, record: bytes) -> None:
        self._queue(_PASSIVATED_PUT, (agent_id, record))

    def passivated_delete(self, agent_id: str) -> None:
        self._queue(_PASSIVATED_DELETE, (agent_id,))

    async def passivated_agents(self) -> list[tuple[str, bytes, int]]:
        self._commit_for_read()
        rows = self._db.execute(
            "SELECT agent_id, p.record, a.first_step "
            "FROM passivated p JOIN agents a USING (agent_id) "
            "WHERE a.status IN ('running', 'out_of_gas', 'stopped')"
        ).fetchall()
        return [(str(r[0]), bytes(r[1]), int(r[2])) for r in rows]


def _run_in_order(db: sqlite3.Connection, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Execute queued statements in order, each run of the same statement as one executemany."""
    for sql, params in statement_runs(statements):
        db.executemany(sql, params)
