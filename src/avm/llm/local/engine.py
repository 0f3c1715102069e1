"""The decode loop: one background thread that runs every local generation in shared batches.

This module owns :class:`BatchEngine`, the only code that drives the llama.cpp context. Callers
(the provider, on the asyncio side) hand it :class:`GenerationJob` objects through a
thread-safe inbox; the engine reports text, completion and failure back through each job's
:class:`GenerationSink`, from its own thread (the sink is what hops back onto an event loop).

Continuous batching. Each step packs the next token of *every* active sequence into one
``llama_batch`` and calls ``llama_decode`` once, so 32 agents cost one pass over the weights
per step instead of 32. (How much time that saves depends on the weight type's CPU kernels:
little for Q4_1, more for Q8_0; see :mod:`avm.llm.local.requantize`.) Sequences join and leave
between steps::

      inbox ──► waiting ──admit (free sequence id, KV cells reserved)──┐
                                                                       ▼
     ┌────────────────────────── one step ─────────────────────────────────────────┐
     │ batch = [next token of each generating sequence]                            │
     │       + [prompt chunks of filling sequences and prefixes, up to n_batch]    │
     │ llama_decode(batch)                      (GIL released while it runs)       │
     │ sample each sequence that produced logits; feed text; stop string?          │
     └────────────────────────────────────┬────────────────────────────────────────┘
                EOS / stop / max_tokens ──┴──► sink.done(), cells freed, id reused

Prefix sharing. A job names how many of its leading prompt tokens are a shareable prefix
(its system prompt). The first job with a prefix makes the engine evaluate those tokens once
into a prefix sequence (:mod:`avm.llm.local.prefix_cache`); every job with the same prefix,
including ones that arrive while it is still being evaluated, then starts from a copy of it
(``llama_memory_seq_cp``: with the unified KV cache, a metadata copy) and evaluates only its own
suffix. The reply's ``cached_tokens`` counts the prefix tokens a job did not evaluate.

KV budget. The unified cache has ``n_ctx`` cells for all sequences. A job is admitted only when
its worst case (unshared prompt tokens + max new tokens) fits beside what running jobs and
cached prefixes hold, so ``llama_decode`` never runs out of cells mid-generation; idle cached
prefixes are evicted first when space is short.

Floating point. llama.cpp's kernels for a batch of many tokens are not bit-identical to those
for one token, so a greedy completion computed in a batch can pick a different token wherever
two candidates are nearly tied; with a model this small that happens in some replies within
the first few tokens. Sampling itself is per sequence and seeded per job, independent of
batch composition.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import llama_cpp
import numpy as np

from avm.errors import ModelError
from avm.llm.local.completion_text import CompletionText
from avm.llm.local.model import ContextSettings, LocalModel
from avm.llm.local.prefix_cache import PrefixCache, PrefixEntry
from avm.llm.local.requantize import WeightChoice, auto_weights, requantized
from avm.llm.local.sampling import TokenSampler

__all__ = [
    "BatchEngine",
    "Completion",
    "EngineSettings",
    "EngineStats",
    "GenerationJob",
    "GenerationSink",
    "TokenBatch",
]

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]

# Inbox messages other than jobs.
_WAKE: Final = "wake"
_STOP: Final = "stop"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Sizes of the engine; the provider documents each one."""

    n_ctx: int = 8192
    n_seq: int = 32
    n_batch: int = 256
    n_threads: int = 1
    max_seq_tokens: int | None = None
    prefix_cache_size: int = 8
    min_prefix_tokens: int = 16
    flash_attn: bool = True
    weights: WeightChoice = "auto"
    cache_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """The outcome of one job."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started; read from any thread (values may be a step old)."""

    steps: int = 0
    batch_tokens: int = 0
    generated_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prefix_hits: int = 0
    prefix_tokens_reused: int = 0
    max_active: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0


class GenerationSink(Protocol):
    """Where a job's results go. Called on the engine thread; must not block."""

    def text(self, delta: str) -> None:
        """New final text (only for jobs submitted with ``stream=True``)."""

    def done(self, completion: Completion) -> None:
        """The job finished; no further calls follow."""

    def failed(self, error: ModelError) -> None:
        """The job failed; no further calls follow."""


class GenerationJob:
    """One prompt to complete, as token ids, with its sampling and stopping rules.

    Args:
        prompt: the whole prompt's token ids, chat template applied.
        prefix_len: how many leading tokens may be shared with other jobs (0: none).
        max_tokens: most tokens to generate; the engine lowers it to fit the context.
        sampler: this job's own sampler (and random stream).
        stop: strings that end the completion; the text is cut before the first one.
        sink: where the outcome goes.
        stream: also report text deltas as they become final.
    """

    __slots__ = (
        "cancelled",
        "max_tokens",
        "prefix_len",
        "prompt",
        "sampler",
        "sink",
        "stop",
        "stream",
    )

    def __init__(
        self,
        prompt: list[int],
        *,
        prefix_len: int,
        max_tokens: int,
        sampler: TokenSampler,
        stop: tuple[str, ...],
        sink: GenerationSink,
        stream: bool = False,
    ) -> None:
        self.prompt = prompt
        self.prefix_len = prefix_len
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.stop = stop
        self.sink = sink
        self.stream = stream
        # Written by the caller's thread, read by the engine's; a plain bool is enough.
        self.cancelled = False


class _Fill:
    """Something whose tokens are being evaluated: a request or a prefix."""

    __slots__ = ("n_past", "pending", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.n_past = 0  # tokens of this sequence already in the KV cache
        self.pending: list[int] = []  # tokens to evaluate next, in order


class _Request(_Fill):
    __slots__ = (
        "cached_tokens",
        "completion",
        "generated",
        "job",
        "max_new",
        "owns_prefix",
        "prefix",
        "reserved",
    )

    def __init__(self, job: GenerationJob, seq_id: int, max_new: int) -> None:
        super().__init__(seq_id)
        self.job = job
        self.max_new = max_new
        self.generated = 0
        self.cached_tokens = 0
        self.reserved = 0
        # The cached prefix this request starts from (counted in its ``users``), if any.
        self.prefix: PrefixEntry[_Request] | None = None
        self.owns_prefix = False
        self.completion = CompletionText(job.stop)


class _Prefix(_Fill):
    __slots__ = ("entry",)

    def __init__(self, entry: PrefixEntry[_Request]) -> None:
        super().__init__(entry.seq_id)
        self.entry = entry
        self.pending = list(entry.tokens)


class TokenBatch:
    """A ``llama_batch`` of up to ``capacity`` tokens, one sequence id per token.

    Writes go through typed pointers into the C arrays (llama-cpp-python's annotations of the
    struct fields do not match their C types closely enough for a type checker).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw: llama_cpp.llama_batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        int32_p = ctypes.POINTER(ctypes.c_int32)
        self._token = ctypes.cast(self.raw.token, int32_p)
        self._pos = ctypes.cast(self.raw.pos, int32_p)
        self._n_seq_id = ctypes.cast(self.raw.n_seq_id, int32_p)
        self._seq_id = ctypes.cast(self.raw.seq_id, ctypes.POINTER(int32_p))
        self._logits = ctypes.cast(self.raw.logits, ctypes.POINTER(ctypes.c_int8))
        self.size = 0

    def clear(self) -> None:
        self.size = 0

    def add(self, token: int, pos: int, seq_id: int, *, logits: bool) -> int:
        """Append one token; returns its index (the row of its logits, if requested)."""
        i = self.size
        self._token[i] = token
        self._pos[i] = pos
        self._n_seq_id[i] = 1
        self._seq_id[i][0] = seq_id
        self._logits[i] = 1 if logits else 0
        self.size = i + 1
        return i

    def want_logits(self, i: int) -> None:
        self._logits[i] = 1

    def seal(self) -> llama_cpp.llama_batch:
        self.raw.n_tokens = self.size
        return self.raw

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.raw)


class BatchEngine:
    """Runs local generations for any number of callers on one decode thread.

    Call :meth:`start` once (it loads the model on the engine thread), then :meth:`submit`
    jobs from any thread, and :meth:`stop` at the end.
    """

    def __init__(self, model_path: Path, settings: EngineSettings) -> None:
        if settings.n_seq < 1:
            raise ValueError(f"n_seq must be at least 1, got {settings.n_seq}")
        if settings.n_batch < settings.n_seq:
            raise ValueError(
                f"n_batch ({settings.n_batch}) must be at least n_seq ({settings.n_seq}):"
                " every generating sequence needs a slot in each batch"
            )
        if settings.prefix_cache_size < 0:
            raise ValueError("prefix_cache_size must not be negative")
        self.model_path = model_path
        self.settings = settings
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue[GenerationJob | str] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[LocalModel] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        # Engine-thread state from here on.
        self._model: LocalModel | None = None
        self._batch: TokenBatch | None = None
        self._max_seq_tokens = 0
        self._waiting: deque[GenerationJob] = deque()
        self._free_ids: list[int] = list(reversed(range(settings.n_seq)))
        self._prefixes: PrefixCache[_Request] = PrefixCache(
            range(settings.n_seq, settings.n_seq + settings.prefix_cache_size)
        )
        self._generating: list[_Request] = []
        self._filling: list[_Fill] = []  # prompts and prefixes being evaluated, FIFO
        self._parked: list[_Request] = []  # waiting for a prefix being evaluated
        self._reserved = 0  # KV cells promised to admitted requests

    # --- any thread ------------------------------------------------------------------------

    def start(self) -> concurrent.futures.Future[LocalModel]:
        """Start the engine thread; the future resolves to the model once it is loaded."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="avm-llamacpp-decode", daemon=True
            )
            self._thread.start()
        return self._ready

    @property
    def max_seq_tokens(self) -> int:
        """Most tokens (prompt + completion) one sequence may hold; known once loaded."""
        return self._max_seq_tokens

    def submit(self, job: GenerationJob) -> None:
        self._inbox.put(job)

    def cancel(self, job: GenerationJob) -> None:
        """Drop a job at the next step; its sink is not called again."""
        job.cancelled = True
        self._inbox.put(_WAKE)

    def request_stop(self) -> None:
        """Ask the engine thread to end after its current step, without waiting for it."""
        self._inbox.put(_STOP)

    def stop(self, timeout_s: float | None = None) -> None:
        """Fail what is still queued or running, free the model, and end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._inbox.put(_STOP)
        thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._unload()
            self._ready.set_exception(exc)
            return
        assert self._model is not None
        self._ready.set_result(self._model)
        try:
            self._serve()
        finally:
            self._fail_all(ModelError("the local model provider was closed"))
            self._unload()

    def _load(self) -> None:
        s = self.settings
        path = self.model_path
        weights = auto_weights(path) if s.weights == "auto" else s.weights
        if weights != "as_is":
            path = requantized(path, weights, s.cache_dir)
        model = LocalModel(
            path,
            ContextSettings(
                n_ctx=s.n_ctx,
                n_seq=s.n_seq + s.prefix_cache_size,
                n_batch=s.n_batch,
                n_threads=s.n_threads,
                flash_attn=s.flash_attn,
            ),
        )
        self._model = model
        limit = min(model.n_ctx, model.n_ctx_train or model.n_ctx)
        if s.max_seq_tokens is not None:
            limit = min(limit, s.max_seq_tokens)
        self._max_seq_tokens = limit
        self._batch = TokenBatch(s.n_batch)
        logger.info(
            "local model %s loaded: %s, %d KV cells, %d sequences, %d threads",
            path.name,
            model.description,
            model.n_ctx,
            s.n_seq,
            s.n_threads,
        )

    def _unload(self) -> None:
        if self._batch is not None:
            self._batch.free()
            self._batch = None
        if self._model is not None:
            self._model.close()

    def _serve(self) -> None:
        while True:
            busy = bool(self._generating or self._filling or self._waiting)
            message: GenerationJob | str | None
            try:
                message = self._inbox.get(block=not busy)
            except queue.Empty:
                message = None
            while message is not None:
                if message == _STOP:
                    return
                if isinstance(message, GenerationJob):
                    self._waiting.append(message)
                try:
                    message = self._inbox.get_nowait()
                except queue.Empty:
                    message = None
            try:
                self._drop_cancelled()
                self._admit()
                if self._generating or self._filling:
                    self._step()
            except Exception as exc:
                # A bug or a llama.cpp failure: the jobs in flight cannot be trusted, the
                # engine can. Fail them, wipe the cache, keep serving.
                logger.exception("local model decode step failed")
                self._fail_all(ModelError(f"local model failed: {type(exc).__name__}: {exc}"))
                self._reset_memory()

    # --- admission -------------------------------------------------------------------------

    def _admit(self) -> None:
        while self._waiting and self._free_ids:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                continue
            try:
                admitted = self._try_admit(job)
            except ModelError as error:
                self._waiting.popleft()
                self._fail_job(job, error)
                continue
            if not admitted:
                break
            self._waiting.popleft()

    def _try_admit(self, job: GenerationJob) -> bool:
        """Give ``job`` a sequence if its KV cells fit; False means "not yet".

        Raises :class:`ModelError` for a job that can never fit.
        """
        model = self._model
        assert model is not None
        prompt = job.prompt
        room = self._max_seq_tokens - len(prompt)
        if room < 1 or not prompt:
            raise ModelError(
                f"prompt is {len(prompt)} tokens; a local sequence holds at most"
                f" {self._max_seq_tokens} tokens (prompt + completion): shorten the prompt"
                " or raise n_ctx"
            )
        # max_seq_tokens <= n_ctx, so a lone request always fits an empty cache.
        max_new = max(1, min(job.max_tokens, room))
        need = len(prompt) + max_new

        # Sharing needs a prefix worth the bookkeeping, and at least one prompt token left to
        # evaluate (the logits of the last prompt token start the generation).
        prefix_len = min(job.prefix_len, len(prompt) - 1)
        share = (
            prefix_len >= self.settings.min_prefix_tokens and self.settings.prefix_cache_size > 0
        )
        key = tuple(prompt[:prefix_len]) if share else ()
        entry = self._prefixes.get(key) if share else None
        if entry is not None:
            need -= len(entry.tokens)  # already held by the cache
        while self._reserved + self._prefixes.tokens_held + need > model.n_ctx:
            evicted = self._prefixes.evict_one()
            if evicted is None:
                return False
            self._forget_prefix(evicted)
            if evicted is entry:
                entry = None
                need += len(evicted.tokens)

        new_entry = False
        if share and entry is None:
            entry, evicted = self._prefixes.create(key)
            if evicted is not None:
                self._forget_prefix(evicted)
            new_entry = entry is not None
        shared = len(entry.tokens) if entry is not None else 0

        request = _Request(job, self._free_ids.pop(), max_new)
        request.reserved = len(prompt) - shared + max_new
        self._reserved += request.reserved
        if entry is None:
            request.pending = list(prompt)
            self._filling.append(request)
        else:
            entry.users += 1
            request.prefix = entry
            if entry.ready:
                self._attach(request, entry, reused=True)
            else:
                if new_entry:
                    # This job pays for evaluating the prefix; jobs arriving meanwhile wait.
                    request.owns_prefix = True
                    self._filling.append(_Prefix(entry))
                entry.waiters.append(request)
                self._parked.append(request)
        active = len(self._generating) + len(self._filling) + len(self._parked)
        self.stats.max_active = max(self.stats.max_active, active)
        return True

    def _attach(self, request: _Request, entry: PrefixEntry[_Request], *, reused: bool) -> None:
        """Start ``request`` from a copy of the evaluated prefix ``entry``."""
        model = self._model
        assert model is not None
        n = len(entry.tokens)
        llama_cpp.llama_memory_seq_cp(model.memory, entry.seq_id, request.seq_id, 0, n)
        request.n_past = n
        request.pending = request.job.prompt[n:]
        if reused:
            request.cached_tokens = n
            entry.hits += 1
            self.stats.prefix_hits += 1
            self.stats.prefix_tokens_reused += n
        self._filling.append(request)

    # --- one step --------------------------------------------------------------------------

    def _step(self) -> None:
        model = self._model
        batch = self._batch
        assert model is not None
        assert batch is not None
        batch.clear()
        outputs: list[tuple[_Request, int]] = []
        plan: list[tuple[_Fill, int]] = []

        # Generating sequences first: each needs exactly one slot, and a step without them
        # would stall every running completion behind a long prompt.
        for request in self._generating:
            index = batch.add(request.pending[0], request.n_past, request.seq_id, logits=True)
            outputs.append((request, index))
            plan.append((request, 1))
        # Then prompt chunks, oldest first, in whatever room is left.
        for fill in self._filling:
            room = batch.capacity - batch.size
            if room <= 0:
                break
            take = min(len(fill.pending), room)
            if take == 0:
                continue
            base = fill.n_past
            for i in range(take):
                index = batch.add(fill.pending[i], base + i, fill.seq_id, logits=False)
            if take == len(fill.pending) and isinstance(fill, _Request):
                # The last prompt token's logits give the first generated token.
                batch.want_logits(index)
                outputs.append((fill, index))
            plan.append((fill, take))
        n = batch.size

        status = llama_cpp.llama_decode(model.ctx, batch.seal())
        if status != 0:
            self._decode_failed(status, plan)
            return

        stats = self.stats
        stats.steps += 1
        stats.batch_tokens += n
        stats.prompt_tokens_evaluated += n - len(self._generating)
        for fill, take in plan:
            fill.n_past += take
            del fill.pending[:take]
        finished_fills = [fill for fill, _ in plan if not fill.pending and fill in self._filling]
        for fill in finished_fills:
            self._filling.remove(fill)
            if isinstance(fill, _Prefix):
                self._prefix_ready(fill)
            elif isinstance(fill, _Request):
                self._generating.append(fill)
        for request, index in outputs:
            self._advance(request, index)

    def _prefix_ready(self, fill: _Prefix) -> None:
        entry = fill.entry
        entry.evaluated = len(entry.tokens)
        waiters, entry.waiters = entry.waiters, []
        for request in waiters:
            self._parked.remove(request)
            self._attach(request, entry, reused=not request.owns_prefix)

    def _advance(self, request: _Request, index: int) -> None:
        """Sample ``request``'s next token from the logits at batch row ``index``."""
        model = self._model
        assert model is not None
        row = llama_cpp.llama_get_logits_ith(model.ctx, index)
        if not row:
            raise ModelError(f"llama.cpp returned no logits for batch row {index}")
        logits = np.ctypeslib.as_array(
            ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(model.n_vocab,)
        )
        token = request.job.sampler.sample(logits)
        self.stats.generated_tokens += 1
        if model.is_end_of_generation(token):
            self._finish(request, "stop")
            return
        request.generated += 1
        text = request.completion
        text.feed(model.piece(token))
        if text.stopped:
            self._finish(request, "stop")
        elif request.generated >= request.max_new:
            self._finish(request, "length")
        else:
            request.pending = [token]
            if request.job.stream:
                delta = text.take_delta()
                if delta:
                    request.job.sink.text(delta)

    def _finish(self, request: _Request, reason: FinishReason) -> None:
        self._generating.remove(request)
        self._release(request)
        text = request.completion
        text.finish()
        job = request.job
        if job.cancelled:
            return
        if job.stream:
            delta = text.take_delta(final=True)
            if delta:
                job.sink.text(delta)
        self.stats.jobs_done += 1
        job.sink.done(
            Completion(
                text=text.text,
                finish_reason=reason,
                prompt_tokens=len(job.prompt),
                completion_tokens=request.generated,
                cached_tokens=request.cached_tokens,
            )
        )

    # --- failure and cleanup ---------------------------------------------------------------

    def _decode_failed(self, status: int, plan: list[tuple[_Fill, int]]) -> None:
        # Reservations make "no KV slot" (1) unexpected; anything else is llama.cpp failing.
        # Either way the batch's sequences are in an unknown state: fail those requests and
        # drop those prefixes, keep everything else.
        logger.error("llama_decode returned %d for a batch of %d sequences", status, len(plan))
        error = ModelError(
            f"local model decode failed (llama_decode returned {status}); the request can be"
            " retried"
        )
        for fill, _ in plan:
            if isinstance(fill, _Request):
                if fill in self._generating:
                    self._generating.remove(fill)
                if fill in self._filling:
                    self._filling.remove(fill)
                self._release(fill)
                self._fail_job(fill.job, error)
            else:
                assert isinstance(fill, _Prefix)
                self._filling.remove(fill)
                self._prefixes.discard(fill.entry)
                self._forget_prefix(fill.entry)
                for waiter in list(fill.entry.waiters):
                    self._parked.remove(waiter)
                    self._release(waiter)
                    self._fail_job(waiter.job, error)

    def _drop_cancelled(self) -> None:
        groups: tuple[list[_Request], list[_Fill], list[_Request]] = (
            self._generating,
            self._filling,
            self._parked,
        )
        for group in groups:
            for fill in [f for f in group if isinstance(f, _Request) and f.job.cancelled]:
                group.remove(fill)
                self._release(fill)

    def _release(self, request: _Request) -> None:
        """Free a request's cells, its sequence id and its reservation."""
        model = self._model
        assert model is not None
        llama_cpp.llama_memory_seq_rm(model.memory, request.seq_id, -1, -1)
        self._free_ids.append(request.seq_id)
        self._reserved -= request.reserved
        request.reserved = 0
        entry, request.prefix = request.prefix, None
        if entry is not None:
            entry.users -= 1
            if request in entry.waiters:
                entry.waiters.remove(request)

    def _forget_prefix(self, entry: PrefixEntry[_Request]) -> None:
        model = self._model
        assert model is not None
        llama_cpp.llama_memory_seq_rm(model.memory, entry.seq_id, -1, -1)

    def _fail_job(self, job: GenerationJob, error: ModelError) -> None:
        self.stats.jobs_failed += 1
        if job.cancelled:
            return
        try:
            job.sink.failed(error)
        except Exception:
            logger.exception("a local model job's sink raised")

    def _fail_all(self, error: ModelError) -> None:
        requests: list[_Request] = [*self._generating, *self._parked]
        requests += [f for f in self._filling if isinstance(f, _Request)]
        self._generating.clear()
        self._parked.clear()
        self._filling.clear()
        for request in requests:
            if self._model is not None:
                self._release(request)
            self._fail_job(request.job, error)
        while self._waiting:
            self._fail_job(self._waiting.popleft(), error)
        for entry in self._prefixes.clear():
            entry.waiters.clear()
            if self._model is not None:
                self._forget_prefix(entry)

    def _reset_memory(self) -> None:
        model = self._model
        if model is None:
            return
        llama_cpp.llama_memory_clear(model.memory, True)
        self._free_ids = list(reversed(range(self.settings.n_seq)))
        self._reserved = 0
