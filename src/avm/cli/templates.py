"""The template commands of ``avm``: build an image, print the template schema, run templates.

::

    avm build TEMPLATE [-o DIR] [--check]   validate; write DIR/<blake3 digest>.avmi
    avm schema                              print the JSON Schema of templates
    avm run TEMPLATE|IMAGE [--vm HOST.py] [--agents N] ...

``avm run`` is defined in :mod:`avm.cli.main`; for a path ending in ``.yaml``, ``.yml``,
``.json`` (a template) or ``.avmi`` (an image) it asks this module for the agent definition:
the template is built (or the image loaded and verified) and registered in the VM of the
``--vm`` file - an ordinary agents file whose ``vm`` has the tools and models the template
uses - or, without ``--vm``, in a fresh ``avm.VM()``. A template's knowledge sources are loaded
into ``knowledge.db`` of the VM's state directory, which needs the VM's key manager. A
template whose problems stop the build exits with status 2 and every problem listed, one per
line, each with file:line:column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import avm
from avm import assembler
from avm.knowledge import KnowledgeStore

__all__ = ["build_command", "is_template_path", "schema_command", "template_definition"]


def is_template_path(path: Path) -> bool:
    """Whether ``avm run`` should treat ``path`` as a template or an image."""
    return path.suffix in (*assembler.TEMPLATE_SUFFIXES, assembler.IMAGE_SUFFIX)


def template_definition(path: Path, vm: avm.VM) -> avm.AgentDefinition:
    """Build or load ``path`` and register it in ``vm`` for ``avm run`` to spawn."""
    image = assembler.load(path)
    required = [name for name, spec in image.template.inputs.items() if not spec.has_default]
    if required:
        raise avm.ConfigError(
            f"template {image.name!r} needs inputs ({', '.join(required)}), but 'avm run' "
            "spawns agents without arguments: give them defaults in the template"
        )
    knowledge = None
    if image.template.knowledge and vm.keys is not None:
        # The store the VM's knowledge tools use by default: knowledge.db in its state directory.
        knowledge = KnowledgeStore.open(vm.config.state_dir, vm.keys)
    try:
        return assembler.register(vm, image, knowledge=knowledge)
    except avm.ConfigError as exc:
        raise avm.ConfigError(
            f"{exc} (pass --vm FILE.py: a file defining vm = avm.VM(...) with them)"
        ) from None


def build_command(
    template: Annotated[Path, typer.Argument(help="Template file (.yaml, .yml or .json).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory the image is written into.")
    ] = Path("images"),
    check: Annotated[bool, typer.Option("--check", help="Validate only; write nothing.")] = False,
) -> None:
    """Validate TEMPLATE and write its image, named by its BLAKE3 digest, into DIR.

    Every problem is reported at once, as file:line:column: field: expected ..., found ...
    (exit status 2). Templates that differ only in formatting, key order or whether a prompt
    is inline or in a file build the same image.
    """
    image = assembler.build(template)
    if check:
        print(f"{template}: ok ({image.name}, image {image.digest})")
        return
    path = image.write(output)
    print(f"{path}")
    print(f"built {image.name!r} from {template}: {len(image.data):,} bytes, blake3 {image.digest}")


def schema_command() -> None:
    """Print the JSON Schema (draft 2020-12) of templates, for editors and tools."""
    print(json.dumps(assembler.template_schema(), indent=2))
