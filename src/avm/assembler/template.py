"""The template model: what a validated agent template declares and does, as msgspec structs.

A template is data, never code. Its declarations say what the agent may touch (models, prompts,
tools and the hosts and secrets they need, knowledge sources), how it is run (inputs, schedule,
budget, priority), and its ``program`` says what it does, as steps:

=============  ==================================================================================
step           meaning
=============  ==================================================================================
instruction    ``kv_store: {key: ..., value: ...}``: one instruction of the instruction set, its
               arguments by name (``as: x`` binds the result)
``react``      a model call with tool use: RUN_MODEL with the declared tools; every tool call the
               model makes is run (READ_FROM_TOOL or WRITE_TO_TOOL) and answered, up to
               ``max_turns`` model calls
``set``        binds a value built from earlier names (``set: {token: ${token}}``, ``as: rec``)
``if``         ``if: "${reply.text} startswith 'BUY'"`` with ``then:`` and optional ``else:``
``repeat``     ``repeat: 3`` (or an expression with ``max:``), ``do:`` steps, ``as:`` the index
``for_each``   ``for_each: ${items}`` with a required ``max:``, ``as:`` the item, ``do:`` steps
=============  ==================================================================================

These structs are what the validator produces and what the interpreter runs; the image is their
canonical JSON form (see :mod:`avm.assembler.image`). Field names follow the authoring format,
except ``as`` (a Python keyword), which is ``bind`` here, and ``else``, which is ``otherwise``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from avm._core.isa import Op

__all__ = [
    "ACCESS_MODES",
    "FORMAT_VERSION",
    "INPUT_TYPES",
    "KNOWLEDGE_SCOPES",
    "PRIORITIES",
    "Call",
    "Document",
    "ForEach",
    "If",
    "Input",
    "Knowledge",
    "Model",
    "Prompt",
    "React",
    "Repeat",
    "Schedule",
    "Set",
    "Step",
    "Template",
    "Tool",
]

FORMAT_VERSION = 1
INPUT_TYPES = ("string", "integer", "number", "boolean", "list", "object", "any")
ACCESS_MODES = ("read", "write", "both")
KNOWLEDGE_SCOPES = ("private", "public")
PRIORITIES = ("interactive", "normal", "background")

Access = Literal["read", "write", "both"]


class Input(msgspec.Struct, frozen=True, kw_only=True):
    """An argument the agent is spawned with; without a default it is required."""

    type: str = "any"
    description: str = ""
    has_default: bool = False
    default: Any = None


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """A model the template calls: its own ``provider:model`` spec, or a VM model by name."""

    spec: str | None = None
    use: str | None = None
    base_url: str | None = None
    price_in: float | None = None
    price_out: float | None = None
    max_tokens: int | None = None
    secret: str | None = None


class Prompt(msgspec.Struct, frozen=True, kw_only=True):
    """A prompt: its text (files are read and inlined at build time), or a VM prompt by id."""

    text: str | None = None
    use: str | None = None


class Tool(msgspec.Struct, frozen=True, kw_only=True):
    """A tool of the VM the template may use, how, and what it reaches.

    ``access`` is what the template may do with it: ``read`` (READ_FROM_TOOL), ``write``
    (WRITE_TO_TOOL) or ``both``. ``hosts`` and ``secrets`` declare the network hosts and the
    secrets the tool needs on this template's behalf (for the sandbox and the key manager).
    ``schema`` is the JSON Schema of its input, offered to models by ``react``.
    """

    access: Access = "read"
    description: str = ""
    hosts: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None


class Document(msgspec.Struct, frozen=True, kw_only=True):
    """One document of a knowledge source: its title (the file's path, for a file) and text."""

    title: str
    text: str


class Knowledge(msgspec.Struct, frozen=True, kw_only=True):
    """A knowledge source, read at build time: its documents, and where they are loaded.

    ``private`` documents go into each agent's own encrypted knowledge when it starts;
    ``public`` ones into the public ``namespace`` when the template is registered.
    """

    documents: tuple[Document, ...]
    scope: Literal["private", "public"] = "private"
    namespace: str = "public"
    description: str = ""


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``program`` once per tick: ``ticks`` times, ``interval_s`` apart (SCHEDULE_TASK)."""

    interval_s: float
    ticks: int
    task: str = "tick"


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One instruction with its arguments by name (values may hold expressions)."""

    op: Op
    args: dict[str, Any]
    bind: str | None = None


class React(msgspec.Struct, frozen=True, kw_only=True):
    """A model call with tool use, looping while the model asks for tools."""

    model: str
    input: Any
    tools: tuple[str, ...]
    max_turns: int
    max_tokens: Any = None
    temperature: Any = None
    bind: str | None = None


class Set(msgspec.Struct, frozen=True, kw_only=True):
    """Bind a value built from earlier names."""

    value: Any
    bind: str


class If(msgspec.Struct, frozen=True, kw_only=True):
    condition: str
    then: tuple[Step, ...]
    otherwise: tuple[Step, ...] = ()


class Repeat(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``body`` ``count`` times; ``count`` is a number or an expression bounded by ``max``."""

    count: int | str
    body: tuple[Step, ...]
    max: int | None = None
    bind: str | None = None


class ForEach(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``body`` once per item of ``items`` (a list or an expression), at most ``max`` items."""

    items: str | list[Any]
    body: tuple[Step, ...]
    bind: str
    max: int | None = None


Step = Call | React | Set | If | Repeat | ForEach


class Template(msgspec.Struct, frozen=True, kw_only=True):
    """A validated template."""

    name: str
    program: tuple[Step, ...]
    version: int = FORMAT_VERSION
    description: str = ""
    inputs: dict[str, Input] = msgspec.field(default_factory=dict)
    models: dict[str, Model] = msgspec.field(default_factory=dict)
    prompts: dict[str, Prompt] = msgspec.field(default_factory=dict)
    tools: dict[str, Tool] = msgspec.field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    knowledge: dict[str, Knowledge] = msgspec.field(default_factory=dict)
    schedule: Schedule | None = None
    budget: float | None = None
    priority: str = "normal"
    setup: tuple[Step, ...] = ()
    result: Any = None
