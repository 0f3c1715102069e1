"""A fake OpenAI-compatible HTTP server for tests, examples and benchmarks.

This module owns :class:`FakeOpenAIServer`: a real aiohttp server on loopback that speaks the
chat-completions wire format (plain JSON and SSE streaming), answers ``GET /v1/models``, counts
tokens the way a provider would (roughly four UTF-8 bytes per token), and lets a test inject
latency, rate limits and server errors. It records what it received so tests can assert on it.

It is a *server*, not a mock transport, so the client under test exercises its real HTTP stack:
connection pooling, timeouts, retries and error translation all run as they would in production.
What it shares with the fake Anthropic server (lifecycle, failure queue, recording, command line)
is :class:`~avm.testing.loopback_server.LoopbackServer`'s; this module keeps the wire format.

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
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Unpack

import msgspec
from aiohttp import web

from avm.testing.loopback_server import (
    InjectedFailure,
    LoopbackOptions,
    LoopbackServer,
    command_line,
    serve_from_command_line,
    server_options,
)
from avm.testing.replies import (
    FakeReply,
    FakeReplyLike,
    FakeToolCall,
    Responder,
    count_tokens,
)

__all__ = [
    "FakeOpenAIServer",
    "FakeReply",
    "FakeReplyLike",
    "FakeToolCall",
    "Responder",
    "count_tokens",
    "main",
]

CHAT_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"
FILES_PATH: Final = "/v1/files"
BATCHES_PATH: Final = "/v1/batches"

# Chat formats wrap every message in a few framing tokens; OpenAI's own guidance is ~3-4.
_MESSAGE_OVERHEAD_TOKENS: Final = 4
# Every reply is primed with a few tokens ("<|start|>assistant<|message|>").
_REPLY_PRIMING_TOKENS: Final = 3
# OpenAI caches prompt prefixes in 128-token blocks once a prompt reaches 1024 tokens.
_CACHE_BLOCK_TOKENS: Final = 128


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


class FakeOpenAIServer(LoopbackServer):
    """An OpenAI-compatible chat-completions server on loopback.

    Use as ``async with FakeOpenAIServer(...) as server`` (or :meth:`start` / :meth:`close`).
    Every knob is a plain attribute that may be changed while the server runs
    (``server.latency_s = 2.0``). It takes the options of :class:`LoopbackServer` (``api_key``
    is checked as ``Authorization: Bearer <api_key>``; ``cache_min_tokens`` is 1024 at OpenAI),
    and these:

    Args:
        model_ids: what ``GET /v1/models`` lists.
        error_rate: probability in [0, 1] that a completion fails with ``error_status``.
        error_status: status of random failures.
        error_retry_after_s: ``Retry-After`` sent with random failures, if any.
        seed: seed for the random failures, so a run is reproducible.
        prompt_cache: simulate prefix caching: a prompt whose leading messages were already seen
            reports them as ``cached_tokens`` (in 128-token blocks, once the cached prefix reaches
            ``cache_min_tokens``).
    """

    api_root: ClassVar[str] = "/v1"

    def __init__(
        self,
        *,
        model_ids: Iterable[str] = ("fake-gpt",),
        error_rate: float = 0.0,
        error_status: int = 503,
        error_retry_after_s: float | None = None,
        seed: int | None = None,
        prompt_cache: bool = False,
        **options: Unpack[LoopbackOptions],
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {error_rate}")
        super().__init__(**options)
        self.model_ids = tuple(model_ids)
        self.error_rate = error_rate
        self.error_status = error_status
        self.error_retry_after_s = error_retry_after_s
        self.prompt_cache = prompt_cache

        self.batch_outcome = "completed"
        """How the next batches end: ``completed`` (answered line by line), ``failed`` (refused
        in validation, no output) or ``expired`` (nothing answered)."""
        self.files: dict[str, tuple[_FileObject, bytes]] = {}
        """Uploaded and generated files by id: their metadata and content."""
        self.batches: dict[str, _BatchObject] = {}
        """Batches by id, as ``GET /v1/batches/{id}`` shows them."""

        self._rng = random.Random(seed)

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
    def completion_count(self) -> int:
        """How many chat-completion requests arrived (failed ones included)."""
        return self.path_counts[CHAT_PATH]

    # --- protocol ----------------------------------------------------------------------------

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(CHAT_PATH, self._chat)
        router.add_get(MODELS_PATH, self._models)
        router.add_post(FILES_PATH, self._upload)
        router.add_get(FILES_PATH + "/{file_id}", self._file)
        router.add_get(FILES_PATH + "/{file_id}/content", self._file_content)
        router.add_post(BATCHES_PATH, self._create_batch)
        router.add_get(BATCHES_PATH + "/{batch_id}", self._get_batch)
        router.add_post(BATCHES_PATH + "/{batch_id}/cancel", self._cancel_batch)

    AUTH_HEADER = "Authorization"

    def _authenticate(self, request: web.Request) -> None:
        if self._expected_auth is None:
            return
        got = request.headers.get("Authorization", "")
        if got != self._expected_auth:
            # Real providers quote (part of) the key they were given; clients must not echo it.
            self._refuse(401, f"Incorrect API key provided: {got.removeprefix('Bearer ')}.")

    def _error_body(self, status: int, message: str) -> bytes:
        return _error_body(status, message)

    def _echo_text(self, content: object) -> str:
        return _text_of(content)

    def _next_failure(self) -> InjectedFailure | None:
        """A queued failure, else (at ``error_rate``) a random one."""
        failure = super()._next_failure()
        if failure is None and self.error_rate and self._rng.random() < self.error_rate:
            status = self.error_status
            message = f"Injected random failure (HTTP {status})"
            failure = InjectedFailure(status, self.error_retry_after_s, message, None)
        return failure

    # --- handlers ----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        self._admit(request)
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "avm-fake"}
            for m in self.model_ids
        ]
        return self._json_response({"object": "list", "data": data})

    @staticmethod
    def _invalid_chat_body(body: object) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            return "'model' (string) and 'messages' (non-empty list) are required."
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._admit(request)
        body = await self._read_json(request)
        invalid = self._invalid_chat_body(body)
        if invalid is not None:
            self._refuse(400, invalid)
        self._record(body)
        failure = self._next_failure()
        if failure is not None:
            return self._failure_response(failure)
        reply = self._next_reply(body)
        await self._wait_latency()
        answer = self._answer(body, reply)
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(request, answer, include_usage=include_usage)
        return self._json_response(answer.completion())

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
        self._admit(request)
        try:
            form = await request.post()
        except ValueError as exc:
            self._refuse(400, f"Expected a multipart/form-data body: {exc}")
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str) or not isinstance(upload, web.FileField):
            self._refuse(400, "'purpose' (string) and 'file' (a file) are required.")
        content = upload.file.read()
        return self._json_response(self._new_file(purpose, upload.filename, content))

    async def _file(self, request: web.Request) -> web.Response:
        self._admit(request)
        file, _ = self._lookup(self.files, request, "file_id")
        return self._json_response(file)

    async def _file_content(self, request: web.Request) -> web.Response:
        self._admit(request)
        _, content = self._lookup(self.files, request, "file_id")
        return web.Response(body=content, content_type="application/octet-stream")

    async def _create_batch(self, request: web.Request) -> web.Response:
        self._admit(request)
        body = await self._read_json(request)
        input_file_id = body.get("input_file_id")
        if input_file_id not in self.files:
            self._refuse(400, f"Invalid 'input_file_id': {input_file_id!r}")
        if body.get("endpoint") != CHAT_PATH:
            self._refuse(400, f"Invalid 'endpoint': only {CHAT_PATH} is served here")
        if body.get("completion_window") != "24h":
            self._refuse(400, "Invalid 'completion_window': must be '24h'")
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
        self._after_batch_latency(self._finish_batch, batch.id, self.batch_outcome)
        return self._json_response(batch)

    async def _get_batch(self, request: web.Request) -> web.Response:
        self._admit(request)
        return self._json_response(self._lookup(self.batches, request, "batch_id"))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        self._admit(request)
        batch = self._lookup(self.batches, request, "batch_id")
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelled"
            batch.cancelled_at = int(time.time())
        return self._json_response(batch)

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
            error_body = msgspec.Raw(self._failure_body(failure))
            response = _BatchResponse(failure.status, request_id, error_body)
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
        self, request: web.Request, answer: _Answer, *, include_usage: bool
    ) -> web.StreamResponse:
        completion_id, created, model = answer.id, answer.created, answer.model

        def chunk(delta: _Delta, finish: str | None = None) -> bytes:
            choice = _ChunkChoice(index=0, delta=delta, finish_reason=finish)
            event = _Chunk(id=completion_id, created=created, model=model, choices=[choice])
            return b"data: " + _ENCODER.encode(event) + b"\n\n"

        parts = [chunk(_Delta(role="assistant", content=""))]
        text = answer.text
        step = self.stream_chunk_chars
        parts.extend(chunk(_Delta(content=text[i : i + step])) for i in range(0, len(text), step))
        for index, call in enumerate(answer.calls):
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
        parts.append(chunk(_Delta(), answer.finish_reason))
        if include_usage:
            tail = _UsageChunk(
                id=completion_id, created=created, model=model, choices=[], usage=answer.usage
            )
            parts.append(b"data: " + _ENCODER.encode(tail) + b"\n\n")
        parts.append(b"data: [DONE]\n\n")
        return await self._event_stream(request, parts)

    # --- reply construction ------------------------------------------------------------------

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
                if prefix_key in self._cached_prefixes:
                    cached = total
                else:
                    self._cached_prefixes.add(prefix_key)
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
    parser = command_line(
        "python -m avm.testing.fake_openai",
        "Serve a fake OpenAI-compatible API until killed; prints the base URL.",
        port=8000,
    )
    parser.add_argument("--error-rate", type=float, default=0.0, help="random failure rate")
    parser.add_argument("--error-status", type=int, default=503)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--model", action="append", default=None, help="model id to list")
    parser.add_argument("--prompt-cache", action="store_true", help="simulate prefix caching")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the fake server from the command line until SIGINT or SIGTERM."""
    args = _parse_args(argv)
    server = FakeOpenAIServer(
        model_ids=args.model or ("fake-gpt",),
        error_rate=args.error_rate,
        error_status=args.error_status,
        seed=args.seed,
        prompt_cache=args.prompt_cache,
        **server_options(args),
    )
    serve_from_command_line(server, args)


if __name__ == "__main__":
    main()
