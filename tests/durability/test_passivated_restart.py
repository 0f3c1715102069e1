"""Passivated agents survive SIGKILL of their host without coming back into RAM.

A VM in a subprocess passivates every agent it runs (receivers waiting on a message, a sleeper
on a short WAIT), makes sure their records are committed, and is killed with SIGKILL. A VM
started on the same state then holds them passivated (no task, no replay), wakes each on
demand, and every one finishes with the result it would have had.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from passivating_program import build

from avm.testing import wait_until

BACKENDS = ("sqlite", "postgres")
PROGRAM = Path(__file__).with_name("passivating_program.py")

AGENTS = 20


def tasks_of(agent_id: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == agent_id and not t.done()]


async def run_until_passivated_then_kill(state: Path, store: str | None) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(PROGRAM), str(state), store or "-", str(AGENTS),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
    finally:
        process.send_signal(signal.SIGKILL)
        _, err = await process.communicate()
    assert line == b"PASSIVATED\n", err.decode()[-3000:]
    assert process.returncode == -signal.SIGKILL


async def test_passivated_agents_survive_a_kill_out_of_ram(
    tmp_path: Path, store_url: str | None
) -> None:
    state = tmp_path / "state"
    await run_until_passivated_then_kill(state, store_url)
    vm = build(str(state), store_url)
    async with vm:
        await vm.recovered()
        stats = vm.stats()
        assert (stats.passivated, stats.resident) == (AGENTS + 1, 0)
        assert not any(tasks_of(f"r{n:03d}") for n in range(AGENTS))
        # The sleeper's deadline passed while no VM ran (or passes now): it wakes by itself.
        assert await vm.handle("sleeper").result() == "rested"
        for n in range(AGENTS):
            await vm.handle(f"r{n:03d}").post(f"one {n}")
        await wait_until(lambda: vm.stats().passivated == 0, what="all woken")
        for n in range(AGENTS):
            await vm.handle(f"r{n:03d}").post(f"two {n}")
        results = await asyncio.gather(*(vm.handle(f"r{n:03d}").result() for n in range(AGENTS)))
    assert results == [[f"one {n}", f"two {n}"] for n in range(AGENTS)]
