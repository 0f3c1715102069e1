"""Soak benchmark: a working fleet whose content outgrows the VM's memory budget.

What it measures
    RSS over a bounded run of a VM fleet whose logical content grows well past
    ``VM(memory=...)``, while the agents keep working and idle ones passivate and wake. Every
    agent holds the same 50 KiB system prompt and, for every message it handles, a new ~2 KiB
    conversation turn of its own, through ``vm.hold`` (the VM's content store); it checkpoints
    its turn count after each message (``save_execution_state``), so waking it replays one
    round. A host driver posts messages to agents picked at random, skewed so that a hot tenth
    of the fleet gets most of them and the rest idle long enough to be passivated.

    Two configurations run in fresh subprocesses, one after the other, for the same time:

    * ``budgeted``: ``VM(memory=--budget, passivate_after=--passivate-after)``.
    * ``unbounded`` (the baseline): the same fleet and driver with no budget and no passivation.

    Each reports its peak and final RSS above the RSS it had before spawning the fleet (the VM
    already started), the logical bytes the fleet's content adds up to, messages handled, and
    passivations/activations. The report checks ``budgeted``'s peak against the budget plus a
    stated allowance (``--allowance``: the agents' refs, the SQLite page cache, the codec's
    contexts and the trainer thread, the live agents' tasks and allocator slack), and gives
    the ratio of the two peaks.

Run it::

    .venv/bin/python bench/soak.py                      # 2 x 120 s, 3,000 agents
    .venv/bin/python bench/soak.py --quick              # 2 x 15 s, 500 agents
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import psutil

from run_info import run_info

Json = dict[str, Any]

PROMPT_BYTES = 50 * 1024
TURN_BYTES = 2048
SAMPLE_S = 0.5
CONFIGS = ("budgeted", "unbounded")

_LINE = (
    "You are a careful analyst agent. Read the market data you are given, reason step by step, "
    "cite the figures you rely on, and answer in the structured format described below. "
)
PROMPT = (_LINE * (PROMPT_BYTES // len(_LINE) + 1))[:PROMPT_BYTES]


def turn(index: int, n: int) -> str:
    """Agent ``index``'s ``n``-th conversation turn: ~2 KiB of chat-like text, unique."""
    seed = hashlib.blake2b(f"{index}:{n}".encode(), digest_size=8).hexdigest()
    words = ("price", "volume", "spread", "risk", "order", "fill", "signal", "hedge", "limit")
    rng = random.Random(seed)
    body = " ".join(rng.choice(words) for _ in range(TURN_BYTES // 6))
    return json.dumps({"role": "user", "turn": n, "id": seed, "content": body})[:TURN_BYTES]


def rss_bytes() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


async def run_child(config: str, agents: int, seconds: float, args: argparse.Namespace) -> Json:
    import avm
    from avm.config import parse_bytes

    budgeted = config == "budgeted"
    with tempfile.TemporaryDirectory(prefix="avm-soak-") as state_dir:
        vm = avm.VM(
            state_dir,
            durability="relaxed",
            memory=args.budget if budgeted else None,
            passivate_after=args.passivate_after if budgeted else None,
        )

        @vm.agent(name="chatter")
        async def chatter(ctx: avm.Context, index: int) -> int:
            state = await ctx.load_execution_state() or {"n": 0}
            vm.hold(ctx.agent_id, PROMPT)
            while True:
                message = await ctx.receive()
                if message.data is None:
                    return int(state["n"])
                vm.hold(ctx.agent_id, turn(index, state["n"]))
                state["n"] += 1
                await ctx.save_execution_state(state)

        async with vm:
            baseline = rss_bytes()
            handles = [vm.spawn(chatter, index=i) for i in range(agents)]
            rng = random.Random(7)
            hot = max(1, agents // 10)
            sent = 0
            samples: list[int] = []
            resident: list[int] = []
            started = time.perf_counter()
            next_sample = started
            while (now := time.perf_counter()) - started < seconds:
                # Nine messages in ten go to the hot tenth; the rest anywhere (waking the idle).
                batch = []
                for _ in range(args.batch):
                    pick = rng.randrange(hot) if rng.random() < 0.9 else rng.randrange(agents)
                    batch.append(handles[pick].post(sent))
                    sent += 1
                await asyncio.gather(*batch)
                await asyncio.sleep(0)
                if now >= next_sample:
                    samples.append(psutil.Process().memory_info().rss - baseline)
                    resident.append(vm.stats().resident)
                    next_sample = now + SAMPLE_S
            elapsed = time.perf_counter() - started
            stats = vm.stats()
            final = rss_bytes() - baseline
            samples.append(final)
            for handle in handles:
                await handle.post(None)
            await vm.join(timeout_s=600)
            handled = sum([await handle.result() for handle in handles])
            memory = stats.memory
            logical = PROMPT_BYTES * agents + handled * TURN_BYTES
        budget = parse_bytes(args.budget) if budgeted else None
    return {
        "config": config,
        "agents": agents,
        "seconds": round(elapsed, 1),
        "messages_sent": sent,
        "messages_handled": handled,
        "messages_per_s": round(handled / elapsed, 1),
        "logical_content_bytes": logical,
        "distinct_content_bytes": memory.distinct_bytes,
        "budget_bytes": budget,
        "rss_peak_above_baseline": max(samples),
        "rss_median_above_baseline": sorted(samples)[len(samples) // 2],
        "rss_final_above_baseline": final,
        "store_ram_bytes": memory.ram_bytes,
        "store_cold_bytes": memory.cold.stored_bytes,
        "compression_ratio": memory.compression_ratio,
        "passivated_at_end": stats.passivated,
        "resident_at_end": stats.resident,
        "resident_min": min(resident) if resident else None,
        "passivate_after_s": args.passivate_after if budgeted else None,
    }


def launch(config: str, args: argparse.Namespace) -> Json:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        config,
        "--agents",
        str(args.agents),
        "--seconds",
        str(args.seconds),
        "--budget",
        args.budget,
        "--passivate-after",
        str(args.passivate_after),
        "--batch",
        str(args.batch),
    ]
    started = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 540)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        return {"config": config, "error": f"child exited {proc.returncode}: {tail}"}
    result: Json = json.loads(lines[-1])
    result["child_wall_s"] = round(time.time() - started, 1)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=None, help="fleet size (default 3000)")
    parser.add_argument("--seconds", type=float, default=None, help="run time per config")
    parser.add_argument("--budget", default="64MiB", help="VM(memory=...) of the budgeted run")
    parser.add_argument("--allowance", default="96MiB", help="stated overhead above budget")
    parser.add_argument("--passivate-after", type=float, default=2.0, help="seconds idle")
    parser.add_argument("--batch", type=int, default=50, help="messages posted per round")
    parser.add_argument("--quick", action="store_true", help="500 agents, 15 s per config")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.agents is None:
        args.agents = 500 if args.quick else 3000
    if args.seconds is None:
        args.seconds = 15.0 if args.quick else 120.0
    if args.agents < 1 or args.seconds <= 0 or args.passivate_after <= 0:
        parser.error("--agents, --seconds and --passivate-after must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        result = asyncio.run(run_child(args.child, args.agents, args.seconds, args))
        print(json.dumps(result), flush=True)
        return
    from avm.config import parse_bytes

    started = time.perf_counter()
    results = []
    for config in CONFIGS:
        print(f"soak: {config}, {args.agents:,} agents, {args.seconds:.0f} s", file=sys.stderr)
        results.append(launch(config, args))
    by = {r["config"]: r for r in results if "error" not in r}
    checks: Json = {}
    if "budgeted" in by:
        b = by["budgeted"]
        limit = parse_bytes(args.budget) + parse_bytes(args.allowance)
        checks["budget_plus_allowance_bytes"] = limit
        checks["within_budget_plus_allowance"] = b["rss_peak_above_baseline"] <= limit
        checks["logical_content_over_budget"] = round(
            b["logical_content_bytes"] / parse_bytes(args.budget), 2
        )
        if "unbounded" in by:
            u = by["unbounded"]
            checks["peak_rss_budgeted_vs_unbounded"] = round(
                b["rss_peak_above_baseline"] / u["rss_peak_above_baseline"], 3
            )
            checks["throughput_budgeted_vs_unbounded"] = round(
                b["messages_per_s"] / u["messages_per_s"], 3
            )
    report = {
        **run_info("soak"),
        "workload": {
            "agents": args.agents,
            "prompt_bytes": PROMPT_BYTES,
            "turn_bytes": TURN_BYTES,
            "budget": args.budget,
            "allowance": args.allowance,
            "passivate_after_s": args.passivate_after,
        },
        "results": results,
        "checks": checks,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
