"""A converted copy of the shipped weights must stay the same model, not merely a similar one.

``weights="auto"`` serves a converted copy of the Q4_1 file for speed (see
:mod:`avm.llm.local.requantize`); the conversion is only acceptable if it keeps the model's
answers. The measure: feed the same fixed answers to the shipped file and to the copy (teacher
forcing) and count how often both pick the same next token. BF16, F16 and Q8_0 hold the Q4_1
values exactly or nearly so and agree at 96% of these positions, which is the floor set by
kernels summing in different orders. Requantizing to another 4-bit format does not: Q4_0
agreed at 69%, IQ4_NL at 78%, the Q4_K_M mix at 89% and the Q6_K mix at 94% when this was
measured, and their greedy texts parted from the BF16 copy's within the first few words.
The threshold sits between the two groups.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Final

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

import llama_cpp

from avm.llm.local.engine import TokenBatch
from avm.llm.local.model import ContextSettings, LocalModel
from avm.llm.local.model_file import default_model_path
from avm.llm.local.requantize import WeightType, requantized

MIN_AGREEMENT: Final = 0.93
SYSTEM: Final = "You are a helpful assistant. Answer in one paragraph."
ANSWERS: Final = (
    (
        "Why do ships float?",
        "Ships float because they push aside, or displace, a volume of water whose weight"
        " equals their own weight. A steel hull is shaped so that it encloses a large volume of"
        " air, which makes the average density of the whole ship lower than the density of"
        " water. The water pushes up on the hull with a buoyant force, and as long as that force"
        " can match the ship's weight before the deck reaches the waterline, the ship stays"
        " afloat.",
    ),
    (
        "What is compound interest?",
        "Compound interest is interest calculated on both the original amount of money and on"
        " the interest that has already been added to it. Each period, the interest earned is"
        " added to the balance, so the next period's interest is computed on a larger sum. Over"
        " many years this makes savings grow faster than with simple interest, and it also makes"
        " unpaid debts grow faster.",
    ),
    (
        "How do rainbows form?",
        "A rainbow forms when sunlight enters raindrops, bends as it passes from air into water,"
        " reflects off the back of each drop and bends again as it leaves. Because each colour of"
        " light bends by a slightly different amount, the white sunlight spreads into its"
        " colours. You see a rainbow when the sun is behind you and the rain is in front of you,"
        " at an angle of about forty-two degrees from the point opposite the sun.",
    ),
)


def next_token_choices(path: Path) -> list[int]:
    """The model's most likely next token at every position of each fixed answer."""
    model = LocalModel(path, ContextSettings(n_ctx=1024, n_seq=1, n_batch=512, n_threads=1))
    batch = TokenBatch(512)
    choices: list[int] = []
    try:
        for question, answer in ANSWERS:
            text = model.apply_chat_template(
                [("system", SYSTEM), ("user", question)], add_assistant=True
            )
            prompt = model.tokenize(text)
            tokens = prompt + model.tokenize(answer, add_bos=False)
            first = len(prompt) - 1  # the last prompt token predicts the answer's first
            batch.clear()
            for i, token in enumerate(tokens):
                batch.add(token, i, 0, logits=i >= first)
            llama_cpp.llama_memory_clear(model.memory, True)
            assert llama_cpp.llama_decode(model.ctx, batch.seal()) == 0
            for i in range(first, len(tokens) - 1):
                row = llama_cpp.llama_get_logits_ith(model.ctx, i)
                logits = np.ctypeslib.as_array(
                    ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,)
                )
                choices.append(int(logits.argmax()))
    finally:
        batch.free()
        model.close()
    return choices


@pytest.fixture(scope="module")
def shipped_choices() -> list[int]:
    return next_token_choices(default_model_path())


@pytest.mark.parametrize("weights", ["bf16", "f16", "q8_0"])
def test_a_converted_copy_picks_the_shipped_files_next_tokens(
    weights: WeightType, shipped_choices: list[int], tmp_path: Path
) -> None:
    copy = requantized(default_model_path(), weights, tmp_path)
    choices = next_token_choices(copy)
    assert len(choices) == len(shipped_choices) > 200
    agreement = sum(a == b for a, b in zip(choices, shipped_choices, strict=True)) / len(choices)
    assert agreement >= MIN_AGREEMENT, f"{weights}: {agreement:.3f}"
