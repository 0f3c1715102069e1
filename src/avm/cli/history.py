"""``avm verify``, ``avm log``, ``avm gas``, ``avm export`` and ``avm import``: an agent's
history, read from a state directory without starting a VM.

::

    avm verify [AGENT] [--state-dir .avm]     recompute hash chains; exit 1 on a broken link
    avm log AGENT [--state-dir .avm]          the agent's journal, one line an instruction
    avm gas [--state-dir .avm] [--top 20]     gas spent, by agent and by instruction
    avm export AGENT -o FILE [--state-dir .avm]
    avm import FILE [--state-dir .avm]

Each takes ``--store postgresql://...`` (or ``AVM_STORE``) for a VM whose state store is
PostgreSQL; its identity keys and agents' SQL files stay in the state directory.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from avm.history import gas_totals, log, verify
from avm.portable import export_agent, import_agent

__all__ = ["export_command", "gas_command", "import_command", "log_command", "verify_command"]

StateDir = Annotated[Path, typer.Option("--state-dir", help="The VM's state directory.")]
Store = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="AVM_STORE",
        help="The VM's state store, if not the state directory's SQLite: a postgresql:// URL.",
    ),
]


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def verify_command(
    agent: Annotated[str | None, typer.Argument(help="Only this agent.")] = None,
    state_dir: StateDir = Path(".avm"),
    store: Store = None,
) -> None:
    """Recompute the journal's hash chains, payloads and signed heads; report broken links."""
    report = verify(state_dir, agent, store=store)
    console = _console()
    for broken in report.breaks:
        console.print(
            f"[red]broken[/red] agent {broken.agent_id!r} at step {broken.step}: {broken.reason}",
            highlight=False,
        )
    verdict = "[green]ok[/green]" if report.ok else f"[red]{len(report.breaks)} broken[/red]"
    console.print(
        f"{verdict}: {report.agents} agents, {report.entries} entries, "
        f"{report.signed_heads} signed heads checked",
        highlight=False,
    )
    if not report.ok:
        raise typer.Exit(1)


def log_command(
    agent: Annotated[str, typer.Argument(help="The agent whose history to print.")],
    state_dir: StateDir = Path(".avm"),
    store: Store = None,
) -> None:
    """Print an agent's history: instruction, result summary, gas and time of each step."""
    table = Table(title=f"journal of {agent}", title_justify="left")
    for column in ("step", "time", "instruction", "result", "gas", "notes"):
        table.add_column(column, justify="right" if column in ("step", "gas") else "left")
    for entry in log(state_dir, agent, store=store):
        when = datetime.datetime.fromtimestamp(entry.wall).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        result = entry.result if entry.ok else f"[red]error[/red] {entry.result}"
        table.add_row(
            str(entry.step), when, entry.op, result, f"{entry.gas:g}", ", ".join(entry.flags)
        )
    _console().print(table)


def gas_command(
    state_dir: StateDir = Path(".avm"),
    top: Annotated[int, typer.Option(min=1, help="How many agents to list.")] = 20,
    store: Store = None,
) -> None:
    """Gas charged, from the journal: totals by instruction and the most expensive agents."""
    totals = gas_totals(state_dir, store=store)
    console = _console()
    by_op = Table(title="gas by instruction", title_justify="left")
    by_op.add_column("instruction")
    by_op.add_column("gas", justify="right")
    for op, gas in sorted(totals.by_instruction.items(), key=lambda kv: -kv[1]):
        by_op.add_row(op, f"{gas:,.3f}")
    by_agent = Table(title=f"top {top} agents by gas", title_justify="left")
    by_agent.add_column("agent")
    by_agent.add_column("gas", justify="right")
    for agent, gas in sorted(totals.by_agent.items(), key=lambda kv: -kv[1])[:top]:
        by_agent.add_row(agent, f"{gas:,.3f}")
    console.print(by_op, by_agent)
    console.print(f"total: {totals.total:,.3f} gas over {len(totals.by_agent)} agents")


def export_command(
    agent: Annotated[str, typer.Argument(help="The agent to export.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The archive to write.")],
    state_dir: StateDir = Path(".avm"),
    store: Store = None,
) -> None:
    """Write an agent (image, journal, payloads, storage, identity) to one archive."""
    path = export_agent(state_dir, agent, output, store=store)
    print(f"exported {agent} to {path} ({path.stat().st_size:,} bytes)")


def import_command(
    archive: Annotated[Path, typer.Argument(help="An archive written by 'avm export'.")],
    state_dir: StateDir = Path(".avm"),
    store: Store = None,
) -> None:
    """Import an agent archive; the agent resumes when a VM with its definition starts there."""
    agent = import_agent(state_dir, archive, store=store)
    print(f"imported {agent} into {store or state_dir}")
