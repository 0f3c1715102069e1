"""The program of a template: its steps, the names they bind and the references they read.

This module owns checking ``setup``, ``program`` and ``result``: that each step holds one
action (an instruction, ``react``, ``set``, ``if``, ``repeat`` or ``for_each``) and only the
fields that action takes; an instruction's arguments, named and bound with the instruction
set's own :meth:`InstructionSpec.bind` and, where literal, checked with its own
:class:`Param` rules; that the tools, models and prompts they name are declared (and a tool
used as its ``access`` allows); that loops are bounded; and that every ``${name.field}`` reads
a name bound before it, and a field its value has where the value's type is known.

Scoping is lexical and simple: inputs and ``agent_id`` are visible everywhere; names bound at
the top level of ``setup`` are visible to the rest of ``setup``, to ``program`` and ``result``;
``tick`` (when there is a schedule) and names bound at the top level of ``program`` are visible
to the rest of ``program`` and to ``result``; a name bound inside an ``if`` branch or a loop body
is visible only inside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec

from avm._core.host.time import ScheduleTick
from avm._core.isa import INSTRUCTIONS, Op, Param
from avm.assembler.declarations import RESERVED_NAMES, Declarations
from avm.assembler.expressions import (
    ExpressionSyntaxError,
    Ref,
    parse_condition,
    parse_text,
    refs_in_value,
)
from avm.assembler.shapes import NAME, TOOL_NAME, did_you_mean, listing
from avm.assembler.source import (
    MapNode,
    Mark,
    ScalarNode,
    SeqNode,
    SourceNode,
    describe,
    join_path,
    to_data,
)
from avm.assembler.template import (
    Call,
    ForEach,
    If,
    React,
    Repeat,
    Set,
    Step,
)
from avm.errors import InvalidArgument
from avm.llm.prompts import Prompt as LoadedPrompt
from avm.llm.types import ModelReply
from avm.storage.agent_sql import SqlResult

__all__ = [
    "ARGUMENT_DEFAULTS",
    "CONTROL_STEPS",
    "REACT_FIELDS",
    "STEP_FIELDS",
    "Kind",
    "ProgramChecker",
    "Scope",
    "instruction_key",
]

CONTROL_STEPS: Final = ("react", "set", "if", "repeat", "for_each")
STEP_FIELDS: Final = ("as", "then", "else", "max", "do")
REACT_FIELDS: Final = ("model", "input", "tools", "max_turns", "max_tokens", "temperature")
# The Python context passes an empty parameter list when SQL is called without one; templates
# get the same default, so a CREATE TABLE needs no ``params: []``.
ARGUMENT_DEFAULTS: Final[dict[tuple[Op, str], Any]] = {
    (Op.SQL_EXECUTE, "params"): [],
    (Op.SQL_FETCH, "params"): [],
}

# What instructions return, where it is a known shape: ``${reply.txt}`` is caught at build time.
_RESULT_KINDS: Final[dict[Op, type]] = {
    Op.RUN_MODEL: ModelReply,
    Op.LOAD_PROMPT: LoadedPrompt,
    Op.SQL_EXECUTE: SqlResult,
    Op.SCHEDULE_TASK: ScheduleTick,
    Op.SQL_FETCH: list,
    Op.GET_TOOLS_LIST: list,
    Op.NOW: float,
    Op.RANDOM: float,
    Op.SWARM_CONNECT: int,
    Op.SWARM_BROADCAST: str,
}
_SCALAR_KINDS: Final = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}

Kind = type | None
Scope = dict[str, Kind]


def instruction_key(key: str) -> Op | None:
    """The instruction a step key names (``kv_store`` or ``KV_STORE``), or None."""
    if key.upper() != key and key.lower() != key:
        return None
    try:
        return Op(key.upper())
    except ValueError:
        return None


_TYPE_PHRASES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    tuple: "a list",
    dict: "a mapping",
    object: "any value",
}
# The instruction set words its value checks as "must ..."; as an adjective of what is expected:
_CHECK_WORDS: Final = {
    "must not be negative": "non-negative",
    "must be positive": "positive",
    "must not be empty": "non-empty",
}


def _param_phrase(param: Param) -> str:
    """What types a parameter takes, in words: "a string", "a list or a mapping"."""
    names: list[str] = []
    for kind in param.types:
        if kind is int and float in param.types:
            continue  # (int, float) reads as "a number"
        phrase = _TYPE_PHRASES.get(kind, kind.__name__)
        if phrase not in names:
            names.append(phrase)
    return " or ".join(names)


def _expected_for(param: Param, failure: str | None = None) -> str:
    """What a parameter takes, in words; ``failure`` is its value check's complaint, if any."""
    phrase = _param_phrase(param)
    if failure is None:
        return phrase
    word = _CHECK_WORDS.get(failure)
    if word is None or " " not in phrase or " or " in phrase:
        return f"{phrase} that {failure}"
    noun = phrase.split(" ", 1)[1]  # "a number" -> "a non-negative number"
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word} {noun}"


def _value_check_failure(param: Param, value: Any, failure: str) -> str | None:
    """``failure`` if it is the parameter's value check speaking (the type was right)."""
    if param.check is None or value is None:
        return None
    try:
        return failure if param.check(value) == failure else None
    except TypeError:  # the check cannot even compare a value of the wrong type
        return None


def _field_kind(struct: type, field: str) -> Kind | str:
    """The kind of a struct field, or an error message if it has no such field."""
    fields = {f.name: f.type for f in msgspec.structs.fields(struct)}
    if field not in fields:
        return f"a field of {struct.__name__} ({', '.join(fields)})"
    annotation = fields[field]
    if isinstance(annotation, type) and (
        issubclass(annotation, msgspec.Struct) or annotation in (str, int, float, bool)
    ):
        return annotation
    origin = getattr(annotation, "__origin__", None)
    if origin in (tuple, list):
        return list
    return None


class ProgramChecker(Declarations):
    """Checks the steps of ``setup`` and ``program``, and expressions, against the declarations."""

    def __init__(self, file: str, base_dir: Path | None, image: bool) -> None:
        super().__init__(file, base_dir, image)
        self.bound_anywhere: set[str] = set()

    def check_ref(self, ref: Ref, scope: Scope, mark: Mark, path: str) -> Kind:
        """Report a reference to an unbound name or a missing field; return its kind."""
        if ref.name not in scope:
            hint = did_you_mean(ref.name, scope)
            if ref.name == "tick" and not self.scheduled:
                hint = "tick is defined only when the template has a schedule"
            elif ref.name in self.bound_anywhere:
                hint = f"{ref.name!r} is bound later, or inside an if or loop body"
            self.problem(
                mark,
                path,
                f"a name bound before this step ({listing(scope)})",
                str(ref),
                hint,
            )
            return None
        kind = scope[ref.name]
        for index, segment in enumerate(ref.path):
            where = "${" + ".".join([ref.name, *map(str, ref.path[:index])]) + "}"
            if kind is None or kind is dict:
                return None
            if kind is list:
                if not isinstance(segment, int):
                    self.problem(mark, path, f"a number to index the list {where}", str(ref))
                return None
            if kind in _SCALAR_KINDS:
                self.problem(
                    mark, path, f"no field access: {where} is {_SCALAR_KINDS[kind]}", str(ref)
                )
                return None
            if isinstance(segment, int):
                self.problem(mark, path, f"a field name: {where} is a {kind.__name__}", str(ref))
                return None
            step = _field_kind(kind, segment)
            if isinstance(step, str):
                fields = [f.name for f in msgspec.structs.fields(kind)]
                self.problem(mark, path, step, str(ref), did_you_mean(segment, fields))
                return None
            kind = step
        return kind

    def check_value(self, node: SourceNode, path: str, scope: Scope) -> None:
        """Check every expression inside template data."""
        if isinstance(node, MapNode):
            for key, child in node.values.items():
                self.check_value(child, join_path(path, key), scope)
        elif isinstance(node, SeqNode):
            for index, child in enumerate(node.items):
                self.check_value(child, f"{path}[{index}]", scope)
        elif isinstance(node.value, str) and "$" in node.value:
            try:
                parts = parse_text(node.value)
            except ExpressionSyntaxError as exc:
                self.problem(
                    node.mark,
                    path,
                    "a valid expression",
                    f"{describe(node)} (at character {exc.offset + 1}: {exc.message})",
                )
                return
            for part in parts:
                if isinstance(part, Ref):
                    self.check_ref(part, scope, node.mark, path)

    def single_ref(self, node: SourceNode) -> Ref | None:
        """The reference a string consists of, if it is exactly one ``${...}``."""
        if not isinstance(node, ScalarNode) or not isinstance(node.value, str):
            return None
        try:
            parts = parse_text(node.value)
        except ExpressionSyntaxError:
            return None
        return parts[0] if len(parts) == 1 and isinstance(parts[0], Ref) else None

    def bind_name(self, node: SourceNode, path: str, scope: Scope, kind: Kind) -> str | None:
        name = self.string(node, path, pattern=NAME, expected="a name ([A-Za-z_][A-Za-z0-9_]*)")
        if name is None:
            return None
        if name in RESERVED_NAMES or name in self.inputs:
            what = "an input" if name in self.inputs else "a name the VM binds"
            self.problem(node.mark, path, f"a new name ({name!r} is {what})", repr(name))
            return None
        scope[name] = kind
        self.bound_anywhere.add(name)
        return name

    # -- steps -----------------------------------------------------------------------------------

    def check_steps(
        self, node: SourceNode | None, path: str, scope: Scope, *, required: bool
    ) -> tuple[Step, ...]:
        if node is None:
            return ()
        if not isinstance(node, SeqNode) or (required and not node.items):
            expected = "a non-empty list of steps" if required else "a list of steps"
            self.problem(node.mark, path, expected, describe(node))
            return ()
        steps: list[Step] = []
        for index, item in enumerate(node.items):
            step = self.check_step(item, f"{path}[{index}]", scope)
            if step is not None:
                steps.append(step)
        return tuple(steps)

    def check_step(self, node: SourceNode, path: str, scope: Scope) -> Step | None:
        step = self.mapping(node, path, "a step (a mapping such as {kv_store: {...}})")
        if step is None:
            return None
        actions: list[str] = []
        unknown = False
        for key in step:
            if key in CONTROL_STEPS or instruction_key(key) is not None:
                actions.append(key)
            elif key not in STEP_FIELDS:
                unknown = True
                candidates = [*CONTROL_STEPS, *STEP_FIELDS, *(op.lower() for op in Op)]
                if key.isupper():
                    candidates = [op.value for op in Op]
                self.problem(
                    step.keys[key],
                    join_path(path, key),
                    "an instruction (such as kv_store) or a step field "
                    f"({', '.join(CONTROL_STEPS + STEP_FIELDS)})",
                    f"unknown {key!r}",
                    did_you_mean(key, candidates),
                )
        if not actions:
            if unknown:
                return None  # the unknown key was most likely meant as the action
            self.problem(
                step.mark,
                path,
                f"one instruction or one of {', '.join(CONTROL_STEPS)}",
                "none",
            )
            return None
        if len(actions) > 1:
            self.problem(
                step.keys[actions[1]],
                join_path(path, actions[1]),
                "one action per step (split it into two steps)",
                f"{actions[0]!r} and {actions[1]!r}",
            )
            return None
        action = actions[0]
        if action not in step.values:
            return None  # its value was refused while parsing, and that was reported
        allowed = {
            "if": ("then", "else"),
            "repeat": ("do", "max", "as"),
            "for_each": ("do", "max", "as"),
        }.get(action, ("as",))
        for key in step:
            if key in STEP_FIELDS and key not in allowed:
                self.problem(
                    step.keys[key],
                    join_path(path, key),
                    f"a field of {'an' if action[0] in 'aeiou' else 'a'} {action} step "
                    f"({', '.join(allowed)})",
                    f"{key!r}",
                )
        value = step.values.get(action)
        if action == "if":
            return self.check_if(step, value, path, scope)
        if action == "repeat":
            return self.check_repeat(step, value, path, scope)
        if action == "for_each":
            return self.check_for_each(step, value, path, scope)
        if action == "set":
            return self.check_set(step, value, path, scope)
        if action == "react":
            return self.check_react(step, value, path, scope)
        op = instruction_key(action)
        assert op is not None
        return self.check_call(step, op, action, value, path, scope)

    def bind_of(self, step: MapNode, path: str, scope: Scope, kind: Kind) -> str | None:
        if "as" not in step.values:
            return None
        return self.bind_name(step.values["as"], join_path(path, "as"), scope, kind)

    def check_call(
        self,
        step: MapNode,
        op: Op,
        key: str,
        node: SourceNode | None,
        path: str,
        scope: Scope,
    ) -> Call | None:
        spec = INSTRUCTIONS[op]
        here = join_path(path, key)
        key_mark = step.keys[key]
        if not spec.available:
            self.problem(
                key_mark,
                here,
                "an instruction this version of AVM implements",
                f"{op} (not available yet)",
            )
            return None
        args: dict[str, SourceNode] = {}
        mark = key_mark
        bound = True
        if node is not None and not (isinstance(node, ScalarNode) and node.value is None):
            mapping = self.mapping(node, here, f"the arguments of {op} by name (a mapping)")
            if mapping is None:
                return None
            args, mark = mapping.values, mapping.mark
            names = [p.name for p in spec.params]
            try:
                spec.bind(dict.fromkeys(mapping.keys))
            except InvalidArgument:
                for name in mapping:
                    if name not in names:
                        self.problem(
                            mapping.keys[name],
                            join_path(here, name),
                            f"an argument of {op} ({', '.join(names) or 'it takes none'})",
                            f"unknown argument {name!r}",
                            did_you_mean(name, names),
                        )
                bound = False
        ok = bound
        data: dict[str, Any] = {}
        for param in spec.params:
            value = args.get(param.name)
            if value is None:
                if (op, param.name) in ARGUMENT_DEFAULTS:
                    data[param.name] = ARGUMENT_DEFAULTS[op, param.name]
                elif not param.optional:
                    self.problem(
                        mark,
                        join_path(here, param.name),
                        f"{_expected_for(param)} (a required argument of {op})",
                        "nothing",
                    )
                    ok = False
                continue
            ok &= self.check_argument(op, param, value, join_path(here, param.name), scope)
            data[param.name] = to_data(value)
        bind = self.bind_of(step, path, scope, _RESULT_KINDS.get(op))
        if not ok:
            return None
        return Call(op=op, args=data, bind=bind)

    def check_argument(
        self, op: Op, param: Param, node: SourceNode, path: str, scope: Scope
    ) -> bool:
        before = len(self.problems)
        self.check_value(node, path, scope)
        if len(self.problems) > before:
            return False
        value = to_data(node)
        constant = not refs_in_value(value)
        if constant:
            failure = "is required" if value is None else param.validate(value)
            if failure is not None:
                expected = _expected_for(param, _value_check_failure(param, value, failure))
                self.problem(node.mark, path, expected, describe(node))
                return False
        elif self.single_ref(node) is None:
            # Text with references is a string; lists and mappings keep their type.
            sample: Any = "" if isinstance(value, str) else [] if isinstance(value, list) else {}
            if not isinstance(sample, param.types) and object not in param.types:
                self.problem(node.mark, path, _param_phrase(param), describe(node))
                return False
        if constant and isinstance(value, str):
            return self.check_capability(op, param, node, value, path)
        if op is Op.RUN_MODEL and param.name == "tools" and isinstance(node, SeqNode):
            return all(
                self.check_capability(op, param, item, item.value, f"{path}[{index}]")
                for index, item in enumerate(node.items)
                if isinstance(item, ScalarNode)
                and isinstance(item.value, str)
                and not refs_in_value(item.value)
            )
        return True

    def check_capability(
        self, op: Op, param: Param, node: SourceNode, name: str, path: str
    ) -> bool:
        """A literal tool, model or prompt name must be declared (and the tool's access fit)."""
        if op in (Op.READ_FROM_TOOL, Op.WRITE_TO_TOOL) and param.name == "api":
            mode = "read" if op is Op.READ_FROM_TOOL else "write"
            return self.tool_use(node, name, path, mode)
        if op is Op.RUN_MODEL and param.name == "tools":
            return self.tool_use(node, name, path, None)
        if op is Op.RUN_MODEL and param.name == "model":
            return self.declared(node, name, path, self.models, "model", "models")
        if op is Op.LOAD_PROMPT and param.name == "prompt_id":
            return self.declared(node, name, path, self.prompts, "prompt", "prompts")
        return True

    def declared(
        self, node: SourceNode, name: str, path: str, table: dict[str, Any], what: str, key: str
    ) -> bool:
        if name in table:
            return True
        if name in self.named.get(key, ()):
            return False  # declared, but the declaration has its own problem
        self.problem(
            node.mark,
            path,
            f"a {what} declared under {key}: ({listing(table)})",
            repr(name),
            did_you_mean(name, table) or f"declare it under {key}:",
        )
        return False

    def tool_use(self, node: SourceNode, name: str, path: str, mode: str | None) -> bool:
        if not self.declared(node, name, path, self.tools, "tool", "tools"):
            return False
        access = self.tools[name].access
        if mode is not None and access not in (mode, "both"):
            self.problem(
                node.mark,
                path,
                f"a tool declared with access {mode} or both",
                f"{name!r} (access: {access})",
            )
            return False
        return True

    def check_react(
        self, step: MapNode, node: SourceNode | None, path: str, scope: Scope
    ) -> React | None:
        here = join_path(path, "react")
        entry = self.mapping(
            node if node is not None else ScalarNode(step.keys["react"], None),
            here,
            "a mapping with model, input, tools and max_turns",
        )
        if entry is None:
            self.bind_of(step, path, scope, ModelReply)
            return None
        self.fields(entry, here, REACT_FIELDS, "a react step")
        values = entry.values
        ok = True
        model = None
        model_node = self.required(entry, "model", here, "a declared model name")
        if model_node is not None:
            self.check_value(model_node, join_path(here, "model"), scope)
            model = to_data(model_node)
            if isinstance(model, str) and not refs_in_value(model):
                ok &= self.declared(
                    model_node, model, join_path(here, "model"), self.models, "model", "models"
                )
            elif not isinstance(model, str):
                self.problem(
                    model_node.mark,
                    join_path(here, "model"),
                    "a model name",
                    describe(model_node),
                )
                ok = False
        input_node = self.required(entry, "input", here, "a string or a list of messages")
        if input_node is not None:
            before = len(self.problems)
            self.check_value(input_node, join_path(here, "input"), scope)
            ok &= len(self.problems) == before
            if isinstance(input_node, MapNode) or (
                isinstance(input_node, ScalarNode) and input_node.value in ("", None)
            ):
                self.problem(
                    input_node.mark,
                    join_path(here, "input"),
                    "a string or a list of messages",
                    describe(input_node),
                )
                ok = False
        tools: list[str] = []
        if "tools" in values:
            tools_node = values["tools"]
            names = self.names(
                tools_node, join_path(here, "tools"), TOOL_NAME, "declared tool names"
            )
            if isinstance(tools_node, SeqNode):
                for index, item in enumerate(tools_node.items):
                    if isinstance(item, ScalarNode) and item.value in names:
                        name = str(item.value)
                        if self.tool_use(item, name, join_path(here, "tools") + f"[{index}]", None):
                            tools.append(name)
                        else:
                            ok = False
        turns = None
        turns_node = self.required(entry, "max_turns", here, "a positive integer")
        if turns_node is not None:
            turns = self.integer(
                turns_node,
                join_path(here, "max_turns"),
                minimum=1,
                expected="a positive integer (the bound on model calls)",
            )
        options: dict[str, Any] = {}
        for option in ("max_tokens", "temperature"):
            if option in values:
                option_node = values[option]
                param = next(p for p in INSTRUCTIONS[Op.RUN_MODEL].params if p.name == option)
                ok &= self.check_argument(
                    Op.RUN_MODEL, param, option_node, join_path(here, option), scope
                )
                options[option] = to_data(option_node)
        bind = self.bind_of(step, path, scope, ModelReply)
        if not ok or model is None or input_node is None or turns is None:
            return None
        return React(
            model=str(model),
            input=to_data(input_node),
            tools=tuple(sorted(tools)),
            max_turns=turns,
            bind=bind,
            **options,
        )

    def check_set(
        self, step: MapNode, node: SourceNode | None, path: str, scope: Scope
    ) -> Set | None:
        here = join_path(path, "set")
        value: Any = None
        ok = True
        if node is not None:
            before = len(self.problems)
            self.check_value(node, here, scope)
            ok = len(self.problems) == before
            value = to_data(node)
        if "as" not in step.keys:
            self.problem(
                step.mark, join_path(path, "as"), "a name (a set step binds one)", "nothing"
            )
            return None
        kind: Kind = None
        ref = self.single_ref(node) if node is not None else None
        if ref is None and node is not None and type(value) in (str, int, float, bool, list, dict):
            kind = type(value)
        bind = self.bind_of(step, path, scope, kind)
        if not ok or bind is None:
            return None
        return Set(value=value, bind=bind)

    def check_if(
        self, step: MapNode, node: SourceNode | None, path: str, scope: Scope
    ) -> If | None:
        here = join_path(path, "if")
        condition = None
        if node is None:
            self.problem(step.keys["if"], here, "a condition", "nothing")
        elif isinstance(node, ScalarNode) and isinstance(node.value, bool | int | float):
            condition = (
                "true"
                if node.value is True
                else "false"
                if node.value is False
                else (repr(node.value))
            )
        else:
            text = self.string(node, here, expected="a condition (text)")
            if text is not None:
                try:
                    _, refs = parse_condition(text)
                except ExpressionSyntaxError as exc:
                    self.problem(
                        node.mark,
                        here,
                        "a valid condition",
                        f"{describe(node)} (at character {exc.offset + 1}: {exc.message})",
                    )
                else:
                    for ref in refs:
                        self.check_ref(ref, scope, node.mark, here)
                    condition = text
        if "then" not in step.keys:
            self.problem(
                step.mark, join_path(path, "then"), "a list of steps (required)", "nothing"
            )
        then = self.check_steps(
            step.values.get("then"), join_path(path, "then"), dict(scope), required=True
        )
        otherwise = self.check_steps(
            step.values.get("else"), join_path(path, "else"), dict(scope), required=False
        )
        if condition is None or not then:
            return None
        return If(condition=condition, then=then, otherwise=otherwise)

    def loop_bound(self, step: MapNode, path: str, needed: bool) -> int | None:
        if "max" not in step.keys:
            if needed:
                self.problem(
                    step.mark,
                    join_path(path, "max"),
                    "a positive integer bounding the loop (a required field)",
                    "nothing",
                    "a loop over a value known only at run time needs max:",
                )
            return None
        node = step.values.get("max")
        if node is None:
            self.problem(step.keys["max"], join_path(path, "max"), "a positive integer", "null")
            return None
        return self.integer(node, join_path(path, "max"), minimum=1, expected="a positive integer")

    def check_repeat(
        self, step: MapNode, node: SourceNode | None, path: str, scope: Scope
    ) -> Repeat | None:
        here = join_path(path, "repeat")
        count: int | str | None = None
        dynamic = False
        if isinstance(node, ScalarNode) and isinstance(node.value, str):
            before = len(self.problems)
            self.check_value(node, here, scope)
            if self.single_ref(node) is None:
                self.problem(
                    node.mark,
                    here,
                    "a positive integer or one reference ${name}",
                    describe(node),
                )
            elif len(self.problems) == before:
                count = node.value
            dynamic = True
        elif node is not None:
            count = self.integer(node, here, minimum=1, expected="a positive integer")
        else:
            self.problem(step.keys["repeat"], here, "a positive integer", "nothing")
        bound = self.loop_bound(step, path, needed=dynamic)
        body_scope = dict(scope)
        index = self.bind_of(step, path, body_scope, int)
        body = self.body(step, path, body_scope)
        if count is None or not body or (dynamic and bound is None):
            return None
        return Repeat(count=count, body=body, max=bound, bind=index)

    def check_for_each(
        self, step: MapNode, node: SourceNode | None, path: str, scope: Scope
    ) -> ForEach | None:
        here = join_path(path, "for_each")
        items: str | list[Any] | None = None
        dynamic = True
        if isinstance(node, SeqNode):
            before = len(self.problems)
            self.check_value(node, here, scope)
            if len(self.problems) == before:
                data = to_data(node)
                assert isinstance(data, list)
                items = data
            dynamic = False
        elif node is not None and (ref := self.single_ref(node)) is not None:
            before = len(self.problems)
            kind = self.check_ref(ref, scope, node.mark, here)
            if kind is not None and kind is not list:
                what = _SCALAR_KINDS.get(kind) or f"a {kind.__name__}"
                self.problem(node.mark, here, "a list to loop over", f"{ref} ({what})")
            elif len(self.problems) == before:
                assert isinstance(node, ScalarNode)
                items = str(node.value)
        else:
            self.problem(
                node.mark if node is not None else step.keys["for_each"],
                here,
                "a list, or one reference ${name} to a list",
                describe(node),
            )
        bound = self.loop_bound(step, path, needed=dynamic)
        body_scope = dict(scope)
        item = None
        if "as" in step.keys:
            item = self.bind_of(step, path, body_scope, None)
        else:
            self.problem(
                step.mark,
                join_path(path, "as"),
                "a name for the current item (required)",
                "nothing",
            )
        body = self.body(step, path, body_scope)
        if items is None or item is None or not body or (dynamic and bound is None):
            return None
        return ForEach(items=items, body=body, bind=item, max=bound)

    def body(self, step: MapNode, path: str, scope: Scope) -> tuple[Step, ...]:
        if "do" not in step.keys:
            self.problem(step.mark, join_path(path, "do"), "a list of steps (required)", "nothing")
            return ()
        return self.check_steps(step.values.get("do"), join_path(path, "do"), scope, required=True)
