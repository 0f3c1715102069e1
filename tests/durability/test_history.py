"""Verifiable history and portable agents: tampering is found, archives round-trip or refuse."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

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


async def run_parked(state: Path) -> None:
    """The keeper did its setup and waits for a message when the VM stops."""
    async with avm.VM(state) as vm:
        handle = vm.spawn(define(vm), agent_id="k")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)


async def test_verify_passes_then_names_an_edited_entry(tmp_path: Path) -> None:
    state = tmp_path / "a"
    await run_parked(state)
    report = verify(state)
    assert report.ok
    assert report.entries == 5
    with sqlite3.connect(state / "state.db") as db:
        db.execute("UPDATE journal SET gas = gas + 1 WHERE agent_id = 'k' AND step = 2")
    report = verify(state, "k")
    assert [(b.agent_id, b.step) for b in report.breaks] == [("k", 2)]
    assert "SQL_EXECUTE entry was altered" in report.breaks[0].reason


async def test_verify_names_a_removed_entry(tmp_path: Path) -> None:
    state = tmp_path / "a"
    await run_parked(state)
    with sqlite3.connect(state / "state.db") as db:
        db.execute("DELETE FROM journal WHERE agent_id = 'k' AND step = 2")
    report = verify(state)
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


async def test_log_is_readable(tmp_path: Path) -> None:
    state = tmp_path / "a"
    await run_parked(state)
    entries = log(state, "k")
    assert [e.op for e in entries] == [
        "LOAD_EXECUTION_STATE", "KV_STORE", "SQL_EXECUTE", "SQL_EXECUTE", "SAVE_EXECUTION_STATE",
    ]  # fmt: skip
    assert all(e.ok for e in entries)
    assert entries[0].result == "None"
    assert entries[3].result == "{'rowcount': 1, 'lastrowid': 1}"
    assert entries[4].gas == 15.0
    with pytest.raises(avm.AvmError, match="has no journal"):
        log(state, "nobody")


async def test_export_import_round_trip_across_processes(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    await run_parked(source)
    archive = tmp_path / "k.avm"
    await asyncio.to_thread(  # export from another process than the one that ran the agent
        subprocess.run,
        [sys.executable, "-c",
         f"from avm.portable import export_agent; export_agent({str(source)!r}, 'k', "
         f"{str(archive)!r})"],
        check=True, timeout=60,
    )  # fmt: skip
    assert import_agent(target, archive) == "k"
    report = verify(target)
    assert report.ok
    assert report.signed_heads == 1
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(KEEPER), str(target), "moved"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == f"moved:kept:{MARKER}"
    # The source is untouched: its copy of the agent still waits where it was.
    assert [e.op for e in log(source, "k")][-1] == "SAVE_EXECUTION_STATE"
    assert [e.op for e in log(target, "k")][-4:] == [
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


async def run_hoarder(state: Path) -> None:
    async with avm.VM(state) as vm:
        handle = vm.spawn(define_hoarder(vm), agent_id="h")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)


async def test_verify_checks_payloads_by_hash(tmp_path: Path) -> None:
    state = tmp_path / "a"
    await run_hoarder(state)
    assert verify(state).ok
    with sqlite3.connect(state / "state.db") as db:
        ((key,),) = db.execute("SELECT hash FROM blobs").fetchall()
        db.execute("UPDATE blobs SET data = ? WHERE hash = ?", (b"\x90", key))
    report = verify(state, "h")
    assert [(b.agent_id, b.step) for b in report.breaks] == [("h", 1)]
    assert report.breaks[0].reason == (
        f"KV_FETCH entry's payload blake3:{bytes(key).hex()} is corrupt: its hash differs"
    )
    with sqlite3.connect(state / "state.db") as db:
        db.execute("DELETE FROM blobs")
    report = verify(state)
    assert [(b.step, b.reason) for b in report.breaks] == [
        (1, f"KV_FETCH entry's payload blake3:{bytes(key).hex()} is missing")
    ]


async def test_log_shows_payload_refs(tmp_path: Path) -> None:
    state = tmp_path / "a"
    await run_hoarder(state)
    entries = log(state, "h")
    assert entries[1].op == "KV_FETCH"
    size = len(msgspec.msgpack.encode(BIG))
    assert entries[1].result.startswith(f"<payload {size:,} bytes, blake3:")
    assert "a long remembered line" in entries[1].result


async def test_export_import_carries_payloads(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    await run_hoarder(source)
    archive = export_agent(source, "h", tmp_path / "h.avm")
    members = _members(archive)
    contents = msgspec.msgpack.decode(members["agent.msgpack"])
    assert len(contents["blobs"]) == 1

    contents["blobs"] = {}
    lacking = _write_contents(archive, tmp_path / "lacking.avm", contents)
    with pytest.raises(avm.ArchiveError, match=r"journal step 1 \(KV_FETCH\) refers to payload"):
        import_agent(target, lacking)
    contents = msgspec.msgpack.decode(members["agent.msgpack"])
    ((key, _),) = contents["blobs"].items()
    contents["blobs"][key] = b"\x90"
    corrupt = _write_contents(archive, tmp_path / "corrupt.avm", contents)
    with pytest.raises(avm.ArchiveError, match=r"payload blake3:[0-9a-f]+ is corrupt"):
        import_agent(target, corrupt)
    assert not (target / "state.db").exists()

    import_agent(target, archive)
    assert verify(target).ok
    async with avm.VM(target) as vm:
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
