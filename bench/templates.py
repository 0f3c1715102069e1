"""Template benchmark: validation time per template, and the interpreter's cost per instruction.

What it measures
    1. **Validation**: how long the assembler takes to turn the example template
       (``examples/templates/portfolio_watcher.yaml``, 26 steps, a prompt file) into an image -
       parse with positions, validate everything, canonicalise, hash - per template, and how long
       loading (verifying and re-validating) the image takes. Baselines in the same run: parsing
       the same text into plain Python data with ruamel.yaml (what any YAML loader costs), and
       checking that data against the published JSON Schema with ``jsonschema`` (structure only,
       what an off-the-shelf validator costs).
    2. **Instruction overhead**: N agents each run the same program - K rounds of KV_STORE,
       KV_FETCH and NOW, the values built from the round number and the agent id - once as a
       template agent and once as the equivalent Python agent (``await ctx.kv_store(...)``), in
       the same process, interleaved, each on a fresh VM (``durability="relaxed"``, state in a
       temporary directory, so the figure is the VM's and the interpreter's, not the disk's).
       Reported: wall and CPU microseconds per instruction, from the first spawn until every
       agent is done, divided by the instructions the VM counted; the template figures are
       also given as ratios to the Python ones, and as the difference (the interpreter's own
       cost per instruction).

How
    Everything runs in one process. Validation timings are the median over ``--repeat`` rounds
    of ``--builds`` builds each. Agent runs alternate Python and template ``--repeat`` times;
    medians are reported with every run's value. Results go to stdout as one JSON document,
    progress to stderr.

Run it::

    .venv/bin/python bench/templates.py                 # 500 agents x 60 rounds, ~1 min
    .venv/bin/python bench/templates.py --quick         # a few seconds
    .venv/bin/python bench/templates.py --agents 2000 --rounds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from ruamel.yaml import YAML

import avm
from avm import assembler
from run_info import run_info

Json = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "templates" / "portfolio_watcher.yaml"
INSTRUCTIONS_PER_ROUND = 3

LOOP_TEMPLATE = """
name: looper
inputs:
  rounds: integer
program:
  - repeat: ${rounds}
    max: 1000000
    as: i
    do:
      - kv_store: {key: "k${i}", value: {round: "${i}", agent: "${agent_id}"}}
      - kv_fetch: {key: "k${i}"}
        as: stored
      - now: {}
        as: at
result: ${rounds}
"""


async def python_looper(ctx: avm.Context, rounds: int) -> Any:
    """The template above, written as a Python agent."""
    for i in range(rounds):
        await ctx.kv_store(f"k{i}", {"round": i, "agent": ctx.agent_id})
        stored = await ctx.kv_fetch(f"k{i}")
        at = await ctx.now()
        del stored, at  # bound, as the template binds them
    return rounds


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_time(run: Callable[[], object], count: int, repeat: int) -> tuple[float, list[float]]:
    """Median over ``repeat`` rounds of the mean seconds per call of ``run``."""
    rounds: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(count):
            run()
        rounds.append((time.perf_counter() - started) / count)
    return statistics.median(rounds), rounds


def bench_validation(builds: int, repeat: int) -> Json:
    text = EXAMPLE.read_text(encoding="utf-8")
    base = EXAMPLE.parent
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(text)
    schema = jsonschema.Draft202012Validator(assembler.template_schema())
    image = assembler.build_text(text, file=EXAMPLE.name, base_dir=base)
    with tempfile.TemporaryDirectory() as directory:
        path = image.write(directory)
        timings = {
            "build": median_time(
                lambda: assembler.build_text(text, file=EXAMPLE.name, base_dir=base),
                builds,
                repeat,
            ),
            "load_image": median_time(lambda: assembler.load_image(path), builds, repeat),
            "yaml_parse_baseline": median_time(lambda: yaml.load(text), builds, repeat),
            "jsonschema_baseline": median_time(
                lambda: list(schema.iter_errors(data)), builds, repeat
            ),
        }
    us = {name: round(value[0] * 1e6, 1) for name, value in timings.items()}
    return {
        "template": str(EXAMPLE.relative_to(ROOT)),
        "template_bytes": len(text.encode()),
        "image_bytes": len(image.data),
        "builds_per_round": builds,
        "us_per_template": us,
        "runs_us": {name: [round(v * 1e6, 1) for v in value[1]] for name, value in timings.items()},
        "ratios": {
            "build_vs_yaml_parse": round(us["build"] / us["yaml_parse_baseline"], 2),
            "build_vs_jsonschema": round(us["build"] / us["jsonschema_baseline"], 2),
            "load_image_vs_yaml_parse": round(us["load_image"] / us["yaml_parse_baseline"], 2),
        },
    }


async def run_fleet(kind: str, agents: int, rounds: int) -> Json:
    with tempfile.TemporaryDirectory(prefix="avm-bench-") as directory:
        vm = avm.VM(directory, durability="relaxed")
        if kind == "template":
            image = assembler.build_text(LOOP_TEMPLATE)
            definition = assembler.register(vm, image)
        else:
            definition = vm.agent(name="looper")(python_looper)
        async with vm:
            cpu, wall = time.process_time(), time.perf_counter()
            handles = [vm.spawn(definition, rounds=rounds) for _ in range(agents)]
            results = await asyncio.gather(*(h.result() for h in handles))
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            instructions = vm.stats().instructions
    assert results == [rounds] * agents, "every agent must finish its rounds"
    expected = agents * rounds * INSTRUCTIONS_PER_ROUND
    assert instructions == expected, (instructions, expected)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "instructions": instructions,
        "wall_us_per_instruction": wall / instructions * 1e6,
        "cpu_us_per_instruction": cpu / instructions * 1e6,
    }


def bench_instructions(agents: int, rounds: int, repeat: int) -> Json:
    runs: dict[str, list[Json]] = {"python": [], "template": []}
    for index in range(repeat):
        for kind in ("python", "template"):
            result = asyncio.run(run_fleet(kind, agents, rounds))
            runs[kind].append(result)
            log(
                f"  run {index + 1}/{repeat} {kind:8}: "
                f"{result['wall_us_per_instruction']:.1f} us/instruction wall, "
                f"{result['cpu_us_per_instruction']:.1f} cpu"
            )
    summary: Json = {}
    for kind, results in runs.items():
        summary[kind] = {
            metric: round(statistics.median(r[metric] for r in results), 2)
            for metric in ("wall_us_per_instruction", "cpu_us_per_instruction")
        }
        summary[kind]["runs_wall_us"] = [round(r["wall_us_per_instruction"], 2) for r in results]
        summary[kind]["runs_cpu_us"] = [round(r["cpu_us_per_instruction"], 2) for r in results]
    template, python = summary["template"], summary["python"]
    return {
        "agents": agents,
        "rounds": rounds,
        "instructions_per_run": agents * rounds * INSTRUCTIONS_PER_ROUND,
        "program": "per round: KV_STORE, KV_FETCH, NOW (durability relaxed)",
        **summary,
        "ratios": {
            "template_vs_python_wall": round(
                template["wall_us_per_instruction"] / python["wall_us_per_instruction"], 3
            ),
            "template_vs_python_cpu": round(
                template["cpu_us_per_instruction"] / python["cpu_us_per_instruction"], 3
            ),
        },
        "interpreter_us_per_instruction": {
            "wall": round(
                template["wall_us_per_instruction"] - python["wall_us_per_instruction"], 2
            ),
            "cpu": round(template["cpu_us_per_instruction"] - python["cpu_us_per_instruction"], 2),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--builds", type=int, default=200, help="builds per validation round")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50 agents x 20 rounds, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.agents, args.rounds, args.builds, args.repeat = 50, 20, 30, 3
    log(f"validation: {args.repeat} rounds of {args.builds} builds")
    validation = bench_validation(args.builds, args.repeat)
    log(f"  {validation['us_per_template']}")
    log(f"instructions: {args.agents} agents x {args.rounds} rounds, {args.repeat} repeats")
    instructions = bench_instructions(args.agents, args.rounds, args.repeat)
    document = {
        **run_info("templates"),
        "validation": validation,
        "instructions": instructions,
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
