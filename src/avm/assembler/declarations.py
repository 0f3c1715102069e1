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
    Document,
    Input,
    Knowledge,
    Model,
    Prompt,
    Schedule,
    Tool,
)

__all__ = [
    "INPUT_KINDS",
    "KNOWLEDGE_SUFFIXES",
    "MAX_KNOWLEDGE_BYTES",
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
_KNOWLEDGE_FIELDS: Final = (
    "source",
    "text",
    "title",
    "documents",
    "scope",
    "namespace",
    "description",
)
#: The files of a knowledge directory that are read (others are left alone).
KNOWLEDGE_SUFFIXES: Final = (".md", ".markdown", ".txt")
#: All knowledge of one template, in UTF-8 bytes: an image must stay loadable (source.MAX_BYTES).
MAX_KNOWLEDGE_BYTES: Final = 512 * 1024

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
        self.knowledge_bytes = 0

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
        """Knowledge sources, read now: a file or directory path (``playbook: notes/``), or a
        mapping with one of ``source`` (a path), ``text`` (inline, with an optional ``title``)
        or ``documents`` (a list of ``{title, text}``, the form an image holds), and
        ``scope``, ``namespace`` (public only) and ``description``."""
        sources: dict[str, Knowledge] = {}
        section = self.mapping(node, "knowledge", "a mapping of names to knowledge sources")
        if section is None:
            return sources
        self.knowledge_bytes = 0
        for name, value in section.values.items():
            path = join_path("knowledge", name)
            if not self.declared_name(section, name, "knowledge", DECLARED_NAME):
                continue
            if isinstance(value, ScalarNode):
                documents = self.knowledge_files(value, path)
                if documents is not None:
                    sources[name] = Knowledge(documents=documents)
                continue
            entry = self.mapping(value, path, "a path, or a mapping with source, text or documents")
            if entry is None:
                continue
            source = self.knowledge_entry(entry, path)
            if source is not None:
                sources[name] = source
        return sources

    def knowledge_entry(self, entry: MapNode, path: str) -> Knowledge | None:
        self.fields(entry, path, _KNOWLEDGE_FIELDS, "a knowledge source")
        values = entry.values
        given = [key for key in ("source", "text", "documents") if key in entry.keys]
        if len(given) != 1:
            found = " and ".join(map(repr, given)) if given else "none of them"
            self.problem(entry.mark, path, "exactly one of 'source', 'text' and 'documents'", found)
            return None
        documents: tuple[Document, ...] | None = None
        key = given[0]
        if key in values:
            child, child_path = values[key], join_path(path, key)
            if key == "source":
                documents = self.knowledge_files(child, child_path)
            elif key == "text":
                title = ""
                if "title" in values:
                    title = self.string(values["title"], join_path(path, "title"), empty=True) or ""
                text = self.knowledge_text(child, child_path)
                documents = None if text is None else (Document(title=title, text=text),)
            else:
                documents = self.knowledge_documents(child, child_path)
        if "title" in entry.keys and key != "text":
            self.problem(
                entry.keys["title"],
                join_path(path, "title"),
                "'title' only with 'text'",
                f"'title' with {key!r}",
            )
            documents = None
        scope = "private"
        if "scope" in values:
            scope = self.choice(values["scope"], join_path(path, "scope"), KNOWLEDGE_SCOPES) or ""
        namespace = "public"
        if "namespace" in values:
            namespace = (
                self.string(
                    values["namespace"],
                    join_path(path, "namespace"),
                    pattern=DECLARED_NAME,
                    expected="a namespace name",
                )
                or ""
            )
            if scope == "private":
                self.problem(
                    entry.keys["namespace"],
                    join_path(path, "namespace"),
                    "a namespace only with scope: public",
                    "scope private",
                    "private knowledge belongs to each agent, not to a namespace",
                )
                namespace = ""
        description = ""
        if "description" in values:
            description = (
                self.string(values["description"], join_path(path, "description"), empty=True) or ""
            )
        if documents is None or not scope or not namespace:
            return None
        return Knowledge(
            documents=documents,
            scope="public" if scope == "public" else "private",
            namespace=namespace,
            description=description,
        )

    def knowledge_text(self, node: SourceNode, path: str, what: str = "") -> str | None:
        text = self.string(node, path, expected="non-empty text")
        if text is None:
            return None
        if not text.strip():
            self.problem(node.mark, path, "non-empty text", f"{what or 'text'} of only whitespace")
            return None
        self.knowledge_bytes += len(text.encode())
        if self.knowledge_bytes > MAX_KNOWLEDGE_BYTES:
            self.problem(
                node.mark,
                path,
                f"knowledge of at most {MAX_KNOWLEDGE_BYTES:,} bytes in all",
                f"{self.knowledge_bytes:,} bytes so far",
                "a larger corpus belongs in a public namespace the host loads",
            )
            return None
        return text

    def knowledge_documents(self, node: SourceNode, path: str) -> tuple[Document, ...] | None:
        if not isinstance(node, SeqNode) or not node.items:
            self.problem(node.mark, path, "a non-empty list of {title, text}", describe(node))
            return None
        documents: list[Document] = []
        for index, item in enumerate(node.items):
            here = f"{path}[{index}]"
            entry = self.mapping(item, here, "a document: {title, text}")
            if entry is None:
                continue
            self.fields(entry, here, ("title", "text"), "a document")
            title_node = self.required(entry, "title", here, "a title")
            text_node = self.required(entry, "text", here, "non-empty text")
            title = None
            if title_node is not None:
                title = self.string(title_node, join_path(here, "title"), empty=True)
            text = (
                None
                if text_node is None
                else self.knowledge_text(text_node, join_path(here, "text"))
            )
            if title is not None and text is not None:
                documents.append(Document(title=title, text=text))
        return tuple(documents) if len(documents) == len(node.items) else None

    def knowledge_files(self, node: SourceNode, path: str) -> tuple[Document, ...] | None:
        """The documents of a file, or of every text or markdown file under a directory."""
        name = self.string(node, path, expected="a relative path to a file or directory")
        if name is None:
            return None
        if "\x00" in name:
            self.problem(node.mark, path, "a file or directory name", f"{name!r} (a NUL byte)")
            return None
        if _URI.fullmatch(name) is not None or Path(name).is_absolute():
            self.problem(
                node.mark,
                path,
                "a relative path to a file or directory",
                repr(name),
                "knowledge is read when the template is built; nothing is fetched",
            )
            return None
        if self.base_dir is None:
            why = (
                "an image holds no file references"
                if self.image
                else ("this template has no directory to read files from")
            )
            self.problem(node.mark, path, f"inline text or documents ({why})", repr(name))
            return None
        base = self.base_dir.resolve()
        target = (base / name).resolve()
        if not target.is_relative_to(base):
            self.problem(node.mark, path, "a path inside the template's directory", repr(name))
            return None
        if target.is_dir():
            files = sorted(
                f
                for f in target.rglob("*")
                if f.suffix.lower() in KNOWLEDGE_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(target).parts)
            )
            if not files:
                suffixes = ", ".join(KNOWLEDGE_SUFFIXES)
                self.problem(
                    node.mark,
                    path,
                    f"a directory holding {suffixes} files",
                    f"{name!r} (none there)",
                )
                return None
        elif target.is_file():
            files = [target]
        else:
            self.problem(node.mark, path, "an existing file or directory", repr(name))
            return None
        documents: list[Document] = []
        for file in files:
            title = file.relative_to(base).as_posix()
            if not file.resolve().is_relative_to(base):  # a symlink out of the directory
                self.problem(
                    node.mark,
                    path,
                    "files inside the template's directory",
                    f"{title!r} (a link out of it)",
                )
                return None
            try:
                text = file.read_bytes().decode("utf-8")
            except OSError as exc:
                self.problem(node.mark, path, "readable files", f"{title!r} ({exc.strerror})")
                return None
            except UnicodeDecodeError:
                self.problem(node.mark, path, "UTF-8 text files", f"{title!r} (not UTF-8)")
                return None
            read = self.knowledge_text(ScalarNode(node.mark, text), path, repr(title))
            if read is None:
                return None
            documents.append(Document(title=title, text=read))
        return tuple(documents)

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
