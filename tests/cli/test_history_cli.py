"""``avm verify``, ``log``, ``gas``, ``export`` and ``import`` as a user runs them."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import avm
from avm.testing import wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "durability"))
from keeper import define


def avm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avm.cli.main", *args], capture_output=True, text=True, timeout=60
    )


async def park(state: Path) -> None:
    async with avm.VM(state) as vm:
        handle = vm.spawn(define(vm), agent_id="k")
        await wait_until(lambda: handle.wait_reason is avm.WaitReason.MESSAGE)


async def test_history_commands(tmp_path: Path) -> None:
    state, other = tmp_path / "st", tmp_path / "st2"
    await park(state)
    done = await asyncio.to_thread(avm_cli, "verify", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "ok: 1 agents, 5 entries" in done.stdout

    logged = await asyncio.to_thread(avm_cli, "log", "k", "--state-dir", str(state))
    assert "SAVE_EXECUTION_STATE" in logged.stdout
    gas = await asyncio.to_thread(avm_cli, "gas", "--state-dir", str(state))
    assert "total: 25.160 gas over 1 agents" in gas.stdout

    archive = tmp_path / "k.avm"
    exported = await asyncio.to_thread(
        avm_cli, "export", "k", "-o", str(archive), "--state-dir", str(state)
    )
    assert exported.returncode == 0, exported.stderr
    imported = await asyncio.to_thread(avm_cli, "import", str(archive), "--state-dir", str(other))
    assert imported.stdout.strip() == f"imported k into {other}"
    again = await asyncio.to_thread(avm_cli, "import", str(archive), "--state-dir", str(other))
    assert again.returncode == 2
    assert (
        again.stderr.strip() == f"avm: error: agent 'k' already exists in {other}; nothing imported"
    )

    with sqlite3.connect(state / "state.db") as db:
        db.execute("UPDATE journal SET result = x'c3' WHERE step = 0")
    broken = await asyncio.to_thread(avm_cli, "verify", "--state-dir", str(state))
    assert broken.returncode == 1
    assert "broken agent 'k' at step 0: LOAD_EXECUTION_STATE entry was altered" in broken.stdout
