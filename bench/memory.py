"""Memory benchmark: what agents cost when their bytes live in the content store.

What it measures
    1. **Resident bytes per agent** (``--agents``, default 10,000 and 100,000). Every agent has
       the fleet benchmark's data: a 50 KiB system prompt, the same text for all but built
       fresh for each agent (so Python shares nothing by itself), and a unique 2 KiB
       conversation (8 turns of 256 hex characters). Configurations:

       * ``naive`` — a dict per agent holding its id, prompt and conversation (the baseline).
       * ``store_hot`` — the data goes through :class:`avm.memory.ContentStore` with no
         budget; each agent keeps an ``AgentRecord`` (``__slots__``: its id and a tuple of 9
         refs). Everything stays uncompressed in RAM.
       * ``store_warm`` — the same, with a budget whose hot share is tiny, so conversations
         are held zstd-compressed in RAM (the warm tier), as a long-running fleet holds them.
       * ``store_cold`` — a 4 MiB budget: conversations go to the SQLite cold tier and only
         the records and their refs stay in RAM (what idle agents cost).

       Overhead beyond content is RSS per agent minus the content bytes the store holds in
       RAM per agent (``ram_content_bytes_per_agent``: the stored, i.e. compressed, size of
       hot and warm content, the shared prompt included and amortised).
    2. **Passivated agents** (``--passivated``, default 1,000,000): the total RSS of a dict of
       :class:`avm.memory.PassivatedAgent` records (id, image hash, journal position, wait
       reason and wake-up, a ref to saved memory), against a plain dict per agent with the same
       fields and against one parked asyncio task per agent (the least a live idle agent costs).
    3. **Operation latency** of a 2 KiB chat message: ``put`` (new and duplicate), ``get``
       from each tier and ``view``, against the same operations on a plain ``dict`` keyed by
       BLAKE3 (the baseline any cache must pay); the best of 3 rounds, each on a fresh store.
       Also the compression ratio of a dictionary trained on the messages against plain zstd.
    4. **A bounded soak** (``--soak-seconds``, default 60): a store with a budget
       (``--soak-budget``, default 64 MiB) far smaller than the content kept live (a window of
       the last 200,000 messages, about 250 MB), writing new chat messages, reading recent and
       old ones, and collecting garbage every 2 s with the window as roots. RSS is sampled
       throughout; the report gives its peak above the pre-store baseline against budget plus
       the stated allowance (``--soak-allowance``, default 48 MiB: SQLite's page cache, the
       codec's contexts, the benchmark's own window of refs, and allocator slack).

How
    Every configuration runs in a fresh subprocess (``--child``) that prints one JSON line, so
    no configuration's heap inflates another's RSS. RSS is read after ``gc.collect()``, before
    and after the agents are created; the store, when there is one, is opened before the first
    reading. The parent prints one JSON document with every result and the ratios.

Run it::

    .venv/bin/python bench/memory.py > memory.json      # full run, about 4 minutes
    .venv/bin/python bench/memory.py --quick            # 2,000 agents, 100,000 records, 10 s
    .venv/bin/python bench/memory.py --sections agents --agents 50000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import blake3
import psutil
import zstandard

from avm._core.states import WaitReason
from avm.memory import (
    Codec,
    ContentRef,
    ContentStore,
    MemoryBudget,
    PassivatedAgent,
    Tier,
    collect,
    hash_content,
)

Json = dict[str, Any]

PROMPT_BYTES = 50 * 1024
CONVERSATION_TURNS = 8
TURN_BYTES = 256
CONVERSATION_BYTES = CONVERSATION_TURNS * TURN_BYTES

DEFAULT_AGENTS = (10_000, 100_000)
DEFAULT_PASSIVATED = 1_000_000
DEFAULT_SOAK_S = 60.0
DEFAULT_SOAK_BUDGET = "64MiB"
DEFAULT_SOAK_ALLOWANCE = "48MiB"
GC_INTERVAL_S = 3.0
QUICK_AGENTS = (2_000,)
QUICK_PASSIVATED = 100_000
QUICK_SOAK_S = 10.0

AGENT_CONFIGS = ("naive", "store_hot", "store_warm", "store_cold")
PASSIVE_CONFIGS = ("passivated", "passive_dict", "parked_task")
SECTIONS = ("agents", "passivated", "ops", "soak")

# Targets from the issue, checked in the report.
TARGET_OVERHEAD_BYTES = 4096
TARGET_NAIVE_RATIO = 10.0
TARGET_PASSIVATED_TOTAL = 2 * 10**9

_LINE = (
    "You are a careful analyst agent. Read the market data you are given, reason step by step, "
    "cite the figures you rely on, and answer in the structured format described below. "
)
_PROMPT_PARTS = tuple(
    (_LINE * (PROMPT_BYTES // len(_LINE) + 1))[:PROMPT_BYTES][i : i + 1024]
    for i in range(0, PROMPT_BYTES, 1024)
)
_TEXT = (
    "the market opened higher while volume stayed thin and analysts expect the central bank "
    "to hold rates steady through the quarter despite pressure from energy prices portfolio "
    "risk position exposure hedge order filled rejected pending tool call result summary"
)
_WORDS = _TEXT.split()


def build_prompt() -> str:
    """The shared 50 KiB system prompt as a new string object (``str.join`` always copies)."""
    return "".join(_PROMPT_PARTS)


def build_conversation(index: int) -> list[dict[str, str]]:
    """Agent ``index``'s unique 2 KiB conversation: 8 turns of 256 hex characters."""
    text = hashlib.shake_256(index.to_bytes(8, "little")).hexdigest(CONVERSATION_BYTES // 2)
    return [
        {
            "role": "user" if turn % 2 == 0 else "assistant",
            "content": text[turn * TURN_BYTES : (turn + 1) * TURN_BYTES],
        }
        for turn in range(CONVERSATION_TURNS)
    ]


def chat_message(index: int, size: int | None = None) -> bytes:
    """A chat turn in JSON, alike in shape across a fleet, unique in content (~300-3,000 B)."""
    rng = random.Random(index)
    words = rng.randint(40, 450) if size is None else size // 6
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    message = (
        f'{{"role": "{"user" if index % 2 else "assistant"}", "content": "{text}", '
        f'"agent": "agent-{index % 99991}", "price": {rng.uniform(1, 500):.2f}, "step": {index}}}'
    ).encode()
    return message if size is None else message[:size]


def rss_bytes() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class AgentRecord:
    """What an agent keeps when its data is in the store: its id and refs, nothing else."""

    __slots__ = ("id", "refs")

    def __init__(self, agent_id: str, refs: tuple[bytes, ...]) -> None:
        self.id = agent_id
        self.refs = refs


# -- children ---------------------------------------------------------------------------------


def child_naive(agents: int) -> Json:
    before = rss_bytes()
    started = time.perf_counter()
    fleet = [
        {"id": f"agent-{i}", "prompt": build_prompt(), "conversation": build_conversation(i)}
        for i in range(agents)
    ]
    elapsed = time.perf_counter() - started
    after = rss_bytes()
    assert fleet[-1]["conversation"] == build_conversation(agents - 1)
    return {
        "rss_bytes_total": after - before,
        "rss_bytes_per_agent": round((after - before) / agents),
        "ram_content_bytes_per_agent": PROMPT_BYTES + CONVERSATION_BYTES,
        "create_us_per_agent": round(elapsed / agents * 1e6, 2),
    }


_BUDGETS: dict[str, MemoryBudget | None] = {
    "store_hot": None,
    # A generous total but a hot share of 4 MB: conversations are compressed, none spill.
    "store_warm": MemoryBudget(limit=4 * 10**9, hot_fraction=0.001),
    # The smallest budget: conversations go to disk, records and refs stay.
    "store_cold": MemoryBudget(limit=4 * 1024 * 1024, hot_fraction=0.25),
}


def child_store(config: str, agents: int) -> Json:
    with tempfile.TemporaryDirectory(prefix="avm-bench-memory-") as state_dir:
        store = ContentStore(state_dir, budget=_BUDGETS[config])
        before = rss_bytes()
        started = time.perf_counter()
        fleet: list[AgentRecord] = []
        for i in range(agents):
            prompt = store.put(build_prompt())
            turns = tuple(store.put(turn["content"]) for turn in build_conversation(i))
            fleet.append(AgentRecord(f"agent-{i}", (prompt, *turns)))
        elapsed = time.perf_counter() - started
        store.codec.wait_for_training()
        after = rss_bytes()
        stats = store.stats()
        ram_content = stats.hot.stored_bytes + stats.warm.stored_bytes
        rss_per_agent = (after - before) / agents
        # Check after measuring (reads promote content): every byte is still there.
        for i in random.Random(0).sample(range(agents), min(agents, 200)):
            texts = [store.text(ref) for ref in fleet[i].refs[1:]]
            assert texts == [t["content"] for t in build_conversation(i)], f"agent {i} differs"
        assert store.text(fleet[0].refs[0]) == build_prompt()
        result = {
            "rss_bytes_total": after - before,
            "rss_bytes_per_agent": round(rss_per_agent),
            "ram_content_bytes_per_agent": round(ram_content / agents),
            "overhead_bytes_per_agent": round(rss_per_agent - ram_content / agents),
            "create_us_per_agent": round(elapsed / agents * 1e6, 2),
            "store": {
                "hot_entries": stats.hot.entries,
                "warm_entries": stats.warm.entries,
                "cold_rows": stats.cold.entries,
                "ram_bytes_accounted": stats.ram_bytes,
                "distinct_bytes": stats.distinct_bytes,
                "dedup_ratio": stats.dedup_ratio,
                "compression_ratio": stats.compression_ratio,
                "dictionary_version": stats.dictionary_version,
            },
        }
        store.close()
        return result


def passivated_record(index: int, image: ContentRef) -> PassivatedAgent:
    agent_id = f"agent-{index:07d}"
    memory = hash_content(agent_id)
    if index % 2:
        return PassivatedAgent(agent_id, image, 1000 + 7 * index, WaitReason.TIMER, 1e6 + index)
    return PassivatedAgent(agent_id, image, 1000 + 7 * index, WaitReason.MESSAGE, None, memory)


def child_passivated(config: str, agents: int) -> Json:
    image = hash_content(b"agent image: code, defaults, capabilities")
    before = rss_bytes()
    started = time.perf_counter()
    table: dict[str, Any] = {}
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.new_event_loop()
    if config == "passivated":
        for i in range(agents):
            record = passivated_record(i, image)
            table[record.agent_id] = record
    elif config == "passive_dict":
        for i in range(agents):
            record = passivated_record(i, image)
            table[record.agent_id] = {
                "agent_id": record.agent_id,
                "image": image,
                "journal_pos": record.journal_pos,
                "wait": record.wait,
                "wake": record.wake,
                "memory": record.memory,
            }
    else:

        async def parked(agent_id: str) -> None:
            await loop.create_future()

        async def park_all() -> None:
            for i in range(agents):
                tasks.append(loop.create_task(parked(f"agent-{i:07d}")))
            await asyncio.sleep(0)  # every task runs to its first await

        loop.run_until_complete(park_all())
    elapsed = time.perf_counter() - started
    after = rss_bytes()
    if tasks:
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
    return {
        "rss_bytes_total": after - before,
        "rss_bytes_per_agent": round((after - before) / agents),
        "create_us_per_agent": round(elapsed / agents * 1e6, 2),
        "encoded_bytes_per_record": len(passivated_record(2, image).encode()),
    }


def _per_op(fn: Callable[[], object], count: int) -> float:
    """Microseconds per call of ``fn``, best of 5 runs of ``count`` calls."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - started)
    return round(best / count * 1e6, 3)


def _per_item(fn: Callable[[bytes], object], items: Sequence[bytes]) -> float:
    """Microseconds per item of one pass of ``fn`` over ``items`` (for one-shot operations)."""
    started = time.perf_counter()
    for item in items:
        fn(item)
    return round((time.perf_counter() - started) / len(items) * 1e6, 3)


def _trained_codec() -> Codec:
    """A codec with one dictionary trained up front, and no further training.

    Training is background work done once per 4x growth; timing it inside put() would charge
    a few puts for it.
    """
    codec = Codec(background=False, first_training=10**9)
    for i in range(2000):
        codec.observe(chat_message(10**8 + i, 2048))
    codec.train_now()
    return codec


def _ops_round(count: int, round_: int) -> Json:
    """One round of latency measurements on a fresh store and fresh messages."""
    codec = _trained_codec()
    offset = round_ * 10 * count
    messages = [chat_message(offset + i, 2048) for i in range(count)]
    fresh = [chat_message(offset + count + i, 2048) for i in range(count)]
    baseline = [chat_message(offset + 2 * count + i, 2048) for i in range(count)]
    with tempfile.TemporaryDirectory(prefix="avm-bench-memory-") as state_dir:
        store = ContentStore(state_dir, codec=codec)
        refs = [store.put(message) for message in messages]
        one, one_ref = messages[0], refs[0]
        plain: dict[bytes, bytes] = {}
        results: Json = {
            "blake3_2k_us": _per_op(lambda: blake3.blake3(one).digest(), count),
            # The baseline for a new put: a plain dict keyed by BLAKE3, growing the same way.
            "dict_put_new_2k_us": _per_item(
                lambda m: plain.__setitem__(blake3.blake3(m).digest(), m), baseline
            ),
            "dict_get_us": _per_op(lambda: plain.get(one_ref), count),
            "put_new_2k_us": _per_item(store.put, fresh),
            "put_duplicate_2k_us": _per_op(lambda: store.put(one), count),
            "get_hot_us": _per_op(lambda: store.get(one_ref), count),
            "view_hot_us": _per_op(lambda: store.view(one_ref), count),
        }
        started = time.perf_counter()
        store.demote(refs, Tier.WARM)
        results["demote_to_warm_us"] = round((time.perf_counter() - started) / count * 1e6, 3)
        results["get_warm_us"] = _per_item(store.get, refs)
        started = time.perf_counter()
        store.demote(refs, Tier.COLD)
        results["demote_to_cold_us"] = round((time.perf_counter() - started) / count * 1e6, 3)
        results["get_cold_us"] = _per_item(store.get, refs)
        store.close()
    return results


def child_ops(count: int, rounds: int = 3) -> Json:
    """Latency of store operations: the best of ``rounds`` rounds (this machine is shared, and
    the best round is the one least disturbed by neighbours)."""
    runs = [_ops_round(count, round_) for round_ in range(rounds)]
    results: Json = {key: min(run[key] for run in runs) for key in runs[0]}
    results["rounds"] = rounds
    results["codec"] = codec_ratios()
    return {
        **results,
        "ratios": {
            "put_new_vs_dict_put": round(
                results["put_new_2k_us"] / results["dict_put_new_2k_us"], 2
            ),
            "get_hot_vs_dict_get": round(results["get_hot_us"] / results["dict_get_us"], 2),
        },
    }


def codec_ratios() -> Json:
    """Compression of small messages: a trained dictionary against plain zstd, same settings."""
    out: Json = {}
    for name, make in (
        ("chat_messages", lambda i: chat_message(i)),
        ("fleet_hex_turns", lambda i: build_conversation(i // 8)[i % 8]["content"].encode()),
    ):
        codec = Codec(background=False, first_training=10**9)
        train = [make(i) for i in range(2000)]
        test = [make(i) for i in range(10**6, 10**6 + 2000)]
        plain = [len(codec.compress(item)[1]) for item in test]
        for item in train:
            codec.observe(item)
        version = codec.train_now()
        trained = [len(codec.compress(item)[1]) for item in test]
        logical = sum(map(len, test))
        out[name] = {
            "mean_bytes": round(logical / len(test)),
            "plain_zstd_ratio": round(logical / sum(plain), 3),
            "dictionary_ratio": round(logical / sum(trained), 3),
            "dictionary_installed": version is not None,
        }
    out["zstandard"] = zstandard.__version__
    return out


def child_soak(seconds: float, budget_text: str, allowance_text: str) -> Json:
    budget = MemoryBudget.of(budget_text)
    assert budget.limit is not None
    allowance = MemoryBudget.of(allowance_text).limit or 0
    # Unique messages made cheaply: a numbered prefix on one of 4,000 pre-built chat turns.
    pool = [chat_message(i) for i in range(4000)]
    baseline = rss_bytes()
    window_size = 200_000
    with tempfile.TemporaryDirectory(prefix="avm-bench-soak-") as state_dir:
        store = ContentStore(state_dir, budget=budget)
        window: collections.deque[bytes] = collections.deque(maxlen=window_size)
        rng = random.Random(1)
        rss_samples: list[int] = []
        gc_pauses: list[float] = []
        puts = gets = 0
        started = time.perf_counter()
        deadline = started + seconds
        next_sample = next_gc = started
        index = 0
        while (now := time.perf_counter()) < deadline:
            for _ in range(500):
                window.append(store.put(b"%d " % index + pool[index % 4000], hold=False))
                index += 1
                puts += 1
                if rng.random() < 0.3:
                    # Mostly the newest content; a third of reads reach back anywhere.
                    back = rng.randrange(len(window)) if rng.random() < 0.33 else rng.randrange(50)
                    store.get(window[-1 - min(back, len(window) - 1)])
                    gets += 1
            if now >= next_gc:
                report = collect(store, window)
                gc_pauses.append(report.duration_s)
                next_gc = now + GC_INTERVAL_S
            if now >= next_sample:
                rss_samples.append(int(psutil.Process().memory_info().rss) - baseline)
                next_sample = now + 0.5
        elapsed = time.perf_counter() - started
        store.codec.wait_for_training()
        stats = store.stats()
        live_logical = sum(len(store.get(ref)) for ref in list(window)[-2000:]) / 2000
        peak = max(rss_samples)
        result = {
            "seconds": round(elapsed, 1),
            "budget_bytes": budget.limit,
            "allowance_bytes": allowance,
            "puts": puts,
            "gets": gets,
            "puts_per_s": round(puts / elapsed),
            "logical_bytes_written": stats.put_bytes,
            "live_window_messages": len(window),
            "live_logical_bytes_estimate": round(live_logical * len(window)),
            "rss_peak_above_baseline": peak,
            "rss_final_above_baseline": rss_samples[-1],
            "rss_median_above_baseline": round(statistics.median(rss_samples)),
            "within_budget_plus_allowance": peak <= budget.limit + allowance,
            "store_ram_bytes_accounted": stats.ram_bytes,
            "hot_entries": stats.hot.entries,
            "warm_entries": stats.warm.entries,
            "cold_rows": stats.cold.entries,
            "compression_ratio": stats.compression_ratio,
            "hit_ratio_ram": round(stats.hit_ratio, 3),
            "hits": {
                "hot": stats.hot.hits,
                "warm": stats.warm.hits,
                "cold": stats.cold.hits,
                "misses": stats.cold.misses,
            },
            "gc_runs": len(gc_pauses),
            "gc_pause_s_max": max(gc_pauses),
            "gc_pause_s_median": statistics.median(gc_pauses),
            "gc_reclaimed_entries": stats.gc.reclaimed_entries,
            "dictionary_versions": stats.dictionary_version,
        }
        store.close()
        return result


def run_child(args: argparse.Namespace) -> Json:
    config, n = args.child, args.n
    if config == "naive":
        result = child_naive(n)
    elif config in _BUDGETS:
        result = child_store(config, n)
    elif config in PASSIVE_CONFIGS:
        result = child_passivated(config, n)
    elif config == "ops":
        result = child_ops(n)
    else:
        result = child_soak(args.soak_seconds, args.soak_budget, args.soak_allowance)
    return {"config": config, "n": n, **result}


# -- parent -----------------------------------------------------------------------------------


def launch(config: str, n: int, args: argparse.Namespace) -> Json:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        config,
        "--n",
        str(n),
        "--soak-seconds",
        str(args.soak_seconds),
        "--soak-budget",
        args.soak_budget,
        "--soak-allowance",
        args.soak_allowance,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        return {"config": config, "n": n, "error": done.stderr.strip().splitlines()[-1:]}
    result: Json = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"memory: {config:>12} x {n:>9,}: {time.perf_counter() - started:6.1f} s",
        file=sys.stderr,
    )
    return result


def agent_ratios(results: list[Json]) -> Json:
    by_key = {(r["config"], r["n"]): r for r in results if "error" not in r}
    out: Json = {}
    for n in sorted({n for _, n in by_key}):
        naive = by_key.get(("naive", n))
        if naive is None:
            continue
        row: Json = {}
        for config in AGENT_CONFIGS[1:]:
            result = by_key.get((config, n))
            if result is None:
                continue
            row[f"naive_vs_{config}_memory"] = round(
                naive["rss_bytes_per_agent"] / result["rss_bytes_per_agent"], 2
            )
        warm = by_key.get(("store_warm", n))
        if warm is not None:
            row["target_overhead_bytes"] = TARGET_OVERHEAD_BYTES
            row["store_warm_overhead_ok"] = (
                warm["overhead_bytes_per_agent"] <= TARGET_OVERHEAD_BYTES
            )
            row["store_warm_vs_naive_ok"] = row["naive_vs_store_warm_memory"] >= TARGET_NAIVE_RATIO
        out[str(n)] = row
    return out


def passive_ratios(results: list[Json]) -> Json:
    by_config = {r["config"]: r for r in results if "error" not in r}
    record = by_config.get("passivated")
    if record is None:
        return {}
    out: Json = {
        "target_total_bytes": TARGET_PASSIVATED_TOTAL,
        "passivated_total_ok": record["rss_bytes_total"] < TARGET_PASSIVATED_TOTAL,
    }
    for baseline in PASSIVE_CONFIGS[1:]:
        if baseline in by_config:
            out[f"{baseline}_vs_passivated_memory"] = round(
                by_config[baseline]["rss_bytes_per_agent"] / record["rss_bytes_per_agent"], 2
            )
    return out


def run_all(args: argparse.Namespace) -> Json:
    started = time.perf_counter()
    agents = args.agents or (QUICK_AGENTS if args.quick else DEFAULT_AGENTS)
    passivated = args.passivated or (QUICK_PASSIVATED if args.quick else DEFAULT_PASSIVATED)
    if args.quick and args.soak_seconds == DEFAULT_SOAK_S:
        args.soak_seconds = QUICK_SOAK_S
    report: Json = {
        "benchmark": "memory",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "zstandard": zstandard.__version__,
        },
        "workload": {
            "prompt_bytes": PROMPT_BYTES,
            "conversation_bytes": CONVERSATION_BYTES,
            "turns": CONVERSATION_TURNS,
        },
    }
    if "agents" in args.sections:
        results = [launch(config, n, args) for n in agents for config in AGENT_CONFIGS]
        report["agents"] = {"results": results, "ratios": agent_ratios(results)}
    if "passivated" in args.sections:
        results = [launch(config, passivated, args) for config in PASSIVE_CONFIGS]
        report["passivated"] = {"results": results, "ratios": passive_ratios(results)}
    if "ops" in args.sections:
        report["ops"] = launch("ops", args.ops, args)
    if "soak" in args.sections:
        report["soak"] = launch("soak", 0, args)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Resident memory per agent with the content store against plain objects; "
        "passivated agents; operation latency; a bounded soak. Prints JSON to stdout.",
    )
    parser.add_argument("--quick", action="store_true", help="a check in well under a minute")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION"
    )
    parser.add_argument("--agents", type=int, nargs="+", metavar="N", help="fleet sizes")
    parser.add_argument("--passivated", type=int, metavar="N", help="passivated records")
    parser.add_argument("--ops", type=int, default=20_000, help="messages in the latency test")
    parser.add_argument("--soak-seconds", type=float, default=DEFAULT_SOAK_S)
    parser.add_argument("--soak-budget", default=DEFAULT_SOAK_BUDGET)
    parser.add_argument("--soak-allowance", default=DEFAULT_SOAK_ALLOWANCE)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    children = (*AGENT_CONFIGS, *PASSIVE_CONFIGS, "ops", "soak")
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(args)), flush=True)
        return
    print(json.dumps(run_all(args), indent=2))


if __name__ == "__main__":
    main()
