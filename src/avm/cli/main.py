"""The ``avm`` command: run the demo fleet, run a user's agents file, list the instruction set.

::

    avm demo [--agents 1000] [--ticks 3] [--interval 2.0] [--state-dir PATH]
             [--no-dashboard] [--durability durable|relaxed]
    avm run FILE.py [--agents N] [--agent NAME] [--state-dir PATH] [--no-dashboard]
                    [--duration SECONDS]
    avm run TEMPLATE.yaml|IMAGE.avmi [--vm HOST.py] [--agents N] ...   (see avm.cli.templates)
    avm build TEMPLATE [-o DIR] [--check] | avm schema
    avm instructions
    avm verify [AGENT] | avm log AGENT | avm gas | avm export AGENT -o FILE | avm import FILE
    avm secrets keygen|set|list|rm|grant ...

Global options (before the command): ``--log-level LEVEL`` (default ``warning``) and
``--debug`` (show tracebacks instead of one-line errors).

**The agents file** that ``avm run`` takes is ordinary Python:

- it must define ``vm = avm.VM(...)`` at module level, and its agents with ``@vm.agent`` (plus
  any ``@vm.tool``, ``vm.prompts.add`` and ``vm.model`` it needs);
- if it defines ``async def main(vm)``, the command starts the VM (``async with vm``), awaits
  ``main(vm)`` under the dashboard, and prints the summary; ``--agents``/``--agent`` are unused;
- otherwise the command spawns ``--agents`` instances (default 1) of the agent named by
  ``--agent`` (which may be left out when the file defines exactly one) with no arguments, and
  waits until they all finish, or until ``--duration`` seconds have passed, whichever is first.

The file is imported as a module (not as ``__main__``), with its directory on ``sys.path`` so it
can import its neighbours. ``--state-dir`` replaces the state directory the file's VM was given.

**Exit codes**:

- 0: every agent finished (or ``--duration`` ended a run in which none failed);
- 1: the run happened but did not succeed: an agent failed or was killed, ``main(vm)`` raised,
  every remaining agent is stuck out of gas, or (demo) verdicts went missing; the summary says
  which, and the failures are listed;
- 2: the run could not start or broke down: a missing or broken file, no ``vm`` in it, an
  unknown agent name, a bad option, or any :class:`avm.AvmError` outside an agent's own code;
  the reason is printed as one line on stderr (``--debug`` shows the traceback);
- 130: interrupted (Ctrl-C).

This module is the only layer (besides the HTTP server) that configures logging; it uses the
public API only (``avm``, ``avm.testing`` through the demo, ``avm.demo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import inspect
import logging
import re
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Final, Literal, NoReturn, TextIO

import msgspec
import typer
from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.table import Table

import avm
from avm.cli import history, secrets, templates
from avm.cli.dashboard import Dashboard, RunSummary, Snapshot, render_summary
from avm.demo.portfolio import PortfolioConfig, PortfolioResult, run_portfolio
from avm.memory import MemoryBudget

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "app", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130

app = typer.Typer(
    name="avm",
    help="AVM, the Agent Virtual Machine: thousands of LLM agents as green threads.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A problem the command reports as one line (a missing file, no ``vm`` in it...)."""


@dataclass(slots=True)
class _Settings:
    debug: bool = False


_settings = _Settings()


# -- logging and errors ----------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is when a record arrives, not when the handler was made,
    so that records logged under the live view go through rich's redirection above it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(level: str) -> None:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"avm: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors_as_messages() -> Iterator[None]:
    """Turn the errors a user can act on into one line and an exit code."""
    try:
        yield
    except (avm.AvmError, CliError) as exc:
        if _settings.debug:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        print("avm: interrupted", file=sys.stderr, flush=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@app.callback()
def _global_options(
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.")
    ] = "warning",
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        _fail(f"unknown log level {log_level!r}; use debug, info, warning or error")
    _settings.debug = debug
    _configure_logging(log_level)


# -- avm demo --------------------------------------------------------------------------------


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=1, help="Watcher agents in the fleet.")] = 1000,
    ticks: Annotated[int, typer.Option(min=1, help="Ticks each watcher runs.")] = 3,
    interval: Annotated[
        float, typer.Option(min=0.001, help="Seconds between a watcher's ticks.")
    ] = 2.0,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Where state goes (default: a new temporary directory, kept)."),
    ] = None,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Print progress lines, not the live view.")
    ] = False,
    durability: Annotated[
        Literal["durable", "relaxed"],
        typer.Option(help="durable: effects wait for their journal commit; relaxed: they don't."),
    ] = "durable",
    model: Annotated[
        Literal["local", "fake"],
        typer.Option(help="local: SmolLM2 on llama.cpp in-process; fake: a fake HTTP server."),
    ] = "local",
    tokens: Annotated[
        int, typer.Option(min=0, help="Distinct tokens the watchers follow (0: one each).")
    ] = 24,
) -> None:
    """Run the portfolio-watcher swarm on the local model: no network, no keys."""
    console = Console()
    with _errors_as_messages():
        directory = state_dir or Path(tempfile.mkdtemp(prefix="avm-demo-"))
        config = PortfolioConfig(
            agents=agents,
            ticks=ticks,
            interval_s=interval,
            state_dir=directory,
            durability=durability,
            model=model,
            tokens=tokens,
        )
        console.print(
            f"avm demo: {agents:,} watchers × {ticks} ticks every {interval:g} s, "
            f"{config.risk_desks} risk desks, a coordinator; state in {directory}\n"
            f"{config.backend}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        dashboards: list[Dashboard] = []

        def monitor(vm: avm.VM) -> Dashboard:
            dashboard = Dashboard(
                vm,
                title=f"AVM portfolio demo · {agents:,} watchers",
                backend=config.backend,
                live=False if no_dashboard else None,
                console=console,
            )
            dashboards.append(dashboard)
            return dashboard

        result = asyncio.run(run_portfolio(config, monitor=monitor))
    console.print(render_summary(dashboards[0].summary))
    console.print(render_portfolio(result, config))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


def render_portfolio(result: PortfolioResult, config: PortfolioConfig) -> RenderableType:
    """The demo's own figures: what the fleet decided and did."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    failed = len(result.watcher_failures)
    table.add_row("watchers", f"{result.watchers_done:,} finished, {failed:,} failed")
    tallies = " · ".join(f"{verdict} {n:,}" for verdict, n in result.tallies.items())
    expected = result.agents * result.ticks
    table.add_row("verdicts seen", f"{result.verdicts_seen:,} of {expected:,} ({tallies})")
    table.add_row(
        "risk checks",
        f"{result.risk_checks:,}: {result.risk_confirmed:,} confirmed by "
        f"{config.quorum} of {config.risk_desks} desks, {result.risk_flagged:,} flagged, "
        f"{result.risk_unanswered:,} unanswered; limits fetched {result.limit_fetches:,} times",
    )
    table.add_row(
        "orders",
        f"{result.orders_accepted:,} accepted, {result.orders_duplicate:,} duplicates ignored",
    )
    table.add_row(
        "gas top-ups",
        f"{result.out_of_gas_top_ups:,} (lean-budget watchers halted out of gas and resumed)",
    )
    table.add_row(
        "model calls",
        f"{result.model_calls:,} ({result.tokens_in:,} tokens in, {result.tokens_out:,} out)",
    )
    table.add_row("gas total", f"{result.gas_total:,.2f}")
    table.add_row("state", f"{result.state_dir} (state.db: journal, KV; sql/: per-agent)")
    for reason in result.watcher_failures[:5]:
        table.add_row("failure", reason, style="red")
    return Panel(table, title="portfolio", expand=False)


# -- avm run ---------------------------------------------------------------------------------

UserMain = Callable[[avm.VM], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class AgentsFile:
    """A loaded agents file: its VM and, if it has one, its ``main(vm)``."""

    path: Path
    vm: avm.VM
    main: UserMain | None


def load_agents_file(path: Path) -> AgentsFile:
    """Import ``path`` as a module and find its ``vm`` (and ``main``), per the convention."""
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    name = "avm_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f"{path} cannot be imported as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise CliError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise CliError(f"{_where(exc, path)}: {type(exc).__name__}: {exc}") from exc
    return AgentsFile(path, _find_vm(module, path), _find_main(module, path))


def _where(exc: BaseException, path: Path) -> str:
    """``file:line`` of the deepest frame of ``exc`` inside the user's file."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return f"{path}:{line}" if line is not None else str(path)


LOCAL_DEFAULT_MODEL: Final = "local:smollm2-135m-instruct"


def _find_vm(module: ModuleType, path: Path) -> avm.VM:
    vm = getattr(module, "vm", None)
    if not isinstance(vm, avm.VM):
        raise CliError(f"{path} must define 'vm = avm.VM(...)' at module level")
    if "default" not in vm.models:
        # No network and no keys needed: the local model answers for "default".
        vm.model("default", LOCAL_DEFAULT_MODEL)
    return vm


def _find_main(module: ModuleType, path: Path) -> UserMain | None:
    fn = getattr(module, "main", None)
    if fn is None:
        return None
    if not inspect.iscoroutinefunction(fn):
        raise CliError(f"{path}: main must be 'async def main(vm)'")
    return fn  # type: ignore[no-any-return]


def pick_definition(vm: avm.VM, name: str | None, path: Path) -> avm.AgentDefinition:
    definitions = vm.definitions
    if not definitions:
        raise CliError(f"{path} defines no agents: decorate an async function with @vm.agent")
    if name is None:
        if len(definitions) > 1:
            names = ", ".join(sorted(definitions))
            raise CliError(f"{path} defines several agents ({names}); pick one with --agent")
        (definition,) = definitions.values()
    else:
        found = definitions.get(name)
        if found is None:
            names = ", ".join(sorted(definitions))
            raise CliError(f"{path} has no agent named {name!r} (it defines: {names})")
        definition = found
    required = [
        p.name
        for p in list(inspect.signature(definition.fn).parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if required:
        raise CliError(
            f"agent {definition.name!r} needs arguments ({', '.join(required)}), but 'avm run' "
            "spawns agents without arguments: give them defaults, or define async def main(vm)"
        )
    return definition


def describe_models(vm: avm.VM) -> str:
    """The dashboard's backend line for a user's VM."""
    names = vm.models.names()
    if not names:
        return "model: none configured (vm.model(...) links one)"
    parts = []
    for name in names:
        config = vm.models.config(name)
        where = f" at {config.base_url}" if config.base_url else ""
        parts.append(f"{name} → {config.provider}:{config.model}{where}")
    return "models: " + "; ".join(parts)


@dataclass(slots=True)
class RunOutcome:
    summary: RunSummary | None = None
    ended: Literal["done", "duration", "stalled", "main-returned"] = "done"
    main_error: str | None = None


@app.command()
def run(
    file: Annotated[
        str,
        typer.Argument(
            help="Python file defining vm = avm.VM() and agents, or a template "
            "(.yaml, .yml, .json) or image (.avmi)."
        ),
    ],
    agents: Annotated[int, typer.Option(min=1, help="Instances to spawn (without main).")] = 1,
    agent: Annotated[
        str | None, typer.Option(help="Agent definition to spawn (default: the only one).")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Override the state directory of the file's VM.")
    ] = None,
    no_dashboard: Annotated[
        bool, typer.Option("--no-dashboard", help="Print progress lines, not the live view.")
    ] = False,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many seconds.")
    ] = None,
    vm_file: Annotated[
        Path | None,
        typer.Option("--vm", help="For a template: a file defining the vm (its tools, models)."),
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(help="Content-memory budget, e.g. 2GB or 512MiB (overrides the file's VM)."),
    ] = None,
) -> None:
    """Run the agents defined in FILE.

    FILE defines vm = avm.VM(...) and its agents with @vm.agent.

    If FILE defines async def main(vm): start the VM and await main(vm).

    Otherwise: spawn --agents instances of --agent (or of the only agent), without arguments.

    Exit status: 0 all finished, 1 an agent (or main) failed, 2 the run could not start.
    """
    console = Console()
    with _errors_as_messages():
        template = None
        if templates.is_template_path(Path(file)):
            host = load_agents_file(vm_file) if vm_file is not None else None
            program = AgentsFile(Path(file), host.vm if host else avm.VM(), None)
            template = templates.template_definition(program.path, program.vm)
        elif vm_file is not None:
            raise CliError("--vm is for templates; an agents file defines its own vm")
        else:
            program = load_agents_file(Path(file))
        vm = program.vm
        if state_dir is not None:
            vm.config = msgspec.structs.replace(vm.config, state_dir=str(state_dir))
        if memory is not None:
            MemoryBudget.of(memory)  # a malformed size is an error now, not when the VM starts
            vm.config = msgspec.structs.replace(vm.config, memory=memory)
        definition = None if program.main else template or pick_definition(vm, agent, program.path)
        if program.main is not None and (agent is not None or agents != 1):
            print(f"avm: note: {file} defines main(vm), so --agent/--agents are not used",
                  file=sys.stderr)  # fmt: skip
        dashboard = Dashboard(
            vm,
            title=f"avm run {program.path.name}",
            backend=describe_models(vm),
            live=False if no_dashboard else None,
            console=console,
        )
        outcome = asyncio.run(_run_program(program, definition, agents, duration, dashboard))
    if outcome.summary is not None:
        console.print(render_summary(outcome.summary))
    code = _report_outcome(outcome, vm)
    raise typer.Exit(code)


async def _run_program(
    program: AgentsFile,
    definition: avm.AgentDefinition | None,
    count: int,
    duration: float | None,
    dashboard: Dashboard,
) -> RunOutcome:
    outcome = RunOutcome()
    vm = program.vm
    async with vm:
        async with dashboard:
            if program.main is not None:
                outcome.main_error = await _await_main(program.main, vm, duration)
                outcome.ended = "main-returned"
            else:
                assert definition is not None
                for _ in range(count):
                    vm.spawn(definition)
                outcome.ended = await _wait_for_fleet(vm, duration)
        outcome.summary = dashboard.summary
    return outcome


async def _await_main(main: UserMain, vm: avm.VM, duration: float | None) -> str | None:
    """Run the user's main; return why it failed, if it did. Reaching ``duration`` is not a
    failure: it is what the user asked for."""
    try:
        async with asyncio.timeout(duration) as deadline:
            await main(vm)
    except TimeoutError:
        if deadline.expired():
            return None
        raise
    except Exception as exc:
        if _settings.debug:
            traceback.print_exc()
        return f"main(vm) raised {type(exc).__name__}: {exc}"
    return None


async def _wait_for_fleet(
    vm: avm.VM, duration: float | None
) -> Literal["done", "duration", "stalled"]:
    """Wait for every agent; stop early at ``duration``, or when every live agent is out of gas
    (nobody tops them up in this mode, so they could never continue)."""
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    while True:
        step = 0.25 if deadline is None else max(0.0, min(0.25, deadline - loop.time()))
        try:
            await vm.join(timeout_s=step)
        except TimeoutError:
            pass
        else:
            return "done"
        if deadline is not None and loop.time() >= deadline:
            return "duration"
        snap = Snapshot.take(vm)
        if snap.live_agents and snap.stats.agents.get("out_of_gas", 0) == snap.live_agents:
            return "stalled"


def _report_outcome(outcome: RunOutcome, vm: avm.VM) -> int:
    summary = outcome.summary
    code = EXIT_OK
    if outcome.main_error is not None:
        print(f"avm: {outcome.main_error}", file=sys.stderr)
        code = EXIT_FAILED
    if summary is None:
        return code
    state_dir = vm.config.state_dir
    if summary.unfinished and outcome.ended in ("duration", "main-returned"):
        why = "main(vm) returned" if outcome.ended == "main-returned" else "--duration ran out"
        print(
            f"avm: {why} with {summary.unfinished:,} agents still running; they were stopped "
            f"and their state is kept in {state_dir}"
        )
    if outcome.ended == "stalled":
        print(
            f"avm: {summary.unfinished:,} agents are out of gas and nothing else can run; "
            "stopped them (raise their budget, or top them up from main(vm))",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    if summary.failed or summary.killed:
        print(
            f"avm: {summary.failed:,} agents failed and {summary.killed:,} were killed",
            file=sys.stderr,
        )
        code = EXIT_FAILED
    return code


# -- avm instructions ------------------------------------------------------------------------


@app.command()
def instructions() -> None:
    """Print the instruction set: parameters, gas formula, effect class, availability."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a pipe has no width; keep one instruction per line
    table = Table(title="AVM instruction set", title_justify="left")
    table.add_column("instruction", no_wrap=True, style="bold")
    table.add_column("family")
    table.add_column("parameters")
    table.add_column("gas")
    table.add_column("effect")
    table.add_column("available")
    for spec in avm.INSTRUCTIONS.values():
        params = ", ".join(p.name + ("?" if p.optional else "") for p in spec.params)
        table.add_row(
            str(spec.op),
            str(spec.family),
            params or "—",
            spec.gas,
            str(spec.effect),
            "yes" if spec.available else "not yet",
        )
    console.print(table)
    console.print("parameters marked ? are optional; gas prices come from avm.GasPrices and each "
                  "model's price_in / price_out", highlight=False)  # fmt: skip


# -- history: verify, log, gas, export, import ------------------------------------------------


def _one_line_errors(command: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(command)
    def run_command(*args: Any, **kwargs: Any) -> None:
        with _errors_as_messages():
            command(*args, **kwargs)

    return run_command


app.command("verify")(_one_line_errors(history.verify_command))
app.command("log")(_one_line_errors(history.log_command))
app.command("gas")(_one_line_errors(history.gas_command))
app.command("export")(_one_line_errors(history.export_command))
app.command("import")(_one_line_errors(history.import_command))
for _command in secrets.secrets_app.registered_commands:
    assert _command.callback is not None
    _command.callback = _one_line_errors(_command.callback)
app.add_typer(secrets.secrets_app, name="secrets")
app.command("build")(_one_line_errors(templates.build_command))
app.command("schema")(_one_line_errors(templates.schema_command))


def main() -> None:
    """The ``avm`` console script."""
    app(prog_name="avm")


if __name__ == "__main__":
    main()
