"""Template source: every node keeps its line and column; what YAML allows but templates do not
is refused as problems, never as exceptions."""

from __future__ import annotations

import pytest

from avm.assembler.source import (
    MAX_BYTES,
    MapNode,
    Mark,
    ScalarNode,
    SeqNode,
    load_source,
    to_data,
)

TEXT = """\
name: watcher
program:
  - kv_store:
      key: "a"
      value: [1, 2.5, true, null]
"""


def test_every_node_knows_where_it_was_written() -> None:
    root, problems = load_source(TEXT, "t.yaml")
    assert problems == []
    assert isinstance(root, MapNode)
    assert root.mark == Mark(1, 1)
    assert root.keys == {"name": Mark(1, 1), "program": Mark(2, 1)}
    assert root.values["name"] == ScalarNode(Mark(1, 7), "watcher")
    program = root.values["program"]
    assert isinstance(program, SeqNode)
    step = program.items[0]
    assert isinstance(step, MapNode)
    assert step.mark == Mark(3, 5)
    args = step.values["kv_store"]
    assert isinstance(args, MapNode)
    assert args.keys["value"] == Mark(5, 7)
    value = args.values["value"]
    assert isinstance(value, SeqNode)
    assert [item.mark for item in value.items] == [
        Mark(5, 15),
        Mark(5, 18),
        Mark(5, 23),
        Mark(5, 29),
    ]
    assert to_data(root) == {
        "name": "watcher",
        "program": [{"kv_store": {"key": "a", "value": [1, 2.5, True, None]}}],
    }


def test_json_is_read_with_positions_too() -> None:
    root, problems = load_source(
        '{\n\t"name": "j",\n\t"program": [{"wait": {"delay_s": 1}}]\n}', "t.json"
    )
    assert problems == []
    assert isinstance(root, MapNode)
    assert root.keys["program"] == Mark(3, 2)
    assert to_data(root) == {"name": "j", "program": [{"wait": {"delay_s": 1}}]}


def test_yaml_1_2_scalars_stay_what_they_look_like() -> None:
    root, _ = load_source("a: yes\nb: 2024-01-02\nc: 0x1f\nd: '1'\ne: ~\n", "t.yaml")
    assert root is not None
    assert to_data(root) == {"a": "yes", "b": "2024-01-02", "c": 31, "d": "1", "e": None}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"name: \xff\n", "t.yaml:1:7: expected UTF-8 text, found byte 0xff"),
        (
            "a: \x00",
            "t.yaml:1:4: expected valid YAML, found the character U+0000, which YAML does "
            "not allow",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "t.yaml:2:1: expected valid YAML, found expected a single "
            "document in the stream; but found another document",
        ),
        (
            "[" * 5000,
            "t.yaml:1:1: expected nesting at most 64 levels deep, found far deeper nesting",
        ),
        (
            "x" * (MAX_BYTES + 1),
            f"t.yaml:1:1: expected a template of at most {MAX_BYTES:,} "
            f"bytes, found {MAX_BYTES + 1:,} bytes",
        ),
        ("", "t.yaml:1:1: expected a template, found an empty document"),
        (
            "a: !!python/object:os.system x\n",
            "t.yaml:1:4: a: expected a string, number, "
            "boolean or null, found tag tag:yaml.org,2002:python/object:os.system",
        ),
        ("? [a]\n: 1\n", "t.yaml:1:3: expected a string key, found a mapping or list as a key"),
    ],
)
def test_what_templates_refuse_is_a_problem_not_an_exception(
    text: str | bytes, expected: str
) -> None:
    _, problems = load_source(text, "t.yaml")
    assert [str(problem) for problem in problems] == [expected]


def test_nesting_deeper_than_the_limit_is_reported_once_where_it_starts() -> None:
    text = "a: " + "[" * 70 + "]" * 70
    _, problems = load_source(text, "t.yaml")
    assert [str(p) for p in problems] == [
        "t.yaml:1:68: a" + "[0]" * 64 + ": expected nesting at most 64 levels deep, "
        "found deeper nesting"
    ]
