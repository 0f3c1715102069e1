"""Verifiable history and portable agents: tampering is found, archives round-trip or refuse.

The tests that take ``store_url`` run on both state stores; a round trip exports from one and
imports into the other (a PostgreSQL-hosted agent moves to a laptop's SQLite, and back).
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import blake3
import msgspec
import pytest

import avm
from avm import Context
from avm.history import log, verify
from avm.portable import export_agent, import_agent
from avm.testing import wait_until

sys.path.insert(0, str(Path(__file__).parent))
from keeper import MARKER, define

KEEPER = Path(__file__).with_name("keeper.py")
BACKENDS = ("sqlite", "postgres")  # tests taking store_url run on both state stores
StateSql = Callable[..., Awaitable[list[tuple[Any, ...]]]]  # the conftest's state_sql fixture


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"  # where the conftest's state_sql looks for SQLite


@pytest.fixture
def other_store(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The store a round trip imports into: the other kind than the test's own."""
    return str(request.getfixturevalue("postgres_url")) if backend == "sqlite" else None


async def run_parked(
    state: Path,
    store: str | None = None,
    definer: Callable[[avm.VM], avm.AgentDefinition] = define,
    agent_id: str = "k",
) -> None:
    """The agent (the keeper unless told) did its setup and waits for a message when the VM
    stops."""
    async with avm.VM(state, store=store) as vm:
        handle = vm.spawn(definer(vm), agent_id=agent_id)
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)


async def test_verify_passes_then_names_an_edited_entry(
    state: Path, store_url: str | None, state_sql: StateSql
) -> None:
    await run_parked(state, store_url)
    report = verify(state, store=store_url)
    assert report.ok
    assert report.entries == 5
    await state_sql("UPDATE journal SET gas = gas + 1 WHERE agent_id = 'k' AND step = 2")
    report = verify(state, "k", store=store_url)
    assert [(b.agent_id, b.step) for b in report.breaks] == [("k", 2)]
    assert "SQL_EXECUTE entry was altered" in report.breaks[0].reason


async def test_verify_names_a_removed_entry(
    state: Path, store_url: str | None, state_sql: StateSql
) -> None:
    await run_parked(state, store_url)
    await state_sql("DELETE FROM journal WHERE agent_id = 'k' AND step = 2")
    report = verify(state, store=store_url)
    assert [(b.step, b.reason) for b in report.breaks] == [(3, "entries 2.. are missing")]


async def test_verify_finds_a_byte_flipped_in_the_file(tmp_path: Path) -> None:
    state = tmp_path / "a"
    async with avm.VM(state) as vm:

        @vm.agent(name="reader")
        async def reader(ctx: Context) -> None:
            await ctx.kv_store("note", MARKER)
            await ctx.kv_fetch("note")  # the journal holds the fetched value as its result

        await vm.spawn(reader, agent_id="r").result()
    db = sqlite3.connect(state / "state.db", isolation_level=None)
    db.execute("DELETE FROM kv")  # leave the marker only in the journal entry
    db.execute("VACUUM")
    db.close()
    raw = bytearray((state / "state.db").read_bytes())
    where = raw.find(MARKER.encode())
    assert where > 0
    raw[where] ^= 0x01  # one bit, in the file, behind SQLite's back
    (state / "state.db").write_bytes(bytes(raw))
    report = verify(state)
    assert [(b.agent_id, b.step) for b in report.breaks] == [("r", 1)]
    assert "KV_FETCH entry was altered" in report.breaks[0].reason


async def test_log_is_readable(state: Path, store_url: str | None) -> None:
    await run_parked(state, store_url)
    entries = log(state, "k", store=store_url)
    assert [e.op for e in entries] == [
        "LOAD_EXECUTION_STATE", "KV_STORE", "SQL_EXECUTE", "SQL_EXECUTE", "SAVE_EXECUTION_STATE",
    ]  # fmt: skip
    assert all(e.ok for e in entries)
    assert entries[0].result == "None"
    assert entries[3].result == "{'rowcount': 1, 'lastrowid': 1}"
    assert entries[4].gas == 15.0
    with pytest.raises(avm.AvmError, match="has no journal"):
        log(state, "nobody", store=store_url)


async def test_export_import_round_trip_across_processes(
    tmp_path: Path, state: Path, store_url: str | None, other_store: str | None
) -> None:
    source, target = state, tmp_path / "b"
    await run_parked(source, store_url)
    archive = tmp_path / "k.avm"
    await asyncio.to_thread(  # export from another process than the one that ran the agent
        subprocess.run,
        [sys.executable, "-c",
         f"from avm.portable import export_agent; export_agent({str(source)!r}, 'k', "
         f"{str(archive)!r}, store={store_url!r})"],
        check=True, timeout=60,
    )  # fmt: skip
    assert import_agent(target, archive, store=other_store) == "k"
    report = verify(target, store=other_store)
    assert report.ok
    assert report.signed_heads == 1
    store_args = [other_store] if other_store else []
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(KEEPER), str(target), "moved", *store_args],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == f"moved:kept:{MARKER}"
    # The source is untouched: its copy of the agent still waits where it was.
    assert [e.op for e in log(source, "k", store=store_url)][-1] == "SAVE_EXECUTION_STATE"
    assert [e.op for e in log(target, "k", store=other_store)][-4:] == [
        "SAVE_EXECUTION_STATE", "SWARM_WAIT", "SQL_FETCH", "KV_FETCH",
    ]  # fmt: skip


async def test_archive_errors_lose_nothing(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    await run_parked(source)
    archive = export_agent(source, "k", tmp_path / "k.avm")
    data = archive.read_bytes()

    truncated = tmp_path / "truncated.avm"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(avm.ArchiveError, match=r"truncated|not a readable agent archive"):
        import_agent(target, truncated)

    garbage = tmp_path / "garbage.avm"
    garbage.write_bytes(b"not a tar file at all" * 10)
    with pytest.raises(avm.ArchiveError, match="not a readable agent archive"):
        import_agent(target, garbage)

    members = _members(archive)
    members["agent.msgpack"] = (
        bytes([members["agent.msgpack"][0] ^ 0xFF]) + members["agent.msgpack"][1:]
    )
    corrupt = _write(tmp_path / "corrupt.avm", members)
    with pytest.raises(avm.ArchiveError, match=r"member 'agent\.msgpack' is corrupt"):
        import_agent(target, corrupt)

    tampered = _tamper_journal(archive, tmp_path / "tampered.avm")
    with pytest.raises(avm.ArchiveError, match=r"journal step 1: KV_STORE entry was altered"):
        import_agent(target, tampered)

    assert not (target / "state.db").exists()  # every refusal came before any change
    import_agent(target, archive)
    with pytest.raises(avm.ArchiveError, match="agent 'k' already exists"):
        import_agent(target, archive)
    report = verify(target)
    assert report.ok
    assert report.entries == 5  # the refused second import added nothing


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        out: dict[str, bytes] = {}
        for info in tar.getmembers():
            handle = tar.extractfile(info)
            assert handle is not None
            out[info.name] = handle.read()
        return out


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _tamper_journal(archive: Path, out: Path) -> Path:
    """Edit a journal entry's gas and rewrite the manifest so only the chain can tell."""
    members = _members(archive)
    contents = msgspec.msgpack.decode(members["agent.msgpack"])
    contents["journal"][1][6] = 0  # the gas of entry 1, the KV_STORE
    members["agent.msgpack"] = msgspec.msgpack.encode(contents)
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["agent.msgpack"] = {
        "size": len(members["agent.msgpack"]),
        "blake3": blake3.blake3(members["agent.msgpack"]).hexdigest(),
    }
    members["manifest.json"] = json.dumps(manifest).encode()
    return _write(out, members)


BIG = {"notes": ["a long remembered line of conversation"] * 100}


def define_hoarder(vm: avm.VM) -> avm.AgentDefinition:
    """Stores and fetches a value too large to journal inline, then waits for a message."""

    @vm.agent(name="hoarder")
    async def hoarder(ctx: Context) -> int:
        await ctx.kv_store("big", BIG)
        fetched = await ctx.kv_fetch("big")  # its result is journaled by hash
        message = await ctx.receive()
        return len(fetched["notes"]) + int(message.data)

    return hoarder


async def run_hoarder(state: Path, store: str | None) -> None:
    await run_parked(state, store, define_hoarder, "h")


async def test_verify_checks_payloads_by_hash(
    state: Path, store_url: str | None, state_sql: StateSql
) -> None:
    await run_hoarder(state, store_url)
    assert verify(state, store=store_url).ok
    ((key,),) = await state_sql("SELECT hash FROM blobs")
    await state_sql("UPDATE blobs SET data = ? WHERE hash = ?", b"\x90", key)
    report = verify(state, "h", store=store_url)
    assert [(b.agent_id, b.step) for b in report.breaks] == [("h", 1)]
    assert report.breaks[0].reason == (
        f"KV_FETCH entry's payload blake3:{bytes(key).hex()} is corrupt: its hash differs"
    )
    await state_sql("DELETE FROM blobs")
    report = verify(state, store=store_url)
    assert [(b.step, b.reason) for b in report.breaks] == [
        (1, f"KV_FETCH entry's payload blake3:{bytes(key).hex()} is missing")
    ]


async def test_log_shows_payload_refs(state: Path, store_url: str | None) -> None:
    await run_hoarder(state, store_url)
    entries = log(state, "h", store=store_url)
    assert entries[1].op == "KV_FETCH"
    size = len(msgspec.msgpack.encode(BIG))
    assert entries[1].result.startswith(f"<payload {size:,} bytes, blake3:")
    assert "a long remembered line" in entries[1].result


async def test_export_import_carries_payloads(
    tmp_path: Path, state: Path, store_url: str | None, other_store: str | None
) -> None:
    source, target = state, tmp_path / "b"
    await run_hoarder(source, store_url)
    archive = export_agent(source, "h", tmp_path / "h.avm", store=store_url)
    members = _members(archive)
    contents = msgspec.msgpack.decode(members["agent.msgpack"])
    assert len(contents["blobs"]) == 1

    contents["blobs"] = {}
    lacking = _write_contents(archive, tmp_path / "lacking.avm", contents)
    with pytest.raises(avm.ArchiveError, match=r"journal step 1 \(KV_FETCH\) refers to payload"):
        import_agent(target, lacking, store=other_store)
    contents = msgspec.msgpack.decode(members["agent.msgpack"])
    ((key, _),) = contents["blobs"].items()
    contents["blobs"][key] = b"\x90"
    corrupt = _write_contents(archive, tmp_path / "corrupt.avm", contents)
    with pytest.raises(avm.ArchiveError, match=r"payload blake3:[0-9a-f]+ is corrupt"):
        import_agent(target, corrupt, store=other_store)
    assert not (target / "state.db").exists()

    import_agent(target, archive, store=other_store)
    assert verify(target, store=other_store).ok
    async with avm.VM(target, store=other_store) as vm:
        define_hoarder(vm)
        await vm.recovered()  # replays the KV_FETCH from the imported payload
        await vm.post("h", 1)
        assert await vm.handle("h").result() == 101


def _write_contents(archive: Path, out: Path, contents: object) -> Path:
    """Rewrite an archive's agent.msgpack, with a manifest that matches it."""
    members = _members(archive)
    members["agent.msgpack"] = msgspec.msgpack.encode(contents)
    manifest = json.loads(members["manifest.json"])
    manifest["members"]["agent.msgpack"] = {
        "size": len(members["agent.msgpack"]),
        "blake3": blake3.blake3(members["agent.msgpack"]).hexdigest(),
    }
    members["manifest.json"] = json.dumps(manifest).encode()
    return _write(out, members)


async def test_cli_reads_either_store(
    state: Path, store_url: str | None, state_sql: StateSql
) -> None:
    """``avm verify/log/gas`` take ``--store`` (or AVM_STORE) for a PostgreSQL-hosted VM."""
    await run_parked(state, store_url)
    await state_sql("UPDATE journal SET gas = gas + 1 WHERE agent_id = 'k' AND step = 2")
    store_args = ["--store", store_url] if store_url else []

    def avm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "avm.cli.main", *args, "--state-dir", str(state), *store_args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    verified = await asyncio.to_thread(avm_cli, "verify")
    assert verified.returncode == 1
    assert "agent 'k' at step 2: SQL_EXECUTE entry was altered" in verified.stdout
    logged = await asyncio.to_thread(avm_cli, "log", "k")
    assert logged.returncode == 0, logged.stderr
    assert "SAVE_EXECUTION_STATE" in logged.stdout
