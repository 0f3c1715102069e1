"""The template interpreter: an image's program run as an ordinary agent of a VM.

:func:`register` links an image into a VM and registers it with ``vm.agent`` like any Python
agent: its name, budget and priority are the template's, and its capabilities are exactly what
the template declares (its tools, and the VM names its models and prompts are registered under).
The agent function it registers interprets the program by issuing instructions through the
same pipeline the Python context uses, so gas, capabilities, the journal and replay apply
unchanged: a template can do nothing its declarations do not grant, because the pipeline, not
the interpreter, enforces the grant.

The program is compiled once per registration into a tree of small step objects with their
expressions pre-parsed and their constant arguments pre-bound (with
:meth:`InstructionSpec.bind`), and shared by every agent of the template. Each agent's run
keeps only its names. Between instructions the interpreter computes only from the template and
from results the pipeline returned, which replay returns again from the journal: a recovered
agent re-runs its program from the top and arrives at the same instructions with the same
arguments, as a Python agent does.

::

    runner(ctx, **inputs) ─► check inputs ─► setup ─► ┬─ SCHEDULE_TASK ─► program ─┐ × ticks
                                                      └────────────────────────────┘
                                                     ─► result
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import blake3
import msgspec

from avm._core.context import Context
from avm._core.interpreter import instruction
from avm._core.isa import INSTRUCTIONS, Op
from avm._core.process import AgentDefinition, AgentProcess
from avm._core.runtime import Runtime
from avm._core.vm import VM
from avm.assembler.declarations import accepts_input
from avm.assembler.expressions import (
    Evaluator,
    Lookup,
    compile_condition,
    compile_value,
    render_text,
)
from avm.assembler.image import Image
from avm.assembler.problems import ProgramError
from avm.assembler.source import join_path
from avm.assembler.template import (
    Call,
    Document,
    ForEach,
    If,
    React,
    Repeat,
    Set,
    Step,
    Template,
    Tool,
)
from avm.config import ModelConfig
from avm.errors import CapabilityDenied, ConfigError, InvalidArgument, ToolError
from avm.knowledge.store import KnowledgeStore
from avm.llm.linker import KEYED_PROVIDERS, ModelKey, model_tool
from avm.llm.types import Message, ModelReply, ToolCall, ToolSpec
from avm.tools.registry import Tool as RegisteredTool

__all__ = ["register", "vm_name"]

log = logging.getLogger(__name__)

# The access a tool instruction needs, and how a refusal words it.
_TOOL_MODES: Final = {
    Op.READ_FROM_TOOL: ("read", "read"),
    Op.WRITE_TO_TOOL: ("write", "written to"),
}


def vm_name(template: str, name: str) -> str:
    """The VM-wide name of a model or prompt a template defines itself (not one it ``use``\\s).

    Prefixed with the template's name so that two templates may both call their model
    ``analyst`` without colliding in the VM's model linker or prompt library.
    """
    return f"{template}/{name}"


class _Run:
    """One agent's run of a program: the pipeline it issues instructions to, and its names."""

    __slots__ = ("env", "proc", "rt")

    def __init__(self, ctx: Context, env: dict[str, Any]) -> None:
        # The interpreter is part of the VM: it enters the pipeline where ctx's methods do.
        self.rt: Runtime = ctx._rt
        self.proc: AgentProcess = ctx._proc
        self.env = env


class _Links:
    """How template names map to what the VM knows, and what the template may do with tools."""

    def __init__(
        self,
        template: Template,
        models: Mapping[str, str],
        prompts: Mapping[str, str],
        confined: Mapping[str, RegisteredTool] | None = None,
    ) -> None:
        self.template = template.name
        self.models = dict(models)
        self.prompts = dict(prompts)
        self.tools: dict[str, Tool] = dict(template.tools)
        #: The template's network tools, confined to its declared hosts, by template name; its
        #: agents call them by their VM names (``tool_names``).
        self.confined: dict[str, RegisteredTool] = dict(confined or {})
        self.tool_names = {name: tool.name for name, tool in self.confined.items()}

    def tool_arg(self, name: Any) -> Any:
        """A tool offered to a model: its declared schema if the template has one, else the
        name (the VM then offers the schema the tool was registered with). A confined tool is
        offered under the template's name for it, with the schema of the tool it confines."""
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return name
        confined = self.confined.get(name)
        if tool.schema is not None:
            return ToolSpec(name, tool.description, tool.schema)
        if confined is not None:
            return ToolSpec(name, tool.description or confined.description, confined.parameters)
        return name

    def tool(self, name: Any) -> Any:
        """The VM name of a template's tool (names it does not declare pass unchanged)."""
        return self.tool_names.get(name, name) if isinstance(name, str) else name

    def fix(self, op: Op, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Translate template names in an instruction's arguments to VM names.

        A name the template does not declare is passed on unchanged, so the pipeline's
        capability check refuses it as it would refuse a Python agent.
        """
        # Names are looked up only when they are strings: any other value goes on to the
        # pipeline, whose argument check refuses it with the usual message.
        if op is Op.RUN_MODEL:
            model, value, max_tokens, temperature, tools, *rest = args
            if isinstance(tools, list | tuple):
                tools = [self.tool_arg(item) for item in tools]
            if isinstance(model, str):
                model = self.models.get(model, model)
            return (model, value, max_tokens, temperature, tools, *rest)
        if op is Op.LOAD_PROMPT:
            prompt = args[0]
            return (self.prompts.get(prompt, prompt) if isinstance(prompt, str) else prompt,)
        mode = _TOOL_MODES.get(op)
        if mode is not None:
            tool = self.tools.get(args[0]) if isinstance(args[0], str) else None
            if tool is not None and tool.access not in (mode[0], "both"):
                raise CapabilityDenied(
                    f"template {self.template!r} declares tool {args[0]!r} with access "
                    f"{tool.access}, so it may not be {mode[1]}"
                )
            return (self.tool(args[0]), *args[1:])
        return args


class _Step:
    """A compiled step: ``path`` locates it in the template for error messages."""

    __slots__ = ("path", "template")

    def __init__(self, template: str, path: str) -> None:
        self.template = template
        self.path = path

    def error(self, message: str, field: str = "") -> ProgramError:
        return ProgramError(
            self.template, join_path(self.path, field) if field else self.path, message
        )

    async def run(self, run: _Run) -> None:
        raise NotImplementedError


class _Call(_Step):
    __slots__ = ("args", "bind", "constant", "links", "op", "translate")

    def __init__(self, step: Call, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, step.op.value.lower()))
        spec = INSTRUCTIONS[step.op]
        positional = spec.bind(step.args)  # the instruction set's own name → position mapping
        compiled = [compile_value(value) for value in positional]
        self.op = step.op
        self.bind = step.bind
        self.links = links
        self.args: tuple[Evaluator, ...] = tuple(ev for ev, _ in compiled)
        self.translate = step.op in (
            Op.RUN_MODEL,
            Op.LOAD_PROMPT,
            Op.READ_FROM_TOOL,
            Op.WRITE_TO_TOOL,
        )
        self.constant: tuple[Any, ...] | None = None
        if all(is_constant for _, is_constant in compiled) and not any(
            isinstance(value, dict | list) for value in positional
        ):
            # Scalars only: the same tuple can be handed to every call of every agent.
            constant = tuple(positional)
            self.constant = links.fix(self.op, constant) if self.translate else constant

    async def run(self, run: _Run) -> None:
        args = self.constant
        if args is None:
            env = run.env
            try:
                args = tuple([evaluate(env) for evaluate in self.args])
            except Lookup as exc:
                raise self.error(str(exc)) from None
            if self.translate:
                try:
                    args = self.links.fix(self.op, args)
                except CapabilityDenied as denied:
                    denied.locate(run.proc.id, self.op.value, run.proc.step)
                    raise
        result = await instruction(run.rt, run.proc, self.op, args)
        if self.bind is not None:
            run.env[self.bind] = result


class _React(_Step):
    __slots__ = (
        "bind",
        "input",
        "links",
        "max_tokens",
        "max_turns",
        "model",
        "specs",
        "temperature",
        "tools",
    )

    def __init__(self, step: React, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, "react"))
        self.links = links
        self.model = compile_value(step.model)[0]
        self.input = compile_value(step.input)[0]
        self.max_tokens = compile_value(step.max_tokens)[0]
        self.temperature = compile_value(step.temperature)[0]
        self.max_turns = step.max_turns
        self.bind = step.bind
        self.tools: dict[str, str] = {name: links.tools[name].access for name in step.tools}
        self.specs = [links.tool_arg(name) for name in step.tools] or None

    async def run(self, run: _Run) -> None:
        env = run.env
        try:
            model = self.model(env)
            value = self.input(env)
            max_tokens = self.max_tokens(env)
            temperature = self.temperature(env)
        except Lookup as exc:
            raise self.error(str(exc)) from None
        messages: list[Any] = [value] if isinstance(value, str) else list(_sequence(value))
        if not messages:
            raise self.error("the input evaluated to an empty list", "input")
        model = self.links.models.get(model, model)
        reply: ModelReply | None = None
        for turn in range(self.max_turns):
            args = INSTRUCTIONS[Op.RUN_MODEL].bind(
                {
                    "model": model,
                    "input": list(messages),
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "tools": self.specs,
                }
            )
            reply = await instruction(run.rt, run.proc, Op.RUN_MODEL, args)
            if not reply.tool_calls or turn == self.max_turns - 1:
                break
            messages.append(Message("assistant", reply.text, tool_calls=reply.tool_calls))
            for call in reply.tool_calls:
                answer = await self.call_tool(run, call)
                messages.append(Message("tool", answer, tool_call_id=call.id, name=call.name))
        if self.bind is not None:
            run.env[self.bind] = reply

    async def call_tool(self, run: _Run, call: ToolCall) -> str:
        """Run one tool call through the pipeline; what the model reads back is text.

        A tool's failure is the model's to handle (it may retry or answer without it), so it
        becomes the tool message rather than failing the agent; the pipeline journals it, so a
        replay feeds the model the same text.
        """
        access = self.tools.get(call.name)
        if access is None:
            offered = ", ".join(sorted(self.tools)) or "none"
            return f"error: no tool named {call.name!r} is offered here (offered: {offered})"
        try:
            arguments = msgspec.json.decode(call.arguments or "{}")
        except msgspec.DecodeError as exc:
            return f"error: the arguments are not valid JSON: {exc}"
        op = Op.WRITE_TO_TOOL if access == "write" else Op.READ_FROM_TOOL
        try:
            result = await instruction(
                run.rt, run.proc, op, (self.links.tool(call.name), arguments)
            )
        except (ToolError, InvalidArgument) as exc:
            return f"error: {exc.message}"
        return render_text(result)


def _sequence(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    raise Lookup(f"a react input must be a string or a list, not {type(value).__name__}")


class _Set(_Step):
    __slots__ = ("bind", "value")

    def __init__(self, step: Set, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, "set"))
        self.value = compile_value(step.value)[0]
        self.bind = step.bind

    async def run(self, run: _Run) -> None:
        try:
            run.env[self.bind] = self.value(run.env)
        except Lookup as exc:
            raise self.error(str(exc)) from None


class _If(_Step):
    __slots__ = ("condition", "otherwise", "then")

    def __init__(self, step: If, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, "if"))
        self.condition = compile_condition(step.condition)
        self.then = _compile(step.then, join_path(path, "then"), links)
        self.otherwise = _compile(step.otherwise, join_path(path, "else"), links)

    async def run(self, run: _Run) -> None:
        try:
            chosen = self.then if self.condition(run.env) else self.otherwise
        except Lookup as exc:
            raise self.error(str(exc)) from None
        for step in chosen:
            await step.run(run)


class _Repeat(_Step):
    __slots__ = ("bind", "body", "count", "max")

    def __init__(self, step: Repeat, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, "repeat"))
        self.count = compile_value(step.count)[0]
        self.max = step.max
        self.bind = step.bind
        self.body = _compile(step.body, join_path(path, "do"), links)

    async def run(self, run: _Run) -> None:
        try:
            count = self.count(run.env)
        except Lookup as exc:
            raise self.error(str(exc)) from None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise self.error(f"the count must be a non-negative integer, not {count!r}")
        if self.max is not None and count > self.max:
            raise self.error(f"the count {count} exceeds the loop's max of {self.max}")
        for index in range(count):
            if self.bind is not None:
                run.env[self.bind] = index
            for step in self.body:
                await step.run(run)


class _ForEach(_Step):
    __slots__ = ("bind", "body", "items", "max")

    def __init__(self, step: ForEach, path: str, links: _Links) -> None:
        super().__init__(links.template, join_path(path, "for_each"))
        self.items = compile_value(step.items)[0]
        self.max = step.max
        self.bind = step.bind
        self.body = _compile(step.body, join_path(path, "do"), links)

    async def run(self, run: _Run) -> None:
        try:
            items = self.items(run.env)
        except Lookup as exc:
            raise self.error(str(exc)) from None
        if not isinstance(items, list | tuple):
            raise self.error(f"for_each needs a list, not {type(items).__name__}")
        if self.max is not None and len(items) > self.max:
            raise self.error(
                f"the list has {len(items)} items, more than the loop's max of {self.max}"
            )
        for item in items:
            run.env[self.bind] = item
            for step in self.body:
                await step.run(run)


def _compile(steps: tuple[Step, ...], path: str, links: _Links) -> tuple[_Step, ...]:
    compiled: list[_Step] = []
    for index, step in enumerate(steps):
        here = f"{path}[{index}]"
        if isinstance(step, Call):
            compiled.append(_Call(step, here, links))
        elif isinstance(step, React):
            compiled.append(_React(step, here, links))
        elif isinstance(step, Set):
            compiled.append(_Set(step, here, links))
        elif isinstance(step, If):
            compiled.append(_If(step, here, links))
        elif isinstance(step, Repeat):
            compiled.append(_Repeat(step, here, links))
        else:
            compiled.append(_ForEach(step, here, links))
    return tuple(compiled)


class _Knowledge:
    """A template's knowledge sources and the store they are loaded into.

    Loading is idempotent: each document is added under a key made of its content's digest, so
    registering a template again, restarting an agent or replaying it adds nothing twice.
    """

    def __init__(self, template: Template, store: KnowledgeStore) -> None:
        self.store = store
        self.source = f"template:{template.name}"
        self.private: list[tuple[str, Document]] = []
        self.public: list[tuple[str, str, Document]] = []
        for source in template.knowledge.values():
            for document in source.documents:
                digest = blake3.blake3(msgspec.json.encode(document)).hexdigest()
                if source.scope == "private":
                    self.private.append((f"template-knowledge:{digest}", document))
                else:
                    key = f"template-knowledge:{source.namespace}:{digest}"
                    self.public.append((source.namespace, key, document))

    def load_public(self) -> None:
        for namespace, key, document in self.public:
            self.store.add_public(
                namespace,
                document.text,
                title=document.title,
                source=self.source,
                idempotency_key=key,
            )

    async def load_private(self, agent_id: str) -> None:
        if self.private:
            await asyncio.to_thread(self._add_private, agent_id)

    def _add_private(self, agent_id: str) -> None:
        for key, document in self.private:
            self.store.add_private(
                agent_id,
                document.text,
                title=document.title,
                source=self.source,
                idempotency_key=key,
            )


class _Program:
    """A compiled template, shared by every agent of it."""

    def __init__(
        self,
        template: Template,
        links: _Links,
        knowledge: _Knowledge | None = None,
        image: str = "",
    ) -> None:
        self.template = template
        self.image = image
        self.knowledge = knowledge
        self.setup = _compile(template.setup, "setup", links)
        self.program = _compile(template.program, "program", links)
        self.result: Evaluator = compile_value(template.result)[0]

    def inputs(self, given: dict[str, Any]) -> dict[str, Any]:
        declared = self.template.inputs
        unknown = sorted(set(given) - set(declared))
        if unknown:
            names = ", ".join(sorted(declared)) or "none"
            raise ProgramError(
                self.template.name, "inputs", f"unknown input {unknown[0]!r} (inputs: {names})"
            )
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in given:
                value = given[name]
                if not accepts_input(spec.type, value):
                    raise ProgramError(
                        self.template.name,
                        join_path("inputs", name),
                        f"expected a value of type {spec.type}, got {type(value).__name__}",
                    )
                values[name] = value
            elif spec.has_default:
                values[name] = compile_value(spec.default)[0]({})  # a fresh copy per agent
            else:
                raise ProgramError(
                    self.template.name, join_path("inputs", name), "this input is required"
                )
        return values

    def __repr__(self) -> str:
        return f"<template {self.template.name!r}, image {self.image}>"

    async def run(self, ctx: Context, /, **given: Any) -> Any:
        """The agent function: the VM awaits it directly (a wrapper's frame would stay in RAM
        for as long as each agent of the template lives)."""
        env: dict[str, Any] = self.inputs(given)
        env["agent_id"] = ctx.agent_id
        if self.knowledge is not None:
            # Part of provisioning the agent (like its workspace), not an effect of its program:
            # idempotent, so a recovered agent re-runs it harmlessly.
            await self.knowledge.load_private(ctx.agent_id)
        run = _Run(ctx, env)
        for step in self.setup:
            await step.run(run)
        schedule = self.template.schedule
        if schedule is None:
            for step in self.program:
                await step.run(run)
        else:
            args = (schedule.task, schedule.interval_s)
            for _ in range(schedule.ticks):
                tick = await instruction(run.rt, run.proc, Op.SCHEDULE_TASK, args)
                env["tick"] = tick.tick
                for step in self.program:
                    await step.run(run)
        try:
            return self.result(env)
        except Lookup as exc:
            raise ProgramError(self.template.name, "result", str(exc)) from None


@dataclass(frozen=True, slots=True)
class _Linking:
    """What registering a template adds to a VM, decided before anything is added."""

    links: _Links
    models: list[tuple[str, ModelConfig, str | None]]  # VM name, config, key secret
    prompts: list[tuple[str, str]]
    tools: list[RegisteredTool]  # confined copies of network tools


def _key_name(key: ModelKey | None) -> str | None:
    return None if key is None else key.secret


def _link(vm: VM, template: Template) -> _Linking:
    """Check the template against the VM and decide the names its models and prompts get."""
    problems: list[str] = []
    registered = set(vm.tools.names())
    confined: dict[str, RegisteredTool] = {}
    for name, tool in template.tools.items():
        if name not in registered:
            problems.append(f"tool {name!r} is not registered in this VM")
            continue
        found = vm.tools.get(name)
        if tool.access in ("read", "both") and found.read is None:
            problems.append(f"tool {name!r} cannot be read, but the template reads it")
        if tool.access in ("write", "both") and found.write is None:
            problems.append(f"tool {name!r} cannot be written to, but the template writes it")
        if found.confine is None:
            if tool.hosts:
                # The host's own Python code: what it reaches is the host's business.
                log.debug(
                    "template %s: tool %s is in-process; its hosts are not enforced",
                    template.name,
                    name,
                )
            continue
        if not tool.hosts:
            problems.append(
                f"tool {name!r} reaches the network: declare the hosts the template may reach "
                f"with it (tools.{name}.hosts)"
            )
            continue
        try:
            confined[name] = found.confine(
                vm_name(template.name, name), frozenset(tool.hosts), template.name
            )
        except ConfigError as exc:
            problems.append(str(exc))
    new_models: list[tuple[str, ModelConfig, str | None]] = []
    models: dict[str, str] = {}
    for name, model in template.models.items():
        if model.use is not None:
            if model.use not in vm.models:
                problems.append(f"model {name!r} uses {model.use!r}, which this VM does not have")
            models[name] = model.use
            continue
        target = vm_name(template.name, name)
        assert model.spec is not None
        overrides = {
            key: value
            for key, value in (
                ("base_url", model.base_url),
                ("price_in", model.price_in),
                ("price_out", model.price_out),
                ("max_tokens", model.max_tokens),
            )
            if value is not None
        }
        try:
            config = ModelConfig.parse(model.spec, **overrides)
        except (ConfigError, msgspec.ValidationError) as exc:
            problems.append(f"model {name!r}: {exc}")
            continue
        if model.secret is not None:
            if vm.keys is None:
                problems.append(
                    f"model {name!r} takes its API key from secret {model.secret!r}, but this "
                    "VM has no key manager (avm.VM(keys=KeyManager.open(...)))"
                )
            elif config.provider not in KEYED_PROVIDERS:
                problems.append(
                    f"model {name!r}: provider {config.provider!r} takes no API key "
                    f"(secrets are for {', '.join(KEYED_PROVIDERS)})"
                )
        if target in vm.models and (
            vm.models.config(target) != config or _key_name(vm.models.key(target)) != model.secret
        ):
            problems.append(f"model {target!r} is already linked with another configuration")
        new_models.append((target, config, model.secret))
        models[name] = target
    new_prompts: list[tuple[str, str]] = []
    prompts: dict[str, str] = {}
    for name, prompt in template.prompts.items():
        if prompt.use is not None:
            if prompt.use not in vm.prompts:
                problems.append(f"prompt {name!r} uses {prompt.use!r}, which this VM does not hold")
            prompts[name] = prompt.use
            continue
        target = vm_name(template.name, name)
        text = prompt.text or ""
        if target in vm.prompts and vm.prompts.get(target).text != text:
            problems.append(f"prompt {target!r} is already registered with other text")
        new_prompts.append((target, text))
        prompts[name] = target
    if problems:
        raise ConfigError(
            f"template {template.name!r} cannot run in this VM: " + "; ".join(problems)
        )
    return _Linking(
        _Links(template, models, prompts, confined),
        new_models,
        new_prompts,
        list(confined.values()),
    )


def _grant_secrets(vm: VM, template: Template, links: _Links) -> None:
    """With a key manager, let every agent of the template use each secret its tools and models
    declare, with exactly those tools and models, and nothing else; a declared secret must
    already be stored.

    A tool's grant is for the VM name the template's agents call it by; a model's is for the
    model (:func:`~avm.llm.linker.model_tool`), and the linker reveals it to the model's
    provider only.
    """
    if vm.keys is None:
        return
    wanted = [
        (secret, links.tool_names.get(name, name))
        for name, tool in template.tools.items()
        for secret in tool.secrets
    ]
    wanted += [
        (model.secret, model_tool(links.models[name]))
        for name, model in template.models.items()
        if model.secret is not None
    ]
    missing = sorted({secret for secret, _ in wanted if secret not in vm.keys})
    if missing:
        raise ConfigError(
            f"template {template.name!r} needs secrets that are not stored: "
            f"{', '.join(missing)} (store them with 'avm secrets set NAME')"
        )
    for secret, tool in wanted:
        vm.keys.grant(secret, tool=tool, definition=template.name)


def register(vm: VM, image: Image, *, knowledge: KnowledgeStore | None = None) -> AgentDefinition:
    """Link ``image`` into ``vm`` and register it as an agent definition named after it.

    Checks first that the VM has every tool the template declares (able to be read or written
    as the template's access says) and every model and prompt it ``use``\\s, raising
    :class:`ConfigError` listing what is missing; then links the template's own models and
    prompts under :func:`vm_name` and registers the agent. Spawn it with the template's inputs
    as keyword arguments: ``vm.spawn(definition, token="BTC")``.

    A template with knowledge sources needs the ``knowledge`` store they are loaded into (the
    one the VM's ``knowledge.search`` tool searches): public documents are added to their
    namespace now, private ones to each agent's own knowledge when it starts.
    """
    template = image.template
    if template.knowledge and knowledge is None:
        raise ConfigError(
            f"template {template.name!r} has knowledge sources "
            f"({', '.join(sorted(template.knowledge))}): register it with the knowledge store "
            "they are loaded into (register(vm, image, knowledge=KnowledgeStore.open(...)))"
        )
    linking = _link(vm, template)
    _grant_secrets(vm, template, linking.links)
    for target, config, secret in linking.models:
        key = None
        if secret is not None:
            assert vm.keys is not None  # _link refused a secret without a key manager
            key = ModelKey(vm.keys, secret, template.name)
        vm.models.add(target, config, key=key)
    for target, text in linking.prompts:
        vm.prompts.add(target, text)
    for tool in linking.tools:
        vm.tools.replace(tool)
    links = linking.links
    loader = None
    if template.knowledge and knowledge is not None:
        loader = _Knowledge(template, knowledge)
        loader.load_public()
    program = _Program(template, links, loader, image.digest)
    return vm.agent(
        name=template.name,
        budget=template.budget,
        priority=template.priority,
        tools=sorted(links.tool(name) for name in template.tools),
        models=sorted(set(links.models.values())),
        prompts=sorted(set(links.prompts.values())),
    )(program.run)
