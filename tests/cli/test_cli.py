"""Tests of the ``avm`` command (as a real subprocess), its dashboard views, and the demo.

The command is run as ``python -m avm.cli.main`` with stdout on a pipe, the way CI and
``make demo | tee`` run it, so these tests also check that non-terminal output stays plain.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

import avm
from avm.cli.dashboard import ModelLine, RunSummary, Snapshot, progress_line, render_summary
from avm.demo.portfolio import (
    VERDICTS,
    PortfolioConfig,
    analyst_reply,
    brief,
    headlines,
    parse_verdict,
    quote,
    run_portfolio,
)
from avm.memory import GcStats, MemoryStats, TierStats

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def avm_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [sys.executable, "-m", "avm.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_agents_file(directory: Path, source: str) -> Path:
    path = directory / "agents.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


# -- avm demo ----------------------------------------------------------------------------------


def test_demo_runs_the_fleet_and_keeps_verdicts_in_kv(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = avm_cli(
        "demo", "--agents", "30", "--ticks", "2", "--interval", "0.2", "--model", "fake",
        "--tokens", "0",
        "--no-dashboard", "--state-dir", str(state),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b" not in out, "no control codes on a pipe"
    assert re.search(r"watchers\s+30 finished, 0 failed", out)
    assert re.search(r"verdicts seen\s+60 of 60", out)
    assert re.search(r"model calls\s+60\b", out)
    assert re.search(r"agents finished\s+34\b", out)  # 30 watchers, a coordinator, 3 desks

    with read_only(state / "state.db") as db:
        rows = db.execute(
            "SELECT agent_id, key, value FROM kv WHERE key LIKE 'verdict/%'"
        ).fetchall()
    assert len(rows) == 30
    assert len({agent_id for agent_id, _, _ in rows}) == 30
    for agent_id, key, value in rows:
        record = msgspec.msgpack.decode(value)
        assert agent_id.startswith("watcher-")
        assert key == f"verdict/{record['token']}"
        assert record["verdict"] in VERDICTS
        assert record["tick"] >= 1  # the second tick's verdict overwrote the first


def test_demo_rejects_bad_options_without_running(tmp_path: Path) -> None:
    proc = avm_cli("demo", "--agents", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


# -- avm run -----------------------------------------------------------------------------------


def test_run_example_file(tmp_path: Path) -> None:
    proc = avm_cli(
        "run", str(EXAMPLES / "hello.py"), "--agents", "5", "--no-dashboard",
        "--state-dir", str(tmp_path / "state"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"agents finished\s+5\b", proc.stdout)
    assert re.search(r"agents failed\s+0\b", proc.stdout)
    with read_only(tmp_path / "state" / "state.db") as db:
        (visits,) = db.execute("SELECT count(*) FROM kv WHERE key = 'last_visit'").fetchone()
    assert visits == 5


def test_run_without_state_dir_uses_the_files_vm(tmp_path: Path) -> None:
    # hello.py says avm.VM(), whose state directory is ./.avm under the working directory.
    proc = avm_cli("run", str(EXAMPLES / "hello.py"), "--no-dashboard", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".avm" / "state.db").is_file()


def test_run_reports_failed_agents_and_exits_1(tmp_path: Path) -> None:
    path = write_agents_file(
        tmp_path,
        """
        import avm

        vm = avm.VM()

        @vm.agent
        async def flaky(ctx: avm.Context) -> str:
            await ctx.kv_store("seen", 1)
            if ctx.agent_id == "flaky-2":
                raise ValueError("boom at the second agent")
            return "ok"
        """,
    )
    proc = avm_cli("run", str(path), "--agents", "3", "--no-dashboard", "--state-dir", "s",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert re.search(r"agents finished\s+2\b", proc.stdout)
    assert re.search(r"agents failed\s+1\b", proc.stdout)
    assert "flaky-2" in proc.stdout
    assert "boom at the second agent" in proc.stdout
    assert "1 agents failed" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_run_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = avm_cli("run", "missing.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "avm: error: no such file: missing.py"
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        ("x = 1\n", [], "must define 'vm = avm.VM(...)'"),
        ("import avm\nvm = avm.VM()\nraise RuntimeError('bad config')\n", [],
         "agents.py:3: RuntimeError: bad config"),
        ("def broken(:\n", [], "agents.py:1: syntax error"),
        ("import avm\nvm = avm.VM()\n", [], "defines no agents"),
        ("import avm\nvm = avm.VM()\n@vm.agent\nasync def a(ctx): pass\n"
         "@vm.agent\nasync def b(ctx): pass\n", [], "several agents (a, b)"),
        ("import avm\nvm = avm.VM()\n@vm.agent\nasync def a(ctx): pass\n", ["--agent", "z"],
         "no agent named 'z'"),
        ("import avm\nvm = avm.VM()\n@vm.agent\nasync def a(ctx, city): pass\n", [],
         "needs arguments (city)"),
    ],
)  # fmt: skip
def test_run_bad_files_are_one_line_errors(
    tmp_path: Path, source: str, args: list[str], message: str
) -> None:
    path = tmp_path / "agents.py"
    path.write_text(source, encoding="utf-8")
    proc = avm_cli("run", str(path), *args, "--no-dashboard", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("avm: error: ")
    assert message in lines[0]


def test_run_main_convention(tmp_path: Path) -> None:
    path = write_agents_file(
        tmp_path,
        """
        import avm

        vm = avm.VM()

        @vm.agent
        async def double(ctx: avm.Context, n: int) -> int:
            await ctx.kv_store("n", n)
            return 2 * n

        async def main(vm: avm.VM) -> None:
            handles = [vm.spawn(double, n=n) for n in range(4)]
            results = [await h.result() for h in handles]
            print("results", results)
        """,
    )
    proc = avm_cli("run", str(path), "--no-dashboard", "--state-dir", "s", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "results [0, 2, 4, 6]" in proc.stdout
    assert re.search(r"agents finished\s+4\b", proc.stdout)


def test_run_memory_budget_reaches_the_vm(tmp_path: Path) -> None:
    path = write_agents_file(
        tmp_path,
        """
        import avm

        vm = avm.VM()

        async def main(vm: avm.VM) -> None:
            print("budget", vm.stats().memory.budget_bytes)
        """,
    )
    proc = avm_cli(
        "run", str(path), "--no-dashboard", "--state-dir", "s", "--memory", "64MiB", cwd=tmp_path
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"budget {64 * 1024 * 1024}" in proc.stdout

    bad = avm_cli("run", str(path), "--no-dashboard", "--memory", "lots", cwd=tmp_path)
    assert bad.returncode == 2
    assert "lots" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_run_duration_stops_long_agents_without_failing(tmp_path: Path) -> None:
    path = write_agents_file(
        tmp_path,
        """
        import avm

        vm = avm.VM()

        @vm.agent
        async def sleeper(ctx: avm.Context) -> None:
            await ctx.wait(60)
        """,
    )
    proc = avm_cli("run", str(path), "--agents", "3", "--duration", "0.5", "--no-dashboard",
                   "--state-dir", "s", cwd=tmp_path, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--duration ran out with 3 agents still running" in proc.stdout


def test_run_stops_when_every_agent_is_out_of_gas(tmp_path: Path) -> None:
    path = write_agents_file(
        tmp_path,
        """
        import avm

        vm = avm.VM()

        @vm.agent(budget=1)
        async def spender(ctx: avm.Context) -> None:
            await ctx.kv_store("big", "x" * 10_000)  # 0.01 gas a byte: 100 gas
        """,
    )
    proc = avm_cli("run", str(path), "--agents", "2", "--no-dashboard", "--state-dir", "s",
                   cwd=tmp_path, timeout=30)  # fmt: skip
    assert proc.returncode == 1
    assert "2 agents are out of gas" in proc.stderr


# -- avm instructions --------------------------------------------------------------------------


def test_instructions_lists_the_whole_set(tmp_path: Path) -> None:
    proc = avm_cli("instructions", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {str(op) for op in avm.INSTRUCTIONS}
    assert len(names) >= 26  # the design's 26, plus any the VM has added since
    listed = set()
    for line in proc.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("│ ").split("│")]
        if cells and cells[0] in names:
            listed.add(cells[0])
            spec = avm.INSTRUCTIONS[avm.Op(cells[0])]
            assert spec.gas in cells, line
            assert ("yes" if spec.available else "not yet") in cells, line
    assert listed == names


# -- the dashboard's views ---------------------------------------------------------------------


def _memory_stats() -> MemoryStats:
    tier = TierStats(
        entries=10, logical_bytes=512_000, stored_bytes=128_000, ram_bytes=128_000, hits=90,
        misses=10,
    )  # fmt: skip
    return MemoryStats(
        hot=tier, warm=tier, cold=tier, distinct_entries=30, distinct_bytes=1_536_000,
        ram_bytes=3 * 2**20, budget_bytes=None, codec_ram_bytes=0, put_calls=3000,
        put_bytes=150_000_000, new_entries=30, new_bytes=1_536_000, dedup_ratio=97.7,
        compression_ratio=4.0, promotions=0, demotions=0, dictionary_version=0, dictionaries=(),
        gc=GcStats(runs=0, reclaimed_entries=0, reclaimed_bytes=0, reclaimed_disk_rows=0),
    )  # fmt: skip


def _snapshot(**changes: Any) -> Snapshot:
    stats = avm.VMStats(
        agents={"ready": 2, "running": 1, "waiting": 7, "out_of_gas": 1, "done": 5, "failed": 1,
                "killed": 0},
        waiting={"model": 4, "tool": 1, "message": 2, "timer": 0, "storage": 0, "gas": 0},
        run_slots=1, run_queue=2, instructions=1234, instructions_per_s=321.5, model_requests=40,
        model_requests_per_s=12.5, model_latency_ms=51.0, gas_spent=99.5, timers=3, swarms=2,
        messages_delivered=17, journal_commits=9, rss_bytes=150 * 2**20, uptime_s=4.0,
        memory=_memory_stats(),
    )  # fmt: skip
    stats = msgspec.structs.replace(stats, **changes)
    models = (ModelLine("default", 40, 4000, 200, 46.0, 50.0),)
    return Snapshot(stats, {"RUN_MODEL": 46.0, "KV_STORE": 3.5}, models)


def _text(renderable: Any) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_live_view_shows_states_waits_rates_gas_and_backend() -> None:
    vm = avm.VM()  # not started: render() only uses the snapshot it is given
    from avm.cli.dashboard import Dashboard

    view = _text(Dashboard(vm, title="T", backend="model: fake", live=False).render(_snapshot()))
    for expected in ("model: fake", "out of gas", "on model", "on timer", "322",
                     "RUN_MODEL", "model default", "150 MiB", "6 of 17"):  # fmt: skip
        assert expected in view, expected


def test_progress_line_is_one_plain_line() -> None:
    line = progress_line(_snapshot())
    assert "\n" not in line
    assert "\x1b" not in line
    assert "waiting 7 (model 4 tool 1 message 2)" in line
    assert "out-of-gas 1" in line
    assert "gas 99.5" in line


def test_summary_lists_gas_per_instruction_and_failures() -> None:
    summary = RunSummary(
        title="run", wall_s=2.0, agents={"done": 3, "failed": 1}, instructions=100,
        model_calls=7, tokens_in=70, tokens_out=7, gas_total=50.0,
        gas_by_instruction={"RUN_MODEL": 40.0, "KV_STORE": 10.0}, models=(), messages=0,
        journal_commits=1, peak_rss_bytes=2**20, failures=("agent 'x-1' failed: boom",),
    )  # fmt: skip
    text = _text(render_summary(summary))
    assert re.search(r"instructions/s \(average\)\s+50\b", text)
    assert re.search(r"RUN_MODEL\s+40\.00\s+80\.0%", text)
    assert "agent 'x-1' failed: boom" in text


# -- the demo workflow, in process -------------------------------------------------------------


async def test_portfolio_workflow_end_to_end(tmp_path: Path) -> None:
    config = PortfolioConfig(
        agents=20, ticks=2, interval_s=0.1, state_dir=tmp_path, lean_every=5, model="fake",
        tokens=0,
    )  # fmt: skip
    result = await run_portfolio(config)

    assert result.ok
    assert result.watchers_done == 20
    assert result.watcher_failures == []
    assert result.verdicts_seen == 40
    assert sum(result.tallies.values()) == 40
    assert result.model_calls == 40
    assert result.tokens_in > 0
    assert result.tokens_out > 0
    assert result.out_of_gas_top_ups >= 4  # the 4 lean watchers each halted at least once
    assert result.risk_checks >= 1
    assert result.risk_confirmed + result.risk_flagged + result.risk_unanswered == (
        result.risk_checks
    )
    assert result.orders_duplicate == 0
    assert result.gas_total == pytest.approx(sum(result.gas_by_instruction.values()))

    # Each watcher's own database holds what its model said; recompute it independently.
    rows: list[tuple[str, int, str, int, str]] = []
    for db in sorted((tmp_path / "sql").rglob("*.db")):
        with read_only(db) as conn:
            rows += conn.execute("SELECT token, tick, verdict, conviction, answer FROM verdicts")
    assert len(rows) == 40
    tallies = dict.fromkeys(VERDICTS, 0)
    orders = 0
    for token, tick, verdict, conviction, answer in rows:
        expected = ask_analyst(brief(token, quote(token, tick), headlines(token, tick)))
        assert answer == expected
        assert (verdict, conviction) == parse_verdict(expected)
        tallies[verdict] += 1
        orders += verdict != "HOLD" and conviction >= 4
    assert tallies == result.tallies
    assert orders == result.orders_accepted


def test_portfolio_config_is_validated() -> None:
    with pytest.raises(avm.ConfigError):
        PortfolioConfig(agents=0)
    with pytest.raises(avm.ConfigError):
        PortfolioConfig(quorum=4, risk_desks=3)


def ask_analyst(message: str) -> str:
    """What the demo's fake model answers to one user message."""
    return analyst_reply({"messages": [{"role": "user", "content": message}]})


def verdict_for(message: str) -> str:
    return parse_verdict(ask_analyst(message))[0]


def test_analyst_reply_reads_the_news() -> None:
    bullish = brief("ETH", {"price": 1.0, "change_pct": 3.0},
                    ["ETH rallies after a listing", "Whales accumulate ETH"])  # fmt: skip
    bearish = brief("ETH", {"price": 1.0, "change_pct": -3.0},
                    ["ETH slides", "Regulator questions ETH"])  # fmt: skip
    assert verdict_for(bullish) == "BUY"
    assert verdict_for(bearish) == "SELL"
    assert parse_verdict("I am not sure") == ("HOLD", 0)


async def test_demo_on_the_local_model_shares_calls(tmp_path: Path) -> None:
    """The default demo path: SmolLM2 in-process; watchers of one token share one call."""
    config = PortfolioConfig(
        agents=8, ticks=1, interval_s=0.1, state_dir=tmp_path, lean_every=0, tokens=2, checks=1,
    )  # fmt: skip
    result = await run_portfolio(config)
    assert result.watchers_done == 8
    assert result.verdicts_seen == 8
    assert result.model_calls == 8  # every agent got its answer,
    # but only one call per token reached the model: answers shared through the I/O manager
    # carry no usage, so at most 2 calls' worth of output tokens (max_tokens=32) were made.
    assert 0 < result.tokens_out <= 2 * 32
    assert sum(result.tallies.values()) == 8
