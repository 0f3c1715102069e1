"""What the ``avm`` command shows while agents run, and the summary it prints when they are done.

This module owns three things:

- :class:`Snapshot`: one reading of ``vm.stats()`` and ``vm.ledger``, the only data the views
  use, so rendering never reaches into the VM;
- :class:`Dashboard`: an async context manager around a run that shows a live rich view about
  four times a second on a terminal, or prints one progress line every few seconds when output
  is not a terminal (CI, pipes) or the caller asks for plain output; on exit it takes a last
  snapshot and builds the :class:`RunSummary`;
- :func:`render_summary`: the end-of-run report (agents, instructions, model calls, gas per
  instruction, wall time, peak memory).

All reads happen on the event loop's thread: rich's own refresh thread is not used, because the
VM's counters are not meant to be read from another thread while agents update them.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import avm

__all__ = ["Dashboard", "ModelLine", "RunSummary", "Snapshot", "render_summary"]

# The ledger's per-model totals are kept in integer milligas (exact sums); views show gas.
_MGAS_PER_GAS: Final = 1000
_LIVE_STATES: Final = ("ready", "running", "waiting", "out_of_gas")
_END_STATES: Final = ("done", "failed", "killed")
_TOP_INSTRUCTIONS: Final = 6
_MAX_FAILURES_SHOWN: Final = 5


@dataclass(frozen=True, slots=True)
class ModelLine:
    """What one named model has served so far."""

    name: str
    calls: int
    tokens_in: int
    tokens_out: int
    gas: float
    mean_latency_ms: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading of a running VM."""

    stats: avm.VMStats
    gas_by_instruction: dict[str, float]
    models: tuple[ModelLine, ...]

    @classmethod
    def take(cls, vm: avm.VM) -> Snapshot:
        models = tuple(
            ModelLine(
                name=name,
                calls=usage.calls,
                tokens_in=usage.tokens_in,
                tokens_out=usage.tokens_out,
                gas=usage.mgas / _MGAS_PER_GAS,
                mean_latency_ms=usage.latency_s / usage.calls * 1000 if usage.calls else 0.0,
            )
            for name, usage in sorted(vm.ledger.by_model().items())
        )
        gas = {str(op): value for op, value in vm.ledger.by_instruction().items()}
        return cls(vm.stats(), gas, models)

    @property
    def live_agents(self) -> int:
        return sum(self.stats.agents.get(state, 0) for state in _LIVE_STATES)

    @property
    def total_agents(self) -> int:
        return sum(self.stats.agents.values())

    def top_instructions(self, n: int = _TOP_INSTRUCTIONS) -> list[tuple[str, float]]:
        return sorted(self.gas_by_instruction.items(), key=lambda item: -item[1])[:n]


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The figures printed at the end of a run."""

    title: str
    wall_s: float
    agents: dict[str, int]  # by state when the run ended; live states mean "still running"
    instructions: int
    model_calls: int
    tokens_in: int
    tokens_out: int
    gas_total: float
    gas_by_instruction: dict[str, float]
    models: tuple[ModelLine, ...]
    messages: int
    journal_commits: int
    peak_rss_bytes: int
    failures: tuple[str, ...]  # the first few failed agents and why

    @property
    def finished(self) -> int:
        return self.agents.get("done", 0)

    @property
    def failed(self) -> int:
        return self.agents.get("failed", 0)

    @property
    def killed(self) -> int:
        return self.agents.get("killed", 0)

    @property
    def unfinished(self) -> int:
        return sum(self.agents.get(state, 0) for state in _LIVE_STATES)

    @property
    def instructions_per_s(self) -> float:
        return self.instructions / self.wall_s if self.wall_s > 0 else 0.0

    @classmethod
    async def collect(cls, vm: avm.VM, snap: Snapshot, title: str, wall_s: float) -> RunSummary:
        """Build the summary from a final snapshot, while the VM is still running."""
        return cls(
            title=title,
            wall_s=wall_s,
            agents=dict(snap.stats.agents),
            instructions=snap.stats.instructions,
            model_calls=sum(m.calls for m in snap.models),
            tokens_in=sum(m.tokens_in for m in snap.models),
            tokens_out=sum(m.tokens_out for m in snap.models),
            gas_total=snap.stats.gas_spent,
            gas_by_instruction=dict(snap.gas_by_instruction),
            models=snap.models,
            messages=snap.stats.messages_delivered,
            journal_commits=snap.stats.journal_commits,
            peak_rss_bytes=max(peak_rss_bytes(), snap.stats.rss_bytes),
            failures=await _failures(vm.handles()),
        )


async def _failures(handles: Iterable[avm.AgentHandle]) -> tuple[str, ...]:
    reasons: list[str] = []
    for handle in handles:
        if handle.state is not avm.AgentState.FAILED:
            continue
        try:
            await handle.result()
        except avm.AgentFailed as exc:
            reasons.append(str(exc))
        if len(reasons) == _MAX_FAILURES_SHOWN:
            break
    return tuple(reasons)


def peak_rss_bytes() -> int:
    """The most memory this process has held, from the kernel's own accounting."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts in KiB


class Dashboard:
    """Watches a VM for the length of an ``async with`` block.

    ``live=None`` picks the live view when the console is a terminal, and one-line progress
    otherwise. ``backend`` is a line saying which model backend the run uses.
    """

    def __init__(
        self,
        vm: avm.VM,
        *,
        title: str,
        backend: str,
        live: bool | None = None,
        console: Console | None = None,
        refresh_per_s: float = 4.0,
        progress_every_s: float = 2.0,
    ) -> None:
        self.vm = vm
        self.title = title
        self.backend = backend
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self._period = 1.0 / refresh_per_s if self.live else progress_every_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._summary: RunSummary | None = None

    @property
    def summary(self) -> RunSummary:
        if self._summary is None:
            raise avm.VMStateError("the run summary exists once the dashboard's block has ended")
        return self._summary

    async def __aenter__(self) -> Dashboard:
        self._started = time.perf_counter()
        show = self._show_live if self.live else self._show_progress
        self._task = asyncio.create_task(show(), name="avm-dashboard")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        wall_s = time.perf_counter() - self._started
        if self.vm.running:
            self._summary = await RunSummary.collect(
                self.vm, Snapshot.take(self.vm), self.title, wall_s
            )

    async def _tick(self) -> bool:
        """Sleep one period; False once the block has ended."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._period)
        return not self._stop.is_set()

    async def _show_live(self) -> None:
        # auto_refresh=False: rich would otherwise render from its own thread (see module doc).
        with Live(
            self.render(Snapshot.take(self.vm)), console=self.console, auto_refresh=False
        ) as view:
            while await self._tick():
                view.update(self.render(Snapshot.take(self.vm)), refresh=True)
            view.update(self.render(Snapshot.take(self.vm)), refresh=True)

    async def _show_progress(self) -> None:
        while await self._tick():
            line = progress_line(Snapshot.take(self.vm))
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def render(self, snap: Snapshot) -> RenderableType:
        """The live view of one snapshot."""
        body = Table.grid(expand=True, padding=(0, 1))
        for _ in range(3):
            body.add_column(ratio=1)
        body.add_row(_agents_panel(snap), _activity_panel(snap), _gas_panel(snap))
        return Group(_header(self.title, self.backend, snap), body)


# -- the live view, one panel per function -------------------------------------------------------


def _header(title: str, backend: str, snap: Snapshot) -> Panel:
    text = Text.assemble((title, "bold"), f"   uptime {snap.stats.uptime_s:,.1f} s\n", backend)
    return Panel(text, box=box.ROUNDED, style="cyan")


def _agents_panel(snap: Snapshot) -> Panel:
    stats = snap.stats
    table = _kv_table()
    for state in (*_LIVE_STATES, *_END_STATES):
        count = stats.agents.get(state, 0)
        style = "red" if state in ("failed", "out_of_gas") and count else None
        table.add_row(state.replace("_", " "), _int(count), style=style)
        if state == "waiting":
            # Every reason, even at zero, so rows do not jump around between refreshes.
            for reason, waiting in stats.waiting.items():
                table.add_row(f"  on {reason}", _int(waiting), style=None if waiting else "dim")
    table.add_row("in RAM", _int(stats.resident))
    table.add_row("passivated", _int(stats.passivated), style=None if stats.passivated else "dim")
    total = snap.total_agents
    ended = total - snap.live_agents
    table.add_row("ended", f"{ended:,} of {total:,}", style="bold")
    # The bar goes last: rich ends a progress bar without a line break.
    bar = ProgressBar(total=max(total, 1), completed=ended, width=None)
    return Panel(Group(table, bar), title="agents", box=box.ROUNDED)


def _activity_panel(snap: Snapshot) -> Panel:
    s = snap.stats
    table = _kv_table()
    table.add_row("instructions/s", f"{s.instructions_per_s:,.0f}")
    table.add_row("instructions", _int(s.instructions))
    table.add_row("model requests/s", f"{s.model_requests_per_s:,.1f}")
    table.add_row("model requests", _int(s.model_requests))
    table.add_row("model latency", f"{s.model_latency_ms:,.0f} ms")
    table.add_row("run slots busy", _int(s.run_slots))
    table.add_row("run queue", _int(s.run_queue))
    table.add_row("timers", _int(s.timers))
    table.add_row("swarms", _int(s.swarms))
    table.add_row("messages", _int(s.messages_delivered))
    table.add_row("journal commits", _int(s.journal_commits))
    table.add_row("memory (RSS)", _mib(s.rss_bytes))
    m = s.memory
    table.add_row(
        "content store",
        f"{_mib(m.ram_bytes)} RAM, {_mib(m.cold.stored_bytes)} disk, "
        f"dedup {m.dedup_ratio:,.1f}×, zstd {m.compression_ratio:,.1f}×",
    )
    return Panel(table, title="activity", box=box.ROUNDED)


def _gas_panel(snap: Snapshot) -> Panel:
    table = _kv_table()
    table.add_row("total", f"{snap.stats.gas_spent:,.1f}", style="bold")
    for op, gas in snap.top_instructions():
        table.add_row(f"  {op}", f"{gas:,.1f}")
    for model in snap.models:
        table.add_row(f"model {model.name}", f"{model.gas:,.1f}", style="bold")
        table.add_row("  calls", _int(model.calls))
        table.add_row("  tokens in / out", f"{model.tokens_in:,} / {model.tokens_out:,}")
        table.add_row("  mean latency", f"{model.mean_latency_ms:,.0f} ms")
    return Panel(table, title="gas", box=box.ROUNDED)


def _kv_table() -> Table:
    table = Table.grid(expand=True)
    table.add_column()
    table.add_column(justify="right")
    return table


def progress_line(snap: Snapshot) -> str:
    """One line of progress for logs: states, waits, rates, gas and memory."""
    s = snap.stats
    waits = " ".join(f"{reason} {n:,}" for reason, n in s.waiting.items() if n)
    agents = s.agents
    return (
        f"[{s.uptime_s:7.1f}s] agents {snap.total_agents:,}: "
        f"ready {agents.get('ready', 0):,} running {agents.get('running', 0):,} "
        f"waiting {agents.get('waiting', 0):,}{f' ({waits})' if waits else ''} "
        f"out-of-gas {agents.get('out_of_gas', 0):,} | done {agents.get('done', 0):,} "
        f"failed {agents.get('failed', 0):,} killed {agents.get('killed', 0):,} | "
        f"in RAM {s.resident:,} passivated {s.passivated:,} | "
        f"{s.instructions_per_s:,.0f} instr/s | model {s.model_requests_per_s:,.1f} req/s "
        f"{s.model_latency_ms:,.0f} ms | gas {s.gas_spent:,.1f} | rss {_mib(s.rss_bytes)}"
    )


# -- the summary -----------------------------------------------------------------------------


def render_summary(summary: RunSummary) -> RenderableType:
    """The end-of-run report."""
    facts = _kv_table()
    facts.add_row("agents finished", _int(summary.finished))
    facts.add_row("agents failed", _int(summary.failed), style="red" if summary.failed else None)
    if summary.killed:
        facts.add_row("agents killed", _int(summary.killed), style="red")
    if summary.unfinished:
        facts.add_row("agents still running (stopped)", _int(summary.unfinished), style="yellow")
    facts.add_row("wall time", f"{summary.wall_s:,.2f} s")
    facts.add_row("instructions", _int(summary.instructions))
    facts.add_row("instructions/s (average)", f"{summary.instructions_per_s:,.0f}")
    facts.add_row("model calls", _int(summary.model_calls))
    facts.add_row("tokens in / out", f"{summary.tokens_in:,} / {summary.tokens_out:,}")
    facts.add_row("messages delivered", _int(summary.messages))
    facts.add_row("journal commits", _int(summary.journal_commits))
    facts.add_row("peak memory (RSS)", _mib(summary.peak_rss_bytes))
    facts.add_row("gas total", f"{summary.gas_total:,.2f}", style="bold")

    gas = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    gas.add_column("instruction")
    gas.add_column("gas", justify="right")
    gas.add_column("share", justify="right")
    for op, value in sorted(summary.gas_by_instruction.items(), key=lambda item: -item[1]):
        share = value / summary.gas_total if summary.gas_total else 0.0
        gas.add_row(op, f"{value:,.2f}", f"{share:.1%}")

    parts: list[RenderableType] = [facts, Text(""), gas]
    if summary.failures:
        parts.append(Text("failures (first few):", style="red"))
        parts.extend(Text(f"  {reason}", style="red") for reason in summary.failures)
    return Panel(Group(*parts), title=f"{summary.title}: summary", box=box.ROUNDED, expand=False)


def _int(n: int) -> str:
    return f"{n:,}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
