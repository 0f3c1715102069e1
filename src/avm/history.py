"""Agent history, read offline from a state directory: verify hash chains, print a log.

These functions open the state database read-only and never need a running VM, so ``avm verify``
and ``avm log`` work on a copy of a state directory, or beside a VM that is running on it.

Verification recomputes every entry's BLAKE3 hash from its fields and the previous entry's hash,
and checks the links between entries and, where the VM signed a chain head, its ed25519
signature. It reports the first broken link of each agent: the entry whose stored content no
longer produces its stored hash (something in it was edited), or whose ``prev_hash`` does not
point at its predecessor (an entry was removed, inserted or reordered). An entry whose result
is a payload reference is also checked against the blob it names: the blob must exist and hash to
its key, or the entry is reported with what is wrong with its payload.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from avm._core.journal import (
    GENESIS,
    EntryFlag,
    EntryStatus,
    JournalEntry,
    blob_key,
    chain_hash,
    describe_ref,
    ref_key,
)
from avm.errors import AvmError, StorageError
from avm.identity import SignedHead, verify_head

__all__ = [
    "ChainBreak",
    "GasTotals",
    "HistoryEntry",
    "VerifyReport",
    "agent_entries",
    "gas_totals",
    "log",
    "verify",
]

_decoder = msgspec.msgpack.Decoder()
_COLUMNS = "agent_id, step, op, args_digest, status, result, gas, wall, prev_hash, hash, flags"


class ChainBreak(msgspec.Struct, frozen=True):
    agent_id: str
    step: int
    reason: str


class VerifyReport(msgspec.Struct, frozen=True):
    agents: int
    entries: int
    signed_heads: int
    breaks: list[ChainBreak]

    @property
    def ok(self) -> bool:
        return not self.breaks


class HistoryEntry(msgspec.Struct, frozen=True):
    """One journal entry, readable: what the agent did, how it ended, what it cost, when."""

    step: int
    op: str
    ok: bool
    result: str
    gas: float
    wall: float
    flags: list[str]


def _connect(state_dir: str | Path) -> sqlite3.Connection:
    path = Path(state_dir) / "state.db"
    if not path.exists():
        raise AvmError(f"no AVM state database at {path}")
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {path}: {exc}") from None


def _entry(row: Any) -> JournalEntry:
    return JournalEntry(
        row[0], row[1], row[2], bytes(row[3]), EntryStatus(row[4]), bytes(row[5]), row[6], row[7],
        bytes(row[8]), bytes(row[9]), row[10],
    )  # fmt: skip


def agent_entries(db: sqlite3.Connection, agent_id: str | None) -> Iterator[JournalEntry]:
    where, params = ("WHERE agent_id = ?", (agent_id,)) if agent_id else ("", ())
    for row in db.execute(
        f"SELECT {_COLUMNS} FROM journal {where} ORDER BY agent_id, step", params
    ):
        yield _entry(row)


def check_chain(entries: list[JournalEntry]) -> ChainBreak | None:
    """The first broken link in one agent's entries (ordered by step), or None."""
    prev = GENESIS
    expected_step: int | None = None
    for entry in entries:
        if expected_step is not None and entry.step != expected_step:
            return ChainBreak(entry.agent_id, entry.step, f"entries {expected_step}.. are missing")
        if entry.prev_hash != prev and not (expected_step is None and entry.prev_hash):
            return ChainBreak(
                entry.agent_id, entry.step, "prev_hash does not match the previous entry"
            )
        recomputed = chain_hash(
            entry.prev_hash, entry.agent_id, entry.step, entry.op, entry.args_digest,
            entry.status, entry.result, entry.gas, entry.wall, entry.flags,
        )  # fmt: skip
        if recomputed != entry.hash:
            return ChainBreak(
                entry.agent_id, entry.step, f"{entry.op} entry was altered: its hash does not match"
            )
        prev, expected_step = entry.hash, entry.step + 1
    return None


def read_blob(db: sqlite3.Connection, key: bytes) -> bytes | None:
    try:
        row = db.execute("SELECT data FROM blobs WHERE hash = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # made before payloads were stored by hash: none there
        return None
    return None if row is None else bytes(row[0])


def check_payload(entry: JournalEntry, blob: bytes | None) -> ChainBreak | None:
    """What is wrong with the payload an entry refers to (``blob``, as found), or None."""
    key = ref_key(entry.result)
    if key is None:
        return None
    if blob is None:
        reason = f"{entry.op} entry's payload blake3:{key.hex()} is missing"
    elif blob_key(blob) != key:
        reason = f"{entry.op} entry's payload blake3:{key.hex()} is corrupt: its hash differs"
    else:
        return None
    return ChainBreak(entry.agent_id, entry.step, reason)


def _check_payloads(db: sqlite3.Connection, entries: list[JournalEntry]) -> ChainBreak | None:
    for entry in entries:
        key = ref_key(entry.result)
        if key is not None:
            broken = check_payload(entry, read_blob(db, key))
            if broken is not None:
                return broken
    return None


def _signed_heads(db: sqlite3.Connection) -> dict[str, SignedHead]:
    try:
        rows = db.execute(
            "SELECT agent_id, step, hash, public_key, signature FROM chain_heads"
        ).fetchall()
    except sqlite3.OperationalError:  # a state directory no VM has signed heads in yet
        return {}
    return {r[0]: SignedHead(r[0], r[1], bytes(r[2]), bytes(r[3]), bytes(r[4])) for r in rows}


def verify(state_dir: str | Path, agent_id: str | None = None) -> VerifyReport:
    """Recompute the hash chains of one agent (or all) and check their signed heads."""
    db = _connect(state_dir)
    try:
        heads = _signed_heads(db)
        breaks: list[ChainBreak] = []
        agents = entries_seen = signed = 0
        current: list[JournalEntry] = []

        def finish(entries: list[JournalEntry]) -> None:
            nonlocal agents, signed
            if not entries:
                return
            agents += 1
            broken = check_chain(entries) or _check_payloads(db, entries)
            if broken is not None:
                breaks.append(broken)
                return
            head = heads.get(entries[0].agent_id)
            if head is None:
                return
            signed += 1
            last = {e.step: e for e in entries}.get(head.step)
            if last is None or last.hash != head.hash or not verify_head(head):
                breaks.append(
                    ChainBreak(head.agent_id, head.step, "the signed chain head does not match")
                )

        try:
            for entry in agent_entries(db, agent_id):
                entries_seen += 1
                if current and current[0].agent_id != entry.agent_id:
                    finish(current)
                    current = []
                current.append(entry)
            finish(current)
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise StorageError(f"the state database is damaged: {exc}") from None
        return VerifyReport(agents, entries_seen, signed, breaks)
    finally:
        db.close()


def _summary(data: bytes, limit: int = 80, blob: bytes | None = None) -> str:
    key = ref_key(data)
    if key is not None:
        ref = describe_ref(key, None if blob is None else len(blob))
        if blob is None or blob_key(blob) != key:
            return ref if blob is None else f"{ref} corrupt"
        return f"{ref} {_summary(blob, max(limit - len(ref) - 1, 10))}"
    try:
        value = _decoder.decode(data)
    except msgspec.DecodeError:
        return f"<{len(data)} bytes, undecodable>"
    if isinstance(value, dict) and "text" in value and "usage" in value:
        value = value["text"]  # a model reply reads best as its text
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log(state_dir: str | Path, agent_id: str) -> list[HistoryEntry]:
    """An agent's journal, oldest first, in readable form."""
    db = _connect(state_dir)
    try:
        entries = list(agent_entries(db, agent_id))
        blobs = {
            key: read_blob(db, key)
            for key in {ref_key(e.result) for e in entries} - {None}
            if key is not None
        }
    finally:
        db.close()
    if not entries:
        raise AvmError(f"agent {agent_id!r} has no journal in {state_dir}")
    return [
        HistoryEntry(
            step=e.step,
            op=e.op,
            ok=e.status is EntryStatus.OK,
            result=_summary(e.result, blob=blobs.get(ref_key(e.result) or b"")),
            gas=e.gas / 1000,
            wall=e.wall,
            flags=[f.name.lower() for f in EntryFlag if f and e.flags & f and f.name],
        )
        for e in entries
    ]


class GasTotals(msgspec.Struct, frozen=True):
    total: float
    by_agent: dict[str, float]
    by_instruction: dict[str, float]


def gas_totals(state_dir: str | Path) -> GasTotals:
    """Gas charged in a state directory, summed from the journal (exact, in gas)."""
    db = _connect(state_dir)
    try:
        by_agent = {
            str(a): g / 1000
            for a, g in db.execute("SELECT agent_id, sum(gas) FROM journal GROUP BY agent_id")
        }
        by_op = {
            str(o): g / 1000 for o, g in db.execute("SELECT op, sum(gas) FROM journal GROUP BY op")
        }
    finally:
        db.close()
    return GasTotals(sum(by_agent.values()), by_agent, by_op)
