"""How the local provider's default ``weights="auto"`` picks the weight type it serves."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from avm.llm.local.model_file import default_model_path
from avm.llm.local.requantize import AUTO_MAX_SOURCE_BYTES, auto_weights
from avm.llm.providers.llamacpp import LlamaCppProvider
from avm.llm.types import Message, ModelRequest

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
HASWELL = frozenset({"avx", "avx2", "fma"})


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.gguf"
    path.write_bytes(b"\0" * 1024)
    return path


def test_auto_prefers_bf16_where_the_cpu_has_bf16_instructions(small_file: Path) -> None:
    assert auto_weights(small_file, ZEN4) == "bf16"
    assert auto_weights(small_file, frozenset({"avx2", "amx_bf16"})) == "bf16"


def test_auto_takes_q8_0_on_avx2_and_leaves_other_cpus_alone(small_file: Path) -> None:
    assert auto_weights(small_file, HASWELL) == "q8_0"
    assert auto_weights(small_file, frozenset({"neon", "asimd"})) == "as_is"
    assert auto_weights(small_file, frozenset()) == "as_is"


def test_auto_never_converts_a_large_model(tmp_path: Path) -> None:
    big = tmp_path / "big.gguf"
    with big.open("wb") as f:  # sparse: the size is what matters, not the bytes
        f.truncate(AUTO_MAX_SOURCE_BYTES + 1)
    assert auto_weights(big, ZEN4) == "as_is"


def test_auto_reads_this_machines_cpu() -> None:
    choice = auto_weights(default_model_path())
    assert choice in {"as_is", "q8_0", "bf16"}
    if os.path.exists("/proc/cpuinfo"):
        flags = Path("/proc/cpuinfo").read_text().split()
        assert (choice == "bf16") == ("avx512_bf16" in flags or "amx_bf16" in flags)


def converted_types(directory: Path) -> list[str]:
    """The weight types of the converted copies in ``directory`` (``name-digest.TYPE.gguf``)."""
    return sorted(p.name.rsplit(".", 2)[1] for p in directory.glob("*.gguf"))


async def test_the_default_provider_serves_the_auto_choice(tmp_path: Path) -> None:
    provider = LlamaCppProvider(cache_dir=tmp_path, n_ctx=1024)
    try:
        reply = await provider.complete(
            ModelRequest(
                model="smollm2-135m-instruct",
                messages=(Message("user", "What is the capital of France?"),),
                max_tokens=12,
                temperature=0.0,
            )
        )
    finally:
        await provider.aclose()
    assert "Paris" in reply.text
    converted = converted_types(tmp_path)
    expected = auto_weights(default_model_path())
    assert converted == ([] if expected == "as_is" else [expected])


QUESTIONS = (
    "What is the capital of France?",
    "Name a primary colour.",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "Which planet do we live on?",
    "What colour is the sky?",
    "Who wrote Hamlet?",
)


async def test_default_weights_batched_greedy_matches_one_at_a_time(tmp_path: Path) -> None:
    """Eight concurrent greedy requests on the default (converted) weights, against each alone.

    Tolerance: a batch of B > 1 tokens runs through llama.cpp's tiled BF16/Q8_0 matrix kernels
    and a single token through its dot-product kernel; they sum in different orders, so where
    the two best next tokens are nearly tied the texts can part. At the time of writing 7 of
    these 8 are identical on BF16 and the eighth parts after its second word. The test asks
    that at least 6 of 8 be identical and that every pair agree on its first word.
    """
    provider = LlamaCppProvider(cache_dir=tmp_path, n_ctx=4096, n_seq_max=8, seed=7)
    requests = [
        ModelRequest(
            model="smollm2-135m-instruct",
            messages=(Message("user", q),),
            max_tokens=32,
            temperature=0.0,
        )
        for q in QUESTIONS
    ]
    try:
        alone = [(await provider.complete(r)).text for r in requests]
        together = [r.text for r in await asyncio.gather(*map(provider.complete, requests))]
    finally:
        await provider.aclose()
    pairs = list(zip(alone, together, strict=True))
    for solo, batched in pairs:
        assert solo.split()[:1] == batched.split()[:1], (solo, batched)
    assert sum(a == b for a, b in pairs) >= len(pairs) - 2, pairs
