"""The local model provider against the real SmolLM2-135M-Instruct model, and its helpers.

Tests that need the model share one provider per module (loading it takes a fraction of a
second, but its KV cache and decode thread are worth reusing); tests about prefix sharing or
context limits build their own so that the cache state they assert on is theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from avm.errors import ConfigError, ModelError
from avm.llm.types import Message, ModelRequest, ToolSpec

np = pytest.importorskip("numpy")
llama_cpp = pytest.importorskip("llama_cpp")

from avm.llm.local.completion_text import CompletionText  # noqa: E402
from avm.llm.local.model_file import default_model_path  # noqa: E402
from avm.llm.local.prefix_cache import PrefixCache  # noqa: E402
from avm.llm.local.sampling import TokenSampler  # noqa: E402
from avm.llm.providers.llamacpp import LlamaCppProvider  # noqa: E402

SYSTEM = (
    "You are a concise assistant for a team of analysts. Answer in plain English, in one or"
    " two short sentences, without lists or markdown."
)
QUESTIONS = (
    "What is the capital of France?",
    "Name a primary colour.",
    "What do bees make?",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "Which planet do we live on?",
)


def ask(
    question: str,
    *,
    system: str | None = SYSTEM,
    max_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: tuple[str, ...] = (),
    tools: tuple[ToolSpec, ...] = (),
) -> ModelRequest:
    messages = [Message("user", question)]
    if system is not None:
        messages.insert(0, Message("system", system))
    return ModelRequest(
        model="smollm2",
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        tools=tools,
    )


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return default_model_path()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def provider(model_path: Path) -> Iterator[LlamaCppProvider]:
    # The file's own Q4_1 weights; the default BF16/Q8_0 conversion has tests of its own
    # (test_local_weights.py), with the tolerance its kernels need.
    shared = LlamaCppProvider(
        model_path, n_ctx=4096, n_seq_max=8, n_batch=256, seed=7, weights="as_is"
    )
    asyncio.run(shared.load())
    yield shared
    asyncio.run(shared.aclose())


# --- the real model ---------------------------------------------------------------------------


async def test_short_generation_is_sensible(provider: LlamaCppProvider) -> None:
    reply = await provider.complete(ask("What is the capital of France?", max_tokens=24))
    assert "Paris" in reply.text
    assert reply.model == "smollm2"
    assert reply.usage.tokens_in > 20  # the chat-templated system and user turns
    assert 0 < reply.usage.tokens_out <= 24
    assert reply.finish_reason in ("stop", "length")


async def test_batched_greedy_matches_one_at_a_time(provider: LlamaCppProvider) -> None:
    """Six concurrent greedy requests give the texts they give alone.

    Tolerance: llama.cpp's kernels for a many-token batch are not bit-identical to the
    one-token path, and which requests share a decode step depends on when each reaches the
    decode thread (timing, so machine load). Where the two best next tokens are nearly tied,
    a text can therefore part from its solo text: "Which planet do we live on?" answers
    "The planet Earth ..." alone and, in some batch compositions, "The planet Mars ...". The
    test asks that every pair agree on its first word and that at least five of the six be
    identical.
    """
    requests = [ask(q, max_tokens=32) for q in QUESTIONS]
    alone = [(await provider.complete(r)).text for r in requests]
    steps_before = provider.stats().steps  # type: ignore[union-attr]
    together = [r.text for r in await asyncio.gather(*(provider.complete(r) for r in requests))]
    batched_steps = provider.stats().steps - steps_before  # type: ignore[union-attr]
    # Six requests of up to 32 tokens in far fewer than 6 * 32 steps: they really shared.
    assert batched_steps < 2 * 32 + 8
    identical = sum(a == b for a, b in zip(alone, together, strict=True))
    for solo, batched in zip(alone, together, strict=True):
        assert solo, "every question gets an answer"
        assert solo.split()[:1] == batched.split()[:1], (solo, batched)
    assert identical >= len(requests) - 1, list(zip(alone, together, strict=True))


async def test_prefix_is_shared_and_gives_the_same_text(model_path: Path) -> None:
    sharing = LlamaCppProvider(model_path, n_ctx=2048, n_seq_max=4, n_batch=128)
    plain = LlamaCppProvider(model_path, n_ctx=2048, n_seq_max=4, n_batch=128, prefix_cache_size=0)
    try:
        first = await sharing.complete(ask(QUESTIONS[0], max_tokens=24))
        second = await sharing.complete(ask(QUESTIONS[1], max_tokens=24))
        assert first.usage.cached_tokens == 0
        # The system turn (ChatML header, text, end marker) came from the cache.
        assert 25 <= second.usage.cached_tokens < second.usage.tokens_in
        reference = await plain.complete(ask(QUESTIONS[1], max_tokens=24))
        assert reference.usage.cached_tokens == 0
        assert second.text == reference.text
        assert second.usage.tokens_in == reference.usage.tokens_in

        # Four at once with a new system prompt: one evaluates it, three reuse it, even though
        # they arrive before it is evaluated.
        other_system = SYSTEM + " Always be polite and precise."
        replies = await asyncio.gather(
            *(sharing.complete(ask(q, system=other_system, max_tokens=8)) for q in QUESTIONS[:4])
        )
        cached = sorted(r.usage.cached_tokens for r in replies)
        assert cached[0] == 0
        assert cached[1] == cached[2] == cached[3] > 25
        stats = sharing.stats()
        assert stats is not None
        assert stats.prefix_hits == 4
    finally:
        await sharing.aclose()
        await plain.aclose()


async def test_stop_strings_cut_the_text(provider: LlamaCppProvider) -> None:
    request = ask("Describe the sea in two sentences.", max_tokens=40)
    full = (await provider.complete(request)).text
    words = full.split()
    assert len(words) > 4
    stop = " " + words[3]
    stopped = await provider.complete(
        ask("Describe the sea in two sentences.", max_tokens=40, stop=(stop, "\u2603"))
    )
    assert stopped.text == full[: full.index(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.usage.tokens_out < len(full)


async def test_max_tokens_is_respected(provider: LlamaCppProvider) -> None:
    reply = await provider.complete(ask("Write a long story about a dragon.", max_tokens=5))
    assert reply.usage.tokens_out == 5
    assert reply.finish_reason == "length"
    assert reply.text


async def test_sampling_is_seeded_per_request(provider: LlamaCppProvider) -> None:
    request = ask("Invent a name for a cat.", temperature=1.0, top_p=0.9, max_tokens=16)
    a = await provider.complete(request, seed=1234)
    b = await provider.complete(request, seed=1234)
    assert a.text == b.text
    texts = {(await provider.complete(request, seed=s)).text for s in range(5)}
    assert len(texts) > 1


async def test_stream_yields_the_reply_text(provider: LlamaCppProvider) -> None:
    stream = provider.stream(ask("Name three fruits.", max_tokens=24))
    deltas = [delta async for delta in stream]
    assert stream.reply is not None
    assert len(deltas) > 1
    assert "".join(deltas) == stream.reply.text
    assert stream.reply.usage.tokens_out > 0


async def test_cancelled_request_leaves_the_provider_working(provider: LlamaCppProvider) -> None:
    task = asyncio.create_task(
        provider.complete(ask("Count from one to a hundred.", max_tokens=200))
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply = await provider.complete(ask(QUESTIONS[2], max_tokens=8))
    assert reply.text


async def test_prompt_longer_than_the_context_is_a_model_error(model_path: Path) -> None:
    small = LlamaCppProvider(model_path, n_ctx=256, n_seq_max=2, n_batch=64)
    try:
        with pytest.raises(ModelError, match=r"prompt is \d+ tokens .* at most 256"):
            await small.complete(ask("word " * 400))
        # max_tokens beyond the context is clamped, not an error.
        reply = await small.complete(ask("Say hi.", max_tokens=10_000))
        assert reply.text
    finally:
        await small.aclose()


async def test_bad_requests_are_model_errors(provider: LlamaCppProvider) -> None:
    with pytest.raises(ModelError, match="at least one message"):
        await provider.complete(ModelRequest(model="smollm2", messages=()))
    with pytest.raises(ModelError, match="does not support tools"):
        await provider.complete(ask("hi", tools=(ToolSpec("search"),)))
    with pytest.raises(ModelError, match="top_p"):
        await provider.complete(ask("hi", top_p=0.0))


async def test_missing_model_file_and_closed_provider(tmp_path: Path) -> None:
    missing = LlamaCppProvider(tmp_path / "nope.gguf")
    with pytest.raises(ConfigError, match="does not exist"):
        await missing.load()
    with pytest.raises(ModelError, match="unavailable"):
        await missing.complete(ask("hi"))
    await missing.aclose()
    with pytest.raises(ModelError, match="closed"):
        await missing.complete(ask("hi"))


# --- helpers, without the model ---------------------------------------------------------------


def test_completion_text_cuts_at_a_stop_string_spanning_tokens() -> None:
    text = CompletionText(stop=("END",))
    text.feed(b"hello E")
    assert text.take_delta() == "hello "  # "E" might start "END": held back
    text.feed(b"N")
    assert text.take_delta() == ""
    text.feed(b"D and more")
    assert text.stopped
    assert text.text == "hello E"[:-1]
    assert text.take_delta(final=True) == ""


def test_completion_text_reassembles_split_characters() -> None:
    text = CompletionText()
    snowman = "\u2603".encode()
    text.feed(b"a" + snowman[:1])
    text.feed(snowman[1:])
    text.finish()
    assert text.text == "a\u2603"


def test_sampler_greedy_and_nucleus() -> None:
    logits = np.array([0.0, 5.0, 4.9, -3.0], dtype=np.float32)
    assert TokenSampler(temperature=0.0, top_p=1.0, seed=0).sample(logits) == 1
    # top_p small enough keeps only the single most likely token.
    nucleus = TokenSampler(temperature=1.0, top_p=0.1, seed=0)
    assert {nucleus.sample(logits) for _ in range(50)} == {1}
    draws_a = [TokenSampler(temperature=1.0, top_p=0.95, seed=3).sample(logits) for _ in range(3)]
    wide = TokenSampler(temperature=1.0, top_p=0.95, seed=3)
    assert {wide.sample(logits) for _ in range(200)} == {1, 2}
    assert len(set(draws_a)) == 1  # same seed, same first draw


def test_prefix_cache_evicts_only_idle_entries() -> None:
    cache: PrefixCache[object] = PrefixCache(range(10, 12))
    a, _ = cache.create((1, 2))
    b, _ = cache.create((3, 4))
    assert a is not None
    assert b is not None
    assert {a.seq_id, b.seq_id} == {10, 11}
    c, evicted = cache.create((5, 6))
    assert c is None  # neither entry is evaluated yet, so neither can go
    assert evicted is None
    a.evaluated = b.evaluated = 2
    b.users = 1
    c, evicted = cache.create((5, 6))
    assert evicted is a
    assert c is not None
    assert c.seq_id == a.seq_id
    assert cache.get((1, 2)) is None
    assert cache.get((3, 4)) is b


async def test_more_requests_than_sequences_or_cache_queue_up(model_path: Path) -> None:
    # 4 sequences and a 512-cell cache: each request reserves prompt + 120 cells, so at most
    # two or three run at once and the rest wait for cells, then for sequence ids.
    tight = LlamaCppProvider(model_path, n_ctx=512, n_seq_max=4, n_batch=64)
    try:
        replies = await asyncio.gather(
            *(tight.complete(ask(q, system=None, max_tokens=120)) for q in QUESTIONS)
        )
        assert all(r.text for r in replies)
        stats = tight.stats()
        assert stats is not None
        assert stats.max_active <= 3
        assert stats.jobs_done == len(QUESTIONS)
    finally:
        await tight.aclose()


def converted_files(directory: Path) -> dict[str, int]:
    """Converted model files in ``directory``: name -> modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.q8_0.gguf")}


async def test_q8_0_weights_are_converted_once_and_cached(model_path: Path, tmp_path: Path) -> None:
    first = LlamaCppProvider(model_path, weights="q8_0", cache_dir=tmp_path, n_ctx=1024)
    try:
        reply = await first.complete(ask("What is the capital of France?", max_tokens=16))
        assert "Paris" in reply.text
    finally:
        await first.aclose()
    converted = converted_files(tmp_path)
    assert len(converted) == 1
    second = LlamaCppProvider(model_path, weights="q8_0", cache_dir=tmp_path, n_ctx=1024)
    try:
        await second.load()
    finally:
        await second.aclose()
    assert converted_files(tmp_path) == converted  # reused, not written again
