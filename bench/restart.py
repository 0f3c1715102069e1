"""Restarting a VM whose agents are passivated: time and memory, with and without their records.

A fleet of N agents (default 100,000) is built once: each stores a 2 KiB note of its own with
``vm.hold``, journals one KV write, parks in ``ctx.receive()`` and is passivated by the VM
(``passivate_after`` 0.2 s; spawned in waves that passivate before the next). The VM stops, so
the state directory holds N unfinished agents with N passivation records. It is copied, and the
copy's records are deleted: that copy is what a restart found before passivation records were
persisted (they lived only in RAM). Then each directory is restarted in a fresh process:

* ``persisted``: the VM registers the agents as passivated from their records, out of RAM.
  Reported once ``vm.recovered()`` returns and every agent counts as passivated.
* ``baseline`` (no records): the VM restores every agent into RAM (a task each, replay of its
  journal) and they passivate again once idle. Reported when recovery is done and again once
  all are passivated again, i.e. back where the fleet was before the restart.

For each: seconds from ``VM.start()`` to those points, peak RSS of the process (``ru_maxrss``)
and RSS at the end, both beyond the RSS before the VM started; then ``wake_s``: posting one
message each to 1,000 of the agents and waiting for them to finish. The report gives the
baseline ÷ persisted ratios of time and peak memory.

    .venv/bin/python bench/restart.py                 # 100,000 agents, a few minutes
    .venv/bin/python bench/restart.py --quick         # 5,000 agents
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from run_info import run_info

Json = dict[str, Any]

PASSIVATE_AFTER_S = 0.2
WAVE = 20_000
NOTE_BYTES = 2048
WOKEN = 1_000
POLL_S = 0.05


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def build_vm(state_dir: str) -> Any:
    import avm

    vm = avm.VM(state_dir, durability="relaxed", passivate_after=PASSIVATE_AFTER_S)

    @vm.agent(name="parked")
    async def parked(ctx: avm.Context, index: int) -> int:
        note = (f"{ctx.agent_id} " * (NOTE_BYTES // 8)).encode()[:NOTE_BYTES]
        vm.hold(ctx.agent_id, note)
        await ctx.kv_store("index", index)
        message = await ctx.receive()
        return int(message.data) + index

    return vm


async def wait_for(predicate: Any, what: str, timeout_s: float = 1800.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout_s} s")
        await asyncio.sleep(POLL_S)


async def build(state_dir: str, agents: int) -> Json:
    vm = build_vm(state_dir)
    started = time.perf_counter()
    async with vm:
        spawned = 0
        while spawned < agents:
            upto = min(agents, spawned + WAVE)
            for index in range(spawned, upto):
                vm.spawn("parked", agent_id=f"a{index:07d}", index=index)
            spawned = upto
            await wait_for(lambda n=upto: vm.stats().passivated >= n, "passivation")
    return {"agents": agents, "build_s": round(time.perf_counter() - started, 2)}


async def restart(state_dir: str, agents: int, expect_records: bool) -> Json:
    vm = build_vm(state_dir)
    before = rss_bytes()
    started = time.perf_counter()
    await vm.start()
    try:
        await vm.recovered()
        recovered_s = time.perf_counter() - started
        resident_at_recovery = vm.stats().resident
        await wait_for(lambda: vm.stats().passivated == agents, "all passivated")
        settled_s = time.perf_counter() - started
        stats = vm.stats()
        result: Json = {
            "records": expect_records,
            "recovered_s": round(recovered_s, 3),
            "settled_s": round(settled_s, 3),
            "resident_at_recovery": resident_at_recovery,
            "passivated": stats.passivated,
            "peak_rss_beyond_start_mb": round((peak_rss_bytes() - before) / 2**20, 1),
            "rss_settled_beyond_start_mb": round((rss_bytes() - before) / 2**20, 1),
        }
        step = max(1, agents // WOKEN)
        chosen = [f"a{index:07d}" for index in range(0, agents, step)][:WOKEN]
        woke = time.perf_counter()
        for agent_id in chosen:
            await vm.handle(agent_id).post(1)
        results = await asyncio.gather(*(vm.handle(agent_id).result() for agent_id in chosen))
        result["wake_s"] = round(time.perf_counter() - woke, 3)
        result["woken"] = len(results)
        assert results == [int(agent_id[1:]) + 1 for agent_id in chosen]
    finally:
        await vm.stop()
    return result


def child(mode: str, state_dir: str, agents: int) -> Json:
    command = [sys.executable, __file__, "--child", mode, state_dir, str(agents)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    result: Json = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 agents")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DIR", "AGENTS"), help="internal")
    args = parser.parse_args()
    if args.child:
        mode, state_dir, count = args.child[0], args.child[1], int(args.child[2])
        if mode == "build":
            out = asyncio.run(build(state_dir, count))
        else:
            out = asyncio.run(restart(state_dir, count, expect_records=mode == "persisted"))
        print(json.dumps(out))
        return
    agents = 5_000 if args.quick else args.agents
    report: Json = run_info("restart")
    with tempfile.TemporaryDirectory(prefix="avm-restart-") as tmp:
        persisted, baseline = Path(tmp, "persisted"), Path(tmp, "baseline")
        print(f"building {agents} passivated agents...", file=sys.stderr)
        report["build"] = child("build", str(persisted), agents)
        shutil.copytree(persisted, baseline)
        with sqlite3.connect(baseline / "state.db") as db:
            (records,) = db.execute("SELECT count(*) FROM passivated").fetchone()
            db.execute("DELETE FROM passivated")
        db.close()
        if records != agents:
            raise RuntimeError(f"expected {agents} passivation records, found {records}")
        print("restarting with records...", file=sys.stderr)
        report["persisted"] = child("persisted", str(persisted), agents)
        print("restarting without records (baseline)...", file=sys.stderr)
        report["baseline"] = child("baseline", str(baseline), agents)
    after, before = report["persisted"], report["baseline"]
    report["ratios"] = {
        "settled_s_baseline_over_persisted": round(before["settled_s"] / after["settled_s"], 1),
        "peak_rss_baseline_over_persisted": round(
            before["peak_rss_beyond_start_mb"] / max(after["peak_rss_beyond_start_mb"], 0.1), 1
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
