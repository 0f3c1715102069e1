"""Per-agent SQL: every agent gets its own SQLite database file, and nothing else.

Isolation is by construction: an agent's statements run on a connection that has only that
agent's file open. An authorizer closes the ways out of it: ``ATTACH`` (and ``VACUUM INTO``,
which attaches), ``PRAGMA``, ``load_extension``, transaction control (each statement is its own
transaction) and virtual tables other than FTS5 and R*Tree. ``SQL_FETCH`` runs with a read-only
authorizer on top, so a read can always be safely re-run.

Exactly once: every ``SQL_EXECUTE`` runs in a transaction that also records its step number
in the agent's database (table ``_avm_applied``, hidden from the agent). The statement and its
journal entry live in different files, so after a crash the VM asks ``applied(step)`` before
performing the one statement that may have been in flight, and never applies it twice.

Work is metered like fuel: a progress handler counts SQLite virtual-machine steps in units of
:data:`OPS_PER_UNIT`, aborts a statement that exceeds what the caller can pay for (or the VM's
hard step limit), and reports the units used, which is the ``complexity`` of the gas formula.
Connections are opened lazily and kept in a bounded LRU, so 100,000 agents that never touch SQL
cost no file handles and those that do cost at most ``max_open``.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import blake3
import msgspec

from avm.errors import SqlDenied, StorageError

__all__ = ["OPS_PER_UNIT", "AgentDatabases", "SqlOverLimit", "SqlResult"]

OPS_PER_UNIT = 100

_A = sqlite3
_ALWAYS_DENIED = {
    _A.SQLITE_ATTACH: "ATTACH (and VACUUM INTO) would reach another database file",
    _A.SQLITE_DETACH: "DETACH is not allowed",
    _A.SQLITE_PRAGMA: "PRAGMA statements are not allowed",
    _A.SQLITE_TRANSACTION: "transaction control is not allowed: each statement is atomic",
    _A.SQLITE_SAVEPOINT: "savepoints are not allowed: each statement is atomic",
}
_READ_ONLY_ALLOWED = {_A.SQLITE_SELECT, _A.SQLITE_READ, _A.SQLITE_FUNCTION, _A.SQLITE_RECURSIVE}
_VIRTUAL_MODULES = {"fts5", "rtree"}
_ALLOWED_SCHEMAS = {None, "main", "temp"}
_MAX_PAGES = 262_144  # 1 GiB of 4 KiB pages per agent database
_APPLIED = "_avm_applied"
_APPLIED_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {_APPLIED} (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "step INTEGER NOT NULL, rowcount INTEGER NOT NULL, lastrowid INTEGER);"
)


class SqlResult(msgspec.Struct, frozen=True):
    """What ``SQL_EXECUTE`` returns."""

    rowcount: int
    lastrowid: int | None


class _Meter:
    """Per-statement state shared with the authorizer and progress handler callbacks."""

    __slots__ = ("denied", "internal", "limit", "over_budget", "read_only", "units")

    def __init__(self) -> None:
        self.internal = False  # the VM's own bookkeeping statements bypass the authorizer
        self.denied: str | None = None
        self.read_only = False
        self.units = 0
        self.limit = 0
        self.over_budget = False


class AgentDatabases:
    def __init__(self, root: str | Path, *, max_open: int = 128, max_steps: int = 5_000_000):
        self.root = Path(root)
        self.max_open = max_open
        self.max_units = max(1, max_steps // OPS_PER_UNIT)
        self._open: OrderedDict[str, tuple[sqlite3.Connection, _Meter]] = OrderedDict()

    def path_for(self, agent_id: str) -> Path:
        name = blake3.blake3(agent_id.encode()).hexdigest(16)
        return self.root / name[:2] / f"{name}.db"

    def _connection(self, agent_id: str) -> tuple[sqlite3.Connection, _Meter]:
        entry = self._open.get(agent_id)
        if entry is not None:
            self._open.move_to_end(agent_id)
            return entry
        path = self.path_for(agent_id)
        fresh = not path.exists()
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL mode is stored in the file, so only a new database needs it set.
        db.executescript(
            ("PRAGMA journal_mode=WAL;" if fresh else "")
            + f"PRAGMA synchronous=NORMAL; PRAGMA max_page_count={_MAX_PAGES};"
            + _APPLIED_SCHEMA
        )
        meter = _Meter()
        db.set_authorizer(self._authorizer(meter))
        db.set_progress_handler(self._progress(meter), OPS_PER_UNIT)
        self._open[agent_id] = (db, meter)
        if len(self._open) > self.max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return db, meter

    @staticmethod
    def _authorizer(meter: _Meter) -> Any:
        def authorize(action: int, arg1: str | None, arg2: str | None, schema: str | None,
                      _trigger: str | None) -> int:  # fmt: skip
            if meter.internal:
                return _A.SQLITE_OK
            reason = _ALWAYS_DENIED.get(action)
            if reason is None and _APPLIED in (arg1, arg2):
                reason = f"table {_APPLIED} belongs to the VM"
            if reason is None and action == _A.SQLITE_FUNCTION and arg2 == "load_extension":
                reason = "load_extension is not allowed"
            if reason is None and schema not in _ALLOWED_SCHEMAS:
                reason = f"schema {schema!r} is outside the agent's own database"
            if (
                reason is None
                and action == _A.SQLITE_CREATE_VTABLE
                and arg2 not in _VIRTUAL_MODULES
            ):
                reason = f"virtual table module {arg2!r} is not allowed"
            if reason is None and meter.read_only and action not in _READ_ONLY_ALLOWED:
                reason = "SQL_FETCH is read-only; use SQL_EXECUTE to change data"
            if reason is None:
                return _A.SQLITE_OK
            meter.denied = reason
            return _A.SQLITE_DENY

        return authorize

    @staticmethod
    def _progress(meter: _Meter) -> Any:
        def tick() -> int:
            meter.units += 1
            if meter.units > meter.limit:
                meter.over_budget = True
                return 1  # non-zero aborts the statement; SQLite rolls it back
            return 0

        return tick

    def _run(
        self,
        agent_id: str,
        query: str,
        params: Sequence[Any] | Mapping[str, Any],
        *,
        read_only: bool,
        unit_limit: int | None,
    ) -> tuple[sqlite3.Cursor, sqlite3.Connection, _Meter]:
        db, meter = self._connection(agent_id)
        meter.denied, meter.read_only, meter.units, meter.over_budget = None, read_only, 0, False
        meter.limit = self.max_units if unit_limit is None else min(unit_limit, self.max_units)
        try:
            cursor = db.execute(query, params)
            return cursor, db, meter
        except sqlite3.Error as exc:
            raise self._translate(exc, meter) from None

    def _translate(self, exc: sqlite3.Error, meter: _Meter) -> Exception:
        if meter.denied is not None:
            return SqlDenied(f"SQL denied: {meter.denied}")
        if meter.over_budget:
            return SqlOverLimit(meter.units, meter.limit >= self.max_units)
        if isinstance(exc, sqlite3.Warning):  # e.g. "You can only execute one statement"
            return StorageError(f"SQL rejected: {exc}")
        return StorageError(f"SQL failed: {exc}")

    def execute(
        self,
        agent_id: str,
        query: str,
        params: Sequence[Any] | Mapping[str, Any],
        step: int,
        unit_limit: int | None = None,
    ) -> tuple[SqlResult, int]:
        """Run one statement as step ``step``; return its result and the work units it used."""
        db, meter = self._connection(agent_id)
        self._internal(db, meter, "BEGIN")
        try:
            cursor, _, meter = self._run(
                agent_id, query, params, read_only=False, unit_limit=unit_limit
            )
            try:
                cursor.fetchall()  # step a RETURNING clause or a SELECT to completion
            except sqlite3.Error as exc:
                raise self._translate(exc, meter) from None
            result = SqlResult(cursor.rowcount, cursor.lastrowid)
            units = max(1, meter.units)
            self._internal(
                db,
                meter,
                f"INSERT INTO {_APPLIED}(id, step, rowcount, lastrowid) VALUES (1, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET step = excluded.step, "
                "rowcount = excluded.rowcount, lastrowid = excluded.lastrowid",
                (step, result.rowcount, result.lastrowid),
            )
            self._internal(db, meter, "COMMIT")
        except BaseException:
            if db.in_transaction:
                self._internal(db, meter, "ROLLBACK")
            raise
        return result, units

    def applied(self, agent_id: str, step: int) -> SqlResult | None:
        """The result of ``SQL_EXECUTE`` step ``step`` if it was already committed."""
        db, meter = self._connection(agent_id)
        row = self._internal(
            db, meter, f"SELECT rowcount, lastrowid FROM {_APPLIED} WHERE step = ?", (step,)
        ).fetchone()
        return None if row is None else SqlResult(row[0], row[1])

    @staticmethod
    def _internal(
        db: sqlite3.Connection, meter: _Meter, sql: str, params: tuple[Any, ...] = ()
    ) -> sqlite3.Cursor:
        meter.internal, meter.limit = True, 1 << 40
        try:
            return db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StorageError(f"agent database bookkeeping failed: {exc}") from None
        finally:
            meter.internal = False

    def fetch(
        self, agent_id: str, query: str, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[list[Any]]:
        """Run one read-only query and return its rows."""
        cursor, _, meter = self._run(agent_id, query, params, read_only=True, unit_limit=None)
        try:
            return [list(row) for row in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise self._translate(exc, meter) from None

    def close(self) -> None:
        for db, _ in self._open.values():
            db.close()
        self._open.clear()


class SqlOverLimit(StorageError):
    """A statement ran past its unit limit: the caller's affordable work or the hard cap."""

    def __init__(self, units: int, hard_cap: bool) -> None:
        what = "the VM's per-statement step limit" if hard_cap else "what the agent's gas covers"
        super().__init__(f"SQL statement aborted after {units * OPS_PER_UNIT} steps: over {what}")
        self.units = units
        self.hard_cap = hard_cap
