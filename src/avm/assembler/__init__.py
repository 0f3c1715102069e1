"""The assembler: agent templates in, validated content-addressed images out, run as agents.

A template (YAML or JSON) declares an agent as data - the models, prompts, tools, secrets and
knowledge it may use, how it runs, and a program of instructions - and the assembler turns it
into an :class:`Image` or a :class:`TemplateError` listing every problem with it::

    image = assembler.build("agent.yaml")        # or load("<digest>.avmi")
    path = image.write("images/")                # images/<blake3 digest>.avmi
    definition = assembler.register(vm, image)   # an ordinary agent definition
    vm.spawn(definition, token="ETH")

Modules, one concept each::

    source       text to nodes that know their line and column (YAML 1.2; JSON too)
    expressions  ${name.field} references, interpolation, conditions; never eval
    template     the model: msgspec structs of a validated template
    validate     puts a Template together from the checks in
      shapes       ... typed values and names, and the Problem records
      declarations ... models, prompts, tools, secrets, knowledge, inputs, schedule
      steps        ... the program: instructions, react, set, if, loops, references
    schema       the published JSON Schema (avm schema)
    image        canonical form, BLAKE3 digest, <digest>.avmi files
    program      the interpreter: an image registered and run as an ordinary agent
    problems     TemplateError (every problem, located) and ProgramError (at run time)
"""

from avm.assembler.image import (
    IMAGE_SUFFIX,
    TEMPLATE_SUFFIXES,
    Image,
    build,
    build_text,
    load,
    load_image,
)
from avm.assembler.problems import Problem, ProgramError, TemplateError
from avm.assembler.program import register, vm_name
from avm.assembler.schema import template_schema
from avm.assembler.template import Template

__all__ = [
    "IMAGE_SUFFIX",
    "TEMPLATE_SUFFIXES",
    "Image",
    "Problem",
    "ProgramError",
    "Template",
    "TemplateError",
    "build",
    "build_text",
    "load",
    "load_image",
    "register",
    "template_schema",
    "vm_name",
]
