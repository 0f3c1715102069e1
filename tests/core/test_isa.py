"""The instruction set table: complete, self-consistent, and validating arguments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import avm
from avm import INSTRUCTIONS, Op
from avm.errors import InvalidArgument

DESIGN = Path(__file__).resolve().parents[3] / "shared" / "DESIGN.md"


def test_every_opcode_has_one_spec() -> None:
    assert set(INSTRUCTIONS) == set(Op)
    assert all(spec.op is op for op, spec in INSTRUCTIONS.items())


@pytest.mark.skipif(not DESIGN.exists(), reason="DESIGN.md is beside the checkout only")
def test_matches_the_design_table() -> None:
    names = set(re.findall(r"`([A-Z_]+)\(", DESIGN.read_text()))
    assert names == {op.value for op, spec in INSTRUCTIONS.items() if not spec.intrinsic}


def test_context_has_a_method_per_instruction() -> None:
    for op in Op:
        assert hasattr(avm.Context, op.value.lower()), op


@pytest.mark.parametrize(
    ("op", "args", "message"),
    [
        (Op.WAIT, (-1,), "'delay_s' must not be negative"),
        (Op.WAIT, ("soon",), "'delay_s' must be int or float, got str"),
        (Op.WAIT, (True,), "must be int or float, got bool"),
        (Op.KV_STORE, ("", 1), "'key' must not be empty"),
        (Op.SCHEDULE_TASK, ("t", 0), "'interval_s' must be positive"),
        (Op.RUN_MODEL, ("m", "hi", 0, None, None, None, None), "'max_tokens' must be positive"),
        (Op.KV_FETCH, (), "KV_FETCH takes 1 arguments (key), got 0"),
    ],
)
def test_validation_names_the_argument(op: Op, args: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        INSTRUCTIONS[op].validate(args)


def test_bind_named_arguments() -> None:
    spec = INSTRUCTIONS[Op.SWARM_WAIT]
    assert spec.bind({"task_id": "t", "k": 3}) == ("t", 3, None)
    with pytest.raises(InvalidArgument, match="has no argument 'kk'"):
        spec.bind({"kk": 3})


def test_unavailable_instructions_are_marked() -> None:
    unavailable = {op for op, spec in INSTRUCTIONS.items() if not spec.available}
    assert unavailable == {Op.ALLOCATE_GPU, Op.RELEASE_GPU, Op.LIST_GPUS, Op.CHECK_GPU_LOAD}
