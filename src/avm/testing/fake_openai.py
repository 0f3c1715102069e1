"""A fake OpenAI-compatible HTTP server for tests, examples and benchmarks.

This module owns :class:`FakeOpenAIServer`: a real aiohttp server on loopback that speaks the
chat-completions wire format (plain JSON and SSE streaming), answers ``GET /v1/models``, counts
tokens the way a provider would (roughly four UTF-8 bytes per token), and lets a test inject
latency, rate limits and server errors. It records what it received so tests can assert on it.

It is a *server*, not a mock transport, so the client under test exercises its real HTTP stack:
connection pooling, timeouts, retries and error translation all run as they would in production.

In-process::

    async with FakeOpenAIServer(latency_s=0.05) as server:
        provider = OpenAICompatProvider(server.base_url)
        server.fail_next(1, status=429, retry_after_s=0.2)
        server.script("first reply", FakeToolCall("lookup", {"q": "x"}))

As a separate process (benchmarks), serving until killed; it prints its base URL when ready::

    python -m avm.testing.fake_openai --port 8000 --latency 0.05

Reply selection, in order: a queued failure (:meth:`FakeOpenAIServer.fail_next`), the random error
rate, the next scripted reply (:meth:`FakeOpenAIServer.script`), the ``responder`` callable, and
finally echo mode (``"echo: "`` plus the start of the last user message).

It also serves the Files and Batch APIs (``POST /v1/files``, ``GET /v1/files/{id}[/content]``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``), enough for a
batch client to run end to end: a batch is answered line by line with the same reply selection
as live calls, ``batch_latency_s`` after it was created (see :attr:`FakeOpenAIServer.batch_outcome`
to make one fail or expire instead).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import random
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import msgspec
from aiohttp import web

__all__ = [
    "FakeOpenAIServer",
    "FakeReply",
    "FakeReplyLike",
    "FakeToolCall",
    "Responder",
    "count_tokens",
    "main",
]

logger = logging.getLogger(__name__)

CHAT_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"
FILES_PATH: Final = "/v1/files"
BATCHES_PATH: Final = "/v1/batches"

# Echo replies quote at most this many characters of the last user message.
_ECHO_CHARS: Final = 200
# Chat formats wrap every message in a few framing tokens; OpenAI's own guidance is ~3-4.
_MESSAGE_OVERHEAD_TOKENS: Final = 4
# Every reply is primed with a few tokens ("<|start|>assistant<|message|>").
_REPLY_PRIMING_TOKENS: Final = 3
# OpenAI caches prompt prefixes in 128-token blocks once a prompt reaches 1024 tokens.
_CACHE_BLOCK_TOKENS: Final = 128
# Largest request body accepted (OpenAI takes batch input files up to 200 MB).
_MAX_BODY_BYTES: Final = 256 * 1024 * 1024


def count_tokens(text: str) -> int:
    """Estimate tokens as ``ceil(utf8_bytes / 4)``, the usual rule of thumb for English text."""
    # isascii() is a flag check, so the common case never allocates an encoded copy.
    n = len(text) if text.isascii() else len(text.encode())
    return (n + 3) // 4


@dataclass(frozen=True, slots=True)
class FakeToolCall:
    """A scripted tool call: the model asks to call ``name`` with JSON ``arguments``.

    ``arguments`` may be a mapping (encoded to JSON) or JSON text used as is. ``id`` defaults to a
    deterministic ``call_<n>`` assigned by the server.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the JSON text that goes on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return msgspec.json.encode(dict(self.arguments)).decode()


@dataclass(frozen=True, slots=True)
class FakeReply:
    """A full scripted reply: text, tool calls, or both.

    ``finish_reason`` defaults to ``"tool_calls"`` when there are tool calls, else ``"stop"``
    (``"length"`` when the server truncates the text to ``max_tokens``).
    """

    text: str = ""
    tool_calls: tuple[FakeToolCall, ...] = ()
    finish_reason: str | None = None


FakeReplyLike = str | FakeToolCall | FakeReply
"""Anything a script or responder may return: plain text, one tool call, or a full reply."""

Responder = Callable[[dict[str, Any]], FakeReplyLike]
"""A synchronous callable that gets the decoded request body and returns the reply."""


def _as_reply(value: FakeReplyLike) -> FakeReply:
    if isinstance(value, FakeReply):
        return value
    if isinstance(value, FakeToolCall):
        return FakeReply(tool_calls=(value,))
    if isinstance(value, str):
        return FakeReply(text=value)
    raise TypeError(
        f"a fake reply must be str, FakeToolCall or FakeReply, not {type(value).__name__}"
    )


@dataclass(slots=True)
class _Failure:
    status: int
    retry_after_s: float | None
    body: bytes | None
    message: str | None
    remaining: int


# --- Wire structs for responses: encoding a Struct skips building an intermediate dict. ---


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct):
    id: str
    function: _Function
    type: str = "function"


class _FunctionDelta(msgspec.Struct, omit_defaults=True):
    arguments: str
    name: str | None = None


class _ToolCallDelta(msgspec.Struct, omit_defaults=True):
    index: int
    function: _FunctionDelta
    id: str | None = None
    type: str | None = None


class _Message(msgspec.Struct, omit_defaults=True):
    # content stays required so ``null`` is emitted for tool-call-only replies, as OpenAI does.
    role: str
    content: str | None
    tool_calls: list[_ToolCall] | None = None


class _Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int
    message: _Message
    finish_reason: str
    logprobs: None = None


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    finish_reason: str | None = None
    logprobs: None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int = 0


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptDetails
    completion_tokens_details: _CompletionDetails


class _Completion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage
    object: str = "chat.completion"
    system_fingerprint: str = "fp_avm_fake"


class _Chunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    object: str = "chat.completion.chunk"
    system_fingerprint: str = "fp_avm_fake"


class _UsageChunk(_Chunk):
    # Only the optional trailing chunk carries usage; the others omit the field entirely.
    usage: _Usage | None = None


class _FileObject(msgspec.Struct):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    object: str = "file"
    status: str = "processed"


class _RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class _BatchError(msgspec.Struct):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class _BatchErrors(msgspec.Struct):
    data: list[_BatchError]
    object: str = "list"


class _BatchObject(msgspec.Struct):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    request_counts: _RequestCounts
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: _BatchErrors | None = None
    in_progress_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelled_at: int | None = None
    metadata: dict[str, str] | None = None
    object: str = "batch"


class _BatchResponse(msgspec.Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _BatchOutputLine(msgspec.Struct):
    id: str
    custom_id: str | None
    response: _BatchResponse | None
    error: dict[str, Any] | None = None


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()

_ERROR_TYPES: Final = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _error_body(status: int, message: str) -> bytes:
    kind, code = _ERROR_TYPES.get(status, ("server_error", None))
    return _ENCODER.encode(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    )


def _text_of(content: object) -> str:
    """The text of a message ``content``: a string, ``null``, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass(slots=True)
class _Answer:
    """A completion being answered, in the pieces both the JSON and the SSE forms need."""

    id: str
    created: int
    model: str
    text: str
    calls: list[_ToolCall]
    finish_reason: str
    usage: _Usage

    def completion(self) -> _Completion:
        return _Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                _Choice(
                    index=0,
                    message=_Message(
                        role="assistant",
                        content=self.text if (self.text or not self.calls) else None,
                        tool_calls=self.calls or None,
                    ),
                    finish_reason=self.finish_reason,
                )
            ],
            usage=self.usage,
        )


class FakeOpenAIServer:
    """An OpenAI-compatible chat-completions server on loopback.

    Use as ``async with FakeOpenAIServer(...) as server`` (or :meth:`start` / :meth:`close`).
    Every knob is a plain attribute that may be changed while the server runs
    (``server.latency_s = 2.0``).

    Args:
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` or :attr:`base_url`).
        latency_s: seconds every completion waits before answering (failures answer at once,
            as a real rate limiter does).
        responder: called with each decoded request body when no scripted reply is queued.
        script: replies served in order before falling back to ``responder`` or echo.
        model_ids: what ``GET /v1/models`` lists.
        api_key: when set, requests must carry ``Authorization: Bearer <api_key>`` or get 401.
        error_rate: probability in [0, 1] that a completion fails with ``error_status``.
        error_status: status of random failures.
        error_retry_after_s: ``Retry-After`` sent with random failures, if any.
        seed: seed for the random failures, so a run is reproducible.
        prompt_cache: simulate prefix caching: a prompt whose leading messages were already seen
            reports them as ``cached_tokens`` (in 128-token blocks, once the cached prefix reaches
            ``cache_min_tokens``).
        cache_min_tokens: smallest prefix that counts as cached (OpenAI uses 1024).
        stream_chunk_chars: characters of text per streamed SSE chunk.
        record_limit: how many request bodies :attr:`requests` keeps (the most recent); None
            keeps all. Counters are never capped.
        batch_latency_s: seconds from creating a batch until it is answered.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        responder: Responder | None = None,
        script: Iterable[FakeReplyLike] = (),
        model_ids: Iterable[str] = ("fake-gpt",),
        api_key: str | None = None,
        error_rate: float = 0.0,
        error_status: int = 503,
        error_retry_after_s: float | None = None,
        seed: int | None = None,
        prompt_cache: bool = False,
        cache_min_tokens: int = 1024,
        stream_chunk_chars: int = 16,
        record_limit: int | None = 1000,
        batch_latency_s: float = 0.0,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {error_rate}")
        if stream_chunk_chars < 1:
            raise ValueError(f"stream_chunk_chars must be at least 1, got {stream_chunk_chars}")
        self.host = host
        self.latency_s = latency_s
        self.responder = responder
        self.model_ids = tuple(model_ids)
        self.api_key = api_key  # a property: also sets the expected Authorization header
        self.error_rate = error_rate
        self.error_status = error_status
        self.error_retry_after_s = error_retry_after_s
        self.prompt_cache = prompt_cache
        self.cache_min_tokens = cache_min_tokens
        self.stream_chunk_chars = stream_chunk_chars

        self.batch_latency_s = batch_latency_s
        self.batch_outcome = "completed"
        """How the next batches end: ``completed`` (answered line by line), ``failed`` (refused
        in validation, no output) or ``expired`` (nothing answered)."""

        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=record_limit)
        """Decoded chat-completion request bodies, oldest first (capped by ``record_limit``)."""
        self.arrivals: collections.deque[float] = collections.deque(maxlen=record_limit)
        """``time.monotonic()`` of each chat completion's arrival, matching :attr:`requests`."""
        self.batch_requests: list[dict[str, Any]] = []
        """Request bodies answered through batches, in the order they were answered."""
        self.files: dict[str, tuple[_FileObject, bytes]] = {}
        """Uploaded and generated files by id: their metadata and content."""
        self.batches: dict[str, _BatchObject] = {}
        """Batches by id, as ``GET /v1/batches/{id}`` shows them."""
        self.request_count = 0
        """Every HTTP request received, on any path, including failed ones."""
        self.path_counts: collections.Counter[str] = collections.Counter()
        """Requests received per URL path."""

        self._requested_port = port
        self._port: int | None = None
        self._rng = random.Random(seed)
        self._script: collections.deque[FakeReply] = collections.deque(_as_reply(r) for r in script)
        self._failures: collections.deque[_Failure] = collections.deque()
        self._ids = itertools.count(1)
        self._seen_prefixes: set[int] = set()
        self._runner: web.AppRunner | None = None
        self._batch_timers: list[asyncio.TimerHandle] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; idempotent."""
        if self._runner is not None:
            return
        # Batch input files run to many megabytes; aiohttp's default cap is 1 MiB.
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post(CHAT_PATH, self._chat)
        app.router.add_get(MODELS_PATH, self._models)
        app.router.add_post(FILES_PATH, self._upload)
        app.router.add_get(FILES_PATH + "/{file_id}", self._file)
        app.router.add_get(FILES_PATH + "/{file_id}/content", self._file_content)
        app.router.add_post(BATCHES_PATH, self._create_batch)
        app.router.add_get(BATCHES_PATH + "/{batch_id}", self._get_batch)
        app.router.add_post(BATCHES_PATH + "/{batch_id}/cancel", self._cancel_batch)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        # No access log: at thousands of requests/s it would cost more than the handler itself.
        # handler_cancellation: a client that gives up (a timeout test) frees its handler, so
        # close() does not wait out the configured latency.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, backlog=4096)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.debug("fake OpenAI server listening on %s", self.base_url)

    async def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        for timer in self._batch_timers:
            timer.cancel()
        self._batch_timers.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def api_key(self) -> str | None:
        """The Bearer key requests must carry; None accepts any request."""
        return self._api_key

    @api_key.setter
    def api_key(self, value: str | None) -> None:
        self._api_key = value
        # Pre-built so each request costs one string comparison.
        self._expected_auth = f"Bearer {value}" if value is not None else None

    @property
    def port(self) -> int:
        """The bound TCP port (only once started)."""
        if self._port is None:
            raise RuntimeError("FakeOpenAIServer is not started; use 'async with' or start()")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # --- control -----------------------------------------------------------------------------

    def script(self, *replies: FakeReplyLike) -> None:
        """Queue replies to serve, in order, before the responder or echo mode."""
        self._script.extend(_as_reply(r) for r in replies)

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        retry_after_s: float | None = None,
        message: str | None = None,
        body: bytes | None = None,
    ) -> None:
        """Make the next ``n`` chat completions fail with ``status``.

        A 429 carries ``Retry-After`` when ``retry_after_s`` is given (as a real rate limiter
        does); every failure carries an OpenAI-style error JSON body unless ``body`` replaces it
        with raw bytes (e.g. ``status=200, body=b"{oops"`` for a malformed reply). Calls queue up:
        ``fail_next(2, status=429)`` then ``fail_next(1, status=500)`` fails three requests.
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        if n:
            self._failures.append(_Failure(status, retry_after_s, body, message, n))

    @property
    def completion_count(self) -> int:
        """How many chat-completion requests arrived (failed ones included)."""
        return self.path_counts[CHAT_PATH]

    @property
    def pending_failures(self) -> int:
        """How many queued failures have not been served yet."""
        return sum(f.remaining for f in self._failures)

    def reset(self) -> None:
        """Forget recorded requests, counters, queued failures, scripted replies and the cache."""
        self.requests.clear()
        self.arrivals.clear()
        self.batch_requests.clear()
        self.request_count = 0
        self.path_counts.clear()
        self._failures.clear()
        self._script.clear()
        self._seen_prefixes.clear()

    # --- handlers ----------------------------------------------------------------------------

    def _count(self, request: web.Request) -> None:
        self.request_count += 1
        self.path_counts[request.path] += 1

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self._expected_auth is None:
            return None
        got = request.headers.get("Authorization", "")
        if got == self._expected_auth:
            return None
        # Real providers quote (part of) the key they were given; clients must not echo it on.
        given = got.removeprefix("Bearer ")
        return self._error(401, f"Incorrect API key provided: {given}.")

    @staticmethod
    def _error(status: int, message: str, retry_after_s: float | None = None) -> web.Response:
        headers = None
        if retry_after_s is not None:
            headers = {"Retry-After": f"{retry_after_s:g}"}
        return web.Response(
            status=status,
            body=_error_body(status, message),
            content_type="application/json",
            headers=headers,
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        self._count(request)
        return self._error(404, f"Unknown path {request.method} {request.path}")

    async def _models(self, request: web.Request) -> web.Response:
        self._count(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "avm-fake"}
            for m in self.model_ids
        ]
        return web.Response(
            body=_ENCODER.encode({"object": "list", "data": data}),
            content_type="application/json",
        )

    def _next_failure(self) -> tuple[int, bytes, float | None] | None:
        """The status, body and Retry-After of the next injected failure, if one is due."""
        if self._failures:
            failure = self._failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.popleft()
            if failure.body is not None:
                return failure.status, failure.body, failure.retry_after_s
            message = failure.message or f"Injected failure (HTTP {failure.status})"
            return failure.status, _error_body(failure.status, message), failure.retry_after_s
        if self.error_rate and self._rng.random() < self.error_rate:
            status = self.error_status
            message = f"Injected random failure (HTTP {status})"
            return status, _error_body(status, message), self.error_retry_after_s
        return None

    def _injected_failure(self) -> web.Response | None:
        failure = self._next_failure()
        if failure is None:
            return None
        status, body, retry_after_s = failure
        headers = None
        if retry_after_s is not None:
            headers = {"Retry-After": f"{retry_after_s:g}"}
        return web.Response(
            status=status, body=body, content_type="application/json", headers=headers
        )

    @staticmethod
    def _invalid_chat_body(body: object) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            return "'model' (string) and 'messages' (non-empty list) are required."
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        raw = await request.read()
        try:
            body = _DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            return self._error(400, f"We could not parse the JSON body of your request: {exc}")
        invalid = self._invalid_chat_body(body)
        if invalid is not None:
            return self._error(400, invalid)
        self.requests.append(body)
        self.arrivals.append(time.monotonic())

        failure = self._injected_failure()
        if failure is not None:
            return failure

        reply = self._next_reply(body)
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        answer = self._answer(body, reply)

        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(
                request,
                completion_id=answer.id,
                created=answer.created,
                model=answer.model,
                text=answer.text,
                calls=answer.calls,
                finish_reason=answer.finish_reason,
                usage=answer.usage if include_usage else None,
            )
        return web.Response(
            body=_ENCODER.encode(answer.completion()), content_type="application/json"
        )

    def _answer(self, body: dict[str, Any], reply: FakeReply) -> _Answer:
        """The completion for a validated request body and the reply chosen for it."""
        prompt_tokens, cached_tokens = self._prompt_tokens(body["messages"], body.get("tools"))
        text, finish_reason = self._limit(reply, body)
        completion_tokens = count_tokens(text)
        calls = [
            _ToolCall(
                id=tc.id or f"call_{next(self._ids):08x}",
                function=_Function(name=tc.name, arguments=tc.arguments_json()),
            )
            for tc in reply.tool_calls
        ]
        for call in calls:
            completion_tokens += count_tokens(call.function.name) + count_tokens(
                call.function.arguments
            )
        usage = _Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=_PromptDetails(cached_tokens=cached_tokens),
            completion_tokens_details=_CompletionDetails(),
        )
        return _Answer(
            id=f"chatcmpl-{next(self._ids):012x}",
            created=int(time.time()),
            model=body["model"],
            text=text,
            calls=calls,
            finish_reason=finish_reason,
            usage=usage,
        )

    # --- files and batches -------------------------------------------------------------------

    def _new_file(self, purpose: str, filename: str, content: bytes) -> _FileObject:
        file = _FileObject(
            id=f"file-{next(self._ids):012x}",
            bytes=len(content),
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        self.files[file.id] = (file, content)
        return file

    async def _upload(self, request: web.Request) -> web.Response:
        self._count(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            form = await request.post()
        except ValueError as exc:
            return self._error(400, f"Expected a multipart/form-data body: {exc}")
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str) or not isinstance(upload, web.FileField):
            return self._error(400, "'purpose' (string) and 'file' (a file) are required.")
        content = upload.file.read()
        file = self._new_file(purpose, upload.filename, content)
        return web.Response(body=_ENCODER.encode(file), content_type="application/json")

    def _find_file(self, request: web.Request) -> tuple[_FileObject, bytes] | web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        found = self.files.get(request.match_info["file_id"])
        if found is None:
            return self._error(404, f"No such File object: {request.match_info['file_id']}")
        return found

    async def _file(self, request: web.Request) -> web.Response:
        self._count(request)
        found = self._find_file(request)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=_ENCODER.encode(found[0]), content_type="application/json")

    async def _file_content(self, request: web.Request) -> web.Response:
        self._count(request)
        found = self._find_file(request)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=found[1], content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        self._count(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = _DECODER.decode(await request.read())
        except msgspec.DecodeError as exc:
            return self._error(400, f"We could not parse the JSON body of your request: {exc}")
        if not isinstance(body, dict):
            return self._error(400, "The request body must be a JSON object.")
        input_file_id = body.get("input_file_id")
        if input_file_id not in self.files:
            return self._error(400, f"Invalid 'input_file_id': {input_file_id!r}")
        if body.get("endpoint") != CHAT_PATH:
            return self._error(400, f"Invalid 'endpoint': only {CHAT_PATH} is served here")
        if body.get("completion_window") != "24h":
            return self._error(400, "Invalid 'completion_window': must be '24h'")
        metadata = body.get("metadata")
        batch = _BatchObject(
            id=f"batch_{next(self._ids):012x}",
            endpoint=CHAT_PATH,
            input_file_id=str(input_file_id),
            completion_window="24h",
            status="validating",
            created_at=int(time.time()),
            request_counts=_RequestCounts(),
            metadata=metadata if isinstance(metadata, dict) else None,
        )
        self.batches[batch.id] = batch
        loop = asyncio.get_running_loop()
        outcome = self.batch_outcome
        self._batch_timers.append(
            loop.call_later(self.batch_latency_s, self._finish_batch, batch.id, outcome)
        )
        return web.Response(body=_ENCODER.encode(batch), content_type="application/json")

    def _find_batch(self, request: web.Request) -> _BatchObject | web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return self._error(404, f"No such Batch object: {request.match_info['batch_id']}")
        return batch

    async def _get_batch(self, request: web.Request) -> web.Response:
        self._count(request)
        found = self._find_batch(request)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=_ENCODER.encode(found), content_type="application/json")

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        self._count(request)
        found = self._find_batch(request)
        if isinstance(found, web.Response):
            return found
        if found.status in ("validating", "in_progress"):
            found.status = "cancelled"
            found.cancelled_at = int(time.time())
        return web.Response(body=_ENCODER.encode(found), content_type="application/json")

    def _finish_batch(self, batch_id: str, outcome: str) -> None:
        """Answer every line of a batch's input file (or fail or expire it)."""
        batch = self.batches[batch_id]
        if batch.status == "cancelled":
            return
        now = int(time.time())
        _, content = self.files[batch.input_file_id]
        lines = [line for line in content.splitlines() if line.strip()]
        batch.request_counts = _RequestCounts(total=len(lines))
        if outcome == "failed":
            batch.status = "failed"
            batch.failed_at = now
            batch.errors = _BatchErrors(
                data=[_BatchError(code="invalid_request", message="Injected batch failure")]
            )
            return
        if outcome == "expired":
            batch.status = "expired"
            batch.expired_at = now
            return
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for number, line in enumerate(lines, 1):
            encoded, ok = self._batch_line(line, number)
            (outputs if ok else errors).append(encoded)
        if outputs:
            file = self._new_file("batch_output", f"{batch_id}_output.jsonl", b"\n".join(outputs))
            batch.output_file_id = file.id
        if errors:
            file = self._new_file("batch_output", f"{batch_id}_error.jsonl", b"\n".join(errors))
            batch.error_file_id = file.id
        batch.request_counts = _RequestCounts(
            total=len(lines), completed=len(outputs), failed=len(errors)
        )
        batch.status = "completed"
        batch.in_progress_at = batch.completed_at = now

    def _batch_line(self, line: bytes, number: int) -> tuple[bytes, bool]:
        """One output line for one input line, and whether it succeeded."""
        request_id = f"req_{next(self._ids):012x}"
        custom_id: str | None = None
        try:
            item = _DECODER.decode(line)
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            body = item.get("body") if isinstance(item, dict) else None
        except msgspec.DecodeError:
            body = None
        invalid = self._invalid_chat_body(body)
        if invalid is not None or not isinstance(body, dict):
            error = {"code": "invalid_request", "message": f"line {number}: {invalid}"}
            out = _BatchOutputLine(
                id=f"batch_req_{next(self._ids):012x}",
                custom_id=custom_id,
                response=None,
                error=error,
            )
            return _ENCODER.encode(out), False
        self.batch_requests.append(body)
        failure = self._next_failure()
        if failure is not None:
            status, error_body, _ = failure
            response = _BatchResponse(status, request_id, msgspec.Raw(error_body))
            out = _BatchOutputLine(
                id=f"batch_req_{next(self._ids):012x}", custom_id=custom_id, response=response
            )
            return _ENCODER.encode(out), False
        answer = self._answer(body, self._next_reply(body))
        response = _BatchResponse(
            200, request_id, msgspec.Raw(_ENCODER.encode(answer.completion()))
        )
        out = _BatchOutputLine(
            id=f"batch_req_{next(self._ids):012x}", custom_id=custom_id, response=response
        )
        return _ENCODER.encode(out), True

    async def _stream(
        self,
        request: web.Request,
        *,
        completion_id: str,
        created: int,
        model: str,
        text: str,
        calls: list[_ToolCall],
        finish_reason: str,
        usage: _Usage | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: _Delta, finish: str | None = None) -> bytes:
            choice = _ChunkChoice(index=0, delta=delta, finish_reason=finish)
            event = _Chunk(id=completion_id, created=created, model=model, choices=[choice])
            return b"data: " + _ENCODER.encode(event) + b"\n\n"

        # The events are built first and written in one go: a fake has no tokens to wait for,
        # and one write per response keeps the server cheap under benchmark load.
        parts = [chunk(_Delta(role="assistant", content=""))]
        step = self.stream_chunk_chars
        parts.extend(chunk(_Delta(content=text[i : i + step])) for i in range(0, len(text), step))
        for index, call in enumerate(calls):
            # Like OpenAI: the first delta names the call, later ones stream its arguments.
            parts.append(
                chunk(
                    _Delta(
                        tool_calls=[
                            _ToolCallDelta(
                                index=index,
                                id=call.id,
                                type="function",
                                function=_FunctionDelta(name=call.function.name, arguments=""),
                            )
                        ]
                    )
                )
            )
            args = call.function.arguments
            for i in range(0, len(args), step):
                delta = _ToolCallDelta(
                    index=index, function=_FunctionDelta(arguments=args[i : i + step])
                )
                parts.append(chunk(_Delta(tool_calls=[delta])))
        parts.append(chunk(_Delta(), finish_reason))
        if usage is not None:
            tail = _UsageChunk(
                id=completion_id, created=created, model=model, choices=[], usage=usage
            )
            parts.append(b"data: " + _ENCODER.encode(tail) + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        await response.write(b"".join(parts))
        await response.write_eof()
        return response

    # --- reply construction ------------------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> FakeReply:
        if self._script:
            return self._script.popleft()
        if self.responder is not None:
            return _as_reply(self.responder(body))
        return FakeReply(text=self._echo(body["messages"]))

    @staticmethod
    def _echo(messages: list[Any]) -> str:
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return "echo: " + _text_of(message.get("content"))[:_ECHO_CHARS]
        return "echo: "

    def _prompt_tokens(self, messages: list[Any], tools: object) -> tuple[int, int]:
        """Prompt tokens of the request, and how many of them a prefix cache would hold."""
        total = 0
        cached = 0
        prefix_key = 0
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            content = _text_of(message.get("content"))
            tokens = _MESSAGE_OVERHEAD_TOKENS + count_tokens(content)
            calls = message.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        tokens += count_tokens(str(fn.get("name", "")))
                        tokens += count_tokens(str(fn.get("arguments", "")))
            total += tokens
            # The last message is new by definition; caching applies to what came before it.
            if self.prompt_cache and i < last:
                prefix_key = hash((prefix_key, message.get("role"), content))
                if prefix_key in self._seen_prefixes:
                    cached = total
                else:
                    self._seen_prefixes.add(prefix_key)
        if tools:
            total += count_tokens(_ENCODER.encode(tools).decode())
        total += _REPLY_PRIMING_TOKENS
        if cached < self.cache_min_tokens:
            cached = 0
        else:
            cached -= cached % _CACHE_BLOCK_TOKENS
        return total, cached

    @staticmethod
    def _limit(reply: FakeReply, body: dict[str, Any]) -> tuple[str, str]:
        """Apply ``stop`` and ``max_tokens`` to the reply text; return it and the finish reason."""
        text = reply.text
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        for s in stops:
            if isinstance(s, str) and s:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and limit >= 0 and count_tokens(text) > limit:
            # Cut at a byte budget, dropping a split multi-byte character at the edge.
            text = text.encode()[: limit * 4].decode(errors="ignore")
            finish = "length"
        return text, finish


# --- command line ----------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m avm.testing.fake_openai",
        description="Serve a fake OpenAI-compatible API until killed; prints the base URL.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    parser.add_argument("--error-rate", type=float, default=0.0, help="random failure rate")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--model", action="append", default=None, help="model id to list")
    parser.add_argument("--api-key", default=None, help="require this Bearer key")
    parser.add_argument("--prompt-cache", action="store_true", help="simulate prefix caching")
    parser.add_argument("--record-limit", type=int, default=0, help="request bodies to keep")
    parser.add_argument("--batch-latency", type=float, default=0.0, help="seconds per batch")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    server = FakeOpenAIServer(
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        model_ids=args.model or ("fake-gpt",),
        api_key=args.api_key,
        error_rate=args.error_rate,
        error_status=args.error_status,
        seed=args.seed,
        prompt_cache=args.prompt_cache,
        record_limit=args.record_limit,
        batch_latency_s=args.batch_latency,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        # One line on stdout, flushed, so a parent process can wait for readiness and parse it.
        print(server.base_url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the fake server from the command line until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    # This is a program entry point, so it (and only it) configures logging.
    logging.basicConfig(level=args.log_level.upper())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
