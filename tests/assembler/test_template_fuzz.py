"""Fuzzing the assembler: random and mutated templates give an image or a TemplateError, never
a traceback. An accepted template's image reloads to the same bytes, satisfies the published
schema and compiles for the interpreter."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from avm._core.isa import INSTRUCTIONS
from avm.assembler import Image, TemplateError, build_text, template_schema
from avm.assembler.declarations import MODEL_FIELDS, TOOL_FIELDS
from avm.assembler.program import _Links, _Program
from avm.assembler.source import load_source
from avm.assembler.steps import CONTROL_STEPS, REACT_FIELDS, STEP_FIELDS
from avm.assembler.validate import TOP_LEVEL_FIELDS, validate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
EXAMPLE = YAML(typ="safe", pure=True).load(
    (EXAMPLES / "portfolio_watcher.yaml").read_text(encoding="utf-8")
)
SCHEMA = jsonschema.Draft202012Validator(template_schema())
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PARAMS = sorted({p.name for spec in INSTRUCTIONS.values() for p in spec.params})
OPS = sorted(op.value.lower() for op in INSTRUCTIONS)
KEYS = sorted(
    {
        *TOP_LEVEL_FIELDS,
        *STEP_FIELDS,
        *CONTROL_STEPS,
        *REACT_FIELDS,
        *MODEL_FIELDS,
        *TOOL_FIELDS,
        *OPS,
        *PARAMS,
        "text",
        "file",
        "use",
        "type",
        "default",
        "source",
        "scope",
        "interval_s",
        "ticks",
        "task",
        "news",
        "orders",
        "analyst",
        "token",
        "prompt",
        "reply",
    }
)
EXPRESSIONS = [
    "${token}",
    "${tick}",
    "${agent_id}",
    "${reply.text}",
    "${news.0}",
    "${",
    "${}",
    "$${x}",
    "a ${token} b",
    "${prompt}",
    "${x.y.z}",
    "${reply.usage.tokens_in} > 3",
    "${token} startswith 'B'",
    "not (${tick} == 1",
    "prompts/analyst.md",
    "../x",
    "openai:gpt-4o",
    "default",
    "analyst",
    "news",
    "orders",
    "read",
    "write",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(EXPRESSIONS)
    | st.text(max_size=12)
)
keys = st.sampled_from(KEYS) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)
steps = st.lists(
    st.dictionaries(
        st.sampled_from([*OPS, *CONTROL_STEPS, *STEP_FIELDS]),
        st.dictionaries(st.sampled_from([*PARAMS, *REACT_FIELDS]), values, max_size=4) | values,
        min_size=1,
        max_size=3,
    ),
    max_size=5,
)
templates = st.fixed_dictionaries(
    {"name": st.sampled_from(["fuzz", "x-1", ""]) | scalars, "program": steps},
    optional={field: values for field in TOP_LEVEL_FIELDS if field not in ("name", "program")}
    | {"setup": steps},
)


def assemble(text: str | bytes) -> None:
    """The property: an image or a TemplateError, and an accepted image is sound."""
    try:
        image = build_text(text, file="fuzz.yaml", base_dir=EXAMPLES)
    except TemplateError as error:
        refused: TemplateError | None = error
    else:
        refused = None
    if refused is not None:
        assert refused.problems
        for problem in refused.problems:
            assert min(problem.line, problem.column) >= 1, problem
            assert problem.expected, problem
            assert problem.found, problem
        return
    root, problems = load_source(image.data, "image")
    template, problems = validate(root, problems, file="image", base_dir=None, image=True)
    assert template is not None, problems
    assert Image.of(template).data == image.data
    assert list(SCHEMA.iter_errors(json.loads(image.data))) == []
    _Program(template, _Links(template, {}, {}))


def dump(data: Any, as_yaml: bool) -> str:
    if not as_yaml:
        return json.dumps(data, allow_nan=True)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    from io import StringIO

    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_random_text(text: str) -> None:
    assemble(text)


@FUZZ
@given(st.binary(max_size=100))
def test_random_bytes(data: bytes) -> None:
    assemble(data)


@FUZZ
@given(templates, st.booleans())
def test_random_templates(template: dict[str, Any], as_yaml: bool) -> None:
    assemble(dump(template, as_yaml))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(data: Any, draw: Any) -> Any:
    paths = _paths(data)[1:]
    path = draw(st.sampled_from(paths))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    action = draw(st.sampled_from(["delete", "replace", "rename", "duplicate", "insert"]))
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = draw(values)
    elif action == "rename" and isinstance(parent, dict):
        parent[draw(keys)] = parent.pop(last)
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    elif action == "insert" and isinstance(parent[last], dict):
        parent[last][draw(keys)] = draw(values)
    elif action == "insert" and isinstance(parent[last], list):
        parent[last].append(draw(values))
    return data


@FUZZ
@given(st.data(), st.integers(min_value=1, max_value=4), st.booleans())
def test_mutations_of_the_example(data: st.DataObject, count: int, as_yaml: bool) -> None:
    template = copy.deepcopy(EXAMPLE)
    for _ in range(count):
        template = _mutate(template, data.draw)
    assemble(dump(template, as_yaml))


def test_the_unmutated_example_is_accepted() -> None:
    assemble(dump(EXAMPLE, as_yaml=True))
    assemble(dump(EXAMPLE, as_yaml=False))
