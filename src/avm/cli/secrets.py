"""``avm secrets``: the key manager from the command line.

::

    avm secrets keygen PATH                        write a new master key file (mode 0600)
    avm secrets set NAME [--state-dir .avm]        the value is read from standard input
    avm secrets list [--state-dir .avm]            names, dates and grants; never values
    avm secrets rm NAME [--state-dir .avm]
    avm secrets grant NAME --tool T (--agent A | --definition D) [--state-dir .avm]

The master key comes from ``--key-file``, ``AVM_MASTER_KEY`` or ``AVM_MASTER_KEY_FILE``. Values
are read from standard input, never from the command line, where they would land in the shell's
history and the process table.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from avm.keys.manager import KeyManager
from avm.keys.master import MasterKey, write_key_file

__all__ = ["secrets_app"]

secrets_app = typer.Typer(help="Manage encrypted secrets and their grants.", no_args_is_help=True)

StateDir = Annotated[Path, typer.Option("--state-dir", help="The VM's state directory.")]
KeyFile = Annotated[
    Path | None, typer.Option("--key-file", help="The master key file (mode 0600).")
]


def _open(state_dir: Path, key_file: Path | None) -> KeyManager:
    return KeyManager.open(state_dir, key_file=key_file)


@secrets_app.command("keygen")
def keygen(path: Annotated[Path, typer.Argument(help="Where to write the new key.")]) -> None:
    """Write a new random master key to PATH, readable by its owner only."""
    written = write_key_file(path, MasterKey.generate())
    print(f"wrote a new master key to {written}; keep it safe: without it no secret opens")


@secrets_app.command("set")
def set_secret(
    name: Annotated[str, typer.Argument(help="The secret's name.")],
    state_dir: StateDir = Path(".avm"),
    key_file: KeyFile = None,
) -> None:
    """Store a secret; its value is read from standard input."""
    value = sys.stdin.buffer.read().rstrip(b"\r\n")
    with _open(state_dir, key_file) as keys:
        handle = keys.set(name, value)
    print(f"stored {name}; agents refer to it as {handle}")


@secrets_app.command("list")
def list_secrets(state_dir: StateDir = Path(".avm"), key_file: KeyFile = None) -> None:
    """List secrets with their grants (never their values)."""
    table = Table(title="secrets", title_justify="left")
    for column in ("name", "updated", "granted to"):
        table.add_column(column)
    with _open(state_dir, key_file) as keys:
        for info in keys.list_secrets():
            updated = datetime.datetime.fromtimestamp(info.updated).strftime("%Y-%m-%d %H:%M")
            grants = ", ".join(f"{g.kind} {g.principal} via {g.tool}" for g in info.grants)
            table.add_row(info.name, updated, grants or "—")
    Console().print(table)


@secrets_app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="The secret to remove.")],
    state_dir: StateDir = Path(".avm"),
    key_file: KeyFile = None,
) -> None:
    """Remove a secret and its grants."""
    with _open(state_dir, key_file) as keys:
        keys.remove(name)
    print(f"removed {name}")


@secrets_app.command("grant")
def grant(
    name: Annotated[str, typer.Argument(help="The secret to grant.")],
    tool: Annotated[str, typer.Option("--tool", help="The tool that may use it.")],
    agent: Annotated[str | None, typer.Option("--agent", help="One agent id.")] = None,
    definition: Annotated[
        str | None, typer.Option("--definition", help="Every agent of a definition.")
    ] = None,
    state_dir: StateDir = Path(".avm"),
    key_file: KeyFile = None,
) -> None:
    """Allow an agent (or every agent of a definition) to use a secret with one tool."""
    with _open(state_dir, key_file) as keys:
        given = keys.grant(name, tool=tool, agent=agent, definition=definition)
    print(f"granted {given.secret} to {given.kind} {given.principal} for tool {given.tool}")
