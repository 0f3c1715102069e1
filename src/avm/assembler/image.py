"""Agent images: a validated template in canonical form, named by its BLAKE3 digest.

An image is the template with everything it refers to inlined (prompt files become their text,
tool schema files their schema, knowledge files and directories their documents) and written
canonically: defaults left out, instruction names in lower case, keys sorted, compact ASCII
JSON. Two templates that mean the same thing - reordered keys, other comments or formatting, a
prompt inline or in a file - give the same bytes, hence the same digest, which names the file
(``<digest>.avmi``). An image is itself a valid template that refers to no file, so loading one
runs the same validator, then checks that the bytes are canonical and match the name: an edited
image is refused, not run.

::

    template.yaml ─► source (nodes + positions) ─► validate ─► Template ─► canonical JSON ─┐
                                                      ▲                                   │
    <digest>.avmi ─► check digest ─► source ──────────┘                    BLAKE3 ─► Image ◄┘
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import blake3
import msgspec

from avm.assembler.problems import Problem, TemplateError
from avm.assembler.source import load_source
from avm.assembler.template import (
    Call,
    If,
    Input,
    Knowledge,
    Model,
    Prompt,
    React,
    Repeat,
    Schedule,
    Set,
    Step,
    Template,
    Tool,
)
from avm.assembler.validate import validate

__all__ = [
    "IMAGE_SUFFIX",
    "TEMPLATE_SUFFIXES",
    "Image",
    "build",
    "build_text",
    "document",
    "load",
    "load_image",
]

IMAGE_SUFFIX: Final = ".avmi"
TEMPLATE_SUFFIXES: Final = (".yaml", ".yml", ".json")
_DIGEST_NAME = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Image:
    """A built template: the model, its canonical bytes, and their BLAKE3 digest (hex)."""

    template: Template
    data: bytes
    digest: str

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def filename(self) -> str:
        return self.digest + IMAGE_SUFFIX

    @classmethod
    def of(cls, template: Template) -> Image:
        data = canonical_json(document(template))
        return cls(template, data, blake3.blake3(data).hexdigest())

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write the image into ``directory`` as ``<digest>.avmi``; return its path.

        The file appears atomically (written aside, then renamed), so a reader never sees half
        an image; writing an image that is already there changes nothing.
        """
        target_dir = Path(directory)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / self.filename
        if target.is_file() and target.read_bytes() == self.data:
            return target
        fd, temporary = tempfile.mkstemp(dir=target_dir, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target


# -- canonical form -------------------------------------------------------------------------------


def canonical_json(document: dict[str, Any]) -> bytes:
    """Compact JSON, keys sorted, ASCII only.

    Escaping everything outside ASCII keeps an image readable by any YAML parser too (YAML
    refuses raw control characters that JSON allows), and its bytes independent of how an
    editor or terminal treats Unicode.
    """
    text = json.dumps(
        document, ensure_ascii=True, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text.encode("ascii")


def document(template: Template) -> dict[str, Any]:
    """The canonical document of a template: plain data, defaults omitted."""
    doc: dict[str, Any] = {
        "version": template.version,
        "name": template.name,
        "program": _steps(template.program),
    }
    if template.description:
        doc["description"] = template.description
    if template.inputs:
        doc["inputs"] = {name: _input(spec) for name, spec in template.inputs.items()}
    if template.models:
        doc["models"] = {name: _model(model) for name, model in template.models.items()}
    if template.prompts:
        doc["prompts"] = {name: _prompt(prompt) for name, prompt in template.prompts.items()}
    if template.tools:
        doc["tools"] = {name: _tool(tool) for name, tool in template.tools.items()}
    if template.secrets:
        doc["secrets"] = sorted(template.secrets)
    if template.knowledge:
        doc["knowledge"] = {name: _knowledge(k) for name, k in template.knowledge.items()}
    if template.schedule is not None:
        doc["schedule"] = _schedule(template.schedule)
    if template.budget is not None:
        doc["budget"] = template.budget
    if template.priority != "normal":
        doc["priority"] = template.priority
    if template.setup:
        doc["setup"] = _steps(template.setup)
    if template.result is not None:
        doc["result"] = template.result
    return doc


def _input(spec: Input) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": spec.type}
    if spec.description:
        doc["description"] = spec.description
    if spec.has_default:
        doc["default"] = spec.default
    return doc


def _model(model: Model) -> dict[str, Any]:
    fields = msgspec.structs.asdict(model)
    return {key: value for key, value in fields.items() if value is not None}


def _prompt(prompt: Prompt) -> dict[str, Any]:
    return {"use": prompt.use} if prompt.use is not None else {"text": prompt.text}


def _tool(tool: Tool) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if tool.access != "read":
        doc["access"] = tool.access
    if tool.description:
        doc["description"] = tool.description
    if tool.hosts:
        doc["hosts"] = sorted(tool.hosts)
    if tool.secrets:
        doc["secrets"] = sorted(tool.secrets)
    if tool.schema is not None:
        doc["schema"] = tool.schema
    return doc


def _knowledge(knowledge: Knowledge) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "documents": [{"title": d.title, "text": d.text} for d in knowledge.documents]
    }
    if knowledge.scope != "private":
        doc["scope"] = knowledge.scope
        if knowledge.namespace != "public":
            doc["namespace"] = knowledge.namespace
    if knowledge.description:
        doc["description"] = knowledge.description
    return doc


def _schedule(schedule: Schedule) -> dict[str, Any]:
    doc: dict[str, Any] = {"interval_s": schedule.interval_s, "ticks": schedule.ticks}
    if schedule.task != "tick":
        doc["task"] = schedule.task
    return doc


def _steps(steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    return [_step(step) for step in steps]


def _step(step: Step) -> dict[str, Any]:
    doc: dict[str, Any]
    if isinstance(step, Call):
        doc = {step.op.value.lower(): step.args}
    elif isinstance(step, React):
        react: dict[str, Any] = {
            "model": step.model,
            "input": step.input,
            "max_turns": step.max_turns,
        }
        if step.tools:
            react["tools"] = list(step.tools)
        if step.max_tokens is not None:
            react["max_tokens"] = step.max_tokens
        if step.temperature is not None:
            react["temperature"] = step.temperature
        doc = {"react": react}
    elif isinstance(step, Set):
        doc = {"set": step.value}
    elif isinstance(step, If):
        doc = {"if": step.condition, "then": _steps(step.then)}
        if step.otherwise:
            doc["else"] = _steps(step.otherwise)
        return doc
    elif isinstance(step, Repeat):
        doc = {"repeat": step.count, "do": _steps(step.body)}
        if step.max is not None:
            doc["max"] = step.max
    else:
        doc = {"for_each": step.items, "do": _steps(step.body)}
        if step.max is not None:
            doc["max"] = step.max
    if step.bind is not None:
        doc["as"] = step.bind
    return doc


# -- building and loading -------------------------------------------------------------------------


def build_text(
    text: str | bytes, *, file: str = "<template>", base_dir: Path | None = None
) -> Image:
    """Build an image from template text; ``base_dir`` is where its files are read from.

    Raises :class:`TemplateError` listing every problem.
    """
    root, problems = load_source(text, file)
    template, problems = validate(root, problems, file=file, base_dir=base_dir, image=False)
    if template is None:
        raise TemplateError(file, problems)
    return Image.of(template)


def build(path: str | os.PathLike[str]) -> Image:
    """Build an image from a template file (YAML, or JSON); files are read beside it."""
    source = Path(path)
    return build_text(_read(source), file=str(source), base_dir=source.parent)


def load_image(path: str | os.PathLike[str]) -> Image:
    """Load an image file, refusing one whose bytes do not match its name or are not canonical."""
    source = Path(path)
    data = _read(source)
    file = str(source)
    digest = blake3.blake3(data).hexdigest()
    stem = source.name.removesuffix(IMAGE_SUFFIX)
    if _DIGEST_NAME.fullmatch(stem) and stem != digest:
        raise TemplateError(
            file,
            [_whole(file, "content whose BLAKE3 digest is the file's name", f"digest {digest}")],
        )
    root, problems = load_source(data, file)
    template, problems = validate(root, problems, file=file, base_dir=None, image=True)
    if template is None:
        raise TemplateError(file, problems)
    image = Image.of(template)
    if image.data != data:
        raise TemplateError(
            file,
            [_whole(file, "an image in canonical form (as 'avm build' writes it)", "other bytes")],
        )
    return image


def load(path: str | os.PathLike[str]) -> Image:
    """An image from a template file or an image file, told apart by the suffix."""
    source = Path(path)
    if source.suffix == IMAGE_SUFFIX:
        return load_image(source)
    return build(source)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        found = exc.strerror or type(exc).__name__
        raise TemplateError(str(path), [_whole(str(path), "a readable file", found)]) from None


def _whole(file: str, expected: str, found: str) -> Problem:
    return Problem(file=file, line=1, column=1, path="", expected=expected, found=found)
