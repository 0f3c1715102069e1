"""The expression language of template programs: references, interpolation and conditions.

It is deliberately tiny, and nothing in it is ever handed to ``eval``:

- a **reference** ``${name}`` or ``${name.field.0}`` reads a name bound earlier (an input, a
  step's ``as:``, ``agent_id``, ``tick``) and walks into it: mapping keys, list indexes, and the
  declared fields of result structs (``${reply.text}``, ``${reply.usage.tokens_in}``) - never
  Python attributes, so ``${x.__class__}`` is simply a missing field;
- a string that is exactly one reference keeps the referenced value's type (``${news}`` is the
  list the tool returned); any other string containing references is **interpolated** into text
  (``"token ${token} at tick ${tick}"``); ``$${`` writes a literal ``${``;
- a **condition** (the ``if:`` of a step) compares operands: references, numbers, quoted
  strings, ``true``/``false``/``null``, with ``== != < <= > >=``, ``in``, ``not in``,
  ``contains``, ``startswith``, ``endswith``, combined by ``and``, ``or``, ``not`` and
  parentheses. A lone operand tests its truth.

This module parses (for the validator, which needs the references and the exact column of a
syntax error) and compiles to closures (for the interpreter, which evaluates them per step).
Evaluation is a pure function of the names in scope, which is what keeps a template agent
deterministic under replay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "Condition",
    "Evaluator",
    "ExpressionSyntaxError",
    "Lookup",
    "Ref",
    "compile_condition",
    "compile_value",
    "parse_condition",
    "parse_text",
    "refs_in_value",
    "render_text",
]

Env = Mapping[str, Any]
Evaluator = Callable[[Env], Any]


class Lookup(Exception):
    """Evaluation failed on the data at hand; the interpreter turns it into a ProgramError."""


class ExpressionSyntaxError(Exception):
    """An expression is malformed; ``offset`` is where in the text, 0-based."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference ``${name.path...}`` and the offset of its ``$`` in the text."""

    name: str
    path: tuple[str | int, ...]
    offset: int

    def __str__(self) -> str:
        return "${" + ".".join([self.name, *map(str, self.path)]) + "}"


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def _parse_ref(text: str, start: int) -> tuple[Ref, int]:
    """Parse ``${...}`` starting at ``start`` (the ``$``); return it and the offset after."""
    close = text.find("}", start + 2)
    if close < 0:
        raise ExpressionSyntaxError("'${' without a closing '}'", start)
    inner = text[start + 2 : close]
    body = inner.strip()
    if not body:
        raise ExpressionSyntaxError("an empty reference '${}'", start)
    parts = body.split(".")
    if not _IDENT.fullmatch(parts[0]):
        raise ExpressionSyntaxError(
            f"a reference starts with a name, not {parts[0]!r}", start + 2 + inner.find(parts[0])
        )
    path: list[str | int] = []
    for part in parts[1:]:
        if not _SEGMENT.fullmatch(part):
            shown = part or "an empty field"
            raise ExpressionSyntaxError(
                f"a field is a name or an index, not {shown!r}", start + 2 + inner.find(part)
            )
        path.append(int(part) if part.isdigit() else part)
    return Ref(parts[0], tuple(path), start), close + 1


def parse_text(text: str) -> list[str | Ref]:
    """Split a string into literal text and references; raises ExpressionSyntaxError."""
    parts: list[str | Ref] = []
    literal: list[str] = []
    index = 0
    while True:
        found = text.find("$", index)
        if found < 0:
            literal.append(text[index:])
            break
        literal.append(text[index:found])
        if text.startswith("$${", found):
            literal.append("${")
            index = found + 3
        elif text.startswith("${", found):
            ref, index = _parse_ref(text, found)
            if any(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(ref)
        else:
            literal.append("$")
            index = found + 1
    if any(literal):
        parts.append("".join(literal))
    return parts


def refs_in_value(value: Any) -> bool:
    """Whether plain template data holds any reference (so cannot be a constant)."""
    if isinstance(value, str):
        return "${" in value.replace("$${", "")
    if isinstance(value, dict):
        return any(refs_in_value(v) for v in value.values())
    if isinstance(value, list):
        return any(refs_in_value(v) for v in value)
    return False


# -- evaluation -------------------------------------------------------------------------------


def resolve(env: Env, ref: Ref) -> Any:
    """The value a reference names; raises Lookup with a readable reason."""
    try:
        value = env[ref.name]
    except KeyError:
        raise Lookup(f"{ref}: {ref.name!r} is not bound") from None
    for index, segment in enumerate(ref.path):
        value = _step_into(value, segment, ref, index)
    return value


def _step_into(value: Any, segment: str | int, ref: Ref, index: int) -> Any:
    where = "${" + ".".join([ref.name, *map(str, ref.path[:index])]) + "}"
    if isinstance(value, dict):
        key = segment if isinstance(segment, str) else str(segment)
        if key in value:
            return value[key]
        known = ", ".join(map(str, list(value)[:10])) or "none"
        raise Lookup(f"{ref}: {where} has no key {key!r} (keys: {known})")
    if isinstance(value, list | tuple):
        if isinstance(segment, int):
            if segment < len(value):
                return value[segment]
            raise Lookup(f"{ref}: {where} has {len(value)} items, so no item {segment}")
        raise Lookup(f"{ref}: {where} is a list; index it with a number, not {segment!r}")
    if isinstance(value, msgspec.Struct):
        fields = type(value).__struct_fields__
        if isinstance(segment, str) and segment in fields:
            return getattr(value, segment)
        raise Lookup(f"{ref}: {where} is a {type(value).__name__} with fields {', '.join(fields)}")
    raise Lookup(f"{ref}: {where} is {_kind(value)}, which has no fields")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


_json = msgspec.json.Encoder(order="sorted")


def render_text(value: Any) -> str:
    """How a value reads inside interpolated text: the same text on every run."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = getattr(value, "text", None)  # a Prompt or a ModelReply reads as its text
    if isinstance(value, msgspec.Struct) and isinstance(text, str):
        return text
    try:
        return _json.encode(value).decode()
    except (TypeError, ValueError):
        return str(value)


def _copy(value: Any) -> Any:
    # Constants are shared by every agent of a template; a tool that mutates what it is given
    # must not change them for the next agent (or make a replay see other arguments).
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _unescape(value: Any) -> Any:
    """Constant data as the program sees it: ``$${`` written in the template reads ``${``."""
    if isinstance(value, str):
        return value.replace("$${", "${") if "$${" in value else value
    if isinstance(value, dict):
        return {key: _unescape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unescape(item) for item in value]
    return value


def compile_value(value: Any) -> tuple[Evaluator, bool]:
    """Compile template data to an evaluator; the flag says whether it is a constant.

    The data must already have passed validation (every string parses).
    """
    if not refs_in_value(value):
        literal = _unescape(value)
        if isinstance(literal, dict | list):
            return (lambda env: _copy(literal)), True
        return (lambda env: literal), True
    if isinstance(value, str):
        parts = parse_text(value)
        if len(parts) == 1 and isinstance(parts[0], Ref):
            ref = parts[0]
            if not ref.path:
                name = ref.name

                def read(env: Env) -> Any:
                    try:
                        return env[name]
                    except KeyError:
                        raise Lookup(f"{ref}: {name!r} is not bound") from None

                return read, False
            return (lambda env: resolve(env, ref)), False

        def interpolate(env: Env) -> str:
            return "".join(
                part if isinstance(part, str) else render_text(resolve(env, part)) for part in parts
            )

        return interpolate, False
    if isinstance(value, dict):
        items = [(key, compile_value(item)[0]) for key, item in value.items()]
        return (lambda env: {key: ev(env) for key, ev in items}), False
    evaluators = [compile_value(item)[0] for item in value]
    return (lambda env: [ev(env) for ev in evaluators]), False


# -- conditions -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<ref>\$\{)
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>|\(|\))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=", "in", "contains", "startswith", "endswith")
_WORDS = {"and", "or", "not", "in", "contains", "startswith", "endswith", "true", "false", "null"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    offset: int
    value: Any = None


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        if match is None:
            raise ExpressionSyntaxError(f"unexpected {text[index]!r}", index)
        kind = match.lastgroup or ""
        if kind == "ref":
            ref, end = _parse_ref(text, index)
            tokens.append(_Token("ref", text[index:end], index, ref))
            index = end
            continue
        if kind == "number":
            literal = match.group()
            number = float(literal) if any(c in literal for c in ".eE") else int(literal)
            tokens.append(_Token("value", literal, index, number))
        elif kind == "string":
            raw = match.group()
            tokens.append(_Token("value", raw, index, re.sub(r"\\(.)", r"\1", raw[1:-1])))
        elif kind == "word":
            word = match.group()
            if word not in _WORDS:
                raise ExpressionSyntaxError(
                    f"unknown word {word!r}; quote text, and write names as ${{name}}", index
                )
            constants = {"true": True, "false": False, "null": None}
            if word in constants:
                tokens.append(_Token("value", word, index, constants[word]))
            else:
                tokens.append(_Token("op", word, index))
        elif kind == "op":
            tokens.append(_Token("op", match.group(), index))
        index = match.end()
    return tokens


# The condition tree: ("ref", Ref) | ("value", v) | ("not", node) | ("and"/"or", a, b)
# | ("cmp", op, a, b)
Condition = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.refs: list[Ref] = []

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str) -> _Token:
        token = self.peek()
        if token is None:
            raise ExpressionSyntaxError(
                f"the condition ends where {expected} should follow", len(self.text)
            )
        self.pos += 1
        return token

    def is_op(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text in texts

    def parse(self) -> Condition:
        if not self.tokens:
            raise ExpressionSyntaxError("an empty condition", 0)
        tree = self.disjunction()
        token = self.peek()
        if token is not None:
            raise ExpressionSyntaxError(f"unexpected {token.text!r}", token.offset)
        return tree

    def disjunction(self) -> Condition:
        tree = self.conjunction()
        while self.is_op("or"):
            self.pos += 1
            tree = ("or", tree, self.conjunction())
        return tree

    def conjunction(self) -> Condition:
        tree = self.negation()
        while self.is_op("and"):
            self.pos += 1
            tree = ("and", tree, self.negation())
        return tree

    def negation(self) -> Condition:
        if self.is_op("not"):
            self.pos += 1
            return ("not", self.negation())
        return self.comparison()

    def comparison(self) -> Condition:
        left = self.operand()
        if self.is_op("not"):
            self.pos += 1
            following = self.take("'in'")
            if following.text != "in":
                raise ExpressionSyntaxError("'not' here must be followed by 'in'", following.offset)
            return ("not", ("cmp", "in", left, self.operand()))
        token = self.peek()
        if token is not None and token.kind == "op" and token.text in _COMPARISONS:
            self.pos += 1
            return ("cmp", token.text, left, self.operand())
        return left

    def operand(self) -> Condition:
        token = self.take("a value")
        if token.kind == "ref":
            self.refs.append(token.value)
            return ("ref", token.value)
        if token.kind == "value":
            return ("value", token.value)
        if token.text == "(":
            tree = self.disjunction()
            closing = self.take("')'")
            if closing.text != ")":
                raise ExpressionSyntaxError(f"expected ')', not {closing.text!r}", closing.offset)
            return tree
        raise ExpressionSyntaxError(f"expected a value, not {token.text!r}", token.offset)


def parse_condition(text: str) -> tuple[Condition, list[Ref]]:
    """Parse a condition; return its tree and the references it reads."""
    parser = _Parser(text)
    tree = parser.parse()
    return tree, parser.refs


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op in ("<", "<=", ">", ">="):
        if not (_number(left) and _number(right)) and not (
            isinstance(left, str) and isinstance(right, str)
        ):
            raise Lookup(f"cannot order {_kind(left)} and {_kind(right)} with {op}")
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    if op == "contains":
        left, right = right, left
        op = "in"
    if op == "in":
        if isinstance(right, str):
            if not isinstance(left, str):
                raise Lookup(f"'in' a string needs a string on the left, not {_kind(left)}")
            return left in right
        if isinstance(right, list | tuple | dict):
            try:
                return left in right
            except TypeError:  # an unhashable key looked up in a mapping
                return False
        raise Lookup(f"'in' needs a string, list or mapping on the right, not {_kind(right)}")
    if not (isinstance(left, str) and isinstance(right, str)):
        raise Lookup(f"{op} needs two strings, not {_kind(left)} and {_kind(right)}")
    return left.startswith(right) if op == "startswith" else left.endswith(right)


def compile_condition(text: str) -> Evaluator:
    """Compile a validated condition to an evaluator returning its truth."""
    tree, _ = parse_condition(text)
    evaluate = _compile_tree(tree)
    return lambda env: bool(evaluate(env))


def _compile_tree(tree: Condition) -> Evaluator:
    kind = tree[0]
    if kind == "ref":
        ref: Ref = tree[1]
        return lambda env: resolve(env, ref)
    if kind == "value":
        constant = tree[1]
        return lambda env: constant
    if kind == "not":
        inner = _compile_tree(tree[1])
        return lambda env: not inner(env)
    if kind in ("and", "or"):
        left, right = _compile_tree(tree[1]), _compile_tree(tree[2])
        if kind == "and":
            return lambda env: bool(left(env)) and bool(right(env))
        return lambda env: bool(left(env)) or bool(right(env))
    op = tree[1]
    a, b = _compile_tree(tree[2]), _compile_tree(tree[3])
    return lambda env: _compare(op, a(env), b(env))
