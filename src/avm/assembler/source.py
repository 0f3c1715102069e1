"""Template source text as a tree of nodes that remember where they were written.

This module owns reading YAML (and JSON, which it reads as YAML 1.2) into :class:`ScalarNode`,
:class:`MapNode` and :class:`SeqNode` values, each with the 1-based line and column it starts
at, so that every problem the validator finds can point at the exact spot. It uses ruamel.yaml's
*composer* (the stage before Python objects are built), because composed nodes carry positions
for every scalar, key and collection, and builds only the plain values a template may hold.

What is refused here, each as a :class:`~avm.assembler.problems.Problem` rather than an
exception: syntax errors, more than one document, duplicate keys, keys that are not strings,
anchors and aliases (an alias can expand a small file into a huge tree), tags other than the
core schema's (no ``!!python/...``, no custom tags), numbers that are not finite or do not fit
in 64 bits (the journal encodes values as msgpack), nesting deeper than :data:`MAX_DEPTH`, and
files larger than :data:`MAX_BYTES`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import nodes as yaml_nodes
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from avm.assembler.problems import Problem

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MapNode",
    "Mark",
    "ScalarNode",
    "SeqNode",
    "SourceNode",
    "describe",
    "load_source",
    "problem_at",
    "to_data",
]

MAX_BYTES = 1 << 20
MAX_DEPTH = 64

Scalar = None | bool | int | float | str

_INT64 = (-(1 << 63), (1 << 63) - 1)
_SURROGATE = re.compile("[\ud800-\udfff]")
_TAG = "tag:yaml.org,2002:"
# Core-schema tags whose value is built by ruamel's safe constructor; timestamps stay text (an
# author who writes a date means the date as written, and JSON has no date type).
_BUILT = {_TAG + "null", _TAG + "bool", _TAG + "int", _TAG + "float"}
_TEXT = {_TAG + "str", _TAG + "timestamp"}


@dataclass(frozen=True, slots=True)
class Mark:
    """A 1-based position in the source text."""

    line: int
    column: int


def problem_at(
    file: str, mark: Mark, path: str, expected: str, found: str, hint: str = ""
) -> Problem:
    """A problem at ``mark`` in ``file``."""
    return Problem(
        file=file,
        line=mark.line,
        column=mark.column,
        path=path,
        expected=expected,
        found=found,
        hint=hint,
    )


@dataclass(frozen=True, slots=True)
class ScalarNode:
    """A string, number, boolean or null, and where it starts."""

    mark: Mark
    value: Scalar


@dataclass(frozen=True, slots=True)
class MapNode:
    """A mapping with string keys; ``keys`` holds where each key was written."""

    mark: Mark
    values: dict[str, SourceNode] = field(default_factory=dict)
    keys: dict[str, Mark] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        # Every key written, including those whose value was refused while parsing (and so is
        # missing from ``values``): an unknown key is reported even when its value is bad.
        return iter(self.keys)


@dataclass(frozen=True, slots=True)
class SeqNode:
    """A list."""

    mark: Mark
    items: list[SourceNode] = field(default_factory=list)


SourceNode = ScalarNode | MapNode | SeqNode


def describe(node: SourceNode | None) -> str:
    """How a problem message shows what was found."""
    if node is None:
        return "nothing"
    if isinstance(node, MapNode):
        return "a mapping"
    if isinstance(node, SeqNode):
        return "a list" if node.items else "an empty list"
    return describe_value(node.value)


def describe_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def to_data(node: SourceNode) -> Any:
    """The plain value of a node: dicts, lists, str, int, float, bool and None."""
    if isinstance(node, ScalarNode):
        return node.value
    if isinstance(node, MapNode):
        return {key: to_data(value) for key, value in node.values.items()}
    return [to_data(item) for item in node.items]


def _mark(node: yaml_nodes.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns composed ruamel nodes into source nodes, collecting problems as it goes."""

    def __init__(self, file: str, yaml: YAML) -> None:
        self.file = file
        self.yaml = yaml
        self.problems: list[Problem] = []
        self._anchors: set[int] = set()

    def problem(self, mark: Mark, path: str, expected: str, found: str, hint: str = "") -> None:
        self.problems.append(problem_at(self.file, mark, path, expected, found, hint))

    def build(self, node: yaml_nodes.Node, path: str, depth: int) -> SourceNode | None:
        mark = _mark(node)
        if node.anchor is not None:
            if id(node) not in self._anchors:  # an alias is the anchored node itself: once
                self._anchors.add(id(node))
                self.problem(
                    mark, path, "plain YAML without anchors or aliases", f"anchor &{node.anchor}"
                )
            return None
        if depth > MAX_DEPTH:
            self.problem(mark, path, f"nesting at most {MAX_DEPTH} levels deep", "deeper nesting")
            return None
        if isinstance(node, yaml_nodes.ScalarNode):
            return self.scalar(node, mark, path)
        if isinstance(node, yaml_nodes.SequenceNode):
            if node.tag != _TAG + "seq":
                self.problem(mark, path, "a plain list", f"tag {node.tag}")
                return None
            items: list[SourceNode] = []
            for index, child in enumerate(node.value):
                built = self.build(child, f"{path}[{index}]", depth + 1)
                if built is not None:
                    items.append(built)
            return SeqNode(mark, items)
        if isinstance(node, yaml_nodes.MappingNode):
            return self.mapping(node, mark, path, depth)
        self.problem(mark, path, "a value", f"a YAML node of kind {type(node).__name__}")
        return None

    def mapping(
        self, node: yaml_nodes.MappingNode, mark: Mark, path: str, depth: int
    ) -> MapNode | None:
        if node.tag != _TAG + "map":
            self.problem(mark, path, "a plain mapping", f"tag {node.tag}")
            return None
        result = MapNode(mark)
        for key_node, value_node in node.value:
            key_mark = _mark(key_node)
            if not isinstance(key_node, yaml_nodes.ScalarNode):
                self.problem(key_mark, path, "a string key", "a mapping or list as a key")
                continue
            if key_node.tag not in _TEXT:
                found = f"{key_node.value!r} ({str(key_node.tag).removeprefix(_TAG)})"
                self.problem(key_mark, path, "a string key", found, "quote the key")
                continue
            key = self.text(str(key_node.value), key_mark, path)
            if key is None:
                continue
            child_path = join_path(path, key)
            if key in result.values or key in result.keys:
                first = result.keys[key]
                self.problem(
                    key_mark,
                    child_path,
                    "each key once",
                    f"a second {key!r}",
                    f"first written at line {first.line}",
                )
                continue
            result.keys[key] = key_mark
            built = self.build(value_node, child_path, depth + 1)
            if built is not None:
                result.values[key] = built
        return result

    def text(self, value: str, mark: Mark, path: str) -> str | None:
        """A string as Python holds it: YAML's ``\\u`` escapes can spell the two halves of a
        surrogate pair (as JSON writes characters beyond U+FFFF), which are joined here; a
        lone half cannot be stored or encoded, so it is refused."""
        if value.isascii() or _SURROGATE.search(value) is None:
            return value
        try:
            return value.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            self.problem(mark, path, "text (no unpaired surrogate escapes)", "a lone surrogate")
            return None

    def scalar(self, node: yaml_nodes.ScalarNode, mark: Mark, path: str) -> ScalarNode | None:
        if node.tag in _TEXT:
            text = self.text(str(node.value), mark, path)
            return None if text is None else ScalarNode(mark, text)
        if node.tag not in _BUILT:
            self.problem(mark, path, "a string, number, boolean or null", f"tag {node.tag}")
            return None
        try:
            value = self.yaml.constructor.construct_object(node, deep=True)
        except YAMLError as exc:
            self.problem(mark, path, "a valid scalar", _one_line(str(exc)))
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(mark, path, "a finite number", str(node.value))
            return None
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            self.problem(mark, path, "an integer that fits in 64 bits", str(node.value))
            return None
        return ScalarNode(mark, value)


def join_path(path: str, key: str | int) -> str:
    """``program[2].kv_store`` style paths; keys that are not identifiers are quoted."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _yaml_problem(file: str, exc: YAMLError, text: str) -> Problem:
    line, column = 1, 1
    found = _one_line(str(exc))
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
        found = _one_line("; ".join(str(p) for p in (exc.context, exc.problem) if p)) or found
    elif isinstance(exc, ReaderError):
        before = text[: exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        if isinstance(code, int):
            found = f"the character U+{code:04X}, which YAML does not allow"
    return Problem(file=file, line=line, column=column, path="", expected="valid YAML", found=found)


def load_source(text: str | bytes, file: str) -> tuple[SourceNode | None, list[Problem]]:
    """Parse template text; return its root node (None if unusable) and the problems found."""
    if len(text) > MAX_BYTES:
        problem = Problem(
            file=file,
            line=1,
            column=1,
            path="",
            expected=f"a template of at most {MAX_BYTES:,} bytes",
            found=f"{len(text):,} bytes",
        )
        return None, [problem]
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = raw[: exc.start]
            line = before.count(b"\n") + 1
            column = exc.start - (before.rfind(b"\n") + 1) + 1
            found = f"byte 0x{raw[exc.start]:02x}"
            problem = Problem(
                file=file, line=line, column=column, path="", expected="UTF-8 text", found=found
            )
            return None, [problem]
    text = text.removeprefix("\ufeff")
    yaml = YAML(typ="safe", pure=True)
    try:
        root = yaml.compose(io.StringIO(text))
    except YAMLError as exc:
        return None, [_yaml_problem(file, exc, text)]
    except RecursionError:
        problem = Problem(
            file=file,
            line=1,
            column=1,
            path="",
            expected=f"nesting at most {MAX_DEPTH} levels deep",
            found="far deeper nesting",
        )
        return None, [problem]
    if root is None:
        problem = Problem(
            file=file, line=1, column=1, path="", expected="a template", found="an empty document"
        )
        return None, [problem]
    builder = _Builder(file, yaml)
    node = builder.build(root, "", 0)
    return node, builder.problems
