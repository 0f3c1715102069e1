"""Local model benchmark: batched AVM provider vs llama-cpp-python's high-level API.

What it measures
    1. Throughput. N agents (default 1, 4, 16 and 32) each send one chat request: the same
       system prompt (about 250 tokens, as agents of one fleet share; it asks for a paragraph,
       so most answers run to the token limit), a different question, greedy decoding,
       ``max_tokens`` 64. The figure is aggregate generated tokens per second:
       the completion tokens of all N replies divided by the wall time from the first request
       to the last reply.

       * ``avm``: one :class:`~avm.llm.providers.llamacpp.LlamaCppProvider`, the N requests
         sent concurrently, so its decode thread batches them (and evaluates the shared
         system prompt once).
       * ``baseline``: one ``llama_cpp.Llama`` and its ``create_chat_completion``, the N
         requests one at a time: a ``Llama`` object holds one context and is not safe to call
         concurrently, so one at a time is how it serves a fleet. It keeps its previous
         prompt's KV cache and reuses the longest common prefix, so it too evaluates the shared
         system prompt only once across consecutive calls.

       Both load the same GGUF file and use the same number of threads. The baseline's
       sampler settings are made greedy (``temperature=0``) like AVM's.

       AVM serves the weights its provider picks by default (``--weights auto``: a BF16 copy
       on CPUs with BF16 instructions, Q8_0 on other AVX2 CPUs; see
       :mod:`avm.llm.local.requantize`; ``--weights as_is`` serves the file as shipped). When
       that is a converted copy, the baseline runs twice per point: on the file as shipped
       (what a user of the high-level API gets) and on the same converted copy (which
       isolates the effect of batching from that of the weight format).

    2. Time to first token (TTFT) for 32 agents sharing one system prompt, all sent at once
       and streamed: the time from sending to each agent's first text delta (p50, p95, max),
       with prefix sharing (the default) and without (``prefix_cache_size=0``, every agent
       evaluates the whole system prompt itself).

    3. Kernel scan: the CPU time of one raw ``llama_decode`` of B tokens (B = 1 ... 32, one
       token per sequence, 64 tokens of context each), i.e. what llama.cpp's kernels allow any
       batching engine on this model file and CPU.

    4. Workload scan: the same, but for the throughput runs' own workload (each sequence holds
       the shared system turn and its own question, and the context grows as the reply does):
       the decode steps alone, for each agent count. Attention over the ~300-token contexts
       makes these steps slower than the kernel scan's, so this is the honest ceiling: its
       ``ceiling_cpu_ratio`` is the highest CPU ratio any engine could reach against this run's
       baseline, and ``avm_share`` how much of that ceiling AVM reached.

How
    Everything runs in this one process. For each repeat, each agent count runs the baseline
    and then AVM back to back, so load from other processes on a shared machine hits both
    alike; the medians of the repeats are reported, with every run's figure beside them.
    Throughput is given per wall-clock second and per CPU-second of the process: on a shared
    machine the wall clock also counts time other processes held the cores, so the CPU-time
    ratios are the steadier comparison. Both
    providers are warmed up (model loaded, one short request) before timing. Results go to
    stdout as one JSON document, progress to stderr.

Run it::

    .venv/bin/python bench/local_model.py                 # 1, 4, 16, 32 agents; ~8 minutes
    .venv/bin/python bench/local_model.py --quick         # 1 and 4 agents, short; ~30 s
    .venv/bin/python bench/local_model.py --weights q8_0 --skip-ttft
    .venv/bin/python bench/local_model.py --agents 16 --repeat 1 --skip-ttft
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from avm.llm.local.model_file import default_model_path
from avm.llm.providers.llamacpp import LlamaCppProvider
from avm.llm.types import Message, ModelRequest
from run_info import run_info

Json = dict[str, Any]

SYSTEM_PROMPT = (
    "You are Atlas, a research assistant embedded in a team of analysts at a mid-sized"
    " logistics company. Your job is to answer questions from team members clearly and"
    " accurately. Follow these rules in every answer. First, answer the question that was"
    " asked, not a different one, and start with the answer itself rather than a restatement of"
    " the question. Second, answer in one full paragraph of five or six sentences in plain"
    " English, explaining the reasons behind the answer. Third, when you are not sure about a"
    " fact, say so plainly instead of guessing, and suggest how the user could check it."
    " Fourth, never invent numbers, names, dates or sources. Fifth, be polite and neutral; do"
    " not flatter the user and do not lecture them. Sixth, when a question involves safety,"
    " money or legal matters, add one sentence recommending that the user consult the"
    " responsible colleague. Seventh, use metric units and ISO dates. Eighth, if a question is"
    " ambiguous, pick the most likely reading, answer it, and mention the other reading in one"
    " short sentence. Ninth, do not use markdown, lists or headings; write continuous prose."
    " Tenth, end your answer when the question is answered; do not add offers of further help."
)

QUESTIONS = (
    "What causes the seasons on Earth?",
    "How does a refrigerator keep food cold?",
    "Why do ships float?",
    "What is inflation in economics?",
    "How do vaccines work?",
    "Why do leaves change colour in autumn?",
    "What is the difference between weather and climate?",
    "How does a bicycle stay upright?",
    "Why is the ocean salty?",
    "What is a supply chain?",
    "How do airplanes fly?",
    "What makes a good password?",
    "Why do we have time zones?",
    "How does recycling help the environment?",
    "What is a warehouse management system?",
    "Why do cats purr?",
    "How is electricity generated in a power plant?",
    "What is the purpose of a budget?",
    "How do rainbows form?",
    "Why do we need sleep?",
    "What is a container ship?",
    "How do bees make honey?",
    "What is compound interest?",
    "Why does ice float on water?",
    "How does a compass work?",
    "What is the role of a forklift in a warehouse?",
    "Why do we see lightning before we hear thunder?",
    "How does the internet send data?",
    "What is a just-in-time inventory system?",
    "Why do onions make people cry?",
    "How do tides work?",
    "Explain why the sky is blue.",
)

MODEL_NAME = "smollm2"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def requests_for(agents: int, max_tokens: int) -> list[ModelRequest]:
    return [
        ModelRequest(
            model=MODEL_NAME,
            messages=(
                Message("system", SYSTEM_PROMPT),
                Message("user", QUESTIONS[i % len(QUESTIONS)]),
            ),
            max_tokens=max_tokens,
            temperature=0.0,
        )
        for i in range(agents)
    ]


# --- the baseline: llama-cpp-python's high-level API, one request at a time -----------------


class Baseline:
    def __init__(self, model_path: Path, n_threads: int, n_ctx: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )

    def complete(self, request: ModelRequest) -> int:
        messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
        result: Any = self.llm.create_chat_completion(
            messages=messages,
            max_tokens=request.max_tokens,
            temperature=0.0,
        )
        return int(result["usage"]["completion_tokens"])

    def run(self, requests: Sequence[ModelRequest]) -> Json:
        cpu, start = time.process_time(), time.perf_counter()
        tokens = sum(self.complete(r) for r in requests)
        return figures(tokens, time.perf_counter() - start, time.process_time() - cpu)


def figures(tokens: int, wall: float, cpu: float) -> Json:
    """Throughput by the wall clock, and per CPU-second of this process.

    On a shared machine the wall clock also counts time other processes held the cores; the
    CPU figure (all threads of this process) does not, so its ratios are the steadier ones.
    """
    return {
        "tokens": tokens,
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu if cpu > 0 else float("nan"),
    }


# --- AVM ------------------------------------------------------------------------------------


async def avm_run(provider: LlamaCppProvider, requests: Sequence[ModelRequest]) -> Json:
    cpu, start = time.process_time(), time.perf_counter()
    replies = await asyncio.gather(*(provider.complete(r) for r in requests))
    tokens = sum(r.usage.tokens_out for r in replies)
    result = figures(tokens, time.perf_counter() - start, time.process_time() - cpu)
    result["cached"] = sum(r.usage.cached_tokens for r in replies)
    return result


# --- what the kernels allow -----------------------------------------------------------------


class RawDecoder:
    """One model and one ``llama_batch``, driven directly: no engine, no Python per token."""

    def __init__(self, model_path: Path, weights: str, threads: int, n_ctx: int, n_seq: int):
        from avm.llm.local.engine import TokenBatch
        from avm.llm.local.model import ContextSettings, LocalModel
        from avm.llm.local.requantize import requantized

        path = model_path if weights == "as_is" else requantized(model_path, cast(Any, weights))
        self.model = LocalModel(
            path, ContextSettings(n_ctx=n_ctx, n_seq=n_seq, n_batch=256, n_threads=threads)
        )
        self.batch = TokenBatch(256)

    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> float:
        """Evaluate ``(token, position, sequence, logits?)`` items; the CPU seconds it took."""
        import llama_cpp

        batch = self.batch
        batch.clear()
        for token, pos, seq, logits in items:
            batch.add(token, pos, seq, logits=logits)
        sealed = batch.seal()
        cpu = time.process_time()
        if llama_cpp.llama_decode(self.model.ctx, sealed) != 0:
            raise RuntimeError("llama_decode failed")
        return time.process_time() - cpu

    def close(self) -> None:
        self.batch.free()
        self.model.close()


def kernel_scan(model_path: Path, weights: str, threads: int) -> Json:
    """CPU milliseconds of one ``llama_decode`` of B tokens (one per sequence), B = 1..32.

    Each sequence first holds a 64-token prompt. This is the ceiling any batching engine on
    this model file and CPU can reach for short contexts: tokens per CPU-second = B / step time.
    """
    import llama_cpp

    raw = RawDecoder(model_path, weights, threads, n_ctx=4096, n_seq=32)
    try:
        for seq in range(32):
            raw.decode([(100 + (7 * i + seq) % 1000, i, seq, False) for i in range(64)])
        scan: Json = {}
        for size in (1, 2, 4, 8, 16, 32):
            times = []
            for step in range(5):
                times.append(raw.decode([(500 + s, 64 + step, s, True) for s in range(size)]))
            for seq in range(size):
                llama_cpp.llama_memory_seq_rm(raw.model.memory, seq, 64, -1)
            step_s = statistics.median(times)
            scan[str(size)] = {
                "step_cpu_ms": round(step_s * 1000, 1),
                "tokens_per_cpu_s": round(size / step_s, 1),
            }
        return scan
    finally:
        raw.close()


def workload_scan(
    model_path: Path, weights: str, threads: int, n_ctx: int, agents: Sequence[int], steps: int
) -> Json:
    """The decode steps of this benchmark's own workload, timed with no engine around them.

    For each agent count N: the system turn is evaluated once and its KV cells copied to N
    sequences (as prefix sharing does), each sequence evaluates its own question, then ``steps``
    decode steps of N tokens run, one per sequence, each asking for logits; only those steps
    are timed. Tokens per CPU-second of them is what a perfect batching engine could deliver on
    this workload with these kernels and this context length: it leaves out prompt evaluation,
    replies that end early and all engine overhead, so it is a ceiling, not a target.
    """
    import llama_cpp

    most = max(agents)
    raw = RawDecoder(model_path, weights, threads, n_ctx=n_ctx, n_seq=most + 1)
    model = raw.model
    try:
        prompts = [
            model.tokenize(
                model.apply_chat_template(
                    [("system", SYSTEM_PROMPT), ("user", q)], add_assistant=True
                )
            )
            for q in QUESTIONS
        ]
        shared = 0  # the system turn: the longest prefix common to every prompt
        while all(len(p) > shared + 1 and p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
        prefix_seq = most
        scan: Json = {}
        for n in agents:
            llama_cpp.llama_memory_clear(model.memory, True)
            for start in range(0, shared, 256):
                chunk = prompts[0][start : min(shared, start + 256)]
                raw.decode([(t, start + i, prefix_seq, False) for i, t in enumerate(chunk)])
            own = []
            for seq in range(n):
                llama_cpp.llama_memory_seq_cp(model.memory, prefix_seq, seq, 0, shared)
                prompt = prompts[seq % len(prompts)]
                own += [(t, shared + i, seq, False) for i, t in enumerate(prompt[shared:])]
            for start in range(0, len(own), 256):
                raw.decode(own[start : start + 256])
            lengths = [len(prompts[seq % len(prompts)]) for seq in range(n)]
            cpu = 0.0
            for step in range(steps):
                cpu += raw.decode([(500 + seq, lengths[seq] + step, seq, True) for seq in range(n)])
            scan[str(n)] = {
                "step_cpu_ms": round(cpu / steps * 1000, 1),
                "tokens_per_cpu_s": round(n * steps / cpu, 1),
            }
        return scan
    finally:
        raw.close()


async def ttft_run(provider: LlamaCppProvider, agents: int) -> Json:
    requests = requests_for(agents, max_tokens=4)

    async def one(request: ModelRequest) -> tuple[float, int]:
        start = time.perf_counter()
        first = float("nan")
        stream = provider.stream(request)
        async for _ in stream:
            if first != first:  # NaN: no delta yet
                first = time.perf_counter() - start
        assert stream.reply is not None
        return first, stream.reply.usage.cached_tokens

    start = time.perf_counter()
    results = await asyncio.gather(*(one(r) for r in requests))
    total = time.perf_counter() - start
    times = sorted(t for t, _ in results)
    return {
        "agents": agents,
        "p50_s": statistics.median(times),
        "p95_s": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
        "max_s": times[-1],
        "all_done_s": total,
        "cached_tokens_total": sum(c for _, c in results),
    }


async def main_async(args: argparse.Namespace) -> Json:
    import llama_cpp

    model_path = Path(args.model) if args.model else default_model_path()
    if args.weights == "auto":
        from avm.llm.local.requantize import auto_weights

        args.weights = auto_weights(model_path)
    log(f"model {model_path} ({model_path.stat().st_size / 1e6:.1f} MB), {args.threads} thread(s)")
    result: Json = {
        **run_info("local_model"),
        "config": {
            "model": model_path.name,
            "llama_cpp_python": llama_cpp.__version__,
            "n_threads": args.threads,
            "max_tokens": args.max_tokens,
            "agents": args.agents,
            "repeat": args.repeat,
            "n_ctx": args.n_ctx,
            "weights": args.weights,
        },
    }

    provider = LlamaCppProvider(
        model_path,
        n_threads=args.threads,
        n_ctx=args.n_ctx,
        n_seq_max=32,
        n_batch=256,
        weights=args.weights,
    )
    t0 = time.perf_counter()
    await provider.load()
    result["avm_load_s"] = round(time.perf_counter() - t0, 3)
    baselines = {"baseline": Baseline(model_path, args.threads, n_ctx=2048)}
    if args.weights != "as_is":
        from avm.llm.local.requantize import requantized

        converted = requantized(model_path, args.weights)
        result["config"]["converted_model"] = converted.name
        baselines["baseline_same_weights"] = Baseline(converted, args.threads, n_ctx=2048)
    # Warm up with a question the measured runs do not ask: the baseline reuses the KV cache
    # of its previous prompt, which would otherwise make the 1-agent run nearly free for it.
    warm = ModelRequest(
        model=MODEL_NAME,
        messages=(Message("system", SYSTEM_PROMPT), Message("user", "Say hello.")),
        max_tokens=8,
    )
    await provider.complete(warm)
    for b in baselines.values():
        b.complete(warm)

    labels = ["avm", *baselines]
    runs: dict[int, dict[str, list[Json]]] = {n: {k: [] for k in labels} for n in args.agents}
    for rep in range(args.repeat):
        for n in args.agents:
            requests = requests_for(n, args.max_tokens)
            for label, b in baselines.items():
                runs[n][label].append(b.run(requests))
            runs[n]["avm"].append(await avm_run(provider, requests))
            last = {k: runs[n][k][-1] for k in labels}
            shown = ", ".join(
                f"{k} {r['tokens_per_s']:5.1f} ({r['tokens_per_cpu_s']:5.1f})"
                for k, r in last.items()
            )
            log(f"repeat {rep + 1}/{args.repeat}, {n:>2} agents, tok/s (per CPU-s): {shown}")
    throughput = []
    for n in args.agents:
        point: Json = {"agents": n}
        wall = {k: statistics.median(r["tokens_per_s"] for r in runs[n][k]) for k in labels}
        cpu = {k: statistics.median(r["tokens_per_cpu_s"] for r in runs[n][k]) for k in labels}
        for k in labels:
            point[f"{k}_tokens_per_s"] = round(wall[k], 1)
            point[f"{k}_tokens_per_cpu_s"] = round(cpu[k], 1)
        for k in baselines:
            suffix = "" if k == "baseline" else "_vs_same_weights"
            point[f"ratio{suffix}"] = round(wall["avm"] / wall[k], 2)
            point[f"cpu_ratio{suffix}"] = round(cpu["avm"] / cpu[k], 2)
        for k in labels:
            point[f"{k}_runs"] = [round(r["tokens_per_s"], 1) for r in runs[n][k]]
            point[f"{k}_tokens"] = runs[n][k][0]["tokens"]
        throughput.append(point)
    result["throughput"] = throughput
    stats = provider.stats()
    await provider.aclose()
    del baselines

    if not args.skip_ttft:
        ttft: Json = {}
        for label, cache_size in (("shared_prefix", 8), ("no_sharing", 0)):
            p = LlamaCppProvider(
                model_path,
                n_threads=args.threads,
                n_ctx=args.n_ctx,
                n_seq_max=32,
                n_batch=256,
                prefix_cache_size=cache_size,
                weights=args.weights,
            )
            await p.load()
            await p.complete(  # warm-up without the system prompt, which must stay uncached
                ModelRequest(model=MODEL_NAME, messages=(Message("user", "hi"),), max_tokens=1)
            )
            ttft[label] = await ttft_run(p, args.ttft_agents)
            await p.aclose()
            log(f"ttft {label}: p50 {ttft[label]['p50_s']:.2f} s, max {ttft[label]['max_s']:.2f} s")
        ttft["p50_ratio_no_sharing_over_shared"] = round(
            ttft["no_sharing"]["p50_s"] / ttft["shared_prefix"]["p50_s"], 2
        )
        result["ttft"] = ttft

    result["ratios"] = {
        f"{key}_{t['agents']}_agents": t[key]
        for t in throughput
        for key in ("ratio", "cpu_ratio", "ratio_vs_same_weights", "cpu_ratio_vs_same_weights")
        if key in t
    }
    if not args.skip_kernel_scan:
        result["kernel_scan"] = kernel_scan(model_path, args.weights, args.threads)
        log(f"kernel scan: {result['kernel_scan']}")
        workload = workload_scan(
            model_path, args.weights, args.threads, args.n_ctx, args.agents, args.max_tokens
        )
        for point in throughput:
            ceiling = workload[str(point["agents"])]
            # The highest CPU ratio any engine could reach against this run's baseline, and how
            # much of the ceiling AVM reached.
            ceiling["ceiling_cpu_ratio"] = round(
                ceiling["tokens_per_cpu_s"] / point["baseline_tokens_per_cpu_s"], 2
            )
            ceiling["avm_share"] = round(
                point["avm_tokens_per_cpu_s"] / ceiling["tokens_per_cpu_s"], 2
            )
        result["workload_scan"] = workload
        log(f"workload scan: {workload}")
    result["avm_engine_stats"] = (
        None
        if stats is None
        else {
            "steps": stats.steps,
            "batch_tokens": stats.batch_tokens,
            "prefix_hits": stats.prefix_hits,
            "prefix_tokens_reused": stats.prefix_tokens_reused,
            "max_active": stats.max_active,
        }
    )
    result["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=16384)
    parser.add_argument("--ttft-agents", type=int, default=32)
    parser.add_argument("--skip-ttft", action="store_true")
    parser.add_argument(
        "--skip-kernel-scan",
        action="store_true",
        help="skip timing raw llama_decode steps (kernel and workload scans)",
    )
    parser.add_argument("--model", help="a GGUF file; default: SmolLM2-135M-Instruct")
    parser.add_argument(
        "--weights",
        choices=["auto", "as_is", "q8_0", "bf16", "f16"],
        default="auto",
        help="weight type AVM serves (the provider's weights= option; auto picks by CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="1 and 4 agents, short, once")
    args = parser.parse_args()
    if args.quick:
        args.agents, args.max_tokens, args.repeat, args.ttft_agents = [1, 4], 32, 1, 8
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
