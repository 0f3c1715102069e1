"""Fleet benchmark: spawn time and resident memory per agent, against three baselines.

What it measures
    How long it takes to bring N agents to the point where each one is parked in an
    instruction, and how much resident memory (RSS) each parked agent costs. Every agent holds
    what a real chat agent holds: a 50 KiB system prompt, built fresh so that it is a distinct
    object with the same text in every agent (Python shares nothing for free), and a unique
    2 KiB conversation (8 turns of 256 characters, different in every agent). The agent builds
    both itself, in its frame locals, then parks on one instruction (``await ctx.receive()``, a
    mailbox wait) until the VM stops.

How
    The parent process runs every configuration in a fresh subprocess
    (``python bench/fleet.py --child CONFIG --agents N``), so one configuration's heap never
    inflates another's RSS, and collects the one JSON line each child prints. A child measures
    RSS after its set-up (imports, VM start), starts the clock, spawns N agents, stops the clock
    when all N are waiting, measures RSS again, and reports (after - before) / N. It also
    reports the user and system CPU time and the page faults of the spawn phase: on a virtual
    machine, first-touch page faults make wall time noisy, and user time is the steadier
    figure. Each configuration runs ``--repeat`` times (default 3, interleaved with the others)
    and the medians are reported, with every run's value beside them.

    Configurations, each with the same per-agent data:

    * ``avm``: N agents of one VM (``durability="relaxed"``, state in a temporary directory),
      parked in ``ctx.receive()``; "all waiting" is read from ``vm.stats()``.
    * ``avm_store``: the same agents, but each stores its prompt and its 8 turns in the VM's
      content store (``vm.hold``) and keeps only the 9 refs in its frame: the prompt is held
      once for the fleet. ``VM(memory="2GB")``.
    * ``avm_warm``: ``avm_store`` with a small hot share (``VM(memory=WARM_BUDGET)``, 2 GB of
      which 4 MB hot): the content used least recently (the parked agents' conversations) is
      held zstd-compressed in RAM (the warm tier, with the dictionary trained on the fleet's
      messages), as it is in a fleet larger than its hot share.
    * ``avm_passivated``: ``avm_store`` with ``passivate_after`` (0.2 s): RSS is read once every
      agent has been passivated by the VM (its task dropped, its own content moved to disk).
      Agents are spawned in waves of 20,000 that passivate before the next wave, so the peak
      of live tasks stays bounded; run it at 1,000,000 with ``--agents 1000000 --configs
      avm_passivated --repeat 1``.
    * ``naive``: no VM, no tasks; N dicts each holding its prompt and conversation. The floor:
      what the data costs as plain Python objects.
    * ``bare_asyncio``: N plain asyncio tasks holding the same locals and awaiting their own
      ``asyncio.Future``. Isolates the VM's per-agent overhead from Python's task overhead.
    * ``process_per_agent``: one fresh Python process that imports aiohttp, opens a
      ``ClientSession`` and holds one agent's data. Its RSS times N estimates the memory of
      one process per agent, its start-up time (launch to ready) the spawn time per agent.
      One process is measured; N are not started.

    Overhead per agent is RSS per agent minus the bytes of content the agent holds
    (``content_bytes_per_agent``, 53,248); ``ratios`` divides the AVM figures by each baseline's
    (below 1: AVM is cheaper). Results go to stdout as one JSON document, progress to stderr.

Run it::

    .venv/bin/python bench/fleet.py                    # 10,000 and 100,000 agents, ~2 min
    .venv/bin/python bench/fleet.py --quick            # 2,000 agents, a few seconds
    .venv/bin/python bench/fleet.py --agents 50000 --configs avm bare_asyncio
    .venv/bin/python bench/fleet.py --agents 1000000 --configs avm_passivated --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from run_info import child_result, run_info

Json = dict[str, Any]

PROMPT_BYTES = 50 * 1024
CONVERSATION_TURNS = 8
TURN_BYTES = 256
CONVERSATION_BYTES = CONVERSATION_TURNS * TURN_BYTES
CONTENT_BYTES = PROMPT_BYTES + CONVERSATION_BYTES

AGENT_CONFIGS = ("naive", "bare_asyncio", "avm", "avm_store", "avm_warm", "avm_passivated")
CONFIGS = (*AGENT_CONFIGS, "process_per_agent")
DEFAULT_AGENTS = (10_000, 100_000)
QUICK_AGENTS = (2_000,)
DEFAULT_REPEAT = 3

# How often the AVM child asks vm.stats() whether every agent is parked: small against the
# seconds a large fleet takes to come up, and cheap (a few counters and one /proc read). The
# bare-asyncio child needs no polling: its last agent to park sets an event.
POLL_S = 0.002

# Memory a child may need per agent (content, objects, allocator slack), with a margin: a
# configuration that would not fit in available memory is skipped instead of swapping or OOMing.
NEED_BYTES_PER_AGENT = 96 * 1024
# What the content-store configurations need per agent (the prompt is stored once).
NEED_BYTES_PER_STORE_AGENT = 16 * 1024

# avm_store and avm_passivated: the content store's budget; avm_warm: the same with 4 MB hot.
STORE_BUDGET = "2GB"
WARM_BUDGET = "2GB,hot=4MB"

# avm_passivated: agents idle this long are passivated; spawned in waves of this many.
PASSIVATE_AFTER_S = 0.2
WAVE = 20_000

_LINE = (
    "You are a careful analyst agent. Read the market data you are given, reason step by step, "
    "cite the figures you rely on, and answer in the structured format described below. "
)


def _prompt_parts() -> tuple[str, ...]:
    """Fixed pieces whose concatenation is the 50 KiB system prompt (built once per process)."""
    text = (_LINE * (PROMPT_BYTES // len(_LINE) + 1))[:PROMPT_BYTES]
    return tuple(text[i : i + 1024] for i in range(0, PROMPT_BYTES, 1024))


_PROMPT_PARTS = _prompt_parts()


def build_prompt() -> str:
    """The system prompt: the same 50 KiB of text for every agent, a new object on every call.

    ``str.join`` over several parts always allocates a fresh string, so no two agents share
    their prompt; sharing it is the memory manager's job, and this benchmark must show the cost
    of not doing so.
    """
    return "".join(_PROMPT_PARTS)


def build_conversation(index: int) -> list[dict[str, str]]:
    """A 2 KiB conversation unique to agent ``index``: 8 turns of 256 hex characters."""
    text = hashlib.shake_256(index.to_bytes(8, "little")).hexdigest(CONVERSATION_BYTES // 2)
    return [
        {
            "role": "user" if turn % 2 == 0 else "assistant",
            "content": text[turn * TURN_BYTES : (turn + 1) * TURN_BYTES],
        }
        for turn in range(CONVERSATION_TURNS)
    ]


def held_bytes(prompt: str, conversation: list[dict[str, str]]) -> int:
    """The bytes of text an agent holds (what a perfect memory manager could not avoid)."""
    return len(prompt) + sum(len(turn["content"]) for turn in conversation)


def rss_bytes() -> int:
    """Resident set size of this process, after collecting garbage."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@dataclass(frozen=True, slots=True)
class Phase:
    """Wall time, CPU time and minor page faults of this process since :meth:`start`.

    CPU time is reported beside wall time because on a virtual machine first-touch page faults
    (system time) vary a lot from run to run, while user time is the stable part of the cost.
    """

    wall_s: float
    user_s: float
    sys_s: float
    minor_faults: int

    @classmethod
    def start(cls) -> Phase:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime, usage.ru_stime, usage.ru_minflt)

    def stop(self) -> Phase:
        """The time and faults spent since this phase started."""
        now = Phase.start()
        return Phase(
            now.wall_s - self.wall_s,
            now.user_s - self.user_s,
            now.sys_s - self.sys_s,
            now.minor_faults - self.minor_faults,
        )


def _result(
    config: str, agents: int, spawn: Phase, rss_before: int, rss_after: int, **extra: Any
) -> Json:
    """One measured configuration in the benchmark's common shape."""
    rss_per_agent = (rss_after - rss_before) / agents
    return {
        "config": config,
        "agents": agents,
        "spawn_us_per_agent": round(spawn.wall_s / agents * 1e6, 2),
        "rss_bytes_per_agent": round(rss_per_agent),
        "content_bytes_per_agent": CONTENT_BYTES,
        "overhead_bytes_per_agent": round(rss_per_agent - CONTENT_BYTES),
        "spawn_user_us_per_agent": round(spawn.user_s / agents * 1e6, 2),
        "spawn_sys_us_per_agent": round(spawn.sys_s / agents * 1e6, 2),
        "spawn_page_faults_per_agent": round(spawn.minor_faults / agents, 1),
        "spawn_s_total": round(spawn.wall_s, 4),
        "rss_bytes_total": rss_after - rss_before,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        **extra,
    }


# -- children: one configuration each ---------------------------------------------------------


def run_naive(agents: int) -> Json:
    """N dicts, each holding its own freshly built prompt and conversation; no tasks, no VM."""
    before = rss_bytes()
    phase = Phase.start()
    fleet: list[dict[str, Any]] = [
        {"prompt": build_prompt(), "conversation": build_conversation(index)}
        for index in range(agents)
    ]
    spawn = phase.stop()
    after = rss_bytes()
    assert held_bytes(fleet[-1]["prompt"], fleet[-1]["conversation"]) == CONTENT_BYTES
    return _result("naive", agents, spawn, before, after)


async def run_bare_asyncio(agents: int) -> Json:
    """N asyncio tasks holding the same locals, each parked on its own future; no VM."""
    loop = asyncio.get_running_loop()
    parked = 0
    all_parked = asyncio.Event()

    async def agent(index: int) -> int:
        nonlocal parked
        prompt = build_prompt()
        conversation = build_conversation(index)
        parked += 1
        if parked == agents:
            all_parked.set()
        await loop.create_future()
        return held_bytes(prompt, conversation)

    before = rss_bytes()
    phase = Phase.start()
    tasks = [loop.create_task(agent(index)) for index in range(agents)]
    created_s = phase.stop().wall_s
    await all_parked.wait()
    spawn = phase.stop()
    after = rss_bytes()
    start = time.perf_counter()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_s = time.perf_counter() - start
    return _result(
        "bare_asyncio",
        agents,
        spawn,
        before,
        after,
        spawn_call_us_per_agent=round(created_s / agents * 1e6, 2),
        stop_s=round(stop_s, 4),
    )


async def run_avm(agents: int) -> Json:
    """N agents of one VM, each parked in ``ctx.receive()``; RSS is read once all wait."""
    import avm

    with tempfile.TemporaryDirectory(prefix="avm-fleet-") as state_dir:
        vm = avm.VM(state_dir, durability="relaxed")

        @vm.agent(name="fleet")
        async def fleet_agent(ctx: avm.Context, index: int) -> int:
            prompt = build_prompt()
            conversation = build_conversation(index)
            await ctx.receive()
            return held_bytes(prompt, conversation)

        async with vm:
            before = rss_bytes()
            phase = Phase.start()
            for index in range(agents):
                vm.spawn(fleet_agent, index=index)
            spawned_s = phase.stop().wall_s
            while True:
                stats = vm.stats()
                if stats.waiting["message"] >= agents:
                    break
                if stats.agents["failed"] or stats.agents["killed"]:
                    raise RuntimeError(f"agents ended before parking: {stats.agents}")
                await asyncio.sleep(POLL_S)
            spawn = phase.stop()
            after = rss_bytes()
            states = {state: count for state, count in vm.stats().agents.items() if count}
            start = time.perf_counter()
        stop_s = time.perf_counter() - start
    return _result(
        "avm",
        agents,
        spawn,
        before,
        after,
        spawn_call_us_per_agent=round(spawned_s / agents * 1e6, 2),
        stop_s=round(stop_s, 4),
        states_when_measured=states,
    )


async def run_avm_store(agents: int, passivate: bool, budget: str = STORE_BUDGET) -> Json:
    """N agents of one VM whose prompt and conversation live in the VM's content store.

    Each agent stores its prompt and its 8 turns with ``vm.hold`` and keeps only the 9 refs in
    its frame, then parks in ``ctx.receive()``. With ``passivate``, the VM passivates them
    (``passivate_after``) and RSS is read once all are out of RAM; agents are spawned in waves
    of ``WAVE`` that passivate before the next, so a million never need their tasks at once.
    """
    import avm

    with tempfile.TemporaryDirectory(prefix="avm-fleet-") as state_dir:
        vm = avm.VM(
            state_dir,
            durability="relaxed",
            memory=budget,
            passivate_after=PASSIVATE_AFTER_S if passivate else None,
        )

        @vm.agent(name="fleet")
        async def fleet_agent(ctx: avm.Context, index: int) -> int:
            refs = [vm.hold(ctx.agent_id, build_prompt())]
            refs.extend(
                vm.hold(ctx.agent_id, turn["content"]) for turn in build_conversation(index)
            )
            await ctx.receive()
            return len(refs)

        async with vm:
            before = rss_bytes()
            phase = Phase.start()
            spawned = 0
            wave = WAVE if passivate else agents
            while spawned < agents:
                upto = min(agents, spawned + wave)
                for index in range(spawned, upto):
                    vm.spawn(fleet_agent, index=index)
                spawned = upto
                while True:
                    stats = vm.stats()
                    parked = stats.passivated if passivate else stats.waiting["message"]
                    if parked >= spawned:
                        break
                    if stats.agents["failed"] or stats.agents["killed"]:
                        raise RuntimeError(f"agents ended before parking: {stats.agents}")
                    await asyncio.sleep(POLL_S)
            spawn = phase.stop()
            after = rss_bytes()
            stats = vm.stats()
            memory = stats.memory
            ram_content = memory.hot.stored_bytes + memory.warm.stored_bytes
            start = time.perf_counter()
        stop_s = time.perf_counter() - start
    config = "avm_passivated" if passivate else "avm_store"
    if budget != STORE_BUDGET:
        config = "avm_warm"
    return _result(
        config,
        agents,
        spawn,
        before,
        after,
        stop_s=round(stop_s, 4),
        resident=stats.resident,
        passivated=stats.passivated,
        memory_budget=budget,
        store_ram_bytes=memory.ram_bytes,
        store_hot_entries=memory.hot.entries,
        store_warm_entries=memory.warm.entries,
        store_warm_compression=round(memory.warm.logical_bytes / memory.warm.stored_bytes, 3)
        if memory.warm.stored_bytes
        else None,
        store_ram_bytes_per_agent=round(memory.ram_bytes / agents),
        # The content itself as held in RAM (hot as is, warm compressed; the shared prompt
        # once), and what the agent costs beyond it: the issue's "RAM per resident agent
        # beyond its unique content after compression".
        ram_content_bytes_per_agent=round(ram_content / agents),
        rss_beyond_ram_content_per_agent=round((after - before - ram_content) / agents),
        store_cold_bytes=memory.cold.stored_bytes,
        store_dedup_ratio=memory.dedup_ratio,
        rss_bytes_beyond_store_ram_per_agent=round((after - before - memory.ram_bytes) / agents),
    )


async def run_process_per_agent(launched_at: float) -> Json:
    """One fresh process with aiohttp and a ClientSession holding one agent's data.

    Its whole RSS is what every agent would cost as a process of its own; USS and PSS (pages
    not shared with other processes) are reported too, as the optimistic bound when N such
    processes share the interpreter's and libraries' pages.
    """
    import aiohttp

    async with aiohttp.ClientSession():
        prompt = build_prompt()
        conversation = build_conversation(0)
        ready_s = time.time() - launched_at
        usage = resource.getrusage(resource.RUSAGE_SELF)
        gc.collect()
        memory = psutil.Process().memory_full_info()
        assert held_bytes(prompt, conversation) == CONTENT_BYTES
    return {
        "config": "process_per_agent",
        "agents": 1,
        "spawn_us_per_agent": round(ready_s * 1e6, 2),
        "rss_bytes_per_agent": int(memory.rss),
        "content_bytes_per_agent": CONTENT_BYTES,
        "overhead_bytes_per_agent": int(memory.rss) - CONTENT_BYTES,
        "spawn_user_us_per_agent": round(usage.ru_utime * 1e6, 2),
        "spawn_sys_us_per_agent": round(usage.ru_stime * 1e6, 2),
        "spawn_page_faults_per_agent": usage.ru_minflt,
        "uss_bytes_per_agent": int(memory.uss),
        "pss_bytes_per_agent": int(memory.pss),
    }


def run_child(config: str, agents: int, launched_at: float) -> Json:
    """Measure one configuration in this (fresh) process."""
    if config == "naive":
        return run_naive(agents)
    if config == "bare_asyncio":
        return asyncio.run(run_bare_asyncio(agents))
    if config == "avm":
        return asyncio.run(run_avm(agents))
    if config in ("avm_store", "avm_passivated"):
        return asyncio.run(run_avm_store(agents, passivate=config == "avm_passivated"))
    if config == "avm_warm":
        return asyncio.run(run_avm_store(agents, passivate=False, budget=WARM_BUDGET))
    if config == "process_per_agent":
        return asyncio.run(run_process_per_agent(launched_at))
    raise ValueError(f"unknown configuration {config!r}; expected one of {', '.join(CONFIGS)}")


# -- parent: one subprocess per configuration ---------------------------------------------------


def launch(config: str, agents: int, timeout_s: float) -> Json:
    """Run one configuration in a fresh interpreter and return the JSON line it prints."""
    launched_at = time.time()
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        config,
        "--agents",
        str(agents),
        "--launched-at",
        repr(launched_at),
    ]
    result = child_result(command, timeout_s, config=config, agents=agents)
    if "error" not in result:
        result["child_wall_s"] = round(time.time() - launched_at, 3)
    return result


def fits_in_memory(agents: int, config: str = "avm") -> str | None:
    """None if a configuration of ``agents`` should fit in available memory, else why not."""
    per_agent = NEED_BYTES_PER_STORE_AGENT if config.startswith("avm_") else NEED_BYTES_PER_AGENT
    need = agents * per_agent
    available = int(psutil.virtual_memory().available)
    if need <= available:
        return None
    return f"needs about {need / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"


def _ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` to four significant figures (None if undefined)."""
    return float(f"{numerator / denominator:.4g}") if denominator > 0 else None


def ratios(results: Sequence[Json]) -> dict[str, Json]:
    """AVM's figures divided by each baseline's, per fleet size (below 1: AVM is cheaper).

    ``*_spawn`` compares wall time, ``*_spawn_user_cpu`` user CPU time (the steadier figure on
    a VM whose page faults are noisy); ``avm_minus_*_bytes_per_agent`` is what the VM adds per
    agent on top of the baseline.
    """
    ok = [r for r in results if "error" not in r and "skipped" not in r]
    process = next((r for r in ok if r["config"] == "process_per_agent"), None)
    out: dict[str, Json] = {}
    for vm in (r for r in ok if r["config"] == "avm"):
        n = vm["agents"]
        row: Json = {}
        for base in ok:
            if base["agents"] != n or base["config"] not in ("naive", "bare_asyncio"):
                continue
            name = base["config"]
            row[f"avm_vs_{name}_memory"] = _ratio(
                vm["rss_bytes_per_agent"], base["rss_bytes_per_agent"]
            )
            row[f"avm_vs_{name}_spawn"] = _ratio(
                vm["spawn_us_per_agent"], base["spawn_us_per_agent"]
            )
            row[f"avm_vs_{name}_spawn_user_cpu"] = _ratio(
                vm["spawn_user_us_per_agent"], base["spawn_user_us_per_agent"]
            )
            row[f"avm_minus_{name}_bytes_per_agent"] = round(
                vm["rss_bytes_per_agent"] - base["rss_bytes_per_agent"]
            )
        if process is not None:
            row["avm_vs_process_per_agent_memory"] = _ratio(
                vm["rss_bytes_per_agent"], process["rss_bytes_per_agent"]
            )
            row["avm_vs_process_per_agent_uss_memory"] = _ratio(
                vm["rss_bytes_per_agent"], process["uss_bytes_per_agent"]
            )
            row["avm_vs_process_per_agent_spawn"] = _ratio(
                vm["spawn_us_per_agent"], process["spawn_us_per_agent"]
            )
            row["process_per_agent_rss_bytes_total_estimate"] = process["rss_bytes_per_agent"] * n
        out[str(n)] = row
    # The content-store configurations against naive, as "naive ÷ this" (above 1: AVM cheaper).
    for result in ok:
        if result["config"] not in ("avm_store", "avm_warm", "avm_passivated"):
            continue
        n = result["agents"]
        naive = next((r for r in ok if r["config"] == "naive" and r["agents"] == n), None)
        if naive is not None:
            out.setdefault(str(n), {})[f"naive_over_{result['config']}_memory"] = _ratio(
                naive["rss_bytes_per_agent"], result["rss_bytes_per_agent"]
            )
    return out


# The figures folded as medians when a configuration runs more than once.
_MEDIAN_KEYS = (
    "spawn_us_per_agent",
    "rss_bytes_per_agent",
    "overhead_bytes_per_agent",
    "spawn_user_us_per_agent",
    "spawn_sys_us_per_agent",
    "spawn_page_faults_per_agent",
    "uss_bytes_per_agent",
    "pss_bytes_per_agent",
)


def fold_runs(runs: Sequence[Json]) -> Json:
    """Several runs of one configuration as one result: the medians of its per-agent figures.

    The other fields are the first good run's; ``spawn_us_per_agent_runs`` and
    ``rss_bytes_per_agent_runs`` keep every run's value so the spread stays visible.
    """
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[0])
    folded = dict(good[0])
    folded["runs"] = len(good)
    if len(good) > 1:
        for key in _MEDIAN_KEYS:
            if key in folded:
                folded[key] = statistics.median(r[key] for r in good)
        folded["spawn_us_per_agent_runs"] = [r["spawn_us_per_agent"] for r in good]
        folded["rss_bytes_per_agent_runs"] = [r["rss_bytes_per_agent"] for r in good]
    return folded


def run_all(
    agent_counts: Sequence[int], configs: Sequence[str], repeat: int, timeout_s: float
) -> Json:
    """Measure every requested configuration in its own subprocesses; the benchmark's report.

    Repeats are interleaved (every configuration once, then again...) so that drift in the
    machine (page-cache state, a noisy neighbour) falls on all configurations alike.
    """
    head = run_info("fleet")  # the machine's load as the run starts
    started = time.perf_counter()
    plan: list[tuple[str, int]] = []
    skipped: list[Json] = []
    for n in agent_counts:
        for config in AGENT_CONFIGS:
            if config not in configs:
                continue
            why_not = fits_in_memory(n, config)
            if why_not is None:
                plan.append((config, n))
            else:
                print(f"fleet: skip {config} x {n}: {why_not}", file=sys.stderr)
                skipped.append({"config": config, "agents": n, "skipped": why_not})
    if "process_per_agent" in configs:
        plan.append(("process_per_agent", 1))
    runs: dict[tuple[str, int], list[Json]] = {key: [] for key in plan}
    for round_ in range(1, repeat + 1):
        for config, n in plan:
            result = launch(config, n, timeout_s)
            runs[config, n].append(result)
            if "error" in result:
                line = f"ERROR {result['error']}"
            else:
                line = (
                    f"{result['spawn_us_per_agent']:>10,.1f} us/agent "
                    f"({result['spawn_user_us_per_agent']:,.1f} user) "
                    f"{result['rss_bytes_per_agent']:>11,} B/agent"
                )
            print(f"fleet: [{round_}/{repeat}] {config:>17} x {n:>7,}: {line}", file=sys.stderr)
    results = [fold_runs(runs[key]) for key in plan] + skipped
    return {
        **head,
        "workload": {
            "prompt_bytes": PROMPT_BYTES,
            "conversation_bytes": CONVERSATION_BYTES,
            "content_bytes_per_agent": CONTENT_BYTES,
            "park": "ctx.receive() (SWARM_WAIT on the mailbox)",
            "durability": "relaxed",
        },
        "repeat": repeat,
        "results": results,
        "ratios": ratios(results),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Spawn time and resident memory per agent: AVM against naive objects, "
        "bare asyncio tasks and a process per agent. Prints JSON to stdout.",
    )
    parser.add_argument(
        "--agents",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help=f"fleet sizes (default: {' '.join(map(str, DEFAULT_AGENTS))})",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a fast check: {QUICK_AGENTS[0]:,} agents"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=CONFIGS,
        default=list(CONFIGS),
        metavar="CONFIG",
        help=f"configurations to measure: {', '.join(CONFIGS)} (default: all)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        metavar="K",
        help="run each configuration K times, interleaved, in fresh processes, and report "
        f"medians (default: {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds one configuration may take"
    )
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.agents is not None and min(args.agents) < 1:
        parser.error("--agents must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        agents = args.agents[0] if args.agents else QUICK_AGENTS[0]
        print(json.dumps(run_child(args.child, agents, args.launched_at)), flush=True)
        return
    agent_counts = args.agents or (QUICK_AGENTS if args.quick else DEFAULT_AGENTS)
    report = run_all(agent_counts, args.configs, args.repeat, args.timeout)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
