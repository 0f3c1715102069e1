"""Parked-agent benchmark: the bytes allocated for each agent parked in a waiting instruction.

What it measures
    An agent parked in ``ctx.receive()``, ``ctx.wait_for_response(...)`` or ``ctx.wait(...)``
    costs its task, the chain of suspended coroutines between its code and the future it
    awaits, and the records the VM keeps for it. This benchmark spawns N agents (default 5,000)
    of one VM that do nothing but park in one such instruction, and reports the bytes
    ``tracemalloc`` traces per agent once all N are parked, with the allocation sites
    (``file:line``) that account for most of them.

    The baseline, measured in the same run: N plain asyncio tasks, each awaiting its own
    ``asyncio.Future`` (what a parked green thread costs Python at the least). ``ratio`` is a
    configuration's bytes per agent over the baseline's.

    Configurations (each in a fresh subprocess, so one heap never inflates another):

    * ``receive``: ``await ctx.receive()`` (a mailbox wait, no timeout);
    * ``receive_timeout``: ``await ctx.receive(timeout_s=3600)`` (a timer armed as well);
    * ``wait_for_response``: ``await ctx.wait_for_response(task_id)`` for a task nobody answers;
    * ``wait``: ``await ctx.wait(3600)`` (a timer);
    * ``template_receive``: a template agent (``program: [swarm_wait: {}]``, built by the
      assembler and registered) parked in the same mailbox wait;
    * ``store``: the fleet benchmark's ``avm_store`` agent (a 50 KiB prompt and 8 turns held in
      the content store, 9 refs in its frame) parked in ``ctx.receive()``;
    * ``bare_asyncio``: the baseline.

Run it::

    .venv/bin/python bench/parked.py                  # 5,000 agents, every configuration
    .venv/bin/python bench/parked.py --agents 20000 --configs receive store
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_info import run_info

Json = dict[str, Any]
CONFIGS = (
    "bare_asyncio",
    "receive",
    "receive_timeout",
    "wait_for_response",
    "wait",
    "template_receive",
    "store",
)
TEMPLATE = "name: parked\nprogram:\n  - swarm_wait: {}\n"
TOP_SITES = 12


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _sites(before: tracemalloc.Snapshot, agents: int) -> list[Json]:
    after = tracemalloc.take_snapshot()
    diffs = after.compare_to(before, "lineno")
    top = sorted(diffs, key=lambda d: d.size_diff, reverse=True)[:TOP_SITES]
    return [
        {
            "site": f"{Path(d.traceback[0].filename).name}:{d.traceback[0].lineno}",
            "bytes_per_agent": round(d.size_diff / agents, 1),
        }
        for d in top
        if d.size_diff > 0
    ]


async def run_bare(agents: int) -> Json:
    loop = asyncio.get_running_loop()

    async def agent(future: asyncio.Future[None]) -> None:
        await future

    tracemalloc.start()
    before_snapshot = tracemalloc.take_snapshot()
    before = _traced()
    futures = [loop.create_future() for _ in range(agents)]
    tasks = [asyncio.create_task(agent(future)) for future in futures]
    await asyncio.sleep(0)
    after = _traced()
    sites = _sites(before_snapshot, agents)
    tracemalloc.stop()
    for future in futures:
        future.set_result(None)
    await asyncio.gather(*tasks)
    return {"traced_bytes_per_agent": round((after - before) / agents, 1), "sites": sites}


async def run_vm(config: str, agents: int) -> Json:
    import avm
    from avm import assembler
    from avm.testing import wait_until

    with tempfile.TemporaryDirectory(prefix="avm-parked-") as state_dir:
        vm = avm.VM(state_dir, durability="relaxed", memory="2GB")

        @vm.agent(name="parked")
        async def parked(ctx: avm.Context, index: int) -> int:
            if config == "receive":
                await ctx.receive()
            elif config == "receive_timeout":
                await ctx.receive(timeout_s=3600)
            elif config == "wait_for_response":
                await ctx.wait_for_response(f"{ctx.agent_id}:never")
            elif config == "wait":
                await ctx.wait(3600)
            else:
                refs = [vm.hold(ctx.agent_id, "p" * 51_200)]
                refs.extend(
                    vm.hold(ctx.agent_id, f"{index:08d}" * 32 + str(turn)) for turn in range(8)
                )
                await ctx.receive()
                return len(refs)
            return index

        async with vm:
            agent: Any = parked
            if config == "template_receive":
                agent = assembler.register(vm, assembler.build_text(TEMPLATE))
            tracemalloc.start()
            before_snapshot = tracemalloc.take_snapshot()
            before = _traced()
            for index in range(agents):
                if config == "template_receive":
                    vm.spawn(agent)
                else:
                    vm.spawn(agent, index=index)
            reason = "timer" if config == "wait" else "message"
            await wait_until(
                lambda: vm.stats().waiting[reason] >= agents, timeout_s=600, what="all parked"
            )
            after = _traced()
            sites = _sites(before_snapshot, agents)
            tracemalloc.stop()
    return {"traced_bytes_per_agent": round((after - before) / agents, 1), "sites": sites}


def run_child(config: str, agents: int) -> Json:
    if config == "bare_asyncio":
        result = asyncio.run(run_bare(agents))
    else:
        result = asyncio.run(run_vm(config, agents))
    return {"config": config, "agents": agents, **result}


def launch(config: str, agents: int) -> Json:
    done = subprocess.run(
        [sys.executable, __file__, "--child", config, "--agents", str(agents)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{done.stderr}")
    result: Json = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=5000, help="agents per configuration")
    parser.add_argument(
        "--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS), help="what to run"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.agents <= 0 or args.repeat <= 0:
        parser.error("--agents and --repeat must be positive")
    if args.child is not None:
        print(json.dumps(run_child(args.child, args.agents)))
        return
    configs = list(args.configs)
    if "bare_asyncio" not in configs:
        configs.insert(0, "bare_asyncio")
    runs: dict[str, list[Json]] = {config: [] for config in configs}
    for _ in range(args.repeat):
        for config in configs:
            print(f"parked: {config} × {args.agents}", file=sys.stderr)
            runs[config].append(launch(config, args.agents))
    results = []
    for config, done in runs.items():
        per_agent = statistics.median(run["traced_bytes_per_agent"] for run in done)
        results.append(
            {
                "config": config,
                "agents": args.agents,
                "traced_bytes_per_agent": per_agent,
                "runs": [run["traced_bytes_per_agent"] for run in done],
                "sites": done[-1]["sites"],
            }
        )
    floor = results[0]["traced_bytes_per_agent"]
    for result in results:
        result["ratio_to_bare_asyncio"] = round(result["traced_bytes_per_agent"] / floor, 2)
    print(json.dumps({"run_info": run_info("parked"), "results": results}, indent=2))


if __name__ == "__main__":
    main()
