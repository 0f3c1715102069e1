"""Reading typed values out of source nodes, and recording what does not fit as problems.

This module owns the validator's vocabulary: :class:`Shapes` checks that a node is a mapping
with only known fields, a string matching a pattern, a number in range, one of some choices, a
list of unique names, or a file inside the template's directory, and when it is not, records a
:class:`~avm.assembler.problems.Problem` (where, the field path, what was expected, what was
found) and carries on, so that one run finds every problem. The name patterns every part of a
template uses live here too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from avm.assembler.problems import Problem
from avm.assembler.source import (
    MAX_BYTES,
    MapNode,
    Mark,
    ScalarNode,
    SeqNode,
    SourceNode,
    describe,
    join_path,
    problem_at,
)

__all__ = [
    "DECLARED_NAME",
    "NAME",
    "SECRET_NAME",
    "TEMPLATE_NAME",
    "TOOL_NAME",
    "Shapes",
    "did_you_mean",
    "listing",
]

# A name a program binds and reads back as ${name}.
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TEMPLATE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# Models, prompts and knowledge sources: named in arguments as plain strings, never as ${...}.
DECLARED_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
SECRET_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A hint naming the closest candidate, or nothing if none is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean {matches[0]!r}?" if matches else ""


def listing(names: Iterable[str], limit: int = 8) -> str:
    items = sorted(names)
    if not items:
        return "none declared"
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class Shapes:
    """Shape checks over source nodes; ``problems`` collects what they find."""

    def __init__(self, file: str, base_dir: Path | None, image: bool) -> None:
        self.file = file
        self.base_dir = base_dir  # None: nothing may be read from files
        self.image = image
        self.problems: list[Problem] = []

    def problem(self, mark: Mark, path: str, expected: str, found: str, hint: str = "") -> None:
        self.problems.append(problem_at(self.file, mark, path, expected, found, hint))

    def mapping(self, node: SourceNode, path: str, expected: str) -> MapNode | None:
        if isinstance(node, MapNode):
            return node
        self.problem(node.mark, path, expected, describe(node))
        return None

    def fields(self, node: MapNode, path: str, allowed: Sequence[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                self.problem(
                    node.keys[key],
                    join_path(path, key),
                    f"a field of {what} ({', '.join(allowed)})",
                    f"unknown field {key!r}",
                    did_you_mean(key, allowed),
                )

    def required(self, node: MapNode, key: str, path: str, expected: str) -> SourceNode | None:
        value = node.values.get(key)
        if value is None and key not in node.keys:
            self.problem(
                node.mark, join_path(path, key), f"{expected} (a required field)", "nothing"
            )
        return value

    def string(
        self,
        node: SourceNode,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
        empty: bool = False,
    ) -> str | None:
        if not isinstance(node, ScalarNode) or not isinstance(node.value, str):
            self.problem(node.mark, path, expected, describe(node))
            return None
        value = node.value
        if (pattern is not None and not pattern.fullmatch(value)) or (not empty and not value):
            self.problem(node.mark, path, expected, describe(node))
            return None
        return value

    def integer(self, node: SourceNode, path: str, *, minimum: int, expected: str) -> int | None:
        value = node.value if isinstance(node, ScalarNode) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self.problem(node.mark, path, expected, describe(node))
            return None
        return value

    def number(self, node: SourceNode, path: str, *, positive: bool, expected: str) -> float | None:
        value = node.value if isinstance(node, ScalarNode) else None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or value < 0
            or (positive and value == 0)
        ):
            self.problem(node.mark, path, expected, describe(node))
            return None
        return float(value)

    def choice(self, node: SourceNode, path: str, choices: Sequence[str]) -> str | None:
        expected = f"one of {', '.join(choices)}"
        if not isinstance(node, ScalarNode) or not isinstance(node.value, str):
            self.problem(node.mark, path, expected, describe(node))
            return None
        if node.value not in choices:
            self.problem(
                node.mark, path, expected, describe(node), did_you_mean(node.value, choices)
            )
            return None
        return node.value

    def names(
        self, node: SourceNode, path: str, pattern: re.Pattern[str], expected: str
    ) -> tuple[str, ...]:
        if not isinstance(node, SeqNode):
            self.problem(node.mark, path, f"a list of {expected}", describe(node))
            return ()
        names: list[str] = []
        for index, item in enumerate(node.items):
            name = self.string(item, f"{path}[{index}]", pattern=pattern, expected=expected)
            if name is None:
                continue
            if name in names:
                self.problem(item.mark, f"{path}[{index}]", "each name once", repr(name))
                continue
            names.append(name)
        return tuple(names)

    def declared_name(self, node: MapNode, key: str, path: str, pattern: re.Pattern[str]) -> bool:
        if pattern.fullmatch(key):
            return True
        self.problem(
            node.keys[key],
            join_path(path, key),
            f"a name matching {pattern.pattern}",
            repr(key),
        )
        return False

    def file_text(self, node: SourceNode, path: str) -> tuple[str, Path] | None:
        """Read a file named relative to the template; refuse paths that leave its directory."""
        name = self.string(node, path, expected="a relative file path")
        if name is None:
            return None
        if "\x00" in name:
            self.problem(node.mark, path, "a relative file path", f"{name!r} (a NUL byte)")
            return None
        if self.base_dir is None:
            why = (
                "an image holds no file references"
                if self.image
                else "this template has no directory to read files from"
            )
            self.problem(node.mark, path, f"inline text ({why})", repr(name))
            return None
        base = self.base_dir.resolve()
        target = (base / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(base):
            self.problem(
                node.mark,
                path,
                "a path inside the template's directory",
                repr(name),
                "prompt and schema files are read relative to the template",
            )
            return None
        if not target.is_file():
            self.problem(node.mark, path, "an existing file", f"{name!r} (no such file)")
            return None
        try:
            data = target.read_bytes()
        except OSError as exc:
            self.problem(node.mark, path, "a readable file", f"{name!r} ({exc.strerror})")
            return None
        if len(data) > MAX_BYTES:
            self.problem(
                node.mark, path, f"a file of at most {MAX_BYTES:,} bytes", f"{len(data):,} bytes"
            )
            return None
        try:
            return data.decode("utf-8"), target
        except UnicodeDecodeError:
            self.problem(node.mark, path, "a UTF-8 text file", f"{name!r} (not UTF-8)")
            return None
