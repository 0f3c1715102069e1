"""The published JSON Schema: valid, in step with the validator, and true to the assembler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ruamel.yaml import YAML

from avm._core.isa import INSTRUCTIONS
from avm.assembler import build, template_schema
from avm.assembler.declarations import MODEL_FIELDS, TOOL_FIELDS
from avm.assembler.steps import CONTROL_STEPS, REACT_FIELDS, STEP_FIELDS
from avm.assembler.validate import TOP_LEVEL_FIELDS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
BROKEN = Path(__file__).with_name("broken")


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(template_schema())


def yaml_data(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = template_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(schema)  # plain JSON all the way down


def test_the_schema_names_the_fields_the_validator_accepts() -> None:
    schema = template_schema()
    assert tuple(schema["properties"]) == TOP_LEVEL_FIELDS
    models = schema["properties"]["models"]["additionalProperties"]["anyOf"][1]
    assert tuple(models["properties"]) == MODEL_FIELDS
    tools = schema["properties"]["tools"]["additionalProperties"]
    assert tuple(tools["properties"]) == TOOL_FIELDS
    step = schema["$defs"]["step"]
    assert tuple(step["properties"]["react"]["properties"]) == REACT_FIELDS
    available = {op.value.lower() for op, spec in INSTRUCTIONS.items() if spec.available}
    assert set(step["properties"]) == (
        available | {a.upper() for a in available} | set(CONTROL_STEPS) | set(STEP_FIELDS)
    )


def test_the_example_and_its_image_satisfy_the_schema() -> None:
    check = validator()
    path = EXAMPLES / "portfolio_watcher.yaml"
    assert list(check.iter_errors(yaml_data(path))) == []
    assert list(check.iter_errors(json.loads(build(path).data))) == []


@pytest.mark.parametrize(
    "case",
    [
        "05_unknown_top_field",
        "06_missing_required",
        "07_wrong_types",
        "08_negative_budget",
        "09_bad_priority",
        "10_bad_version",
        "11_unknown_instruction",
        "12_two_actions",
        "13_unknown_argument",
        "14_missing_argument",
        "26_repeat_bounds",
        "28_prompt_exactly_one",
        "29_model_spec",
        "30_unavailable_instruction",
        "33_react_problems",
        "35_schedule_problems",
        "38_tool_problems",
        "41_empty_program",
        "43_step_field_misuse",
    ],
)
def test_structural_mistakes_are_caught_by_the_schema_too(case: str) -> None:
    assert list(validator().iter_errors(yaml_data(BROKEN / f"{case}.yaml")))
