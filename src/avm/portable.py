"""Portable agents: export one agent as an archive, import it into another state directory.

An archive is a tar file holding everything the agent is: its record (definition name, spawn
arguments, budget), its whole journal, the payloads its journal and execution state refer to by
hash, its KV space, execution state, swarm memberships, undelivered messages, its own SQL
database, its identity key and its chain head signed with that key. ``manifest.json``
lists every member with its size and BLAKE3 hash.

Import checks everything before it changes anything: the archive reads whole, every member
matches the manifest, the journal's hash chain holds and ends at the signed head, every payload
the agent refers to is in the archive and hashes to its key, and the destination has no agent of
that id. Then one transaction writes it all, and the agent resumes
where it was the next time a VM with its definition starts on that directory.

Archives carry the agent's private identity key: treat them as secrets.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import blake3
import msgspec

from avm._core.journal import JournalEntry, blob_key, ref_key
from avm.errors import ArchiveError, AvmError, UnknownAgent
from avm.history import agent_entries, check_chain, read_blob
from avm.identity import IdentityStore, SignedHead, verify_head
from avm.storage.agent_sql import AgentDatabases
from avm.storage.base import AgentRecord

__all__ = ["ARCHIVE_FORMAT", "export_agent", "import_agent"]

ARCHIVE_FORMAT = "avm-agent/2"
_READABLE = ("avm-agent/1", ARCHIVE_FORMAT)  # /1: from before payloads were stored by hash
_UNFINISHED = ("running", "out_of_gas", "stopped")


class _Contents(msgspec.Struct):
    record: AgentRecord
    journal: list[JournalEntry]
    kv: list[tuple[str, bytes]]
    state: bytes | None
    inbox: list[tuple[str, bytes, int]]
    head: SignedHead | None
    identity: bytes
    blobs: dict[bytes, bytes] = msgspec.field(default_factory=dict)
    topics: list[tuple[str, int]] = msgspec.field(default_factory=list)


def _referenced(journal: list[JournalEntry], state: bytes | None) -> set[bytes]:
    """The blob keys an agent's journal and execution state refer to."""
    keys = {key for entry in journal if (key := ref_key(entry.result)) is not None}
    state_key = None if state is None else ref_key(state)
    if state_key is not None:
        keys.add(state_key)
    return keys


def _state_db(state_dir: Path, *, readonly: bool) -> sqlite3.Connection:
    path = state_dir / "state.db"
    if not path.exists():
        raise AvmError(f"no AVM state database at {path}")
    if readonly:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return sqlite3.connect(path, isolation_level=None)


def export_agent(state_dir: str | Path, agent_id: str, out: str | Path) -> Path:
    """Write ``agent_id``'s archive to ``out``; returns the path written."""
    state_dir, out = Path(state_dir), Path(out)
    db = _state_db(state_dir, readonly=True)
    try:
        row = db.execute(
            "SELECT agent_id, definition, args, priority, budget, spent, status, created, "
            "first_step FROM agents WHERE agent_id = ?",
            (agent_id,),
        ).fetchone()
        if row is None:
            raise UnknownAgent(agent_id)
        record = AgentRecord(
            agent_id=row[0], definition=row[1], args=bytes(row[2]), priority=row[3],
            budget=row[4], spent=row[5], status=row[6], created=row[7], first_step=row[8],
        )  # fmt: skip
        journal = list(agent_entries(db, agent_id))
        kv = [
            (str(k), bytes(v))
            for k, v in db.execute("SELECT key, value FROM kv WHERE agent_id = ?", (agent_id,))
        ]
        state_row = db.execute(
            "SELECT state FROM execution_state WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        inbox = [
            (str(m), bytes(e), int(c))
            for m, e, c in db.execute(
                "SELECT message_id, envelope, consumed FROM inbox WHERE agent_id = ? ORDER BY seq",
                (agent_id,),
            )
        ]
        state = None if state_row is None else bytes(state_row[0])
        blobs: dict[bytes, bytes] = {}
        for key in sorted(_referenced(journal, state)):
            blob = read_blob(db, key)
            if blob is None or blob_key(blob) != key:
                what = "missing" if blob is None else "corrupt"
                raise ArchiveError(
                    f"agent {agent_id!r} refers to payload blake3:{key.hex()}, which is {what} "
                    f"in {state_dir}; run 'avm verify {agent_id}'"
                )
            blobs[key] = blob
        topics = _topics(db, agent_id)
    finally:
        db.close()
    identities = IdentityStore(state_dir)
    try:
        head = identities.sign(agent_id, journal[-1].step, journal[-1].hash) if journal else None
        identity = identities.private_bytes(agent_id)
    finally:
        identities.close()
    contents = _Contents(record, journal, kv, state, inbox, head, identity, blobs, topics)
    members = {"agent.msgpack": msgspec.msgpack.encode(contents)}
    sql_path = AgentDatabases(state_dir / "sql").path_for(agent_id)
    if sql_path.exists():
        members["sql.db"] = _snapshot(sql_path)
    manifest = {
        "format": ARCHIVE_FORMAT,
        "agent_id": agent_id,
        "definition": record.definition,
        "members": {
            name: {"size": len(data), "blake3": blake3.blake3(data).hexdigest()}
            for name, data in members.items()
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for name, data in [
            ("manifest.json", json.dumps(manifest, indent=2).encode()),
            *members.items(),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _topics(db: sqlite3.Connection, agent_id: str) -> list[tuple[str, int]]:
    try:
        rows = db.execute(
            "SELECT topic, step FROM swarm_members WHERE agent_id = ? ORDER BY step", (agent_id,)
        ).fetchall()
    except sqlite3.OperationalError:  # a state database from before memberships were stored
        return []
    return [(str(t), int(s)) for t, s in rows]


def _snapshot(path: Path) -> bytes:
    """A consistent copy of a live SQLite database (the online backup API)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        return copy.read_bytes()


def _read_archive(archive: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(archive, "r") as tar:
            members: dict[str, bytes] = {}
            for info in tar.getmembers():
                if not info.isfile():
                    raise ArchiveError(f"{archive}: unexpected member {info.name!r}")
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
                if len(members[info.name]) != info.size:
                    raise ArchiveError(f"{archive}: member {info.name!r} is truncated")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive} is not a readable agent archive: {exc}") from None
    return members


def _check(archive: Path, members: dict[str, bytes]) -> tuple[dict[str, Any], _Contents]:
    try:
        manifest = json.loads(members["manifest.json"])
    except (KeyError, ValueError) as exc:
        raise ArchiveError(f"{archive}: missing or unreadable manifest.json ({exc})") from None
    if manifest.get("format") not in _READABLE:
        raise ArchiveError(
            f"{archive}: format {manifest.get('format')!r}, expected {ARCHIVE_FORMAT}"
        )
    listed: dict[str, Any] = manifest.get("members", {})
    if set(listed) != set(members) - {"manifest.json"}:
        raise ArchiveError(f"{archive}: members do not match the manifest")
    for name, meta in listed.items():
        data = members[name]
        if len(data) != meta["size"] or blake3.blake3(data).hexdigest() != meta["blake3"]:
            raise ArchiveError(f"{archive}: member {name!r} is corrupt (size or hash differs)")
    try:
        contents = msgspec.msgpack.decode(members["agent.msgpack"], type=_Contents)
    except msgspec.DecodeError as exc:
        raise ArchiveError(f"{archive}: agent.msgpack does not decode: {exc}") from None
    if contents.record.agent_id != manifest.get("agent_id"):
        raise ArchiveError(f"{archive}: the manifest and the agent record name different agents")
    broken = check_chain(contents.journal)
    if broken is not None:
        raise ArchiveError(f"{archive}: journal step {broken.step}: {broken.reason}")
    for key, blob in contents.blobs.items():
        if blob_key(blob) != key:
            raise ArchiveError(f"{archive}: payload blake3:{key.hex()} is corrupt (hash differs)")
    for entry in contents.journal:
        ref = ref_key(entry.result)
        if ref is not None and ref not in contents.blobs:
            raise ArchiveError(
                f"{archive}: journal step {entry.step} ({entry.op}) refers to payload "
                f"blake3:{ref.hex()}, which the archive lacks"
            )
    state_key = None if contents.state is None else ref_key(contents.state)
    if state_key is not None and state_key not in contents.blobs:
        raise ArchiveError(
            f"{archive}: the execution state refers to payload blake3:{state_key.hex()}, "
            "which the archive lacks"
        )
    head = contents.head
    if contents.journal:
        last = contents.journal[-1]
        if head is None or head.hash != last.hash or head.step != last.step:
            raise ArchiveError(f"{archive}: the signed head is not the journal's last entry")
        if not verify_head(head):
            raise ArchiveError(f"{archive}: the chain head signature does not verify")
    return manifest, contents


def import_agent(state_dir: str | Path, archive: str | Path) -> str:
    """Import an agent archive into ``state_dir``; returns the agent's id."""
    state_dir, archive = Path(state_dir), Path(archive)
    members = _read_archive(archive)
    _, contents = _check(archive, members)
    record = contents.record
    agent_id = record.agent_id
    state_dir.mkdir(parents=True, exist_ok=True)
    from avm.storage.sqlite import SqliteStateStore

    SqliteStateStore(state_dir / "state.db").close()  # create the schema, or add newer tables
    sql_path = AgentDatabases(state_dir / "sql").path_for(agent_id)
    db = _state_db(state_dir, readonly=False)
    try:
        db.execute("BEGIN IMMEDIATE")
        exists = db.execute(
            "SELECT 1 FROM agents WHERE agent_id = ? UNION SELECT 1 FROM journal "
            "WHERE agent_id = ? LIMIT 1",
            (agent_id, agent_id),
        ).fetchone()
        if exists is not None or ("sql.db" in members and sql_path.exists()):
            raise ArchiveError(
                f"agent {agent_id!r} already exists in {state_dir}; nothing imported"
            )
        status = "stopped" if record.status in _UNFINISHED else record.status
        db.execute(
            "INSERT INTO agents(agent_id, definition, args, priority, budget, spent, status, "
            "created, first_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent_id, record.definition, record.args, record.priority, record.budget,
             record.spent, status, record.created, record.first_step),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, wall, "
            "prev_hash, hash, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (e.agent_id, e.step, e.op, e.args_digest, int(e.status), e.result, e.gas, e.wall,
                 e.prev_hash, e.hash, e.flags)
                for e in contents.journal
            ],
        )  # fmt: skip
        db.executemany(
            "INSERT OR IGNORE INTO blobs(hash, data) VALUES (?, ?)", contents.blobs.items()
        )
        db.executemany(
            "INSERT INTO swarm_members(agent_id, topic, step) VALUES (?, ?, ?)",
            [(agent_id, topic, step) for topic, step in contents.topics],
        )
        db.executemany(
            "INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?)",
            [(agent_id, k, v) for k, v in contents.kv],
        )
        if contents.state is not None:
            db.execute(
                "INSERT INTO execution_state(agent_id, state) VALUES (?, ?)",
                (agent_id, contents.state),
            )
        db.executemany(
            "INSERT INTO inbox(agent_id, message_id, envelope, consumed) VALUES (?, ?, ?, ?)",
            [(agent_id, m, e, c) for m, e, c in contents.inbox],
        )
        if contents.head is not None:
            _store_head(db, contents.head)
        if "sql.db" in members:
            sql_path.parent.mkdir(parents=True, exist_ok=True)
            partial = sql_path.with_suffix(".importing")
            partial.write_bytes(members["sql.db"])
            shutil.move(partial, sql_path)
        identities = IdentityStore(state_dir)
        try:
            identities.put(agent_id, contents.identity)
        finally:
            identities.close()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()
    return agent_id


def _store_head(db: sqlite3.Connection, head: SignedHead) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS chain_heads (agent_id TEXT PRIMARY KEY, step INTEGER NOT "
        "NULL, hash BLOB NOT NULL, public_key BLOB NOT NULL, signature BLOB NOT NULL)"
    )
    db.execute(
        "INSERT OR REPLACE INTO chain_heads VALUES (?, ?, ?, ?, ?)",
        (head.agent_id, head.step, head.hash, head.public_key, head.signature),
    )
