"""The published JSON Schema of templates, for editors and other tools (``avm schema``).

Instruction arguments are generated from the instruction set's own parameter table, so they
cannot drift from it; the test suite checks that the other field lists match the validator's.
It describes the structure only: that a step holds exactly one action, which arguments each
instruction takes and which are required, the types of literal values. What needs the whole
template to decide - that a name is bound before it is read, that a tool is declared, that a
prompt file exists - is the assembler's to check (``avm build``): a template the schema accepts
may still be refused there, but a template the assembler accepts always satisfies the schema.
"""

from __future__ import annotations

from typing import Any, Final

from avm._core.isa import INSTRUCTIONS, Param
from avm.assembler.steps import ARGUMENT_DEFAULTS
from avm.assembler.template import (
    ACCESS_MODES,
    FORMAT_VERSION,
    INPUT_TYPES,
    KNOWLEDGE_SCOPES,
    PRIORITIES,
)

__all__ = ["SCHEMA_ID", "template_schema"]

SCHEMA_ID: Final = f"urn:avm:template:{FORMAT_VERSION}"
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"

# A string that is one reference: where a value of another type may be computed.
_REFERENCE: Final = {"type": "string", "pattern": r"^\$\{[^}]+\}$"}
_NAME: Final = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"}
_STEPS: Final = {"$ref": "#/$defs/steps"}
_JSON_TYPES: Final[dict[type, str]] = {
    bool: "boolean",
    str: "string",
    int: "integer",
    float: "number",
    list: "array",
    tuple: "array",
    dict: "object",
}


def _param(param: Param) -> dict[str, Any]:
    if object in param.types:
        return {}
    kinds: list[str] = []
    for kind in param.types:
        name = _JSON_TYPES.get(kind)
        if name is not None and name not in kinds:
            kinds.append(name)
    if "number" in kinds and "integer" in kinds:
        kinds.remove("integer")
    if kinds == ["string"]:
        return {"type": "string"}
    return {"anyOf": [{"type": kinds if len(kinds) > 1 else kinds[0]}, _REFERENCE]}


def _arguments(op: Any) -> dict[str, Any]:
    spec = INSTRUCTIONS[op]
    required = [
        p.name for p in spec.params if not p.optional and (op, p.name) not in ARGUMENT_DEFAULTS
    ]
    schema: dict[str, Any] = {
        "type": "object",
        "description": f"{spec.op}: {spec.summary} Gas: {spec.gas}.",
        "properties": {p.name: _param(p) for p in spec.params},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    if not spec.params:
        return {"anyOf": [schema, {"type": "null"}], "description": schema["description"]}
    return schema


def _step() -> dict[str, Any]:
    actions: dict[str, Any] = {}
    for op, spec in INSTRUCTIONS.items():
        if not spec.available:
            continue
        arguments = _arguments(op)
        actions[op.value.lower()] = arguments
        actions[op.value] = arguments
    actions["react"] = {
        "type": "object",
        "description": "A model call with tool use, repeated while the model calls tools.",
        "properties": {
            "model": {"type": "string"},
            "input": {"anyOf": [{"type": "string"}, {"type": "array"}]},
            "tools": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "max_turns": {"type": "integer", "minimum": 1},
            "max_tokens": {"anyOf": [{"type": "integer", "minimum": 1}, _REFERENCE]},
            "temperature": {"anyOf": [{"type": "number", "minimum": 0}, _REFERENCE]},
        },
        "required": ["model", "input", "max_turns"],
        "additionalProperties": False,
    }
    actions["set"] = {"description": "A value built from earlier names; needs 'as'."}
    actions["if"] = {
        "description": "A condition, e.g. \"${reply.text} startswith 'BUY'\".",
        "type": ["string", "boolean", "number"],
    }
    actions["repeat"] = {"anyOf": [{"type": "integer", "minimum": 1}, _REFERENCE]}
    actions["for_each"] = {"anyOf": [{"type": "array"}, _REFERENCE]}
    properties = {
        **actions,
        "as": _NAME,
        "then": _STEPS,
        "else": {"type": "array", "items": {"$ref": "#/$defs/step"}},
        "do": _STEPS,
        "max": {"type": "integer", "minimum": 1},
    }
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "oneOf": [{"required": [action]} for action in actions],
    }


def _names_to(value: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": value}


def template_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the template format."""
    string_list = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    number = {"type": "number", "minimum": 0}
    spec = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+:\S+$"}
    model: dict[str, Any] = {
        "type": "object",
        "properties": {
            "spec": spec,
            "use": {"type": "string"},
            "base_url": {"type": "string", "pattern": r"^https?://"},
            "price_in": number,
            "price_out": number,
            "max_tokens": {"type": "integer", "minimum": 1},
            "secret": {"type": "string"},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["spec"]}, {"required": ["use"]}],
    }
    tool = {
        "type": ["object", "null"],
        "properties": {
            "access": {"enum": list(ACCESS_MODES)},
            "description": {"type": "string"},
            "hosts": string_list,
            "secrets": string_list,
            "schema": {"type": "object"},
            "schema_file": {"type": "string"},
        },
        "additionalProperties": False,
    }
    properties: dict[str, Any] = {
        "version": {"const": FORMAT_VERSION},
        "name": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"},
        "description": {"type": "string"},
        "inputs": _names_to(
            {
                "anyOf": [
                    {"enum": list(INPUT_TYPES)},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"enum": list(INPUT_TYPES)},
                            "default": {},
                            "description": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                ]
            }
        ),
        "models": _names_to({"anyOf": [spec, model]}),
        "prompts": _names_to(
            {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {
                            "text": {"type": "string"},
                            "file": {"type": "string"},
                            "use": {"type": "string"},
                        },
                        "additionalProperties": False,
                        "oneOf": [
                            {"required": ["text"]},
                            {"required": ["file"]},
                            {"required": ["use"]},
                        ],
                    },
                ]
            }
        ),
        "tools": _names_to(tool),
        "secrets": string_list,
        "knowledge": _names_to(
            {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "object",
                        "properties": {
                            "source": {"type": "string"},
                            "text": {"type": "string"},
                            "title": {"type": "string"},
                            "documents": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "title": {"type": "string"},
                                        "text": {"type": "string"},
                                    },
                                    "required": ["title", "text"],
                                    "additionalProperties": False,
                                },
                            },
                            "scope": {"enum": list(KNOWLEDGE_SCOPES)},
                            "namespace": {"type": "string"},
                            "description": {"type": "string"},
                        },
                        "oneOf": [
                            {"required": ["source"]},
                            {"required": ["text"]},
                            {"required": ["documents"]},
                        ],
                        "additionalProperties": False,
                    },
                ]
            }
        ),
        "schedule": {
            "type": "object",
            "properties": {
                "interval_s": {"type": "number", "exclusiveMinimum": 0},
                "ticks": {"type": "integer", "minimum": 1},
                "task": {"type": "string", "minLength": 1},
            },
            "required": ["interval_s", "ticks"],
            "additionalProperties": False,
        },
        "budget": {"anyOf": [number, {"type": "null"}]},
        "priority": {"enum": list(PRIORITIES)},
        "setup": {"type": "array", "items": {"$ref": "#/$defs/step"}},
        "program": _STEPS,
        "result": {},
    }
    return {
        "$schema": _DRAFT,
        "$id": SCHEMA_ID,
        "title": "AVM agent template",
        "description": (
            "An agent as data: what it may use (models, prompts, tools, secrets, knowledge), "
            "how it runs (inputs, schedule, budget, priority) and its program of instructions. "
            "Structure only; 'avm build' checks names, references and files."
        ),
        "type": "object",
        "properties": properties,
        "required": ["name", "program"],
        "additionalProperties": False,
        "$defs": {
            "step": _step(),
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
        },
    }
