"""Model-call benchmark: client CPU per model call, AVM against the OpenAI SDK and bare aiohttp.

What it measures
    The CPU time the *client* process spends per model call (user + system, from
    ``getrusage``, over the workload only), its throughput (calls per second of wall time) and
    its peak resident memory, for the same workload written several ways:

    * ``avm_relaxed_chat`` / ``avm_durable_chat``: a real :class:`avm.VM`
      (``durability="relaxed"`` or ``"durable"``, state in a temporary directory), its agents
      written as AVM intends: each keeps its conversation with ``ctx.conversation`` (content
      in the VM's store, the agent holding refs; RUN_MODEL journals the refs) and calls
      ``ctx.run_model`` and ``ctx.read_from_tool``; every call is a metered, journaled
      instruction.
    * ``avm_relaxed`` / ``avm_durable``: the same VM, the agents passing message lists as the
      baselines do. The system prompt is one module-level ``Message`` shared by all agents, as
      the baselines share one string.
      The model is :class:`~avm.llm.providers.openai_compat.OpenAICompatProvider`, which the
      VM's linker wraps in the model's I/O stack (circuit breaker, response cache, coalescer,
      batch lane) as it does for every configured model.
    * ``avm_relaxed_load_prompt``: as ``avm_relaxed``, but each agent first takes the prompt
      from the VM's prompt library with ``ctx.load_prompt`` (one more instruction per agent),
      which shows what journaling a 50 KB ``LOAD_PROMPT`` result costs today.
    * ``openai_sdk``: the same agents as plain asyncio tasks calling the official ``openai`` SDK
      (``AsyncOpenAI`` with a pool of the same size).
    * ``bare_aiohttp``: the same agents posting JSON with one ``aiohttp.ClientSession``
      (``json=`` in, ``await response.json()`` out): what a careful hand-written client does.

The workload
    1,000 agents; each makes 4 model calls with 3 tool rounds between them (a tool call that
    takes 10 ms), its conversation growing by the reply and the tool result each round. Every
    request carries the same 50 KB system prompt; temperature 0, ``max_tokens`` 64. The fake
    OpenAI server answers after 50 ms and runs in a **separate process**
    (``python -m avm.testing.fake_openai --port 0 --latency 0.05``) so its CPU is not counted.
    200 connections for every client.

How
    The parent starts the server, then runs each configuration in a fresh interpreter
    (``--child CONFIG``), interleaving ``--repeat`` rounds, and reports medians. Results go to
    stdout as one JSON document (``ratios`` divide each baseline's CPU per call by AVM's: above
    1, AVM is cheaper), progress to stderr. ``--profile avm_relaxed`` runs one configuration
    under cProfile and prints where its time goes.

Run it::

    .venv/bin/python bench/io_calls.py                  # all four, 3 rounds, ~1 minute
    .venv/bin/python bench/io_calls.py --repeat 1 --configs avm_relaxed bare_aiohttp
    .venv/bin/python bench/io_calls.py --profile avm_relaxed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psutil

from run_info import child_result, run_info

Json = dict[str, Any]

AGENTS = 1000
CALLS = 4
TOOL_S = 0.010
PROMPT_BYTES = 50 * 1024
LATENCY_S = 0.05
CONNECTIONS = 200
MAX_TOKENS = 64
MODEL = "fake-gpt"

CONFIGS = (
    "avm_relaxed_chat",
    "avm_durable_chat",
    "avm_relaxed",
    "avm_durable",
    "avm_relaxed_load_prompt",
    "openai_sdk",
    "bare_aiohttp",
)
_AVM_CONFIGS = CONFIGS[:5]
# Diagnostics (``--breakdown``): where AVM's CPU per call goes, each part measured alone.
BREAKDOWN = ("plain_instant", "vm_instant", "vm_stack_instant", "provider_http", "stack_http")

_LINE = (
    "You are a careful analyst agent. Read the market data you are given, reason step by step, "
    "cite the figures you rely on, and answer in the structured format described below. "
)
SYSTEM_PROMPT = (_LINE * (PROMPT_BYTES // len(_LINE) + 1))[:PROMPT_BYTES]


async def lookup(query: str) -> dict[str, str]:
    """The tool every configuration calls between model calls: 10 ms of waiting."""
    await asyncio.sleep(TOOL_S)
    return {"result": f"figures for {query}"}


def cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def measure(
    config: str, agents: int, run: Callable[[], Awaitable[int]], **extra: Any
) -> Json:
    """Run the workload once, timing wall and CPU; check every call was made."""
    user0, sys0 = cpu_s()
    wall0 = time.perf_counter()
    calls = await run()
    wall = time.perf_counter() - wall0
    user1, sys1 = cpu_s()
    assert calls == agents * CALLS, f"{config}: {calls} calls, expected {agents * CALLS}"
    cpu = (user1 - user0) + (sys1 - sys0)
    return {
        "config": config,
        "agents": agents,
        "calls": calls,
        "cpu_ms_per_call": round(cpu / calls * 1e3, 4),
        "user_ms_per_call": round((user1 - user0) / calls * 1e3, 4),
        "sys_ms_per_call": round((sys1 - sys0) / calls * 1e3, 4),
        "calls_per_s": round(calls / wall, 1),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }


# -- the configurations -----------------------------------------------------------------------


async def run_avm(
    base_url: str,
    agents: int,
    durability: str,
    load_prompt: bool,
    profile: str | None,
    chat: bool = False,
) -> Json:
    import avm
    from avm.llm.providers.openai_compat import OpenAICompatProvider

    with tempfile.TemporaryDirectory(prefix="avm-io-bench-") as state_dir:
        vm = avm.VM(state_dir, durability=durability, max_running=agents)
        vm.prompts.add("system", SYSTEM_PROMPT)
        vm.tool("lookup", description="market figures")(lookup)
        # The linker wraps the provider in the model's I/O stack (breaker, cache, coalescer,
        # batch lane) itself, as for any configured model.
        raw = OpenAICompatProvider(base_url, max_connections=CONNECTIONS)
        vm.models.add(
            "default",
            avm.ModelConfig(provider="openai", model=MODEL, base_url=base_url),
            provider=raw,
        )

        shared_system = avm.Message("system", SYSTEM_PROMPT)

        @vm.agent(name="chatter")
        async def chatter(ctx: avm.Context, index: int) -> int:
            conversation = ctx.conversation(system=SYSTEM_PROMPT)
            conversation = conversation.add(f"Task {index}: summarise the market.")
            for call in range(CALLS):
                reply = await ctx.run_model("default", conversation, max_tokens=MAX_TOKENS)
                conversation = conversation.append_reply(reply)
                if call < CALLS - 1:
                    found = await ctx.read_from_tool("lookup", f"{index}-{call}")
                    conversation = conversation.add(f"Tool result: {found['result']}")
            return CALLS

        @vm.agent(name="analyst")
        async def analyst(ctx: avm.Context, index: int) -> int:
            system = await ctx.load_prompt("system") if load_prompt else shared_system
            conversation: list[Any] = [system, f"Task {index}: summarise the market."]
            for call in range(CALLS):
                reply = await ctx.run_model("default", conversation, max_tokens=MAX_TOKENS)
                conversation.append({"role": "assistant", "content": reply.text})
                if call < CALLS - 1:
                    found = await ctx.read_from_tool("lookup", f"{index}-{call}")
                    conversation.append(f"Tool result: {found['result']}")
            return CALLS

        async def workload() -> int:
            agent = chatter if chat else analyst
            handles = [vm.spawn(agent, index=i) for i in range(agents)]
            return sum([await h.result() for h in handles])

        name = f"avm_{durability}" + ("_load_prompt" if load_prompt else "")
        name += "_chat" if chat else ""
        async with vm:
            if profile is None:
                return await measure(name, agents, workload)
            return await _profiled(name, agents, workload, profile)


async def run_openai_sdk(base_url: str, agents: int) -> Json:
    import httpx2  # the transport of the installed openai SDK
    import openai

    http = openai.DefaultAsyncHttpx2Client(
        limits=httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    )
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", http_client=http)

    async def agent(index: int) -> int:
        conversation: list[Any] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Task {index}: summarise the market."},
        ]
        for call in range(CALLS):
            completion = await client.chat.completions.create(
                model=MODEL, messages=conversation, max_tokens=MAX_TOKENS, temperature=0.0
            )
            text = completion.choices[0].message.content or ""
            conversation.append({"role": "assistant", "content": text})
            if call < CALLS - 1:
                found = await lookup(f"{index}-{call}")
                conversation.append({"role": "user", "content": f"Tool result: {found['result']}"})
        return CALLS

    async def workload() -> int:
        return sum(await asyncio.gather(*(agent(i) for i in range(agents))))

    try:
        return await measure("openai_sdk", agents, workload, openai_version=openai.__version__)
    finally:
        await client.close()


async def run_bare_aiohttp(base_url: str, agents: int) -> Json:
    import aiohttp

    url = base_url + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def agent(index: int) -> int:
            conversation: list[Any] = [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Task {index}: summarise the market."},
            ]
            for call in range(CALLS):
                body = {
                    "model": MODEL,
                    "messages": conversation,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0.0,
                }
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    completion = await response.json()
                text = completion["choices"][0]["message"]["content"] or ""
                conversation.append({"role": "assistant", "content": text})
                if call < CALLS - 1:
                    found = await lookup(f"{index}-{call}")
                    conversation.append(
                        {"role": "user", "content": f"Tool result: {found['result']}"}
                    )
            return CALLS

        async def workload() -> int:
            return sum(await asyncio.gather(*(agent(i) for i in range(agents))))

        return await measure("bare_aiohttp", agents, workload, aiohttp_version=aiohttp.__version__)


async def _profiled(
    config: str, agents: int, workload: Callable[[], Awaitable[int]], profile: str
) -> Json:
    """Run under cProfile; print the top functions by own time and by cumulative time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        result = await measure(config, agents, workload)
    finally:
        profiler.disable()
    profiler.dump_stats(profile)
    calls = agents * CALLS
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats(order).print_stats(40)
        print(f"--- {config}: top 40 by {order} ({calls} model calls) ---", file=sys.stderr)
        print(text.getvalue(), file=sys.stderr)
    result["profile"] = profile
    return result


class InstantProvider:
    """A provider that answers at once, in process: no HTTP, no server, no waiting."""

    async def complete(self, request: Any) -> Any:
        from avm.llm.types import ModelReply, Usage

        return ModelReply(
            "echo: " + request.messages[-1].content[:64], request.model, Usage(12800, 8)
        )

    async def aclose(self) -> None:
        pass


async def run_plain(provider: Any, agents: int, config: str) -> Json:
    """Plain asyncio agents calling a provider directly (no VM) with the same tool rounds."""
    from avm.llm.types import Message, ModelRequest

    system = Message("system", SYSTEM_PROMPT)

    async def agent(index: int) -> int:
        conversation = [system, Message("user", f"Task {index}: summarise the market.")]
        for call in range(CALLS):
            request = ModelRequest(model=MODEL, messages=tuple(conversation), max_tokens=MAX_TOKENS)
            reply = await provider.complete(request)
            conversation.append(Message("assistant", reply.text))
            if call < CALLS - 1:
                found = await lookup(f"{index}-{call}")
                conversation.append(Message("user", f"Tool result: {found['result']}"))
        return CALLS

    async def workload() -> int:
        return sum(await asyncio.gather(*(agent(i) for i in range(agents))))

    try:
        return await measure(config, agents, workload)
    finally:
        await provider.aclose()


async def run_vm_instant(agents: int, stacked: bool) -> Json:
    """The VM's own cost per call: agents as in ``avm_relaxed``, the model answering at once."""
    import avm

    with tempfile.TemporaryDirectory(prefix="avm-io-bench-") as state_dir:
        vm = avm.VM(state_dir, durability="relaxed", max_running=agents)
        vm.tool("lookup")(lookup)
        # The linker always adds a circuit breaker; ``stacked`` keeps the default cache and
        # coalescer too (what every configured model gets), otherwise they are turned off.
        config = avm.ModelConfig(
            provider="openai",
            model=MODEL,
            base_url="http://unused",
            cache=stacked,
            coalesce=stacked,
        )
        vm.models.add("default", config, provider=InstantProvider())
        system = avm.Message("system", SYSTEM_PROMPT)

        @vm.agent(name="analyst")
        async def analyst(ctx: avm.Context, index: int) -> int:
            conversation: list[Any] = [system, f"Task {index}: summarise the market."]
            for call in range(CALLS):
                reply = await ctx.run_model("default", conversation, max_tokens=MAX_TOKENS)
                conversation.append({"role": "assistant", "content": reply.text})
                if call < CALLS - 1:
                    found = await ctx.read_from_tool("lookup", f"{index}-{call}")
                    conversation.append(f"Tool result: {found['result']}")
            return CALLS

        async def workload() -> int:
            handles = [vm.spawn(analyst, index=i) for i in range(agents)]
            return sum([await h.result() for h in handles])

        async with vm:
            return await measure("vm_stack_instant" if stacked else "vm_instant", agents, workload)


def run_child(config: str, base_url: str, agents: int, profile: str | None) -> Json:
    if config == "plain_instant":
        return asyncio.run(run_plain(InstantProvider(), agents, config))
    if config in ("vm_instant", "vm_stack_instant"):
        return asyncio.run(run_vm_instant(agents, config == "vm_stack_instant"))
    if config in ("provider_http", "stack_http"):
        from avm.llm.io import IOPolicy, build_stack
        from avm.llm.providers.openai_compat import OpenAICompatProvider

        provider: Any = OpenAICompatProvider(base_url, max_connections=CONNECTIONS)
        if config == "stack_http":
            provider = build_stack(provider, IOPolicy())
        return asyncio.run(run_plain(provider, agents, config))
    if config == "avm_relaxed":
        return asyncio.run(run_avm(base_url, agents, "relaxed", False, profile))
    if config == "avm_durable":
        return asyncio.run(run_avm(base_url, agents, "durable", False, profile))
    if config == "avm_relaxed_chat":
        return asyncio.run(run_avm(base_url, agents, "relaxed", False, profile, chat=True))
    if config == "avm_durable_chat":
        return asyncio.run(run_avm(base_url, agents, "durable", False, profile, chat=True))
    if config == "avm_relaxed_load_prompt":
        return asyncio.run(run_avm(base_url, agents, "relaxed", True, profile))
    if config == "openai_sdk":
        return asyncio.run(run_openai_sdk(base_url, agents))
    if config == "bare_aiohttp":
        return asyncio.run(run_bare_aiohttp(base_url, agents))
    raise ValueError(f"unknown configuration {config!r}; expected one of {', '.join(CONFIGS)}")


# -- parent -----------------------------------------------------------------------------------


class FakeServer:
    """The fake OpenAI server in its own process, so its CPU is not the client's."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FakeServer:
        command = [
            sys.executable,
            "-W",
            "ignore::RuntimeWarning",  # runpy's note that avm.testing imported the module
            "-m",
            "avm.testing.fake_openai",
            "--port",
            "0",
            "--latency",
            str(self.latency_s),
        ]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http://"):
            raise RuntimeError(f"fake server did not start: {self.base_url!r}")
        return self

    def cpu_s(self) -> float:
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def launch(config: str, server: FakeServer, agents: int, timeout_s: float) -> Json:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        config,
        "--url",
        server.base_url,
        "--agents",
        str(agents),
    ]
    server_cpu = server.cpu_s()
    result = child_result(command, timeout_s, config=config)
    if "error" in result:
        return result
    result["server_cpu_ms_per_call"] = round(
        (server.cpu_s() - server_cpu) / max(1, result["calls"]) * 1e3, 4
    )
    return result


_MEDIAN_KEYS = (
    "cpu_ms_per_call",
    "user_ms_per_call",
    "sys_ms_per_call",
    "calls_per_s",
    "wall_s",
    "peak_rss_mb",
    "server_cpu_ms_per_call",
)


def fold(runs: Sequence[Json]) -> Json:
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[0])
    folded = dict(good[0])
    folded["runs"] = len(good)
    for key in _MEDIAN_KEYS:
        if key in folded:
            folded[key] = statistics.median(r[key] for r in good)
    folded["cpu_ms_per_call_runs"] = [r["cpu_ms_per_call"] for r in good]
    return folded


def ratios(results: Sequence[Json]) -> Json:
    """Baseline CPU per call over AVM's (above 1: AVM spends less CPU per call)."""
    by_config = {r["config"]: r for r in results if "error" not in r}
    out: Json = {}
    for vm in _AVM_CONFIGS:
        if vm not in by_config:
            continue
        for base in ("bare_aiohttp", "openai_sdk"):
            if base in by_config:
                out[f"{base}_cpu_over_{vm}"] = round(
                    by_config[base]["cpu_ms_per_call"] / by_config[vm]["cpu_ms_per_call"], 2
                )
        out[f"{vm}_meets_0.25ms"] = by_config[vm]["cpu_ms_per_call"] <= 0.25
    return out


def breakdown(results: Sequence[Json]) -> Json:
    """CPU per call of each part, by difference of the diagnostic configurations."""
    cpu = {r["config"]: r["cpu_ms_per_call"] for r in results if "error" not in r}
    out: Json = {}
    if {"plain_instant", "vm_instant"} <= cpu.keys():
        out["vm_pipeline_ms_per_call"] = round(cpu["vm_instant"] - cpu["plain_instant"], 4)
    if {"vm_instant", "vm_stack_instant"} <= cpu.keys():
        out["io_wrappers_ms_per_call"] = round(cpu["vm_stack_instant"] - cpu["vm_instant"], 4)
    if {"plain_instant", "provider_http"} <= cpu.keys():
        out["http_provider_ms_per_call"] = round(cpu["provider_http"] - cpu["plain_instant"], 4)
    if {"provider_http", "stack_http"} <= cpu.keys():
        out["io_wrappers_over_http_ms_per_call"] = round(
            cpu["stack_http"] - cpu["provider_http"], 4
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--agents", type=int, default=AGENTS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    parser.add_argument("--profile", choices=CONFIGS + BREAKDOWN, help="profile one configuration")
    parser.add_argument("--profile-out", default="io_calls.prof")
    parser.add_argument(
        "--breakdown", action="store_true", help="measure the parts of AVM's cost instead"
    )
    parser.add_argument("--child", choices=CONFIGS + BREAKDOWN, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        print(json.dumps(run_child(args.child, args.url, args.agents, None)))
        return
    if args.profile is not None:
        with FakeServer(LATENCY_S) as server:
            result = run_child(args.profile, server.base_url, args.agents, args.profile_out)
        print(json.dumps(result, indent=2))
        return

    started = time.perf_counter()
    head = run_info("io_calls")
    if args.breakdown:
        args.configs = list(BREAKDOWN)
    runs: dict[str, list[Json]] = {c: [] for c in args.configs}
    with FakeServer(LATENCY_S) as server:
        for round_ in range(1, args.repeat + 1):
            for config in args.configs:
                result = launch(config, server, args.agents, args.timeout)
                runs[config].append(result)
                if "error" in result:
                    line = f"ERROR {result['error']}"
                else:
                    line = (
                        f"{result['cpu_ms_per_call']:.4f} ms CPU/call "
                        f"({result['user_ms_per_call']:.4f} user), "
                        f"{result['calls_per_s']:,.0f} calls/s, "
                        f"peak RSS {result['peak_rss_mb']:.0f} MB"
                    )
                print(f"io_calls: [{round_}/{args.repeat}] {config:>23}: {line}", file=sys.stderr)
    results = [fold(runs[c]) for c in args.configs]
    report = {
        **head,
        "workload": {
            "agents": args.agents,
            "model_calls_per_agent": CALLS,
            "tool_rounds_per_agent": CALLS - 1,
            "tool_s": TOOL_S,
            "system_prompt_bytes": PROMPT_BYTES,
            "server_latency_s": LATENCY_S,
            "connections": CONNECTIONS,
            "max_tokens": MAX_TOKENS,
        },
        "repeat": args.repeat,
        "results": results,
        "ratios": ratios(results),
        "breakdown": breakdown(results),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
