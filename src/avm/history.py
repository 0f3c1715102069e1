"""Agent history, read offline from a state directory: verify hash chains, print a log.

These functions read a state store without a running VM (:mod:`avm.storage.offline`): a SQLite
state directory, opened read-only, so ``avm verify`` and ``avm log`` work on a copy of one or
beside a VM running on it, or a PostgreSQL store named by its URL.

Verification recomputes every entry's BLAKE3 hash from its fields and the previous entry's hash,
and checks the links between entries and, where the VM signed a chain head, its ed25519
signature. It reports the first broken link of each agent: the entry whose stored content no
longer produces its stored hash (something in it was edited), or whose ``prev_hash`` does not
point at its predecessor (an entry was removed, inserted or reordered). An entry whose result
is a payload reference is also checked against the blob it names: the blob must exist and hash to
its key, or the entry is reported with what is wrong with its payload.
"""

from __future__ import annotations

from pathlib import Path

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
from avm.errors import AvmError
from avm.identity import verify_head
from avm.storage.offline import OfflineStore, open_offline

__all__ = [
    "ChainBreak",
    "GasTotals",
    "HistoryEntry",
    "VerifyReport",
    "check_chain",
    "check_payload",
    "gas_totals",
    "log",
    "verify",
]

_decoder = msgspec.msgpack.Decoder()


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


def _check_payloads(store: OfflineStore, entries: list[JournalEntry]) -> ChainBreak | None:
    for entry in entries:
        key = ref_key(entry.result)
        if key is not None:
            broken = check_payload(entry, store.blob(key))
            if broken is not None:
                return broken
    return None


def verify(
    state_dir: str | Path, agent_id: str | None = None, *, store: str | None = None
) -> VerifyReport:
    """Recompute the hash chains of one agent (or all) and check their payloads and signed heads.

    ``store`` names a PostgreSQL state store (a ``postgresql://`` URL); without it, the SQLite
    database of ``state_dir`` is read.
    """
    source = open_offline(state_dir, store)
    try:
        heads = source.signed_heads()
        breaks: list[ChainBreak] = []
        agents = entries_seen = signed = 0

        def finish(entries: list[JournalEntry]) -> None:
            nonlocal agents, signed
            agents += 1
            broken = check_chain(entries) or _check_payloads(source, entries)
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

        current: list[JournalEntry] = []
        for entry in source.entries(agent_id):
            entries_seen += 1
            if current and current[0].agent_id != entry.agent_id:
                finish(current)
                current = []
            current.append(entry)
        if current:
            finish(current)
        return VerifyReport(agents, entries_seen, signed, breaks)
    finally:
        source.close()


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


def log(state_dir: str | Path, agent_id: str, *, store: str | None = None) -> list[HistoryEntry]:
    """An agent's journal, oldest first, in readable form."""
    source = open_offline(state_dir, store)
    try:
        entries = list(source.entries(agent_id))
        keys = {key for e in entries if (key := ref_key(e.result)) is not None}
        blobs = {key: source.blob(key) for key in keys}
    finally:
        source.close()
    if not entries:
        raise AvmError(f"agent {agent_id!r} has no journal in {store or state_dir}")
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


def gas_totals(state_dir: str | Path, *, store: str | None = None) -> GasTotals:
    """Gas charged in a state store, summed from the journal (exact, in gas)."""
    source = open_offline(state_dir, store)
    try:
        by_agent, by_op = source.gas()
    finally:
        source.close()
    return GasTotals(
        sum(by_agent.values()) / 1000,
        {a: g / 1000 for a, g in by_agent.items()},
        {o: g / 1000 for o, g in by_op.items()},
    )
