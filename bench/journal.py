"""Journal benchmark: journaled instructions per second, recovery time after SIGKILL, and the
bytes a shared payload costs the journal.

What it measures
    **Throughput.** N agents (default 1,000) of one VM on SQLite each execute K instructions
    (default 20) as fast as the VM lets them: ``store`` agents loop ``await ctx.kv_store(key,
    small value)``, ``fetch`` agents store one key and then loop ``await ctx.kv_fetch(key)``.
    Every instruction is validated, metered, journaled (hash-chained) and, for the stores in
    ``durable`` mode, on disk before the agent continues. The clock runs from releasing the
    agents (all spawned and waiting at a gate) until the last one has finished; reported are
    journaled instructions per second, CPU microseconds per instruction (the whole process, and
    the event-loop thread alone), and how many commits and WAL fsyncs the store made.

    Baseline, the storage ceiling: plain ``sqlite3`` on the same schema and pragmas writing the
    same rows, precomputed, with ``executemany`` in transactions of 1,000 instructions (1,000
    journal rows and 1,000 KV upserts, or 1,000 KV reads and 1,000 journal rows); ``durable``
    uses ``synchronous=FULL`` so that every commit is on disk. ``ratios`` divides AVM's rate by
    the baseline's.

    With ``--store postgresql://.../postgres`` the throughput section runs on PostgreSQL instead,
    each child in a database of its own that it creates and drops (the URL names one to connect
    to for that). Baseline: asyncpg writing the same journal and KV rows, or reading the KV
    rows, with ``executemany`` in transactions of 1,000 instructions, on the store's own schema,
    with ``synchronous_commit`` on for durable and off for relaxed, as the store sets it.

    **Recovery.** A child VM (durable) spawns R agents (default 10,000) that each execute five
    KV/state instructions and park on ``ctx.receive()``. The parent polls the journal's row
    count through a read-only connection until all 5·R entries are there, SIGKILLs the child,
    and starts a fresh one on the same state directory with the same definitions registered.
    That child measures from before ``VM.start()`` to ``await vm.recovered()`` (every agent
    replayed to its live frontier), then until every agent is parked again. Two variants:
    ``replay`` agents (three stores, a fetch, a store) replay five entries each; ``checkpoint``
    agents (load state, three stores, save state) resume from their checkpoint and replay
    nothing. Baseline: plain ``sqlite3`` reading every agent record and journal row of the
    same database (the storage floor of a recovery); the ratio is recovery time over it.

    **Payloads.** N agents (default 1,000) each ``LOAD_PROMPT`` the same 50 KB prompt and finish.
    Reported: the bytes the journal stores for them (every entry's ``result`` plus every blob)
    and the state database's size on disk (database and WAL) after the VM stops. Baseline, in
    the same run: the same workload with payloads kept inline in the entries (the payload
    threshold raised past any payload), which is how every result was journaled before payloads
    were stored by hash. ``ratios`` divides the by-hash bytes by the inline bytes.

How
    Every measurement runs in a fresh subprocess (``--child``), which prints one JSON line;
    repeats are interleaved and medians reported with every run's value beside them. CPU time
    is the steadier figure on a shared machine; wall time is what the targets are about.

Run it::

    .venv/bin/python bench/journal.py --quick          # a check in well under a minute
    .venv/bin/python bench/journal.py > journal.json   # 1,000 x 20 and 10,000 agents, 3 runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from run_info import child_result, run_info

if TYPE_CHECKING:
    import avm

Json = dict[str, Any]

MODES = ("durable", "relaxed")
WORKLOADS = ("store", "fetch")
VARIANTS = ("replay", "checkpoint")
PAYLOAD_MODES = ("inline", "by_hash")
PROMPT_BYTES = 50_000
RECOVERY_INSTRUCTIONS = 5  # per agent, in both variants
BATCH = 1_000  # instructions per transaction in the storage baseline
KEYS = 4  # distinct keys each storing agent cycles through
VALUE = {"n": 0, "note": "a small value"}  # what the agents store, with n varied

DEFAULTS = {
    "agents": 1_000, "instructions": 20, "recovery_agents": 10_000, "payload_agents": 1_000,
    "repeat": 3,
}  # fmt: skip
QUICK = {
    "agents": 1_000, "instructions": 10, "recovery_agents": 2_000, "payload_agents": 1_000,
    "repeat": 1,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Cpu:
    """Wall time, process CPU time and event-loop-thread CPU time, as a point or a span."""

    wall_s: float
    process_s: float
    thread_s: float

    @classmethod
    def now(cls) -> Cpu:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime + usage.ru_stime, time.thread_time())

    def since(self, start: Cpu) -> Cpu:
        return Cpu(
            self.wall_s - start.wall_s,
            self.process_s - start.process_s,
            self.thread_s - start.thread_s,
        )


def _store_of(vm: avm.VM) -> Any:
    # The commit and fsync counters are the store's own; the benchmark may look inside.
    return vm._runtime().store


# -- throughput: AVM ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database(server: str | None) -> AsyncIterator[str | None]:
    """A fresh PostgreSQL database on ``server`` for one child, dropped afterwards."""
    if server is None:
        yield None
        return
    import asyncpg

    name = f"avm_bench_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield urllib.parse.urlparse(server)._replace(path=f"/{name}").geturl()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def run_throughput(
    mode: str, workload: str, agents: int, instructions: int, server: str | None = None
) -> Json:
    async with scratch_database(server) as store_url:
        with tempfile.TemporaryDirectory(prefix="avm-journal-") as state_dir:
            return await _throughput(state_dir, store_url, mode, workload, agents, instructions)


async def _throughput(
    state_dir: str, store_url: str | None, mode: str, workload: str, agents: int, instructions: int
) -> Json:
    import avm
    from avm.testing import wait_until

    gate = asyncio.Event()
    vm = avm.VM(state_dir, store=store_url, durability=mode, max_running=max(256, agents))

    @vm.agent(name="store")
    async def store_agent(ctx: avm.Context, n: int) -> None:
        await gate.wait()
        for i in range(n):
            await ctx.kv_store(f"k{i % KEYS}", {**VALUE, "n": i})

    @vm.agent(name="fetch")
    async def fetch_agent(ctx: avm.Context, n: int) -> None:
        await gate.wait()
        await ctx.kv_store("k", VALUE)
        for _ in range(n - 1):
            await ctx.kv_fetch("k")

    async with vm:
        for _ in range(agents):
            vm.spawn(workload, n=instructions)
        # Every agent spawned, recorded and holding a run slot at the gate.
        await wait_until(lambda: vm.stats().run_slots >= agents, timeout_s=120, what="spawn")
        store = _store_of(vm)
        commits, fsyncs = store.commits, getattr(store, "fsyncs", 0)
        start = Cpu.now()
        gate.set()
        await vm.join()
        span = Cpu.now().since(start)
        # Relaxed PostgreSQL commits behind the agents: also time until all of it is committed
        # (its sync() waits for the commits whatever the mode; SQLite's is at once when relaxed).
        if store_url is not None:
            await store.sync()
        committed = Cpu.now().since(start)
        commits, fsyncs = store.commits - commits, getattr(store, "fsyncs", 0) - fsyncs
        stats = vm.stats()
        if stats.agents["done"] != agents:
            raise RuntimeError(f"not every agent finished: {stats.agents}")
    total = agents * instructions
    return {
        "config": f"avm_{'pg_' if store_url else ''}{mode}_{workload}",
        "instructions": total,
        "instr_per_s": round(total / span.wall_s),
        "cpu_us_per_instr": round(span.process_s / total * 1e6, 2),
        "loop_cpu_us_per_instr": round(span.thread_s / total * 1e6, 2),
        "wall_s": round(span.wall_s, 4),
        "commits": commits,
        "fsyncs": fsyncs,
        "instr_per_commit": round(total / commits, 1) if commits else None,
        "committed_instr_per_s": round(total / committed.wall_s),
    }


# -- throughput: the storage ceiling -----------------------------------------------------------


def _journal_rows(agents: int, instructions: int, op: str) -> list[tuple[Any, ...]]:
    """Journal rows shaped like the VM's (16-byte digest, 32-byte hashes), in the VM's order:
    every agent's step 0, then every agent's step 1, and so on."""
    rows = []
    wall = time.time()
    for step in range(instructions):
        for agent in range(agents):
            seed = f"{agent}:{step}".encode()
            digest = blake3.blake3(seed).digest(16)
            prev, hash_ = blake3.blake3(b"p" + seed).digest(), blake3.blake3(b"h" + seed).digest()
            rows.append((f"store-{agent}", step, op, digest, 0, b"\xc0", 350, wall, prev, hash_, 0))
    return rows


def run_baseline(mode: str, workload: str, agents: int, instructions: int) -> Json:
    from avm.storage.sqlite import SqliteStateStore

    with tempfile.TemporaryDirectory(prefix="avm-journal-base-") as state_dir:
        path = Path(state_dir) / "state.db"
        SqliteStateStore(path, "relaxed").close()  # the VM's own schema
        db = sqlite3.connect(path, isolation_level=None)
        sync = "FULL" if mode == "durable" else "NORMAL"
        db.executescript(f"PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};")
        op = "KV_STORE" if workload == "store" else "KV_FETCH"
        journal = _journal_rows(agents, instructions, op)
        value = json.dumps(VALUE).encode()
        kv = [(row[0], f"k{row[1] % KEYS}", value) for row in journal]
        if workload == "fetch":
            db.executemany("INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?)", kv[:agents])
        insert_journal = (
            "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, wall, "
            "prev_hash, hash, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        upsert_kv = (
            "INSERT INTO kv(agent_id, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(agent_id, key) DO UPDATE SET value = excluded.value"
        )
        select_kv = "SELECT value FROM kv WHERE agent_id = ? AND key = ?"
        start = Cpu.now()
        for first in range(0, len(journal), BATCH):
            db.execute("BEGIN")
            if workload == "store":
                db.executemany(upsert_kv, kv[first : first + BATCH])
            else:
                for agent_id, _, _ in kv[first : first + BATCH]:
                    db.execute(select_kv, (agent_id, "k0")).fetchone()
            db.executemany(insert_journal, journal[first : first + BATCH])
            db.execute("COMMIT")
        span = Cpu.now().since(start)
        db.close()
    total = len(journal)
    return {
        "config": f"sqlite_{mode}_{workload}",
        "instructions": total,
        "instr_per_s": round(total / span.wall_s),
        "cpu_us_per_instr": round(span.process_s / total * 1e6, 2),
        "wall_s": round(span.wall_s, 4),
        "commits": -(-total // BATCH),
    }


async def run_baseline_pg(
    server: str, mode: str, workload: str, agents: int, instructions: int
) -> Json:
    """The PostgreSQL ceiling: asyncpg writing the VM's rows in transactions of 1,000."""
    import asyncpg

    from avm.storage.postgres import create_schema

    async with scratch_database(server) as url:
        assert url is not None
        settings = {"synchronous_commit": "on" if mode == "durable" else "off"}
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            await create_schema(conn)
            op = "KV_STORE" if workload == "store" else "KV_FETCH"
            journal = _journal_rows(agents, instructions, op)
            value = json.dumps(VALUE).encode()
            kv = [(row[0], f"k{row[1] % KEYS}", value) for row in journal]
            if workload == "fetch":
                await conn.executemany(
                    "INSERT INTO kv(agent_id, key, value) VALUES ($1, $2, $3)", kv[:agents]
                )
            insert_journal = (
                "INSERT INTO journal(agent_id, step, op, args_digest, status, result, gas, "
                "wall, prev_hash, hash, flags) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            )
            upsert_kv = (
                "INSERT INTO kv(agent_id, key, value) VALUES ($1, $2, $3) "
                "ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value"
            )
            select_kv = "SELECT value FROM kv WHERE agent_id = $1 AND key = ANY($2::text[])"
            start = Cpu.now()
            for first in range(0, len(journal), BATCH):
                async with conn.transaction():
                    chunk = kv[first : first + BATCH]
                    if workload == "store":
                        await conn.executemany(upsert_kv, chunk)
                    else:
                        await conn.executemany(select_kv, [(a, ["k0"]) for a, _, _ in chunk])
                    await conn.executemany(insert_journal, journal[first : first + BATCH])
            span = Cpu.now().since(start)
        finally:
            await conn.close()
    total = agents * instructions
    return {
        "config": f"asyncpg_{mode}_{workload}",
        "instructions": total,
        "instr_per_s": round(total / span.wall_s),
        "cpu_us_per_instr": round(span.process_s / total * 1e6, 2),
        "wall_s": round(span.wall_s, 4),
        "commits": -(-total // BATCH),
    }


# -- payloads ----------------------------------------------------------------------------------


async def run_payloads(mode: str, agents: int) -> Json:
    import avm
    from avm._core import interpreter

    if mode == "inline":  # the baseline: every result in its entry, as before blobs existed
        interpreter.PAYLOAD_THRESHOLD = sys.maxsize  # type: ignore[attr-defined]
    line = "a shared system prompt, identical for every agent of the fleet.\n"
    prompt = (line * (PROMPT_BYTES // len(line) + 1))[:PROMPT_BYTES]
    with tempfile.TemporaryDirectory(prefix="avm-journal-payloads-") as state_dir:
        vm = avm.VM(state_dir, durability="durable", max_running=max(256, agents))
        vm.prompts.add("system", prompt)

        @vm.agent(name="reader")
        async def reader(ctx: avm.Context) -> int:
            loaded = await ctx.load_prompt("system")
            return loaded.tokens

        async with vm:
            start = Cpu.now()
            for _ in range(agents):
                vm.spawn(reader)
            await vm.join()
            span = Cpu.now().since(start)
        path = Path(state_dir) / "state.db"
        on_disk = sum(p.stat().st_size for p in path.parent.glob("state.db*"))
        db = sqlite3.connect(path)
        entries, results = db.execute(
            "SELECT count(*), sum(length(result)) FROM journal"
        ).fetchone()
        blobs, blob_bytes = db.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0) FROM blobs"
        ).fetchone()
        db.close()
    return {
        "config": f"payloads_{mode}",
        "agents": agents,
        "prompt_bytes": PROMPT_BYTES,
        "journal_entries": entries,
        "blobs": blobs,
        "journal_bytes": results + blob_bytes,
        "result_bytes": results,
        "blob_bytes": blob_bytes,
        "db_bytes": on_disk,
        "wall_s": round(span.wall_s, 4),
        "cpu_s": round(span.process_s, 4),
    }


# -- recovery ----------------------------------------------------------------------------------


def _define_recovery_agents(vm: avm.VM) -> None:
    """The same definitions in the child that is killed and in the one that recovers."""

    @vm.agent(name="replay")
    async def replay_agent(ctx: avm.Context) -> None:
        await ctx.kv_store("a", 1)
        await ctx.kv_store("b", {"x": [1, 2, 3]})
        await ctx.kv_store("c", "three")
        seen = await ctx.kv_fetch("b")
        await ctx.kv_store("d", seen)
        await ctx.receive()

    @vm.agent(name="checkpoint")
    async def checkpoint_agent(ctx: avm.Context) -> None:
        state = await ctx.load_execution_state()
        if state is None:
            await ctx.kv_store("a", 1)
            await ctx.kv_store("b", {"x": [1, 2, 3]})
            await ctx.kv_store("c", "three")
            await ctx.save_execution_state({"round": 1})
        await ctx.receive()


async def run_park(variant: str, agents: int, state_dir: str) -> None:
    """Spawn the agents and let them park; the parent kills this process with SIGKILL."""
    import avm

    vm = avm.VM(state_dir, durability="durable")
    _define_recovery_agents(vm)
    async with vm:
        for _ in range(agents):
            vm.spawn(variant)
        print(f"journal: parking {agents:,} {variant} agents", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


async def run_recover(variant: str, agents: int, state_dir: str, max_running: int) -> Json:
    import avm
    from avm.testing import wait_until

    vm = avm.VM(state_dir, durability="durable", max_running=max_running)
    _define_recovery_agents(vm)
    start = Cpu.now()
    await vm.start()
    started = Cpu.now().since(start)
    await vm.recovered()
    recovered = Cpu.now().since(start)

    def all_parked() -> bool:
        stats = vm.stats()
        if stats.agents["failed"] or stats.agents["killed"]:
            raise RuntimeError(f"agents ended while recovering: {stats.agents}")
        return stats.waiting["message"] >= agents

    await wait_until(all_parked, timeout_s=120, what="every recovered agent parked")
    parked = Cpu.now().since(start)
    await vm.stop()
    return {
        "config": f"recover_{variant}",
        "agents": agents,
        "start_s": round(started.wall_s, 4),
        "recovered_s": round(recovered.wall_s, 4),
        "recovered_cpu_s": round(recovered.process_s, 4),
        "parked_s": round(parked.wall_s, 4),
        "parked_cpu_s": round(parked.process_s, 4),
    }


def run_floor(state_dir: str) -> Json:
    """Read every agent record and journal row, as plain sqlite3 would: recovery's floor."""
    start = Cpu.now()
    db = sqlite3.connect(f"file:{Path(state_dir) / 'state.db'}?mode=ro", uri=True)
    agents = db.execute("SELECT * FROM agents").fetchall()
    journal = db.execute("SELECT * FROM journal ORDER BY agent_id, step").fetchall()
    db.close()
    span = Cpu.now().since(start)
    return {
        "config": "sqlite_read_all",
        "agents": len(agents),
        "journal_rows": len(journal),
        "read_s": round(span.wall_s, 4),
        "read_cpu_s": round(span.process_s, 4),
    }


def journal_size(state_dir: str) -> int:
    path = Path(state_dir) / "state.db"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT count(*) FROM journal").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created yet, or caught mid-way through its first write


def measure_recovery(variant: str, agents: int, max_running: int, timeout_s: float) -> list[Json]:
    """Park ``agents`` in a child, SIGKILL it, recover in a fresh child; plus the floor."""
    state_dir = tempfile.mkdtemp(prefix="avm-journal-recovery-")
    try:
        park = subprocess.Popen(
            [*_child("park", variant=variant, agents=agents), "--state-dir", state_dir],
            stdout=subprocess.DEVNULL,
        )
        wanted = agents * RECOVERY_INSTRUCTIONS
        deadline = time.monotonic() + timeout_s
        while journal_size(state_dir) < wanted:
            if park.poll() is not None:
                return [{"config": f"recover_{variant}", "error": "the parking child exited"}]
            if time.monotonic() > deadline:
                park.kill()
                return [{"config": f"recover_{variant}", "error": "agents did not all park"}]
            time.sleep(0.05)
        park.send_signal(signal.SIGKILL)
        park.wait()
        recovered = launch(
            "recover",
            timeout_s,
            state=state_dir,
            variant=variant,
            agents=agents,
            max_running=max_running,
        )
        recovered["config"] = f"recover_{variant}"
        floor = launch("floor", timeout_s, state=state_dir)
        return [recovered, floor]
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


# -- parent ------------------------------------------------------------------------------------


def _child(kind: str, **options: Any) -> list[str]:
    command = [sys.executable, os.path.abspath(__file__), "--child", kind]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def launch(kind: str, timeout_s: float, *, state: str | None = None, **options: Any) -> Json:
    """Run one measurement in a fresh interpreter and return the JSON line it prints."""
    command = _child(kind, **options)
    if state is not None:
        command += ["--state-dir", state]
    return child_result(command, timeout_s, config=kind)


_MEDIANS = (
    "instr_per_s",
    "committed_instr_per_s",
    "cpu_us_per_instr",
    "loop_cpu_us_per_instr",
    "wall_s",
    "commits",
    "fsyncs",
    "instr_per_commit",
    "start_s",
    "recovered_s",
    "recovered_cpu_s",
    "parked_s",
    "parked_cpu_s",
    "read_s",
    "read_cpu_s",
    "journal_bytes",
    "db_bytes",
    "cpu_s",
)
_SPREAD = ("instr_per_s", "committed_instr_per_s", "recovered_s", "read_s")


def fold(runs: Sequence[Json]) -> Json:
    """Runs of one configuration as one result: medians, with every run's headline figure."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return dict(runs[0])
    folded = dict(good[0])
    folded["runs"] = len(good)
    for key in _MEDIANS:
        if key in folded and folded[key] is not None:
            folded[key] = statistics.median(r[key] for r in good)
    for key in _SPREAD:
        if key in folded and len(good) > 1:
            folded[f"{key}_runs"] = [r[key] for r in good]
    return folded


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(f"{numerator / denominator:.4g}") if denominator else None


def run_all(args: argparse.Namespace) -> Json:
    started = time.perf_counter()
    runs: dict[str, list[Json]] = {}

    def note(result: Json, round_: int) -> None:
        runs.setdefault(result["config"], []).append(result)
        shown = {k: v for k, v in result.items() if k in ("instr_per_s", "recovered_s", "error")}
        print(f"journal: [{round_}/{args.repeat}] {result['config']}: {shown}", file=sys.stderr)

    sizes = {"agents": args.agents, "instructions": args.instructions}
    for round_ in range(1, args.repeat + 1):
        if "throughput" in args.sections:
            for mode in args.modes:
                for workload in args.workloads:
                    opts = {"mode": mode, "workload": workload, **sizes}
                    if args.store:
                        opts["store"] = args.store
                    note(launch("throughput", args.timeout, **opts), round_)
                    note(launch("baseline", args.timeout, **opts), round_)
        if "recovery" in args.sections:
            for variant in args.variants:
                recovery = measure_recovery(
                    variant, args.recovery_agents, args.max_running, args.timeout
                )
                for result in recovery:
                    config = result["config"]
                    if config == "sqlite_read_all":
                        result["config"] = config = f"sqlite_read_all_{variant}"
                    note(result, round_)
        if "payloads" in args.sections:
            for mode in PAYLOAD_MODES:
                opts = {"payload_mode": mode, "agents": args.payload_agents}
                note(launch("payloads", args.timeout, **opts), round_)
    results = {config: fold(config_runs) for config, config_runs in runs.items()}
    ratios: Json = {}
    avm_name, base_name = ("avm_pg", "asyncpg") if args.store else ("avm", "sqlite")
    for mode in args.modes:
        for workload in args.workloads:
            vm, base = (
                results.get(f"{avm_name}_{mode}_{workload}"),
                results.get(f"{base_name}_{mode}_{workload}"),
            )
            if vm and base and "error" not in vm and "error" not in base:
                # Committed, not just accepted: the baseline's rate includes its commits.
                rate = vm.get("committed_instr_per_s") or vm["instr_per_s"]
                ratios[f"{avm_name}_vs_{base_name}_{mode}_{workload}"] = _ratio(
                    rate, base["instr_per_s"]
                )
    inline, by_hash = results.get("payloads_inline"), results.get("payloads_by_hash")
    if inline and by_hash and "error" not in inline and "error" not in by_hash:
        for key in ("journal_bytes", "db_bytes"):
            ratios[f"payloads_by_hash_vs_inline_{key}"] = _ratio(by_hash[key], inline[key])
    for variant in args.variants:
        rec, floor = results.get(f"recover_{variant}"), results.get(f"sqlite_read_all_{variant}")
        if rec and floor and "error" not in rec and "error" not in floor:
            ratios[f"recover_{variant}_vs_sqlite_read_all"] = _ratio(
                rec["recovered_s"], floor["read_s"]
            )
    return {
        **run_info("journal"),
        "workload": {
            "agents": args.agents,
            "instructions_per_agent": args.instructions,
            "recovery_agents": args.recovery_agents,
            "recovery_instructions_per_agent": RECOVERY_INSTRUCTIONS,
            "baseline_batch": BATCH,
            "payload_agents": args.payload_agents,
            "prompt_bytes": PROMPT_BYTES,
        },
        "repeat": args.repeat,
        "results": results,
        "ratios": ratios,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Journaled instructions per second and recovery time after SIGKILL, "
        "against plain sqlite3. Prints JSON to stdout."
    )
    parser.add_argument("--quick", action="store_true", help="a fast check with small sizes")
    parser.add_argument("--agents", type=int, help="agents writing at once (default 1,000)")
    parser.add_argument("--instructions", type=int, help="instructions per agent (default 20)")
    parser.add_argument(
        "--recovery-agents", type=int, help="agents killed and recovered (default 10,000)"
    )
    parser.add_argument(
        "--payload-agents", type=int, help="agents loading the shared prompt (default 1,000)"
    )
    parser.add_argument("--repeat", type=int, help="interleaved runs per configuration (3)")
    parser.add_argument(
        "--sections", nargs="+", choices=("throughput", "recovery", "payloads"),
        default=["throughput", "recovery", "payloads"],
    )  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--max-running", type=int, default=256, help="run slots of the recovering VM (256)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    parser.add_argument(
        "--store",
        help="measure throughput on PostgreSQL: a postgresql:// URL of a database to connect "
        "to (each child creates and drops its own)",
    )
    parser.add_argument(
        "--child", choices=("throughput", "baseline", "park", "recover", "floor", "payloads"),
        help=argparse.SUPPRESS,
    )  # fmt: skip
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--payload-mode", choices=PAYLOAD_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for name, default in base.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is None:
        print(json.dumps(run_all(args), indent=2))
        return
    result: Json
    if args.child == "throughput":
        throughput = run_throughput(
            args.mode, args.workload, args.agents, args.instructions, args.store
        )
        result = asyncio.run(throughput)
    elif args.child == "baseline" and args.store:
        baseline = run_baseline_pg(
            args.store, args.mode, args.workload, args.agents, args.instructions
        )
        result = asyncio.run(baseline)
    elif args.child == "baseline":
        result = run_baseline(args.mode, args.workload, args.agents, args.instructions)
    elif args.child == "park":
        asyncio.run(run_park(args.variant, args.agents, args.state_dir))
        return
    elif args.child == "payloads":
        result = asyncio.run(run_payloads(args.payload_mode, args.agents))
    elif args.child == "recover":
        recover = run_recover(args.variant, args.agents, args.state_dir, args.max_running)
        result = asyncio.run(recover)
    else:
        result = run_floor(args.state_dir)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
