"""Sandbox benchmark: start latency of a sandboxed tool against a plain subprocess.

What it measures
    The wall time from asking for a process to having its exit status and output, for

    * ``sandbox_true``: ``Sandbox.run(["true"])``: bubblewrap, namespaces (pid, net, ipc,
      uts, cgroup, mount, and user unless root), the read-only root, the private /tmp, the
      workspace bind, rlimits through ``prlimit`` and, as root, the drop to the agent's uid;
    * ``sandbox_python``: ``Sandbox.run_python("pass")``, the same plus the snippet handed over
      in a memory file and the interpreter's start-up;
    * ``plain_true`` and ``plain_python``: the same programs (``/usr/bin/true`` and the same
      interpreter with ``-I -B -c pass``) through ``asyncio.create_subprocess_exec`` with no
      sandbox: the baseline, measured in the same run, interleaved with the sandboxed runs.

How
    Every configuration runs ``--runs`` times (default 200; ``--quick``: 30) after a few
    warm-up runs, round-robin across configurations so that machine noise hits all of them
    alike. Reported per configuration: p50, p95, mean and max in milliseconds; the CPU time
    (user + system) of the child processes per run, which stays steady when other work shares
    the machine and wall time does not (for sandboxed runs it is bwrap's own set-up cost: the
    program inside is reaped in the sandbox's pid namespace and not charged to this process);
    and the ratios sandboxed / plain of p50 and p95. The load average before and after is
    recorded. One JSON document goes to stdout, progress to stderr.

Run it::

    .venv/bin/python bench/sandbox.py            # 200 runs per configuration, ~20 s
    .venv/bin/python bench/sandbox.py --quick    # 30 runs
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from avm.tools.sandbox import Sandbox, SandboxLimits
from run_info import run_info

Runner = Callable[[], Awaitable[None]]


async def plain(argv: list[str], cwd: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {err.decode()}")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p95_ms": round(percentile(ms, 0.95), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
        "runs": len(ms),
    }


def children_cpu() -> float:
    """User + system seconds of every reaped child process so far (bwrap and its tree)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bwrap_version() -> str:
    try:
        out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    return out.stdout.strip()


async def main_async(runs: int, warmup: int) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    sandbox = Sandbox(limits=SandboxLimits(wall_timeout_s=30))
    await sandbox.check()
    python = sandbox.python  # the interpreter snippets run with: compare like with like
    with tempfile.TemporaryDirectory(prefix="avm-bench-sandbox-") as tmp:
        workspace = Path(tmp)

        async def sandbox_true() -> None:
            result = await sandbox.run(["true"], workspace=workspace, agent_id="bench")
            if not result.ok:
                raise RuntimeError(f"sandboxed true failed: {result}")

        async def sandbox_python() -> None:
            result = await sandbox.run_python("pass", workspace=workspace, agent_id="bench")
            if not result.ok:
                raise RuntimeError(f"sandboxed python failed: {result}")

        configs: dict[str, Runner] = {
            "plain_true": lambda: plain(["/usr/bin/true"], workspace),
            "sandbox_true": sandbox_true,
            "plain_python": lambda: plain([python, "-I", "-B", "-c", "pass"], workspace),
            "sandbox_python": sandbox_python,
        }
        samples: dict[str, list[float]] = {name: [] for name in configs}
        cpu: dict[str, float] = dict.fromkeys(configs, 0.0)
        for _ in range(warmup):
            for run in configs.values():
                await run()
        for i in range(runs):
            for name, run in configs.items():
                before = children_cpu()
                started = time.perf_counter()
                await run()
                samples[name].append(time.perf_counter() - started)
                cpu[name] += children_cpu() - before
            if (i + 1) % 50 == 0:
                print(f"{i + 1}/{runs} rounds", file=sys.stderr)

    results = {name: summary(values) for name, values in samples.items()}
    for name, total in cpu.items():
        results[name]["child_cpu_ms_per_run"] = round(total * 1000 / runs, 3)
    ratios = {
        kind: {
            "p50": round(
                results[f"sandbox_{kind}"]["p50_ms"] / results[f"plain_{kind}"]["p50_ms"], 2
            ),
            "p95": round(
                results[f"sandbox_{kind}"]["p95_ms"] / results[f"plain_{kind}"]["p95_ms"], 2
            ),
            "overhead_p50_ms": round(
                results[f"sandbox_{kind}"]["p50_ms"] - results[f"plain_{kind}"]["p50_ms"], 3
            ),
        }
        for kind in ("true", "python")
    }
    mode = (
        "privileged (root: no user namespace, setpriv to a per-agent uid)"
        if sandbox.privileged
        else "user namespace (unprivileged)"
    )
    return {
        **run_info(
            "sandbox_start_latency", bwrap=bwrap_version(), mode=mode, snippet_python=python
        ),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "target_p50_ms": 20.0,
        "results": results,
        "ratios_sandbox_over_plain": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="30 runs per configuration")
    args = parser.parse_args()
    runs = 30 if args.quick else args.runs
    print(json.dumps(asyncio.run(main_async(runs, args.warmup)), indent=2))


if __name__ == "__main__":
    main()
