"""Validation: a source tree in, a :class:`Template` out, or every problem with it at once.

The validator walks the whole tree even after it finds a problem, so one run reports all of
them, each located and explained. The checks live beside what they check - shapes of values
in :mod:`~avm.assembler.shapes`, declarations in :mod:`~avm.assembler.declarations`, steps and
references in :mod:`~avm.assembler.steps` - and this module puts a template together from them:
its top-level fields, in an order where everything a check needs is known before it runs
(secrets before the models and tools that name them, declarations before the program, ``setup``
before ``program``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from avm.assembler.declarations import INPUT_KINDS
from avm.assembler.problems import Problem
from avm.assembler.shapes import TEMPLATE_NAME
from avm.assembler.source import ScalarNode, SourceNode, describe, to_data
from avm.assembler.steps import ProgramChecker, Scope
from avm.assembler.template import FORMAT_VERSION, PRIORITIES, Template

__all__ = ["TOP_LEVEL_FIELDS", "validate"]

TOP_LEVEL_FIELDS: Final = (
    "version",
    "name",
    "description",
    "inputs",
    "models",
    "prompts",
    "tools",
    "secrets",
    "knowledge",
    "schedule",
    "budget",
    "priority",
    "setup",
    "program",
    "result",
)


class _TemplateChecker(ProgramChecker):
    """The whole template: its top-level fields, then its declarations, then its program."""

    def check(self, root: SourceNode) -> Template | None:
        top = self.mapping(root, "", "a template (a mapping of fields)")
        if top is None:
            return None
        self.fields(top, "", TOP_LEVEL_FIELDS, "a template")
        values = top.values
        before = len(self.problems)
        if "version" in values:
            node = values["version"]
            if not (
                isinstance(node, ScalarNode)
                and node.value == FORMAT_VERSION
                and not isinstance(node.value, bool)
            ):
                self.problem(node.mark, "version", f"{FORMAT_VERSION}", describe(node))
        name_node = self.required(top, "name", "", "a template name")
        name = None
        if name_node is not None:
            name = self.string(
                name_node,
                "name",
                pattern=TEMPLATE_NAME,
                expected=f"a name matching {TEMPLATE_NAME.pattern}",
            )
        description = ""
        if "description" in values:
            description = self.string(values["description"], "description", empty=True) or ""
        secrets = self.check_secrets(values["secrets"]) if "secrets" in values else ()
        inputs = self.check_inputs(values["inputs"]) if "inputs" in values else {}
        models = self.check_models(values["models"]) if "models" in values else {}
        prompts = self.check_prompts(values["prompts"]) if "prompts" in values else {}
        tools = self.check_tools(values["tools"]) if "tools" in values else {}
        knowledge = self.check_knowledge(values["knowledge"]) if "knowledge" in values else {}
        schedule = None
        if "schedule" in values:
            schedule = self.check_schedule(values["schedule"])
        budget = None
        if "budget" in values:
            node = values["budget"]
            if not (isinstance(node, ScalarNode) and node.value is None):
                budget = self.number(
                    node,
                    "budget",
                    positive=False,
                    expected="a non-negative number of gas (or null for the VM's default)",
                )
        priority = "normal"
        if "priority" in values:
            priority = self.choice(values["priority"], "priority", PRIORITIES) or "normal"

        scope: Scope = {"agent_id": str}
        for input_name, spec in inputs.items():
            scope[input_name] = INPUT_KINDS.get(spec.type)
        setup = self.check_steps(values.get("setup"), "setup", scope, required=False)
        if self.scheduled:
            scope["tick"] = int
        program_node = self.required(top, "program", "", "a non-empty list of steps")
        program = self.check_steps(program_node, "program", scope, required=True)
        result = None
        if "result" in values:
            self.check_value(values["result"], "result", scope)
            result = to_data(values["result"])
        if len(self.problems) > before or name is None:
            return None
        return Template(
            name=name,
            program=program,
            description=description,
            inputs=inputs,
            models=models,
            prompts=prompts,
            tools=tools,
            secrets=secrets,
            knowledge=knowledge,
            schedule=schedule,
            budget=budget,
            priority=priority,
            setup=setup,
            result=result,
        )


def validate(
    root: SourceNode | None,
    problems: Sequence[Problem],
    *,
    file: str,
    base_dir: Path | None,
    image: bool = False,
) -> tuple[Template | None, list[Problem]]:
    """Validate a parsed template; return it (None if any problem) and every problem found.

    ``problems`` are those the parser already found; ``base_dir`` is where prompt and schema
    files are read from (None: nowhere); ``image`` says the source is an image, whose
    knowledge paths are not looked for (an image is run away from its template's directory).
    """
    checker = _TemplateChecker(file, base_dir, image)
    checker.problems.extend(problems)
    template = checker.check(root) if root is not None else None
    if checker.problems:
        return None, checker.problems
    return template, []
