"""Portable agents: export one agent as an archive, import it into another state store.

An archive is a tar file holding everything the agent is: its record (definition name, spawn
arguments, budget), its whole journal, the payloads its journal and execution state refer to by
hash, its KV space, execution state, swarm memberships, undelivered messages, its own SQL
database, its identity key and its chain head signed with that key. ``manifest.json``
lists every member with its size and BLAKE3 hash.

Import checks everything before it changes anything: the archive reads whole, every member
matches the manifest, the journal's hash chain holds and ends at the signed head, every payload
the agent refers to is in the archive and hashes to its key, and the destination has no agent of
that id. Then one transaction writes it all, and the agent resumes where it was the next time a
VM with its definition starts on that store. Either side may be SQLite or PostgreSQL: an agent
exported from one imports into the other.

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

from avm._core.chat_state import chat_refs
from avm._core.journal import JournalEntry, blob_key, ref_key
from avm.errors import ArchiveError, UnknownAgent
from avm.history import check_chain
from avm.identity import IdentityStore, SignedHead, verify_head
from avm.storage.agent_sql import AgentDatabases
from avm.storage.base import AgentRecord
from avm.storage.offline import AgentRows, open_offline

__all__ = ["ARCHIVE_FORMAT", "export_agent", "import_agent"]

ARCHIVE_FORMAT = "avm-agent/2"
_READABLE = ("avm-agent/1", ARCHIVE_FORMAT)  # /1: from before payloads were stored by hash


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


def _conversation_content(
    journal: list[JournalEntry], state: bytes | None, blobs: dict[bytes, bytes]
) -> set[bytes]:
    """The content refs of conversations saved in the execution state (and read back by
    LOAD_EXECUTION_STATE entries): blobs too, stored beside the payloads."""
    saved = [e.result for e in journal if e.op == "LOAD_EXECUTION_STATE" and e.status == 0]
    if state is not None:
        saved.append(state)
    refs: set[bytes] = set()
    for data in saved:
        key = ref_key(data)
        if key is not None:
            data = blobs.get(key, b"\xc0")  # a missing payload is reported on its own
        refs.update(chat_refs(data))
    return refs


def export_agent(
    state_dir: str | Path, agent_id: str, out: str | Path, *, store: str | None = None
) -> Path:
    """Write ``agent_id``'s archive to ``out``; returns the path written.

    The agent's rows come from ``store`` (a ``postgresql://`` URL) if given, else from the SQLite
    database of ``state_dir``; its identity key and SQL database are always in ``state_dir``.
    """
    state_dir, out = Path(state_dir), Path(out)
    source = open_offline(state_dir, store)
    try:
        rows = source.agent(agent_id)
        if rows is None:
            raise UnknownAgent(agent_id)
        blobs: dict[bytes, bytes] = {}

        def take(key: bytes) -> None:
            blob = source.blob(key)
            if blob is None or blob_key(blob) != key:
                what = "missing" if blob is None else "corrupt"
                raise ArchiveError(
                    f"agent {agent_id!r} refers to payload blake3:{key.hex()}, which is {what} "
                    f"in {store or state_dir}; run 'avm verify {agent_id}'"
                )
            blobs[key] = blob

        for key in sorted(_referenced(rows.journal, rows.state)):
            take(key)
        for key in sorted(_conversation_content(rows.journal, rows.state, blobs) - blobs.keys()):
            take(key)
    finally:
        source.close()
    journal = rows.journal
    identities = IdentityStore(state_dir)
    try:
        head = identities.sign(agent_id, journal[-1].step, journal[-1].hash) if journal else None
        identity = identities.private_bytes(agent_id)
    finally:
        identities.close()
    contents = _Contents(
        rows.record, journal, rows.kv, rows.state, rows.inbox, head, identity, blobs, rows.topics
    )
    members = {"agent.msgpack": msgspec.msgpack.encode(contents)}
    sql_path = AgentDatabases(state_dir / "sql").path_for(agent_id)
    if sql_path.exists():
        members["sql.db"] = _snapshot(sql_path)
    manifest = {
        "format": ARCHIVE_FORMAT,
        "agent_id": agent_id,
        "definition": rows.record.definition,
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
    lacking = _conversation_content(contents.journal, contents.state, contents.blobs)
    lacking -= contents.blobs.keys()
    if lacking:
        raise ArchiveError(
            f"{archive}: a saved conversation refers to content blake3:{min(lacking).hex()}, "
            f"which the archive lacks ({len(lacking)} piece(s) missing)"
        )
    head = contents.head
    if contents.journal:
        last = contents.journal[-1]
        if head is None or head.hash != last.hash or head.step != last.step:
            raise ArchiveError(f"{archive}: the signed head is not the journal's last entry")
        if not verify_head(head):
            raise ArchiveError(f"{archive}: the chain head signature does not verify")
    return manifest, contents


def import_agent(state_dir: str | Path, archive: str | Path, *, store: str | None = None) -> str:
    """Import an agent archive into ``state_dir`` (and ``store``, if it names PostgreSQL).

    Returns the agent's id.
    """
    state_dir, archive = Path(state_dir), Path(archive)
    members = _read_archive(archive)
    _, contents = _check(archive, members)
    agent_id = contents.record.agent_id
    sql_path = AgentDatabases(state_dir / "sql").path_for(agent_id)
    if "sql.db" in members and sql_path.exists():
        raise ArchiveError(f"agent {agent_id!r} already exists in {state_dir}; nothing imported")
    state_dir.mkdir(parents=True, exist_ok=True)
    rows = AgentRows(
        record=contents.record, journal=contents.journal, kv=contents.kv, state=contents.state,
        inbox=contents.inbox, topics=contents.topics, head=contents.head,
    )  # fmt: skip

    def files() -> None:  # last inside the store's transaction: if they fail, nothing is kept
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

    target = open_offline(state_dir, store, write=True)
    try:
        installed = target.install(rows, contents.blobs, files)
    finally:
        target.close()
    if not installed:
        raise ArchiveError(
            f"agent {agent_id!r} already exists in {store or state_dir}; nothing imported"
        )
    return agent_id
