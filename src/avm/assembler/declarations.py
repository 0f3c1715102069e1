"""The declarations of a template: what it may use and how it runs.

This module owns checking ``secrets``, ``inputs``, ``models``, ``prompts``, ``tools``,
``knowledge`` and ``schedule``, turning each into its part of the
:class:`~avm.assembler.template.Template` and remembering what was declared, so that the
program's checks (:mod:`avm.assembler.steps`) can tell a declared name from an undeclared one.
Prompt and tool-schema files are read here and inlined.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from avm.assembler.shapes import (
    DECLARED_NAME,
    NAME,
    SECRET_NAME,
    TOOL_NAME,
    Shapes,
    did_you_mean,
    listing,
)
from avm.assembler.source import (
    MapNode,
    ScalarNode,
    SeqNode,
    SourceNode,
    describe,
    join_path,
    load_source,
    to_data,
)
from avm.assembler.template import (
    ACCESS_MODES,
    INPUT_TYPES,
    KNOWLEDGE_SCOPES,
    Input,
    Knowledge,
    Model,
    Prompt,
    Schedule,
    Tool,
)

__all__ = [
    "INPUT_KINDS",
    "MODEL_FIELDS",
    "RESERVED_NAMES",
    "TOOL_FIELDS",
    "Declarations",
    "accepts_input",
]

RESERVED_NAMES: Final = ("agent_id", "tick")
MODEL_FIELDS: Final = ("spec", "use", "base_url", "price_in", "price_out", "max_tokens", "secret")
TOOL_FIELDS: Final = ("access", "description", "hosts", "secrets", "schema", "schema_file")

_MODEL_SPEC = re.compile(r"[A-Za-z0-9_.-]+:\S+")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*(:\d{{1,5}})?")
_URI = re.compile(r"([a-z][a-z0-9+.-]*)://(\S+)")
_KNOWLEDGE_SCHEMES: Final = ("http", "https", "s3", "gs", "file")

INPUT_KINDS: Final[dict[str, type | None]] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "list": list,
    "object": dict,
    "any": None,
}


def accepts_input(kind: str, value: Any) -> bool:
    """Whether a value fits an input type (the interpreter checks spawn arguments with it)."""
    if kind == "any":
        return True
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, int | float)
    expected = {"string": str, "list": list, "object": dict, "boolean": bool}[kind]
    return isinstance(value, expected)


class Declarations(Shapes):
    """Checks the declarations and keeps what they declare."""

    def __init__(self, file: str, base_dir: Path | None, image: bool) -> None:
        super().__init__(file, base_dir, image)
        self.secrets: set[str] = set()
        self.inputs: dict[str, Input] = {}
        self.models: dict[str, Model] = {}
        self.prompts: dict[str, Prompt] = {}
        self.tools: dict[str, Tool] = {}
        # Every model, prompt and tool name declared, valid declaration or not: a use of one
        # whose declaration has a problem is not reported a second time as undeclared.
        self.named: dict[str, set[str]] = {"models": set(), "prompts": set(), "tools": set()}
        self.scheduled = False

    def check_secrets(self, node: SourceNode) -> tuple[str, ...]:
        names = self.names(node, "secrets", SECRET_NAME, "secret names")
        self.secrets = set(names)
        return tuple(sorted(names))

    def secret_ref(self, node: SourceNode, path: str) -> str | None:
        name = self.string(node, path, pattern=SECRET_NAME, expected="a secret name")
        if name is not None and name not in self.secrets:
            self.problem(
                node.mark,
                path,
                f"a secret declared under secrets: ({listing(self.secrets)})",
                repr(name),
                did_you_mean(name, self.secrets) or "declare it in the template's secrets list",
            )
            return None
        return name

    def check_inputs(self, node: SourceNode) -> dict[str, Input]:
        inputs: dict[str, Input] = {}
        section = self.mapping(node, "inputs", "a mapping of input names to types")
        if section is None:
            return inputs
        for name, value in section.values.items():
            path = join_path("inputs", name)
            if not self.declared_name(section, name, "inputs", NAME):
                continue
            if name in RESERVED_NAMES:
                self.problem(
                    section.keys[name], path, "a name other than agent_id and tick", repr(name)
                )
                continue
            if isinstance(value, ScalarNode) and isinstance(value.value, str):
                kind = self.choice(value, path, INPUT_TYPES)
                if kind is not None:
                    inputs[name] = Input(type=kind)
                continue
            spec = self.mapping(value, path, "an input type, or a mapping with type and default")
            if spec is None:
                continue
            self.fields(spec, path, ("type", "default", "description"), "an input")
            kind = "any"
            if "type" in spec.values:
                kind = self.choice(spec.values["type"], join_path(path, "type"), INPUT_TYPES) or ""
            description = ""
            if "description" in spec.values:
                description = (
                    self.string(
                        spec.values["description"], join_path(path, "description"), empty=True
                    )
                    or ""
                )
            has_default = "default" in spec.keys
            default = None
            if has_default and "default" in spec.values:
                default_node = spec.values["default"]
                default = to_data(default_node)
                if kind and not accepts_input(kind, default):
                    self.problem(
                        default_node.mark,
                        join_path(path, "default"),
                        f"a default of type {kind}",
                        describe(default_node),
                    )
            if kind:
                inputs[name] = Input(
                    type=kind, description=description, has_default=has_default, default=default
                )
        self.inputs = inputs
        return inputs

    def check_models(self, node: SourceNode) -> dict[str, Model]:
        models: dict[str, Model] = {}
        section = self.mapping(node, "models", "a mapping of model names to models")
        if section is None:
            return models
        for name, value in section.values.items():
            path = join_path("models", name)
            if not self.declared_name(section, name, "models", DECLARED_NAME):
                continue
            self.named["models"].add(name)
            if isinstance(value, ScalarNode) and isinstance(value.value, str):
                spec = self.string(
                    value, path, pattern=_MODEL_SPEC, expected="a 'provider:model' spec"
                )
                if spec is not None:
                    models[name] = Model(spec=spec)
                continue
            entry = self.mapping(value, path, "a 'provider:model' spec or a model mapping")
            if entry is None:
                continue
            model = self.model_entry(entry, path)
            if model is not None:
                models[name] = model
        self.models = models
        return models

    def model_entry(self, entry: MapNode, path: str) -> Model | None:
        self.fields(entry, path, MODEL_FIELDS, "a model")
        values = entry.values
        if ("spec" in entry.keys) == ("use" in entry.keys):
            found = "both" if "spec" in entry.keys else "neither"
            self.problem(entry.mark, path, "exactly one of 'spec' and 'use'", found)
            return None
        if "use" in entry.keys:
            for key in entry:
                if key not in ("use",) and key in MODEL_FIELDS:
                    self.problem(
                        entry.keys[key],
                        join_path(path, key),
                        "only 'use' for a model the VM configures",
                        repr(key),
                        "the VM's configuration sets its endpoint, prices and key",
                    )
            use = self.string(
                values["use"],
                join_path(path, "use"),
                pattern=DECLARED_NAME,
                expected="the name of a model the VM configures",
            )
            return None if use is None else Model(use=use)
        spec = self.string(
            values["spec"],
            join_path(path, "spec"),
            pattern=_MODEL_SPEC,
            expected="a 'provider:model' spec",
        )
        fields: dict[str, Any] = {}
        if "base_url" in values:
            fields["base_url"] = self.string(
                values["base_url"],
                join_path(path, "base_url"),
                pattern=_URL,
                expected="an http(s) URL",
            )
        for price in ("price_in", "price_out"):
            if price in values:
                fields[price] = self.number(
                    values[price],
                    join_path(path, price),
                    positive=False,
                    expected="a non-negative number (gas per token)",
                )
        if "max_tokens" in values:
            fields["max_tokens"] = self.integer(
                values["max_tokens"],
                join_path(path, "max_tokens"),
                minimum=1,
                expected="a positive integer",
            )
        if "secret" in values:
            fields["secret"] = self.secret_ref(values["secret"], join_path(path, "secret"))
        if spec is None:
            return None
        return Model(spec=spec, **{k: v for k, v in fields.items() if v is not None})

    def check_prompts(self, node: SourceNode) -> dict[str, Prompt]:
        prompts: dict[str, Prompt] = {}
        section = self.mapping(node, "prompts", "a mapping of prompt names to prompts")
        if section is None:
            return prompts
        for name, value in section.values.items():
            path = join_path("prompts", name)
            if not self.declared_name(section, name, "prompts", DECLARED_NAME):
                continue
            self.named["prompts"].add(name)
            if isinstance(value, ScalarNode) and isinstance(value.value, str):
                prompts[name] = Prompt(text=value.value)
                continue
            entry = self.mapping(value, path, "prompt text, or a mapping with text, file or use")
            if entry is None:
                continue
            self.fields(entry, path, ("text", "file", "use"), "a prompt")
            given = [key for key in ("text", "file", "use") if key in entry.keys]
            if len(given) != 1:
                found = " and ".join(map(repr, given)) if given else "none of them"
                self.problem(entry.mark, path, "exactly one of 'text', 'file' and 'use'", found)
                continue
            key = given[0]
            if key not in entry.values:
                continue
            child = entry.values[key]
            if key == "text":
                text = self.string(child, join_path(path, "text"), empty=True)
                if text is not None:
                    prompts[name] = Prompt(text=text)
            elif key == "file":
                read = self.file_text(child, join_path(path, "file"))
                if read is not None:
                    prompts[name] = Prompt(text=read[0])
            else:
                use = self.string(
                    child,
                    join_path(path, "use"),
                    pattern=DECLARED_NAME,
                    expected="the id of a prompt the VM holds",
                )
                if use is not None:
                    prompts[name] = Prompt(use=use)
        self.prompts = prompts
        return prompts

    def check_tools(self, node: SourceNode) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        section = self.mapping(node, "tools", "a mapping of tool names to their declarations")
        if section is None:
            return tools
        for name, value in section.values.items():
            path = join_path("tools", name)
            if not self.declared_name(section, name, "tools", TOOL_NAME):
                continue
            self.named["tools"].add(name)
            if isinstance(value, ScalarNode) and value.value is None:
                tools[name] = Tool()
                continue
            entry = self.mapping(value, path, "a tool declaration (a mapping, or nothing)")
            if entry is None:
                continue
            tool = self.tool_entry(entry, path)
            if tool is not None:
                tools[name] = tool
        self.tools = tools
        return tools

    def tool_entry(self, entry: MapNode, path: str) -> Tool | None:
        self.fields(entry, path, TOOL_FIELDS, "a tool")
        values = entry.values
        ok = True
        fields: dict[str, Any] = {}
        if "access" in values:
            access = self.choice(values["access"], join_path(path, "access"), ACCESS_MODES)
            ok &= access is not None
            fields["access"] = access
        if "description" in values:
            description = self.string(
                values["description"], join_path(path, "description"), empty=True
            )
            fields["description"] = description or ""
        if "hosts" in values:
            fields["hosts"] = tuple(
                sorted(
                    self.names(
                        values["hosts"],
                        join_path(path, "hosts"),
                        _HOST,
                        "host names (host, host:port or *.domain)",
                    )
                )
            )
        if "secrets" in values:
            secrets_node = values["secrets"]
            secrets = self.names(
                secrets_node, join_path(path, "secrets"), SECRET_NAME, "secret names"
            )
            if isinstance(secrets_node, SeqNode):
                for index, item in enumerate(secrets_node.items):
                    if isinstance(item, ScalarNode) and item.value in secrets:
                        self.secret_ref(item, join_path(path, "secrets") + f"[{index}]")
            fields["secrets"] = tuple(sorted(secrets))
        if "schema" in entry.keys and "schema_file" in entry.keys:
            self.problem(
                entry.keys["schema_file"],
                join_path(path, "schema_file"),
                "either 'schema' or 'schema_file'",
                "both",
            )
            ok = False
        elif "schema" in values:
            fields["schema"] = self.tool_schema(values["schema"], join_path(path, "schema"))
        elif "schema_file" in values:
            read = self.file_text(values["schema_file"], join_path(path, "schema_file"))
            if read is not None:
                fields["schema"] = self.schema_file(read, values["schema_file"], path)
        if not ok:
            return None
        return Tool(**{k: v for k, v in fields.items() if v is not None})

    def tool_schema(self, node: SourceNode, path: str) -> dict[str, Any] | None:
        entry = self.mapping(node, path, "a JSON Schema object for the tool's input")
        if entry is None:
            return None
        kind = entry.values.get("type")
        if kind is not None and not (isinstance(kind, ScalarNode) and kind.value == "object"):
            self.problem(
                kind.mark,
                join_path(path, "type"),
                "'object' (tools take a mapping)",
                describe(kind),
            )
            return None
        data = to_data(entry)
        assert isinstance(data, dict)
        return data

    def schema_file(
        self, read: tuple[str, Path], node: SourceNode, path: str
    ) -> dict[str, Any] | None:
        text, _ = read
        shown = Path(self.file).parent / str(to_data(node))  # as the author would name it
        root, problems = load_source(text, str(shown))
        self.problems.extend(problems)
        if root is None:
            return None
        return self.tool_schema(root, join_path(path, "schema_file"))

    def check_knowledge(self, node: SourceNode) -> dict[str, Knowledge]:
        sources: dict[str, Knowledge] = {}
        section = self.mapping(node, "knowledge", "a mapping of names to knowledge sources")
        if section is None:
            return sources
        for name, value in section.values.items():
            path = join_path("knowledge", name)
            if not self.declared_name(section, name, "knowledge", DECLARED_NAME):
                continue
            if isinstance(value, ScalarNode):
                source = self.knowledge_source(value, path)
                if source is not None:
                    sources[name] = Knowledge(source=source)
                continue
            entry = self.mapping(value, path, "a path or URI, or a mapping with source and scope")
            if entry is None:
                continue
            self.fields(entry, path, ("source", "scope", "description"), "a knowledge source")
            source_node = self.required(entry, "source", path, "a path or URI")
            source = None
            if source_node is not None:
                source = self.knowledge_source(source_node, join_path(path, "source"))
            scope = "private"
            if "scope" in entry.values:
                scope = (
                    self.choice(entry.values["scope"], join_path(path, "scope"), KNOWLEDGE_SCOPES)
                    or ""
                )
            description = ""
            if "description" in entry.values:
                description = (
                    self.string(
                        entry.values["description"], join_path(path, "description"), empty=True
                    )
                    or ""
                )
            if source is not None and scope:
                sources[name] = Knowledge(
                    source=source,
                    scope="public" if scope == "public" else "private",
                    description=description,
                )
        return sources

    def knowledge_source(self, node: SourceNode, path: str) -> str | None:
        expected = f"a relative path or a URI ({', '.join(_KNOWLEDGE_SCHEMES)})"
        text = self.string(node, path, expected=expected)
        if text is None:
            return None
        uri = _URI.fullmatch(text)
        if uri is not None:
            if uri.group(1) not in _KNOWLEDGE_SCHEMES:
                self.problem(node.mark, path, expected, repr(text))
                return None
            return text
        if "://" in text or Path(text).is_absolute():
            self.problem(node.mark, path, expected, repr(text))
            return None
        if self.base_dir is not None:
            base = self.base_dir.resolve()
            target = (base / text).resolve()
            if not target.is_relative_to(base):
                self.problem(node.mark, path, "a path inside the template's directory", repr(text))
                return None
            if not target.exists():
                self.problem(node.mark, path, "an existing file or directory", repr(text))
                return None
        return text

    def check_schedule(self, node: SourceNode) -> Schedule | None:
        entry = self.mapping(node, "schedule", "a mapping with interval_s and ticks")
        if entry is None:
            return None
        self.scheduled = True
        self.fields(entry, "schedule", ("interval_s", "ticks", "task"), "a schedule")
        interval_node = self.required(entry, "interval_s", "schedule", "a positive number")
        ticks_node = self.required(entry, "ticks", "schedule", "a positive integer")
        interval = ticks = None
        if interval_node is not None:
            interval = self.number(
                interval_node,
                "schedule.interval_s",
                positive=True,
                expected="a positive number of seconds",
            )
        if ticks_node is not None:
            ticks = self.integer(
                ticks_node,
                "schedule.ticks",
                minimum=1,
                expected="a positive integer (the schedule's bound)",
            )
        task = "tick"
        if "task" in entry.values:
            task = self.string(entry.values["task"], "schedule.task", expected="a task id") or ""
        if interval is None or ticks is None or not task:
            return None
        return Schedule(interval_s=interval, ticks=ticks, task=task)
