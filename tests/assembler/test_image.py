"""Images: canonical, content-addressed, verified when loaded."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import blake3
import pytest
from ruamel.yaml import YAML

from avm.assembler import IMAGE_SUFFIX, TemplateError, build, build_text, load, load_image

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "templates" / "portfolio_watcher.yaml"

ONE = """\
# a comment
name: same
prompts:
  style: {file: style.md}
tools:
  news:
program:
  - load_prompt: {prompt_id: style}
    as: style
  - sql_execute: {query: SELECT 1}
  - read_from_tool: {api: news, query: {b: 1, a: 2}}
"""

# The same template: other key order, flow style, an inline prompt, upper-case instruction
# names, defaults written out.
TWO = """\
program:
- {as: style, LOAD_PROMPT: {prompt_id: style}}
- SQL_EXECUTE:
    params: []
    query: SELECT 1
- read_from_tool:
    query:
      a: 2
      b: 1
    api: news
tools: {news: {access: read, hosts: [], secrets: []}}
priority: normal
version: 1
prompts:
  style: "Be brief.\\n"
name: same
"""


@pytest.fixture
def here(tmp_path: Path) -> Path:
    (tmp_path / "style.md").write_text("Be brief.\n", encoding="utf-8")
    return tmp_path


def test_templates_that_mean_the_same_build_the_same_image(here: Path) -> None:
    one = build_text(ONE, base_dir=here)
    two = build_text(TWO, base_dir=here)
    assert one.data == two.data
    assert one.digest == two.digest == blake3.blake3(one.data).hexdigest()
    changed = build_text(ONE.replace("{b: 1, a: 2}", "{b: 1, a: 3}"), base_dir=here)
    assert changed.digest != one.digest
    assert json.loads(one.data)["prompts"] == {"style": {"text": "Be brief.\n"}}


def test_an_image_is_written_under_its_digest_and_loads_back(tmp_path: Path) -> None:
    image = build(EXAMPLE)
    path = image.write(tmp_path / "images")
    assert path == tmp_path / "images" / f"{image.digest}{IMAGE_SUFFIX}"
    assert path.read_bytes() == image.data
    assert image.write(tmp_path / "images") == path  # idempotent
    assert [p.name for p in (tmp_path / "images").iterdir()] == [path.name]
    loaded = load_image(path)
    assert loaded.digest == image.digest
    assert loaded.template == image.template
    assert load(path).digest == load(EXAMPLE).digest == image.digest


def test_an_edited_image_is_refused(tmp_path: Path) -> None:
    image = build(EXAMPLE)
    path = image.write(tmp_path)
    path.write_bytes(image.data.replace(b'"budget":100.0', b'"budget":1e9'))
    with pytest.raises(TemplateError) as refused:
        load_image(path)
    (problem,) = refused.value.problems
    assert problem.expected == "content whose BLAKE3 digest is the file's name"


def test_an_image_must_be_canonical_and_self_contained(tmp_path: Path) -> None:
    image = build(EXAMPLE)
    pretty = json.dumps(json.loads(image.data), indent=2).encode()
    renamed = tmp_path / f"{blake3.blake3(pretty).hexdigest()}{IMAGE_SUFFIX}"
    renamed.write_bytes(pretty)
    with pytest.raises(TemplateError) as refused:
        load_image(renamed)
    assert [p.expected for p in refused.value.problems] == [
        "an image in canonical form (as 'avm build' writes it)"
    ]
    document = json.loads(image.data)
    document["prompts"]["analyst"] = {"file": "prompts/analyst.md"}
    crafted = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    path = tmp_path / f"{blake3.blake3(crafted).hexdigest()}{IMAGE_SUFFIX}"
    path.write_bytes(crafted)
    with pytest.raises(TemplateError) as refused:
        load_image(path)
    assert [p.expected for p in refused.value.problems] == [
        "inline text (an image holds no file references)"
    ]


def test_a_missing_file_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError) as refused:
        build(tmp_path / "nope.yaml")
    assert str(refused.value.problems[0]) == (
        f"{tmp_path / 'nope.yaml'}:1:1: expected a readable file, found No such file or directory"
    )


def test_prompt_files_are_read_relative_to_the_template(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.md").write_text("from a file", encoding="utf-8")
    (tmp_path / "t.yaml").write_text(
        textwrap.dedent(
            """
            name: files
            prompts: {x: {file: p/x.md}}
            program: [{load_prompt: {prompt_id: x}}]
            """
        ),
        encoding="utf-8",
    )
    image = build(tmp_path / "t.yaml")
    assert image.template.prompts["x"].text == "from a file"
    with pytest.raises(TemplateError, match="no directory to read files from"):
        build_text((tmp_path / "t.yaml").read_text(encoding="utf-8"))


def test_yaml_and_json_spellings_of_a_template_build_the_same_image(tmp_path: Path) -> None:
    data = YAML(typ="safe", pure=True).load(EXAMPLE.read_text(encoding="utf-8"))
    as_json = tmp_path / "portfolio_watcher.json"
    as_json.write_text(json.dumps(data, indent="\t"), encoding="utf-8")
    for directory in ("prompts", "knowledge"):  # copies: a symlink out of the directory is refused
        shutil.copytree(EXAMPLE.parent / directory, tmp_path / directory)
    assert build(as_json).digest == build(EXAMPLE).digest


@pytest.mark.parametrize("example", sorted(EXAMPLE.parent.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_template_builds(example: Path, tmp_path: Path) -> None:
    image = build(example)
    assert load(image.write(tmp_path)) == image
